"""The toy backbones: tiny pixel-space models the toy world trains on a CPU in minutes.

Two kinds, each built fresh from a config shipped with the package (``toy_configs/``):

- ``"toy"``: a pixel-space ``UNet2DConditionModel`` on 32×32 RGB images (no VAE: the codec is
  :class:`~pref_core.backbones.base.IdentityCodec`), conditioned on the last hidden state of a
  small ``CLIPTextModel`` (``prompt_embeds`` (B, L, 64)), trained with ε-prediction on Ho et
  al.'s linear DDPM schedule — Stable Diffusion 1.5's structure without the latent space, so it
  goes through SD 1.5's adapters (:class:`~pref_core.backbones.sd.UNetDenoiser`,
  :class:`~pref_core.backbones.sd.CLIPConditionEncoder`).
- ``"toy-flux"``: a FLUX-style rectified-flow ``FluxTransformer2DModel`` on 32×32 pixels
  packed into 2×2 patches (4·3 = 12 features per token), conditioned like FLUX.1 (T5
  ``prompt_embeds``, CLIP ``pooled_prompt_embeds``, ``guidance``, shared ``text_ids``) through
  :class:`~pref_core.backbones.flux.FluxDenoiser` and
  :class:`~pref_core.backbones.flux.FluxConditionEncoder`; no guidance embeddings, no shift.

Their tokenizers are *word-level* (``tokenizers``' ``WordLevel`` model with a whitespace pre-
tokenizer): each known word is one token, anything else is ``<unk>``, and every prompt is padded
to a small fixed length (24). The vocabulary defaults to simple words for synthetic scenes
(colours, shapes, sizes, positions, counts; ``toy_configs/vocabulary.txt``) and can be replaced.

:func:`save_toy` writes the Hub layout (``model_index.json`` with the stock pipeline's
``_class_name`` plus ``"_pref_kind"``, ``unet/`` or ``transformer/``, ``text_encoder*/``,
``tokenizer*/``, ``scheduler/``; ``vae`` null) and :func:`load_toy` reads it back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import diffusers
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from pref_core.backbones._hub import (
    expand,
    is_local,
    load_denoiser_model,
    require_folders,
    seeded,
    weights_kwargs,
)
from pref_core.backbones.base import Backbone, IdentityCodec, LoadOptions
from pref_core.backbones.flux import FluxConditionEncoder, FluxDenoiser
from pref_core.backbones.sd import CLIPConditionEncoder, UNetDenoiser
from pref_core.schedules import schedule_from_config

__all__ = [
    "DEFAULT_VOCABULARY",
    "TOY_KINDS",
    "build_toy",
    "load_toy",
    "make_word_tokenizer",
    "parameter_counts",
    "save_toy",
    "toy_config",
]

TOY_KINDS = ("toy", "toy-flux")

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
# Ids 0..3 in every toy vocabulary. EOS must not be id 2: CLIPTextModel treats eos_token_id == 2
# as a legacy config and pools at argmax(input_ids) instead of at the first EOS.
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)

_SCHEDULERS = {
    "DDPMScheduler": DDPMScheduler,
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
}
_PIPELINE_COMPONENTS = {
    # What model_index.json lists besides the components save_toy writes (stock pipelines'
    # optional components, all absent).
    "toy": {"vae": None, "safety_checker": None, "feature_extractor": None, "image_encoder": None},
    "toy-flux": {"vae": None, "image_encoder": None, "feature_extractor": None},
}


# ---------------------------------------------------------------------------------- configs
def _config_file(name: str):
    return resources.files("pref_core.backbones").joinpath("toy_configs", name)


def _check_kind(kind: str) -> None:
    if kind not in TOY_KINDS:
        raise ValueError(f"unknown toy kind {kind!r}; choose one of {', '.join(TOY_KINDS)}")


def toy_config(kind: str = "toy") -> dict[str, Any]:
    """The packaged architecture config of a toy kind (``toy_configs/<kind>.json``), a copy."""
    _check_kind(kind)
    return json.loads(_config_file(f"{kind}.json").read_text(encoding="utf-8"))


def _read_vocabulary() -> tuple[str, ...]:
    text = _config_file("vocabulary.txt").read_text(encoding="utf-8")
    words = (line.strip() for line in text.splitlines())
    return tuple(w for w in words if w and not w.startswith("#"))


DEFAULT_VOCABULARY: tuple[str, ...] = _read_vocabulary()


# ---------------------------------------------------------------------------------- tokenizer
def make_word_tokenizer(
    vocabulary: Iterable[str] | None = None, *, max_length: int = 24
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: one id per known word, ``<unk>`` for anything else.

    Built with the ``tokenizers`` library (``WordLevel`` model; NFKC + lower-case normalizer;
    ``Whitespace`` pre-tokenizer, which also splits punctuation into tokens of its own) and
    wrapped as a ``PreTrainedTokenizerFast``. Ids: ``<pad>`` 0, ``<unk>`` 1,
    ``<|startoftext|>`` 2, ``<|endoftext|>`` 3, then the words in the given order. Every
    encoding is ``<|startoftext|> words… <|endoftext|>``, CLIP's layout, so CLIP pools at the
    end token; prompts are padded with ``<pad>`` (and truncated) to ``max_length``.

    Args:
        vocabulary: words (lower-case, no whitespace; duplicates ignored);
            :data:`DEFAULT_VOCABULARY` if ``None``.
        max_length: the fixed padded length, including the two boundary tokens.
    """
    if max_length < 3:
        raise ValueError(f"max_length must leave room for a word between BOS and EOS: {max_length}")
    words: list[str] = []
    for word in DEFAULT_VOCABULARY if vocabulary is None else vocabulary:
        word = str(word).strip().lower()
        if not word or any(c.isspace() for c in word):
            raise ValueError(f"vocabulary entries must be single words, got {word!r}")
        if word not in words and word not in SPECIAL_TOKENS:
            words.append(word)
    if not words:
        raise ValueError("the vocabulary is empty; pass some words or use the default")
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words))}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=max_length,
    )


# ---------------------------------------------------------------------------------- building
def _clip_config(config: dict[str, Any], tokenizer: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        **config,
        vocab_size=len(tokenizer),
        max_position_embeddings=int(tokenizer.model_max_length),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_config(config: dict[str, Any], tokenizer: Any) -> T5Config:
    return T5Config(
        **config,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def _assemble(
    kind: str,
    denoiser_model: nn.Module,
    tokenizers: list[Any],
    text_encoders: list[nn.Module],
    scheduler_config: dict[str, Any],
    sample_size: tuple[int, int],
    source: str | None,
) -> Backbone:
    config = toy_config(kind)
    if kind == "toy":
        denoiser: nn.Module = UNetDenoiser(denoiser_model)
        encoder: nn.Module = CLIPConditionEncoder(tokenizers[0], text_encoders[0])
    else:
        denoiser = FluxDenoiser(denoiser_model)
        encoder = FluxConditionEncoder(
            tokenizers[0],
            text_encoders[0],
            tokenizers[1],
            text_encoders[1],
            max_sequence_length=int(tokenizers[1].model_max_length),
        )
    return Backbone(
        kind=kind,
        denoiser=denoiser,
        encoder=encoder,
        codec=IdentityCodec(3),
        process=schedule_from_config(scheduler_config),
        scheduler_config=dict(scheduler_config),
        pipeline_class=config["pipeline_class"],
        denoiser_name=config["denoiser_name"],
        source=source,
        sample_size=sample_size,
    )


def build_toy(
    kind: str = "toy",
    *,
    seed: int = 0,
    vocabulary: Iterable[str] | None = None,
    image_size: int | None = None,
) -> Backbone:
    """A freshly initialised toy backbone from the packaged config (same seed, same weights).

    Args:
        kind: ``"toy"`` (pixel UNet, ε-prediction) or ``"toy-flux"`` (pixel flow transformer).
        seed: initialisation seed (the text encoders use ``seed + 1`` and ``seed + 2``).
        vocabulary: the tokenizer's words (see :func:`make_word_tokenizer`).
        image_size: side of the square images (default 32). ``"toy"`` needs a multiple of 4
            (two 2× downsamplings), ``"toy-flux"`` an even size (2×2 patches).
    """
    _check_kind(kind)
    config = toy_config(kind)
    size = int(config["sample_size"] if image_size is None else image_size)
    if kind == "toy":
        factor = 2 ** (len(config["denoiser"]["block_out_channels"]) - 1)
        if size < factor or size % factor:
            raise ValueError(
                f"the toy UNet needs image_size a positive multiple of {factor}: {size}"
            )
    elif size < 2 or size % 2:
        raise ValueError(f"toy-flux packs 2×2 pixel patches; image_size must be even: {size}")
    max_length = int(config["max_length"])
    tokenizer = make_word_tokenizer(vocabulary, max_length=max_length)
    with seeded(seed + 1):
        clip = CLIPTextModel(_clip_config(config["text_encoder"], tokenizer))
    if kind == "toy":
        with seeded(seed):
            model: nn.Module = UNet2DConditionModel(sample_size=size, **config["denoiser"])
        tokenizers, encoders = [tokenizer], [clip]
    else:
        tokenizer_2 = make_word_tokenizer(vocabulary, max_length=max_length)
        with seeded(seed + 2):
            t5 = T5EncoderModel(_t5_config(config["text_encoder_2"], tokenizer_2))
        with seeded(seed):
            model = FluxTransformer2DModel(**config["denoiser"])
        tokenizers, encoders = [tokenizer, tokenizer_2], [clip, t5]
    return _assemble(kind, model, tokenizers, encoders, config["scheduler"], (size, size), None)


# ---------------------------------------------------------------------------------- saving
def _components(backbone: Backbone) -> dict[str, Any]:
    """Pipeline component name → object, for the backbone's kind."""
    encoder = backbone.encoder
    if backbone.kind == "toy":
        parts = {"text_encoder": encoder.text_encoder, "tokenizer": encoder.tokenizer}
    else:
        parts = {
            "text_encoder": encoder.clip_text_encoder,
            "tokenizer": encoder.clip_tokenizer,
            "text_encoder_2": encoder.t5_encoder,
            "tokenizer_2": encoder.t5_tokenizer,
        }
    return {backbone.denoiser_name: backbone.model, **parts}


def save_toy(backbone: Backbone, path: str | os.PathLike[str]) -> Path:
    """Write a toy backbone to ``path`` in the Hub layout and return ``path``.

    ``model_index.json`` names the matching stock pipeline (``StableDiffusionPipeline`` /
    ``FluxPipeline``) with ``vae`` null, plus ``"_pref_kind"`` (which :func:`load_toy` and
    ``load_backbone`` dispatch on) and ``"_pref_sample_size"``. The denoiser is saved as it is
    now: attach or merge adapters before saving, not after.
    """
    if backbone.kind not in TOY_KINDS:
        raise ValueError(f"save_toy saves toy backbones, got kind {backbone.kind!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {
        "_class_name": backbone.pipeline_class,
        "_diffusers_version": diffusers.__version__,
        "_pref_kind": backbone.kind,
        "_pref_sample_size": list(backbone.sample_size),
    }
    for name, part in _components(backbone).items():
        part.save_pretrained(str(path / name))
        library = "diffusers" if name == backbone.denoiser_name else "transformers"
        class_name = "PreTrainedTokenizerFast" if name.startswith("tokenizer") else None
        index[name] = [library, class_name or type(part).__name__]
    scheduler_name = str(backbone.scheduler_config.get("_class_name", ""))
    if scheduler_name not in _SCHEDULERS:
        raise ValueError(f"toy backbones use {sorted(_SCHEDULERS)}, got {scheduler_name!r}")
    _SCHEDULERS[scheduler_name].from_config(backbone.scheduler_config).save_pretrained(
        str(path / "scheduler")
    )
    index["scheduler"] = ["diffusers", scheduler_name]
    for name, value in _PIPELINE_COMPONENTS[backbone.kind].items():
        index[name] = [value, value]
    if backbone.kind == "toy":
        index["requires_safety_checker"] = False
    (path / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


# ---------------------------------------------------------------------------------- loading
_TOY_LAYOUT = (
    "A toy backbone folder (written by save_toy) holds model_index.json, unet/ or "
    "transformer/, text_encoder*/, tokenizer*/ and scheduler/"
)


def load_toy(source: str | os.PathLike[str], options: LoadOptions | None = None) -> Backbone:
    """Load a toy backbone written by :func:`save_toy` (local folder or hub id).

    ``model_index.json``'s ``"_pref_kind"`` says which kind; ``options`` apply as for the real
    families (dtype, device, variant, ``denoiser`` swap; ``flow_density`` for ``"toy-flux"``).
    The text encoders are frozen.
    """
    source = expand(source)
    options = LoadOptions() if options is None else options
    common = options.pretrained_kwargs()
    if is_local(source) and not (Path(source) / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{source} has no model_index.json; point at a folder written by save_toy"
        )
    index = DiffusionPipeline.load_config(source, **common)
    kind = index.get("_pref_kind")
    if kind not in TOY_KINDS:
        raise ValueError(
            f"{source} is not a toy backbone (model_index.json has _pref_kind={kind!r}); "
            "load real pipelines with pref_core.backbones.loading.load_backbone"
        )
    config = toy_config(kind)
    names = ["text_encoder", "tokenizer"] + (
        ["text_encoder_2", "tokenizer_2"] if kind == "toy-flux" else []
    )
    require_folders(source, [*names, "scheduler"], _TOY_LAYOUT)
    model_cls = UNet2DConditionModel if kind == "toy" else FluxTransformer2DModel
    model = load_denoiser_model(
        model_cls, source, config["denoiser_name"], options, layout_hint=_TOY_LAYOUT
    )
    encoder_kwargs = weights_kwargs(options, transformers_model=True)
    tokenizers = [PreTrainedTokenizerFast.from_pretrained(source, subfolder="tokenizer", **common)]
    text_encoders: list[nn.Module] = [
        CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **encoder_kwargs)
    ]
    if kind == "toy-flux":
        tokenizers.append(
            PreTrainedTokenizerFast.from_pretrained(source, subfolder="tokenizer_2", **common)
        )
        text_encoders.append(
            T5EncoderModel.from_pretrained(source, subfolder="text_encoder_2", **encoder_kwargs)
        )
    scheduler_config = dict(
        DDPMScheduler.load_config(source, subfolder="scheduler", **common)
        if kind == "toy"
        else FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler", **common)
    )
    scheduler_config.setdefault("_class_name", config["scheduler"]["_class_name"])
    size = index.get("_pref_sample_size") or [config["sample_size"]] * 2
    backbone = _assemble(
        kind,
        model,
        tokenizers,
        text_encoders,
        scheduler_config,
        (int(size[0]), int(size[1])),
        source,
    )
    if options.flow_density:
        backbone.process = schedule_from_config(scheduler_config, **dict(options.flow_density))
    return backbone.to(options.device)


def parameter_counts(backbone: Backbone) -> dict[str, int]:
    """Number of parameters per component (denoiser, each text encoder), for reports."""
    return {
        name: sum(p.numel() for p in part.parameters())
        for name, part in _components(backbone).items()
        if isinstance(part, nn.Module)
    }
