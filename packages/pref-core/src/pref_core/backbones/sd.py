"""Stable Diffusion 1.5 (and 2.x) and SDXL behind pref-core's protocols.

* :class:`UNetDenoiser` wraps a diffusers ``UNet2DConditionModel``: SD 1.5 calls
  ``unet(x_t, t, encoder_hidden_states=prompt_embeds)``; SDXL UNets (``addition_embed_type ==
  "text_time"``) also get ``added_cond_kwargs={"text_embeds": pooled_prompt_embeds,
  "time_ids": add_time_ids}``, exactly as ``StableDiffusionXLPipeline`` calls them.
* :class:`CLIPConditionEncoder` (SD 1.5/2.x) and :class:`SDXLConditionEncoder` reproduce the
  stock pipelines' ``encode_prompt`` (``clip_skip=None``) and return pref's fixed conditioning
  fields: ``prompt_embeds``; for SDXL also ``pooled_prompt_embeds`` and ``add_time_ids`` (an id).
* :func:`load_sd15` / :func:`load_sdxl` read a hub id or a hub-layout directory into a
  :class:`~pref_core.backbones.base.Backbone` whose noise process comes from the checkpoint's
  own scheduler config (ε for SD 1.5/SDXL, v for SD 2.x-768 style configs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from pref_core.backbones._hub import (
    expand,
    load_component,
    load_denoiser_model,
    require_folders,
    weights_kwargs,
)
from pref_core.backbones.base import Backbone, LoadOptions, NullMode, VAECodec, text_encoding
from pref_core.conditioning import Conditioning
from pref_core.schedules import schedule_from_config

__all__ = [
    "CLIPConditionEncoder",
    "SDXLConditionEncoder",
    "UNetDenoiser",
    "load_sd15",
    "load_sdxl",
]

SizeArg = Tensor | Sequence[float] | Sequence[Sequence[float]] | None

_SD15_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_SDXL_COMPONENTS = (
    "unet",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(module.parameters())
    return param.device, param.dtype


def _is_sdxl_unet(unet: nn.Module) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


# --------------------------------------------------------------------------- denoiser
class UNetDenoiser(nn.Module):
    """A diffusers ``UNet2DConditionModel`` behind :class:`~pref_core.protocols.Denoiser`.

    ``forward(x_t, timesteps, cond)``: ``x_t`` (B, 4, h, w) latents, ``timesteps`` (B,) DDPM
    indices (what :meth:`DDPMSchedule.model_timesteps` returns), ``cond`` a
    :class:`~pref_core.conditioning.Conditioning` with ``prompt_embeds`` (B, L, D); SDXL UNets
    (``unet.config.addition_embed_type == "text_time"``) also need ``pooled_prompt_embeds``
    (B, P) and ``add_time_ids`` (B, 6). Inputs are cast to the UNet's dtype, except
    ``add_time_ids``, which go in as given (float32 from the encoders) so sizes such as 1023 stay
    exact — the UNet's sinusoidal projection of them runs in float32 anyway. Returns the
    prediction (ε or v, as the checkpoint was trained) in the UNet's dtype, (B, 4, h, w).

    Image prompts: an ``ip_tokens`` entry (B, S, D) in ``cond`` holds IP-Adapter image tokens
    that are *already projected* (D = ``cross_attention_dim``); they go to the UNet as
    ``added_cond_kwargs["image_embeds"] = [ip_tokens]``. This needs IP-Adapter attention
    processors on the UNet (``encoder_hid_dim_type == "ip_image_proj"``) and, in place of
    diffusers' image projection, an ``encoder_hid_proj`` that passes projected tokens through
    (marked ``takes_projected_tokens = True``; pref-img's ``ProjectedTokens``). Without
    ``ip_tokens`` the UNet is called exactly as before.

    Attributes:
        model: the wrapped UNet (LoRA adapters attach here).
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.model = unet

    @property
    def uses_added_conditions(self) -> bool:
        """Whether the UNet takes SDXL's pooled text embedding and size/crop ids."""
        return _is_sdxl_unet(self.model)

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        unet = self.model
        config = unet.config
        device, dtype = _module_device_dtype(unet)
        if x_t.ndim != 4 or x_t.shape[1] != config.in_channels:
            raise ValueError(
                f"expected latents (B, {config.in_channels}, h, w), got {tuple(x_t.shape)}; "
                "encode images with the backbone's codec first"
            )
        if "prompt_embeds" not in cond:
            raise KeyError(
                f"the conditioning has no 'prompt_embeds' (entries: {sorted(cond.keys())}); "
                "build it with the backbone's encoder"
            )
        embeds = cond["prompt_embeds"]  # (B, L, D)
        if embeds.shape[-1] != config.cross_attention_dim:
            raise ValueError(
                f"prompt_embeds have width {embeds.shape[-1]} but the UNet cross-attends to "
                f"width {config.cross_attention_dim}; the conditioning comes from another "
                "model family's text encoder"
            )
        kwargs: dict[str, Any] = {}
        if self.uses_added_conditions:
            missing = [n for n in ("pooled_prompt_embeds", "add_time_ids") if n not in cond]
            if missing:
                raise ValueError(
                    "this UNet uses SDXL micro-conditioning (addition_embed_type='text_time') "
                    f"and needs {missing} in the conditioning; encode prompts with "
                    "SDXLConditionEncoder"
                )
            kwargs["added_cond_kwargs"] = {
                "text_embeds": cond["pooled_prompt_embeds"].to(device=device, dtype=dtype),
                "time_ids": cond["add_time_ids"].to(device=device),
            }
        if "ip_tokens" in cond:
            tokens = cond["ip_tokens"]  # (B, S, D), already projected
            if tokens.ndim != 3 or tokens.shape[-1] != config.cross_attention_dim:
                raise ValueError(
                    f"ip_tokens must be projected image tokens (B, S, "
                    f"{config.cross_attention_dim}), got {tuple(tokens.shape)}; project image "
                    "features with this UNet's IP-Adapter image projection first"
                )
            if config.encoder_hid_dim_type != "ip_image_proj" or not getattr(
                unet.encoder_hid_proj, "takes_projected_tokens", False
            ):
                raise ValueError(
                    "the conditioning has ip_tokens but this UNet has no IP-Adapter attention "
                    "with a pass-through image projection; load the adapter with "
                    "pref_img.image_prompt.load_image_prompt_model (or attach_ip_adapter)"
                )
            added = kwargs.setdefault("added_cond_kwargs", {})
            added["image_embeds"] = [tokens.to(device=device, dtype=dtype)]
        timesteps = torch.as_tensor(timesteps, device=device)
        return unet(
            x_t.to(device=device, dtype=dtype),
            timesteps,
            encoder_hidden_states=embeds.to(device=device, dtype=dtype),
            return_dict=False,
            **kwargs,
        )[0]


# --------------------------------------------------------------------------- encoders
def _as_prompt_list(prompts: Sequence[str] | str) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode; pass at least one (use '' for unconditional)")
    return prompts


def _token_ids(tokenizer: Any, prompts: list[str]) -> Any:
    """Tokenize like the SD pipelines: pad to ``model_max_length``, truncate longer prompts."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


class _FrozenTextEncoders(nn.Module):
    """Shared behaviour of the condition encoders: frozen, always in eval mode."""

    def _freeze(self) -> None:
        for module in self.children():
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> _FrozenTextEncoders:
        # The text encoders are never trained here; keep them in eval mode whatever the caller
        # does to the module tree.
        return super().train(False)


class CLIPConditionEncoder(_FrozenTextEncoders):
    """SD 1.5 / 2.x prompt encoder: one CLIP text model, last hidden state.

    Matches ``StableDiffusionPipeline.encode_prompt`` with ``clip_skip=None``: prompts padded to
    ``tokenizer.model_max_length`` (77) and truncated, the text encoder's attention mask passed
    only when its config sets ``use_attention_mask``, output ``last_hidden_state``.

    ``encode(prompts)`` → ``Conditioning(prompt_embeds=(B, 77, D))`` in the text encoder's dtype
    (D = 768 for SD 1.5, 1024 for SD 2.x).
    """

    def __init__(self, tokenizer: Any, text_encoder: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._freeze()

    @text_encoding
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        prompts = _as_prompt_list(prompts)
        device, _ = _module_device_dtype(self.text_encoder)
        tokens = _token_ids(self.tokenizer, prompts)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        embeds = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return Conditioning({"prompt_embeds": embeds})  # (B, L, D)

    def null(self, batch_size: int, mode: NullMode = "empty") -> Conditioning:
        """The unconditional conditioning for ``batch_size`` samples.

        ``"empty"``: ``encode([""] * batch_size)`` — what ``StableDiffusionPipeline`` uses as the
        negative prompt for classifier-free guidance. ``"zeros"``: the same with every
        embedding zeroed (the null some training recipes use).
        """
        null = self.encode([""] * _check_batch(batch_size))
        return _apply_null_mode(null, mode)


def _check_batch(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return int(batch_size)


def _apply_null_mode(null: Conditioning, mode: str) -> Conditioning:
    if mode == "empty":
        return null
    if mode == "zeros":
        return null.zeros_like()
    raise ValueError(f"unknown null mode {mode!r}; use 'empty' or 'zeros'")


def _size_rows(value: SizeArg, default: Sequence[float], batch_size: int, name: str) -> Tensor:
    """(B, 2) float32 rows from ``None`` (the default), one pair, or B pairs."""
    rows = torch.as_tensor(default if value is None else value, dtype=torch.float32)
    if rows.shape == (2,):
        return rows.expand(batch_size, 2)
    if rows.shape == (batch_size, 2):
        return rows
    raise ValueError(
        f"{name} must be one (a, b) pair or {batch_size} pairs (one per prompt), "
        f"got shape {tuple(rows.shape)}"
    )


class SDXLConditionEncoder(_FrozenTextEncoders):
    """SDXL prompt encoder: two CLIP text models plus the size/crop micro-conditioning.

    Matches ``StableDiffusionXLPipeline.encode_prompt`` with ``clip_skip=None``: both tokenizers
    pad to their ``model_max_length`` (77) and truncate; ``prompt_embeds`` (B, 77, 2048) is the
    concatenation on the last dimension of the *penultimate* hidden states (``hidden_states[-2]``)
    of ``text_encoder`` (768) and ``text_encoder_2`` (1280); ``pooled_prompt_embeds`` (B, 1280)
    is ``text_encoder_2``'s projected ``text_embeds``. ``add_time_ids`` (B, 6) float32 =
    (orig_h, orig_w, crop_top, crop_left, target_h, target_w) as in ``_get_add_time_ids``,
    declared an id of the conditioning (never combined linearly or zeroed).

    SDXL was trained with the true original size and crop of every image, so :meth:`encode`
    takes them per sample (``original_sizes``, ``crops``, ``target_sizes``); the defaults are
    the pipeline's at sampling time (original = target = the sampling resolution, no crop).

    Args:
        original_size, crops_coords_top_left, target_size: default (h, w), (top, left),
            (h, w) for samples without explicit sizes.
        force_zeros_for_empty_prompt: the pipeline config flag (``True`` for SDXL base): the
            stock sampler then uses *zeroed* embeddings, not the encoded empty prompt, as the
            negative conditioning; :attr:`sampling_null_mode` says which one.
    """

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: nn.Module,
        tokenizer_2: Any,
        text_encoder_2: nn.Module,
        *,
        original_size: tuple[int, int] = (1024, 1024),
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] = (1024, 1024),
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_2 = text_encoder_2
        self.original_size = tuple(original_size)
        self.crops_coords_top_left = tuple(crops_coords_top_left)
        self.target_size = tuple(target_size)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self._freeze()

    @property
    def sampling_null_mode(self) -> NullMode:
        """The null the stock ``StableDiffusionXLPipeline`` guides with when no negative prompt
        is given: ``"zeros"`` if ``force_zeros_for_empty_prompt`` (SDXL base), else ``"empty"``.
        """
        return "zeros" if self.force_zeros_for_empty_prompt else "empty"

    def time_ids(
        self,
        batch_size: int,
        *,
        original_sizes: SizeArg = None,
        crops: SizeArg = None,
        target_sizes: SizeArg = None,
    ) -> Tensor:
        """``add_time_ids`` (B, 6) float32: (orig_h, orig_w, top, left, target_h, target_w).

        Each argument is ``None`` (this encoder's default), one pair for the whole batch, or
        ``batch_size`` pairs (a nested sequence or a (B, 2) tensor).
        """
        batch_size = _check_batch(batch_size)
        return torch.cat(
            [
                _size_rows(original_sizes, self.original_size, batch_size, "original_sizes"),
                _size_rows(crops, self.crops_coords_top_left, batch_size, "crops"),
                _size_rows(target_sizes, self.target_size, batch_size, "target_sizes"),
            ],
            dim=1,
        ).contiguous()

    @staticmethod
    def _run(tokenizer: Any, encoder: nn.Module, prompts: list[str]) -> Any:
        device, _ = _module_device_dtype(encoder)
        ids = _token_ids(tokenizer, prompts).input_ids.to(device)
        return encoder(ids, output_hidden_states=True)

    @text_encoding
    def encode(
        self,
        prompts: Sequence[str],
        *,
        prompts_2: Sequence[str] | None = None,
        original_sizes: SizeArg = None,
        crops: SizeArg = None,
        target_sizes: SizeArg = None,
    ) -> Conditioning:
        """Encode prompts (and, optionally, other prompts for the second encoder, as the
        pipeline's ``prompt_2``) with per-sample size/crop ids (see :meth:`time_ids`)."""
        prompts = _as_prompt_list(prompts)
        prompts_2 = prompts if prompts_2 is None else _as_prompt_list(prompts_2)
        if len(prompts_2) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(prompts_2)} prompts_2")
        # Penultimate hidden states of both encoders, (B, L, D_1) and (B, L, D_2).
        out_1 = self._run(self.tokenizer, self.text_encoder, prompts)
        out_2 = self._run(self.tokenizer_2, self.text_encoder_2, prompts_2)
        pooled = out_2.text_embeds  # (B, P): the projected pooled output of the second encoder
        _, dtype = _module_device_dtype(self.text_encoder_2)
        hidden = [out_1.hidden_states[-2], out_2.hidden_states[-2]]
        prompt_embeds = torch.cat(hidden, dim=-1).to(dtype)  # (B, L, D_1 + D_2)
        time_ids = self.time_ids(
            len(prompts), original_sizes=original_sizes, crops=crops, target_sizes=target_sizes
        ).to(prompt_embeds.device)
        return Conditioning(
            {
                "prompt_embeds": prompt_embeds,
                "pooled_prompt_embeds": pooled,  # (B, P)
                "add_time_ids": time_ids,  # (B, 6)
            },
            ids=("add_time_ids",),
        )

    def null(
        self,
        batch_size: int,
        mode: NullMode = "empty",
        *,
        original_sizes: SizeArg = None,
        crops: SizeArg = None,
        target_sizes: SizeArg = None,
    ) -> Conditioning:
        """The unconditional conditioning for ``batch_size`` samples.

        ``"empty"``: ``encode([""] * batch_size)``. ``"zeros"``: that with ``prompt_embeds`` and
        ``pooled_prompt_embeds`` zeroed and ``add_time_ids`` kept — what
        ``StableDiffusionXLPipeline`` guides with when ``force_zeros_for_empty_prompt`` is set
        (SDXL base; see :attr:`sampling_null_mode`) and what the SDXL DPO training code drops
        prompts to. Pass the same sizes as the prompts' conditioning (or use
        ``null.replace(add_time_ids=cond["add_time_ids"])``) to combine the two linearly.
        """
        null = self.encode(
            [""] * _check_batch(batch_size),
            original_sizes=original_sizes,
            crops=crops,
            target_sizes=target_sizes,
        )
        return _apply_null_mode(null, mode)


# --------------------------------------------------------------------------- loading
def _layout_hint(pipeline_class: str, components: Sequence[str]) -> str:
    return (
        f"A {pipeline_class} checkpoint in the diffusers hub layout holds model_index.json and "
        f"the folders {', '.join(c + '/' for c in components)} (write one with "
        f"{pipeline_class}.save_pretrained(directory))"
    )


_LAYOUTS = {
    "StableDiffusionPipeline": _layout_hint("StableDiffusionPipeline", _SD15_COMPONENTS),
    "StableDiffusionXLPipeline": _layout_hint("StableDiffusionXLPipeline", _SDXL_COMPONENTS),
}


def _load_component(loader: Any, source: str, name: str, pipeline_class: str, **kwargs: Any):
    return load_component(loader, source, name, _LAYOUTS[pipeline_class], **kwargs)


def _load_unet(source: str, options: LoadOptions, pipeline_class: str) -> UNet2DConditionModel:
    """The pipeline's UNet, or ``options.denoiser``'s (see :func:`load_denoiser_model`)."""
    return load_denoiser_model(
        UNet2DConditionModel, source, "unet", options, layout_hint=_LAYOUTS[pipeline_class]
    )


def _scheduler_config(source: str, options: LoadOptions, pipeline_class: str) -> dict[str, Any]:
    config = _load_component(
        DDPMScheduler.load_config,
        source,
        "scheduler",
        pipeline_class,
        **options.pretrained_kwargs(),
    )
    return dict(config)


def _pipeline_config(source: str, options: LoadOptions) -> dict[str, Any]:
    """``model_index.json`` (empty if the directory has none)."""
    if os.path.isdir(source) and not (Path(source) / "model_index.json").is_file():
        return {}
    return dict(DiffusionPipeline.load_config(source, **options.pretrained_kwargs()))


def _load_vae(source: str, options: LoadOptions, pipeline_class: str) -> AutoencoderKL:
    vae = _load_component(
        AutoencoderKL.from_pretrained,
        source,
        "vae",
        pipeline_class,
        **weights_kwargs(options, transformers_model=False),
    )
    vae.requires_grad_(False)
    vae.eval()
    return vae


def _sample_size(unet: nn.Module, vae: nn.Module) -> tuple[int, int]:
    """Default pixel size: the UNet's latent ``sample_size`` times the VAE's downsampling, as
    the stock pipelines compute their default height and width."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(height) * factor, int(width) * factor


def _check_latent_channels(unet: nn.Module, vae: nn.Module) -> None:
    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(
            f"the UNet takes {unet.config.in_channels} input channels but the VAE makes "
            f"{vae.config.latent_channels}-channel latents (an inpainting or other variant UNet?)"
        )


def _finish(
    kind: str,
    pipeline_class: str,
    source: str,
    unet: nn.Module,
    encoder: nn.Module,
    vae: nn.Module,
    scheduler_config: dict[str, Any],
    options: LoadOptions,
    sample_size: tuple[int, int],
) -> Backbone:
    backbone = Backbone(
        kind=kind,
        denoiser=UNetDenoiser(unet),
        encoder=encoder,
        codec=VAECodec(vae),
        process=schedule_from_config(scheduler_config),
        scheduler_config=scheduler_config,
        pipeline_class=pipeline_class,
        denoiser_name="unet",
        source=source,
        sample_size=sample_size,
    )
    return backbone.to(options.device)


def load_sd15(source: str, options: LoadOptions | None = None) -> Backbone:
    """Load an SD 1.5 (or SD 2.x) checkpoint: a hub id or a directory in the hub layout.

    Reads ``unet/`` (or ``options.denoiser``), ``vae/``, ``text_encoder/`` (CLIPTextModel),
    ``tokenizer/`` and ``scheduler/``. The noise process is built from the scheduler config, so
    v-prediction checkpoints (SD 2.x 768) train on v. The text encoder and VAE are frozen; the
    UNet is returned as loaded (eval mode, parameters requiring grad) for the training mode to
    set up.
    """
    options = options or LoadOptions()
    pipeline_class = "StableDiffusionPipeline"
    source = expand(source)
    needed = [c for c in _SD15_COMPONENTS if not (c == "unet" and options.denoiser)]
    require_folders(source, needed, _LAYOUTS[pipeline_class])
    scheduler_config = _scheduler_config(source, options, pipeline_class)
    unet = _load_unet(source, options, pipeline_class)
    if _is_sdxl_unet(unet):
        raise ValueError(
            f"the UNet of {options.denoiser or source!r} is an SDXL UNet "
            "(addition_embed_type='text_time'); load it with load_sdxl"
        )
    vae = _load_vae(source, options, pipeline_class)
    text_encoder = _load_component(
        CLIPTextModel.from_pretrained,
        source,
        "text_encoder",
        pipeline_class,
        **weights_kwargs(options, transformers_model=True),
    )
    tokenizer = _load_component(
        CLIPTokenizer.from_pretrained,
        source,
        "tokenizer",
        pipeline_class,
        **options.pretrained_kwargs(),
    )
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ValueError(
            f"the UNet cross-attends to width {unet.config.cross_attention_dim} but the text "
            f"encoder of {source!r} has width {text_encoder.config.hidden_size}; the denoiser "
            "belongs to another Stable Diffusion version"
        )
    _check_latent_channels(unet, vae)
    encoder = CLIPConditionEncoder(tokenizer, text_encoder)
    return _finish(
        "sd15",
        pipeline_class,
        source,
        unet,
        encoder,
        vae,
        scheduler_config,
        options,
        _sample_size(unet, vae),
    )


def load_sdxl(source: str, options: LoadOptions | None = None) -> Backbone:
    """Load an SDXL checkpoint: a hub id or a directory in the hub layout.

    Reads ``unet/`` (or ``options.denoiser``, e.g. an SDXL-DPO UNet), ``vae/``,
    ``text_encoder/`` (CLIPTextModel), ``text_encoder_2/`` (CLIPTextModelWithProjection),
    ``tokenizer/``, ``tokenizer_2/`` and ``scheduler/``. The encoder's default sizes are the
    sampling resolution (``sample_size``, 1024×1024 for SDXL base) and its
    ``force_zeros_for_empty_prompt`` comes from ``model_index.json``. Text encoders and VAE are
    frozen; the UNet is returned as loaded. Note SDXL's VAE overflows in float16 (the pipeline
    upcasts it); bfloat16 and float32 are safe.
    """
    options = options or LoadOptions()
    pipeline_class = "StableDiffusionXLPipeline"
    source = expand(source)
    needed = [c for c in _SDXL_COMPONENTS if not (c == "unet" and options.denoiser)]
    require_folders(source, needed, _LAYOUTS[pipeline_class])
    scheduler_config = _scheduler_config(source, options, pipeline_class)
    pipeline_config = _pipeline_config(source, options)
    unet = _load_unet(source, options, pipeline_class)
    if not _is_sdxl_unet(unet):
        raise ValueError(
            f"the UNet of {options.denoiser or source!r} has no SDXL micro-conditioning "
            "(addition_embed_type is not 'text_time'); load SD 1.5/2.x UNets with load_sd15"
        )
    vae = _load_vae(source, options, pipeline_class)
    weights = weights_kwargs(options, transformers_model=True)
    text_encoder = _load_component(
        CLIPTextModel.from_pretrained, source, "text_encoder", pipeline_class, **weights
    )
    text_encoder_2 = _load_component(
        CLIPTextModelWithProjection.from_pretrained,
        source,
        "text_encoder_2",
        pipeline_class,
        **weights,
    )
    tokenizers = [
        _load_component(
            CLIPTokenizer.from_pretrained,
            source,
            name,
            pipeline_class,
            **options.pretrained_kwargs(),
        )
        for name in ("tokenizer", "tokenizer_2")
    ]
    width = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    if unet.config.cross_attention_dim != width:
        raise ValueError(
            f"the UNet cross-attends to width {unet.config.cross_attention_dim} but the two "
            f"text encoders of {source!r} give {text_encoder.config.hidden_size} + "
            f"{text_encoder_2.config.hidden_size} = {width}; the denoiser belongs to another "
            "model"
        )
    added = unet.config.addition_time_embed_dim * 6 + text_encoder_2.config.projection_dim
    expected = unet.add_embedding.linear_1.in_features
    if added != expected:
        raise ValueError(
            f"the UNet's added embedding takes {expected} features but 6 time ids × "
            f"{unet.config.addition_time_embed_dim} + the pooled projection "
            f"({text_encoder_2.config.projection_dim}) give {added}"
        )
    _check_latent_channels(unet, vae)
    sample_size = _sample_size(unet, vae)
    encoder = SDXLConditionEncoder(
        tokenizers[0],
        text_encoder,
        tokenizers[1],
        text_encoder_2,
        original_size=sample_size,
        target_size=sample_size,
        force_zeros_for_empty_prompt=pipeline_config.get("force_zeros_for_empty_prompt", True),
    )
    return _finish(
        "sdxl",
        pipeline_class,
        source,
        unet,
        encoder,
        vae,
        scheduler_config,
        options,
        sample_size,
    )
