"""FLUX.1 (dev, schnell and fine-tunes) behind pref-core's protocols.

FLUX.1 is a rectified-flow transformer (``FluxTransformer2DModel``) over *packed* latents: the
VAE's (B, C, H, W) latents are cut into 2×2 patches and flattened to a token sequence
(B, H/2·W/2, 4C), with 2-D rotary position ids per token (diffusers' ``FluxPipeline``). pref's
math always sees (B, C, H, W) latents; :class:`FluxDenoiser` packs and unpacks internally,
exactly the way ``FluxPipeline._pack_latents`` / ``_unpack_latents`` do.

Conditioning (fixed field names across pref):

- ``prompt_embeds`` (B, L, D_t5): T5-XXL last hidden state, prompts padded to L tokens;
- ``pooled_prompt_embeds`` (B, D_clip): CLIP ViT-L ``pooler_output``;
- ``guidance`` (B,) float, a declared id: the distilled-guidance value of FLUX.1-dev (ignored
  by models without guidance embeddings, e.g. schnell);
- ``text_ids`` (L, 3), shared: zeros, the text tokens' rotary ids.

Timesteps: the noise process is a :class:`~pref_core.schedules.FlowMatchingSchedule` built from
the model's ``FlowMatchEulerDiscreteScheduler`` config; the denoiser is called with σ·1000 and
passes σ = timesteps/1000 to the transformer, as ``FluxPipeline`` does (the transformer multiplies
timestep and guidance by 1000 internally). FLUX.1-dev's scheduler uses *dynamic* (resolution-
dependent) shifting, so training timesteps need the packed sequence length, H/2 · W/2 of the
(B, C, H, W) latents (``Backbone.timestep_kwargs`` computes it, and is empty for other
processes)::

    pair = noise_pair(backbone.process, z_w, z_l, **backbone.timestep_kwargs(z_w))
    # the same as image_seq_len=packed_sequence_length(z_w); or, for timesteps alone:
    t = backbone.process.sample_timesteps(B, image_seq_len=packed_sequence_length(z_w))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
)
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from pref_core.backbones._hub import expand, load_denoiser_model, require_folders, weights_kwargs
from pref_core.backbones.base import Backbone, LoadOptions, NullMode, VAECodec, text_encoding
from pref_core.conditioning import Conditioning
from pref_core.schedules import schedule_from_config

# FluxPipeline's sampling default: 128 latent pixels per side (1024 px with the 8× VAE).
DEFAULT_LATENT_SIZE = 128
# The transformer's timestep input is σ ∈ [0, 1]; pref's flow process hands out σ·1000.
TIMESTEP_SCALE = 1000.0
# FluxPipeline refuses longer T5 sequences.
MAX_T5_SEQUENCE_LENGTH = 512


# ---------------------------------------------------------------------------------- packing
def pack_latents(latents: Tensor) -> Tensor:
    """(B, C, H, W) → (B, H/2·W/2, 4C): 2×2 patches as tokens, like ``FluxPipeline._pack_latents``.

    Token n = (i, j) in row-major order over the (H/2, W/2) patch grid; its 4C features are
    ordered (channel, dy, dx).
    """
    if latents.ndim != 4:
        raise ValueError(f"expected latents (B, C, H, W), got shape {tuple(latents.shape)}")
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(
            f"FLUX packs 2×2 latent patches, so latent height and width must be even; got "
            f"{h}×{w}. Use images whose sides are multiples of 2·(VAE downsample factor) "
            "(16 px for FLUX.1)"
        )
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2)  # (B, C, H/2, 2, W/2, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/2, W/2, C, 2, 2)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, H/2·W/2, 4C) → (B, C, H, W), the inverse of :func:`pack_latents`.

    ``height``/``width`` are the *latent* sizes (``FluxPipeline._unpack_latents`` takes pixel
    sizes and the VAE factor instead).
    """
    b, n, d = tokens.shape
    if height % 2 or width % 2 or n != (height // 2) * (width // 2) or d % 4:
        raise ValueError(
            f"cannot unpack {tuple(tokens.shape)} tokens to {height}×{width} latents: need even "
            f"sizes, {(height // 2) * (width // 2)} tokens and a feature size divisible by 4"
        )
    x = tokens.reshape(b, height // 2, width // 2, d // 4, 2, 2)  # (B, H/2, W/2, C, 2, 2)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, H/2, 2, W/2, 2)
    return x.reshape(b, d // 4, height, width)


def latent_image_ids(
    height: int, width: int, *, device: torch.device | str | None = None, dtype=torch.float32
) -> Tensor:
    """Rotary ids of the packed tokens, (H/2·W/2, 3): (0, row, column) per 2×2 patch.

    The same values as ``FluxPipeline._prepare_latent_image_ids(B, H/2, W/2, ...)`` (the 2-D
    form current diffusers passes; the batch dimension was dropped in diffusers 0.31).
    """
    h, w = height // 2, width // 2
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


def packed_sequence_length(latents: Tensor | Sequence[int]) -> int:
    """Number of image tokens the transformer sees for (B, C, H, W) latents: H/2 · W/2.

    This is the ``image_seq_len`` FLUX's dynamic timestep shift needs (``FluxPipeline`` uses
    ``latents.shape[1]`` of the packed latents), e.g.
    ``process.sample_timesteps(B, image_seq_len=packed_sequence_length(z))``; for an image of
    H×W pixels it equals ``pref_core.schedules.image_seq_len(H, W)``.
    """
    shape = tuple(latents.shape) if isinstance(latents, Tensor) else tuple(latents)
    if len(shape) < 2:
        raise ValueError(f"expected a latent shape ending in (H, W), got {shape}")
    return (int(shape[-2]) // 2) * (int(shape[-1]) // 2)


# ---------------------------------------------------------------------------------- denoiser
class FluxDenoiser(nn.Module):
    """``FluxTransformer2DModel`` behind :class:`~pref_core.protocols.Denoiser`.

    ``forward(x_t, timesteps, cond)``: x_t (B, C, H, W) latents, timesteps (B,) = σ·1000 (what
    :meth:`FlowMatchingSchedule.model_timesteps` returns), cond with ``prompt_embeds``,
    ``pooled_prompt_embeds``, ``guidance`` and shared ``text_ids``. Returns the flow velocity
    (B, C, H, W) in the model's dtype. The transformer is called exactly as ``FluxPipeline``
    calls it: packed latents, ``timestep=timesteps / 1000``, the raw guidance value (the
    transformer scales both by 1000 itself), 2-D ``img_ids``/``txt_ids``.

    Image prompts: an ``ip_tokens`` entry (B, S, D) in ``cond`` holds IP-Adapter image tokens
    that are *already projected* (D = ``joint_attention_dim``, the XLabs FLUX IP-Adapter's
    width); they go to the transformer as ``joint_attention_kwargs={"ip_adapter_image_embeds":
    [ip_tokens]}``, as ``FluxPipeline`` passes image embeddings. This needs
    ``FluxIPAdapterAttnProcessor``s in the double-stream blocks and, in place of diffusers'
    image projection, an ``encoder_hid_proj`` that passes projected tokens through (marked
    ``takes_projected_tokens = True``; pref-img's ``ProjectedTokens``). Without ``ip_tokens``
    the transformer is called exactly as before.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.model = transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        config = self.model.config
        if int(getattr(config, "patch_size", 1)) != 1:
            raise ValueError(
                f"FluxDenoiser packs 2×2 patches itself and needs a transformer with "
                f"patch_size=1, got patch_size={config.patch_size}"
            )
        if x_t.ndim != 4:
            raise ValueError(f"expected x_t (B, C, H, W), got shape {tuple(x_t.shape)}")
        b, c, h, w = x_t.shape
        if 4 * c != config.in_channels:
            raise ValueError(
                f"the transformer takes {config.in_channels} packed channels, i.e. "
                f"{config.in_channels // 4}-channel latents, but x_t has {c} channels; encode "
                "images with this backbone's codec"
            )
        dtype, device = self.model.dtype, x_t.device
        hidden = pack_latents(x_t.to(dtype))  # (B, H/2·W/2, 4C)
        img_ids = latent_image_ids(h, w, device=device, dtype=dtype)  # (H/2·W/2, 3)
        timesteps = torch.as_tensor(timesteps, device=device).reshape(-1)
        if timesteps.numel() == 1 and b > 1:
            timesteps = timesteps.expand(b)
        guidance = None
        if config.guidance_embeds:
            if "guidance" not in cond:
                raise KeyError(
                    "this FLUX transformer has guidance embeddings (FLUX.1-dev) and needs a "
                    "'guidance' entry in the conditioning; encode prompts with "
                    "FluxConditionEncoder"
                )
            guidance = cond["guidance"].to(device=device, dtype=torch.float32)
        extra: dict[str, Any] = {}
        if "ip_tokens" in cond:
            tokens = cond["ip_tokens"]  # (B, S, D), already projected
            if tokens.ndim != 3 or tokens.shape[-1] != config.joint_attention_dim:
                raise ValueError(
                    f"ip_tokens must be projected image tokens (B, S, "
                    f"{config.joint_attention_dim}), got {tuple(tokens.shape)}; project image "
                    "features with this transformer's IP-Adapter image projection first"
                )
            proj = getattr(self.model, "encoder_hid_proj", None)
            if not getattr(proj, "takes_projected_tokens", False):
                raise ValueError(
                    "the conditioning has ip_tokens but this transformer has no IP-Adapter "
                    "attention with a pass-through image projection; load the adapter with "
                    "pref_img.image_prompt.load_image_prompt_model"
                )
            embeds = [tokens.to(device=device, dtype=dtype)]
            extra["joint_attention_kwargs"] = {"ip_adapter_image_embeds": embeds}
        out = self.model(
            hidden_states=hidden,
            timestep=timesteps.to(dtype) / TIMESTEP_SCALE,
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"].to(device=device, dtype=dtype),
            encoder_hidden_states=cond["prompt_embeds"].to(device=device, dtype=dtype),
            txt_ids=cond["text_ids"].to(device=device, dtype=dtype),
            img_ids=img_ids,
            return_dict=True,
            **extra,
        ).sample  # (B, H/2·W/2, 4C_out)
        return unpack_latents(out, h, w)  # (B, C_out, H, W)


# ---------------------------------------------------------------------------------- encoder
class FluxConditionEncoder(nn.Module):
    """CLIP (pooled) + T5 (sequence) text encoding, as ``FluxPipeline.encode_prompt`` does it.

    Args:
        clip_tokenizer, clip_text_encoder: ``CLIPTokenizer`` and ``CLIPTextModel``; prompts are
            padded/truncated to the tokenizer's ``model_max_length`` (77) and the
            ``pooler_output`` (the EOS token's final state) is kept, (B, D_clip).
        t5_tokenizer, t5_encoder: ``T5TokenizerFast`` and ``T5EncoderModel``; prompts are padded
            to ``max_sequence_length`` tokens (512 for FLUX.1-dev; 256 is common for schnell)
            and the last hidden state is kept, (B, L, D_t5).
        max_sequence_length: L. Changing it changes the conditioning's shape; keep it fixed for
            one training run.
        guidance: the distilled-guidance value written into every encoding's ``guidance``
            field (1.0 is the usual choice when fine-tuning FLUX.1-dev; samplers override it
            per call with ``cond.replace(guidance=...)``).

    Both text encoders are frozen (``requires_grad=False``, eval mode) and run under
    ``torch.no_grad()``, unless made trainable with
    :func:`~pref_core.backbones.base.set_text_encoders_trainable`.
    """

    def __init__(
        self,
        clip_tokenizer: Any,
        clip_text_encoder: nn.Module,
        t5_tokenizer: Any,
        t5_encoder: nn.Module,
        *,
        max_sequence_length: int = MAX_T5_SEQUENCE_LENGTH,
        guidance: float = 1.0,
    ) -> None:
        super().__init__()
        if max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be positive, got {max_sequence_length}")
        self.clip_tokenizer = clip_tokenizer
        self.t5_tokenizer = t5_tokenizer
        self.clip_text_encoder = clip_text_encoder.requires_grad_(False).eval()
        self.t5_encoder = t5_encoder.requires_grad_(False).eval()
        self.max_sequence_length = int(max_sequence_length)
        self.guidance = float(guidance)

    @property
    def device(self) -> torch.device:
        return next(self.clip_text_encoder.parameters()).device

    def train(self, mode: bool = True) -> FluxConditionEncoder:
        # The text encoders are never trained: stay in eval mode whatever the caller asks.
        return super().train(False)

    def _token_ids(self, tokenizer: Any, prompts: list[str], length: int) -> Tensor:
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    @text_encoding
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """Prompts → ``prompt_embeds`` (B, L, D_t5), ``pooled_prompt_embeds`` (B, D_clip),
        ``guidance`` (B,) and shared ``text_ids`` (L, 3)."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts; wrap a single prompt in a list")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        device = self.device
        clip_ids = self._token_ids(
            self.clip_tokenizer, prompts, int(self.clip_tokenizer.model_max_length)
        )
        pooled = self.clip_text_encoder(clip_ids.to(device), output_hidden_states=False)
        pooled = pooled.pooler_output.to(self.clip_text_encoder.dtype)  # (B, D_clip)
        t5_ids = self._token_ids(self.t5_tokenizer, prompts, self.max_sequence_length)
        t5_device = next(self.t5_encoder.parameters()).device
        prompt_embeds = self.t5_encoder(t5_ids.to(t5_device), output_hidden_states=False)[0]
        prompt_embeds = prompt_embeds.to(device=device, dtype=self.t5_encoder.dtype)  # (B, L, D)
        # FluxPipeline.encode_prompt: zeros, in the CLIP encoder's dtype.
        text_ids = torch.zeros(
            prompt_embeds.shape[1], 3, device=device, dtype=self.clip_text_encoder.dtype
        )  # (L, 3)
        guidance = torch.full((len(prompts),), self.guidance, device=device, dtype=torch.float32)
        return Conditioning(
            {
                "prompt_embeds": prompt_embeds,
                "pooled_prompt_embeds": pooled,
                "guidance": guidance,
            },
            {"text_ids": text_ids},
            ids=("guidance",),
        )

    def null(self, batch_size: int, mode: NullMode = "empty") -> Conditioning:
        """The unconditional conditioning: ``"empty"`` = the encoded empty prompt (samplers),
        ``"zeros"`` = that with embeddings zeroed, guidance and ``text_ids`` kept (training)."""
        if mode not in ("empty", "zeros"):
            raise ValueError(f"null mode must be 'empty' or 'zeros', got {mode!r}")
        empty = self.encode([""] * int(batch_size))
        return empty if mode == "empty" else empty.zeros_like()


# ---------------------------------------------------------------------------------- loading
_FLUX_COMPONENTS = (
    "transformer",
    "vae",
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "scheduler",
)
_FLUX_LAYOUT = (
    "A FLUX.1 pipeline folder holds model_index.json, transformer/, vae/, text_encoder/, "
    "tokenizer/, text_encoder_2/, tokenizer_2/ and scheduler/ (the Hub layout; "
    "FluxPipeline.save_pretrained writes it)"
)


def load_flux(source: str, options: LoadOptions | None = None) -> Backbone:
    """Load a FLUX.1 pipeline (hub id or local folder in the Hub layout) as a :class:`Backbone`.

    Components: ``transformer`` → :class:`FluxDenoiser`; ``text_encoder``/``tokenizer`` (CLIP)
    and ``text_encoder_2``/``tokenizer_2`` (T5) → :class:`FluxConditionEncoder` (T5 length: the
    tokenizer's ``model_max_length``, at most 512); ``vae`` → :class:`VAECodec` (shift and
    scale from the VAE config); ``scheduler/scheduler_config.json`` →
    :class:`~pref_core.schedules.FlowMatchingSchedule` with ``options.flow_density``.

    With dynamic shifting (FLUX.1-dev), pass the packed sequence length when drawing training
    timesteps — the number of packed tokens, H/2·W/2 of the (B, C, H, W) latents:
    ``noise_pair(process, z_w, z_l, **backbone.timestep_kwargs(z_w))`` or
    ``backbone.process.sample_timesteps(B, image_seq_len=packed_sequence_length(z))``.

    The text encoders and the VAE are frozen; the transformer keeps ``requires_grad`` as
    loaded (training modes decide what trains).
    """
    source = expand(source)
    options = LoadOptions() if options is None else options
    common = dict(**options.pretrained_kwargs())
    needed = [c for c in _FLUX_COMPONENTS if not (c == "transformer" and options.denoiser)]
    require_folders(source, needed, _FLUX_LAYOUT)
    transformer = load_denoiser_model(
        FluxTransformer2DModel, source, "transformer", options, layout_hint=_FLUX_LAYOUT
    )
    vae = AutoencoderKL.from_pretrained(
        source, subfolder="vae", **weights_kwargs(options, transformers_model=False)
    )
    weights = weights_kwargs(options, transformers_model=True)
    clip = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights)
    t5 = T5EncoderModel.from_pretrained(source, subfolder="text_encoder_2", **weights)
    clip_tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
    t5_tokenizer = T5TokenizerFast.from_pretrained(source, subfolder="tokenizer_2", **common)
    scheduler_config = dict(
        FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler", **common)
    )
    scheduler_config.setdefault("_class_name", "FlowMatchEulerDiscreteScheduler")
    process = schedule_from_config(scheduler_config, **dict(options.flow_density))

    max_len = min(MAX_T5_SEQUENCE_LENGTH, int(t5_tokenizer.model_max_length))
    encoder = FluxConditionEncoder(
        clip_tokenizer, clip, t5_tokenizer, t5, max_sequence_length=max_len
    )
    vae.requires_grad_(False).eval()
    codec = VAECodec(vae)
    pixels = DEFAULT_LATENT_SIZE * codec.downsample_factor
    backbone = Backbone(
        kind="flux",
        denoiser=FluxDenoiser(transformer),
        encoder=encoder,
        codec=codec,
        process=process,
        scheduler_config=scheduler_config,
        pipeline_class="FluxPipeline",
        denoiser_name="transformer",
        source=source,
        sample_size=(pixels, pixels),
    )
    return backbone.to(options.device)


__all__ = [
    "FluxConditionEncoder",
    "FluxDenoiser",
    "latent_image_ids",
    "load_flux",
    "pack_latents",
    "packed_sequence_length",
    "unpack_latents",
]
