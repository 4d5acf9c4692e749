"""What every backbone adapter provides: one container, one set of load options, two codecs.

A :class:`Backbone` bundles the four protocol implementations pref composes (denoiser,
condition encoder, latent codec, noise process) for one model family, plus what sampling and
export need to talk to stock diffusers (the scheduler config and the pipeline class).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pref_core.conditioning import Conditioning
from pref_core.protocols import NoiseProcess

KINDS = ("sd15", "sdxl", "flux", "toy", "toy-flux")
NullMode = Literal["empty", "zeros"]


@dataclass(frozen=True)
class LoadOptions:
    """How to load a backbone; every field maps to the diffusers/transformers argument.

    Attributes:
        dtype: weights dtype (``torch.bfloat16`` for real models; default float32).
        device: where to put every component.
        variant: weight file variant, e.g. ``"fp16"`` (``diffusion_pytorch_model.fp16.safetensors``).
        revision: hub revision.
        local_files_only: never touch the network (also honoured through ``HF_HUB_OFFLINE``).
        denoiser: a different denoiser checkpoint (hub id or directory) to load instead of the
            pipeline's own, e.g. an SDXL-DPO UNet; the rest of the pipeline is kept.
        denoiser_subfolder: subfolder of ``denoiser`` holding the model; ``None`` tries the
            family's usual one (``unet``/``transformer``) and then the root.
        flow_density: keyword arguments for :class:`~pref_core.schedules.FlowMatchingSchedule`'s
            timestep density (``weighting_scheme``, ``logit_mean``, ...), flow models only.
    """

    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    variant: str | None = None
    revision: str | None = None
    local_files_only: bool = False
    denoiser: str | None = None
    denoiser_subfolder: str | None = None
    flow_density: Mapping[str, Any] = field(default_factory=dict)

    def pretrained_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every ``from_pretrained`` call of the loaders shares."""
        kwargs: dict[str, Any] = {"local_files_only": self.local_files_only}
        if self.revision is not None:
            kwargs["revision"] = self.revision
        return kwargs


@dataclass
class Backbone:
    """One model family's components behind pref's protocols.

    Attributes:
        kind: ``"sd15"``, ``"sdxl"``, ``"flux"``, ``"toy"`` or ``"toy-flux"``.
        denoiser: ``nn.Module`` satisfying :class:`~pref_core.protocols.Denoiser`; its
            ``model`` attribute is the wrapped diffusers network (UNet2DConditionModel or
            FluxTransformer2DModel), which training modes attach LoRA adapters to.
        encoder: satisfies :class:`~pref_core.protocols.ConditionEncoder` and also has
            ``null(batch_size, mode)`` (see :meth:`null_condition`).
        codec: satisfies :class:`~pref_core.protocols.LatentCodec`.
        process: the noise process built from the model's own scheduler config, so training
            regresses what the model was trained to predict (ε, v or flow velocity).
        scheduler_config: that scheduler config (a dict), from which samplers build diffusers
            schedulers.
        pipeline_class: name of the diffusers pipeline class for this layout
            (``"StableDiffusionPipeline"``, ...), used by export.
        denoiser_name: the pipeline component the denoiser is (``"unet"`` or ``"transformer"``).
        source: where it was loaded from (hub id or directory), or ``None`` if built in memory.
        sample_size: default (height, width) in pixels for sampling.
    """

    kind: str
    denoiser: nn.Module
    encoder: Any
    codec: Any
    process: NoiseProcess
    scheduler_config: dict[str, Any]
    pipeline_class: str
    denoiser_name: str
    source: str | None = None
    sample_size: tuple[int, int] = (512, 512)

    def encode(self, prompts: Sequence[str], **kwargs: Any) -> Conditioning:
        """Encode prompts with this backbone's condition encoder.

        Keyword arguments go to the encoder (SDXL: ``original_sizes``, ``crops``,
        ``target_sizes`` per sample).
        """
        return self.encoder.encode(list(prompts), **kwargs)

    def null_condition(
        self, batch_size: int, mode: NullMode = "empty", **kwargs: Any
    ) -> Conditioning:
        """The unconditional conditioning, two ways, both always available.

        ``"empty"``: the encoding of the empty prompt — what samplers (CFG, the CHATS sampler)
        use. ``"zeros"``: the empty prompt's conditioning with every embedding zeroed (ids
        kept) — what the CHATS and SDXL reference training code use.
        """
        return self.encoder.null(batch_size, mode, **kwargs)

    def timestep_kwargs(self, latents: Tensor) -> dict[str, Any]:
        """Extra arguments ``process.sample_timesteps`` needs for these latents (B, C, H, W).

        FLUX.1's resolution-dependent shift needs the number of packed tokens, (H/2)·(W/2);
        other processes need nothing. Pass the result to :func:`pref_core.pairs.noise_pair`.
        """
        if getattr(self.process, "use_dynamic_shifting", False):
            return {"image_seq_len": (latents.shape[-2] // 2) * (latents.shape[-1] // 2)}
        return {}

    @property
    def model(self) -> nn.Module:
        """The wrapped diffusers network."""
        return self.denoiser.model

    def to(self, *args: Any, **kwargs: Any) -> Backbone:
        """Move every module (denoiser, text encoders, VAE) like ``nn.Module.to``."""
        for part in (self.denoiser, self.encoder, self.codec):
            if isinstance(part, nn.Module):
                part.to(*args, **kwargs)
        return self


class IdentityCodec(nn.Module):
    """The latent codec of pixel-space models (the toy backbones): latents are the images.

    Images in [−1, 1], (B, C, H, W), pass through unchanged.
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.latent_channels = channels
        self.downsample_factor = 1

    def encode(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected images (B, {self.latent_channels}, H, W), got {tuple(images.shape)}"
            )
        return images

    def decode(self, latents: Tensor) -> Tensor:
        return latents


class VAECodec(nn.Module):
    """AutoencoderKL behind :class:`~pref_core.protocols.LatentCodec`.

    ``encode``: z = (sample of q(z | x) − shift_factor) · scaling_factor; ``decode`` inverts it.
    SD 1.5 and SDXL have no shift (0); FLUX.1's VAE uses shift 0.1159 and scale 0.3611. Latents
    are sampled from the posterior with ``generator`` (the diffusers training scripts' choice);
    pass ``mode=True`` to :meth:`encode_mode` for the deterministic posterior mean.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        shift = getattr(config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.latent_channels = int(config.latent_channels)
        self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)

    def _posterior(self, images: Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist

    def encode(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        z = self._posterior(images).sample(generator)
        return (z - self.shift_factor) * self.scaling_factor

    def encode_mode(self, images: Tensor) -> Tensor:
        """Deterministic encoding: the posterior mean, scaled and shifted."""
        z = self._posterior(images).mode()
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        z = latents.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample


def text_encoding(encode):
    """Decorator of condition encoders' ``encode``: no autograd graph unless the encoder was made
    trainable with :func:`set_text_encoders_trainable` (and grad mode is on)."""

    @functools.wraps(encode)
    def wrapper(self, *args, **kwargs):
        enabled = bool(getattr(self, "trainable", False)) and torch.is_grad_enabled()
        with torch.set_grad_enabled(enabled):
            return encode(self, *args, **kwargs)

    return wrapper


def set_text_encoders_trainable(encoder: nn.Module, trainable: bool = True) -> list[nn.Parameter]:
    """Let a condition encoder's text models train (default: frozen); returns their parameters.

    Used to train a toy base from scratch, whose random text encoder would otherwise only give
    the denoiser fixed random features of the prompt. Encoders stay in eval mode (no dropout).
    """
    encoder.trainable = bool(trainable)
    encoder.requires_grad_(bool(trainable))
    return [p for p in encoder.parameters() if p.requires_grad]
