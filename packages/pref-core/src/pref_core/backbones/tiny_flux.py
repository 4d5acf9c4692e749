"""A tiny, randomly initialised FLUX.1 checkpoint for tests, plus a T5 tokenizer builder.

Everything is built from small configs with fixed seeds — no download — and written with the
stock ``FluxPipeline.save_pretrained``, so the result is a real diffusers hub-layout directory
(``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``text_encoder_2/``, ``tokenizer_2/``, ``scheduler/``) that :func:`~pref_core.backbones.flux.
load_flux` and ``FluxPipeline.from_pretrained`` read exactly as they read FLUX.1-dev.

What is kept from FLUX.1-dev: the component classes, guidance embeddings, a VAE with a shift
factor, packed 2×2 latent patches (``in_channels`` = 4 × latent channels), rotary axes that sum
to the head dimension, and the scheduler config (dynamic shifting, μ from 0.5 to 1.15 over 256
to 4096 tokens). What is shrunk: 4 latent channels instead of 16, a 2× VAE instead of 8×, one
double- and one single-stream block of width 32, 2-layer CLIP/T5 encoders of width 32.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from pref_core.backbones._hub import seeded
from pref_core.backbones.tiny_sd import (
    DEFAULT_CORPUS,
    make_clip_tokenizer,
    tiny_clip_config,
    tiny_vae,
)

__all__ = [
    "FLUX_DEV_SCHEDULER",
    "build_tiny_flux",
    "make_t5_tokenizer",
    "tiny_flux_transformer",
]

# FLUX.1-dev's scheduler/scheduler_config.json (the values that matter for training).
FLUX_DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

# T5's SentencePiece layout: fixed ids for the three special pieces, "▁" marks a word start.
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
_SPACE = "▁"
# Characters every tiny T5 vocabulary covers, so that unseen words split into characters.
_BASE_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()"
# Log-probability of a single character piece: low enough that a whole-word piece always wins.
_CHARACTER_SCORE = -20.0

# Widths of the tiny model. The transformer's context and pooled widths follow the encoders.
_TEXT_WIDTH = 32
_LATENT_CHANNELS = 4
_T5_LENGTH = 32


def make_t5_tokenizer(
    directory: str | PathLike[str],
    corpus: Iterable[str] | None = None,
    *,
    model_max_length: int = _T5_LENGTH,
) -> T5TokenizerFast:
    """Build a tiny SentencePiece-style Unigram tokenizer and save it for ``T5TokenizerFast``.

    The ``tokenizers`` model reproduces T5's layout: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2,
    then ``▁`` and one ``▁word`` piece per word of ``corpus`` (scored by log frequency), then
    single characters (letters, digits, punctuation, anything else in the corpus) with a low
    score, so an unseen word splits into characters instead of becoming ``<unk>``. Pre-
    tokenization is whitespace split + Metaspace (``▁`` prepended) and every sequence ends in
    ``</s>``, exactly the pipeline ``T5TokenizerFast`` rebuilds around a Unigram vocabulary, so
    the saved ``tokenizer.json`` loads identically whether transformers reads it directly (4.x)
    or re-creates the backend from its vocabulary (5.x). No sentinel ``<extra_id_*>`` tokens
    (``extra_ids=0``): the encoder's vocabulary is exactly ``len(tokenizer)``.

    Args:
        directory: where to write ``tokenizer.json``/``tokenizer_config.json``; created.
        corpus: sentences whose words become pieces; the tiny SD corpus if ``None``.
        model_max_length: the length prompts are padded to by default.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = [line.lower() for line in (DEFAULT_CORPUS if corpus is None else corpus)]
    counts = Counter(word for line in lines for word in line.split())
    if not counts:
        raise ValueError(
            "the tokenizer corpus has no words; pass some sentences or use the default"
        )
    total = sum(counts.values())
    vocab: list[tuple[str, float]] = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0)]
    vocab.append((_SPACE, math.log(1.0 / (total + 1))))
    # Most frequent words first (ties alphabetical): a deterministic vocabulary.
    for word, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        vocab.append((_SPACE + word, math.log(count / total)))
    characters = sorted(set(_BASE_CHARACTERS) | {c for word in counts for c in word})
    vocab.extend((c, _CHARACTER_SCORE) for c in characters)

    tokenizer = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", T5_EOS],
        pair=["$A", T5_EOS, "$B", T5_EOS],
        special_tokens=[(T5_EOS, 1)],
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": model_max_length,
        "eos_token": T5_EOS,
        "unk_token": T5_UNK,
        "pad_token": T5_PAD,
        "extra_ids": 0,
        "additional_special_tokens": [],
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    t5 = T5TokenizerFast.from_pretrained(str(directory), local_files_only=True)
    t5.save_pretrained(str(directory))
    return T5TokenizerFast.from_pretrained(str(directory), local_files_only=True)


def tiny_flux_transformer(
    *, seed: int = 0, guidance_embeds: bool = True, text_width: int = _TEXT_WIDTH
) -> FluxTransformer2DModel:
    """The tiny transformer of :func:`build_tiny_flux`: 4-channel latents packed to 16 features,
    one double- and one single-stream block, 2 heads of 16 (rotary axes 4 + 6 + 6 = 16).

    A different ``seed`` gives the same architecture with other weights, e.g. to save with
    ``transformer.save_pretrained(dir)`` and load through ``LoadOptions(denoiser=dir)``.
    """
    with seeded(seed):
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * _LATENT_CHANNELS,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=text_width,
            pooled_projection_dim=text_width,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 6, 6),
        )


def build_tiny_flux(
    path: str | PathLike[str], *, seed: int = 0, guidance_embeds: bool = True
) -> Path:
    """Write a tiny random FLUX.1 pipeline to ``path`` in the hub layout and return ``path``.

    CLIP (``CLIPTextModel`` + BPE ``CLIPTokenizer``, 77 tokens) and T5 (``T5EncoderModel`` +
    Unigram ``T5TokenizerFast``, 32 tokens by default) of width 32, a 2× VAE with FLUX's
    shift/scale, :func:`tiny_flux_transformer` and FLUX.1-dev's scheduler config. Same seed,
    same weights. ``guidance_embeds=False`` gives a schnell-like model.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer = make_clip_tokenizer(Path(tmp) / "tokenizer")
        t5_tokenizer = make_t5_tokenizer(Path(tmp) / "tokenizer_2")
    with seeded(seed + 1):
        clip = CLIPTextModel(
            tiny_clip_config(clip_tokenizer, hidden_size=_TEXT_WIDTH, projection_dim=_TEXT_WIDTH)
        )
    with seeded(seed + 3):
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer),
                d_model=_TEXT_WIDTH,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX's T5-XXL
                dropout_rate=0.0,
                pad_token_id=t5_tokenizer.pad_token_id,
                eos_token_id=t5_tokenizer.eos_token_id,
                decoder_start_token_id=t5_tokenizer.pad_token_id,
                is_encoder_decoder=False,
                use_cache=False,
            )
        )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER),
        vae=tiny_vae(seed=seed + 2, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False),
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=tiny_flux_transformer(seed=seed, guidance_embeds=guidance_embeds),
    )
    pipe.save_pretrained(str(path))
    return path
