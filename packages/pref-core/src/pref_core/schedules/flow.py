"""Rectified flow / flow matching, in diffusers' convention for SD3 and FLUX.1.

Pure tensor math, no diffusers import. With noise level σ ∈ [0, 1]:
``x_σ = (1 − σ)·x0 + σ·ε`` and the model regresses the velocity ``v = ε − x0``
(Esser et al. 2024, "Scaling Rectified Flow Transformers", Sec. 2–3). The denoiser is called
with ``timestep = σ · num_train_timesteps``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch
from torch import Tensor

from pref_core._dtypes import compute_dtype
from pref_core.schedules._common import (
    NoiseCoefficients,
    as_generator_device,
    broadcast_per_sample,
)

TIMESTEP_DENSITIES = ("uniform", "logit_normal", "mode")
TIME_SHIFT_TYPES = ("exponential", "linear")


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """Static timestep shift: σ' = s·σ / (1 + (s − 1)·σ) (SD3 paper Eq. 23; SD3 uses s = 3).

    s > 1 moves mass toward high noise, which large images need (their pixels are more
    redundant, so the same σ destroys less information).
    """
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def resolution_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """μ for FLUX's resolution-dependent shift: linear in the number of latent patches.

    μ(256 tokens) = 0.5 and μ(4096 tokens) = 1.15 (FLUX.1 defaults; a 1024² image has
    (1024/16)² = 4096 patches).
    """
    if max_seq_len == base_seq_len:
        raise ValueError("max_seq_len and base_seq_len must differ")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def time_shift(sigmas: Tensor, mu: float, kind: str = "exponential", power: float = 1.0) -> Tensor:
    """Resolution-dependent shift σ' = e^μ / (e^μ + (1/σ − 1)^p) (exponential, FLUX.1),
    or μ / (μ + (1/σ − 1)^p) (linear).

    With p = 1 the exponential form equals :func:`shift_sigmas` with s = e^μ.
    σ = 0 maps to 0 and σ = 1 to 1.
    """
    if kind not in TIME_SHIFT_TYPES:
        raise ValueError(f"unknown time shift {kind!r}; choose one of {TIME_SHIFT_TYPES}")
    scale = math.exp(mu) if kind == "exponential" else mu
    s = sigmas.double()
    ratio = torch.where(
        s > 0, (1.0 / s.clamp(min=1e-300) - 1.0) ** power, torch.full_like(s, math.inf)
    )
    out = scale / (scale + ratio)
    return out.to(sigmas.dtype)


def image_seq_len(height: int, width: int, vae_scale_factor: int = 8, patch_size: int = 2) -> int:
    """Number of latent patches a (height × width) image becomes in FLUX/SD3 transformers."""
    return (height // (vae_scale_factor * patch_size)) * (width // (vae_scale_factor * patch_size))


class FlowMatchingSchedule:
    """Rectified-flow forward process with the SD3/FLUX timestep densities and shifts.

    Timesteps for this process are noise levels σ ∈ (0, 1) (float32), already shifted.

    Args:
        num_train_timesteps: scale between σ and the model's timestep input (1000 for SD3/FLUX).
        shift: static shift s (SD3: 3.0; 1.0 = none). Ignored when ``use_dynamic_shifting``.
        use_dynamic_shifting: FLUX's resolution-dependent shift; needs ``image_seq_len`` when
            sampling timesteps.
        base_shift, max_shift, base_image_seq_len, max_image_seq_len: the μ line of
            :func:`resolution_shift_mu`.
        time_shift_type: ``"exponential"`` (FLUX) or ``"linear"``.
        weighting_scheme: timestep density: ``"uniform"``, ``"logit_normal"`` (SD3 default,
            u = sigmoid(N(m, s))) or ``"mode"`` (SD3 Eq. 20).
        logit_mean, logit_std, mode_scale: parameters of those densities.
    """

    prediction_type = "flow"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        *,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        weighting_scheme: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
    ) -> None:
        if weighting_scheme not in TIMESTEP_DENSITIES:
            raise ValueError(
                f"unknown weighting_scheme {weighting_scheme!r}; "
                f"choose one of {', '.join(TIMESTEP_DENSITIES)}"
            )
        if time_shift_type not in TIME_SHIFT_TYPES:
            raise ValueError(f"unknown time_shift_type {time_shift_type!r}")
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        if logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {logit_std}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.use_dynamic_shifting = bool(use_dynamic_shifting)
        self.base_shift, self.max_shift = float(base_shift), float(max_shift)
        self.base_image_seq_len = int(base_image_seq_len)
        self.max_image_seq_len = int(max_image_seq_len)
        self.time_shift_type = time_shift_type
        self.weighting_scheme = weighting_scheme
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.mode_scale = float(mode_scale)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> FlowMatchingSchedule:
        """Build from a diffusers ``FlowMatchEulerDiscreteScheduler`` config dict.

        The scheduler config has no timestep density (that is a training choice); pass
        ``weighting_scheme=...`` etc. as overrides.
        """
        config = dict(config)
        class_name = str(config.get("_class_name", ""))
        if "beta_schedule" in config or "trained_betas" in config:
            raise ValueError(
                f"{class_name or 'this config'} describes a DDPM-family scheduler; "
                "use DDPMSchedule.from_config (or schedule_from_config) instead"
            )
        kwargs = {
            "num_train_timesteps": config.get("num_train_timesteps", 1000),
            "shift": config.get("shift", 1.0),
            "use_dynamic_shifting": config.get("use_dynamic_shifting", False),
            "base_shift": config.get("base_shift", 0.5),
            "max_shift": config.get("max_shift", 1.15),
            "base_image_seq_len": config.get("base_image_seq_len", 256),
            "max_image_seq_len": config.get("max_image_seq_len", 4096),
            "time_shift_type": config.get("time_shift_type", "exponential"),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_config_file(cls, path: str | PathLike[str], **overrides: Any) -> FlowMatchingSchedule:
        with open(path, encoding="utf-8") as f:
            return cls.from_config(json.load(f), **overrides)

    # ------------------------------------------------------------------ timesteps
    def sample_density(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Unshifted u ∈ (0, 1) from the configured density, float32, shape (batch_size,).

        logit_normal: u = sigmoid(m + s·n), n ~ N(0, 1) (SD3 Eq. 19).
        mode: u = 1 − v − c·(cos²(πv/2) − 1 + v), v ~ U(0, 1) (SD3 Eq. 20).
        uniform: u ~ U(0, 1).
        """
        draw_device = as_generator_device(generator, device)
        shape = (batch_size,)
        if self.weighting_scheme == "logit_normal":
            n = torch.randn(shape, generator=generator, device=draw_device)
            u = torch.sigmoid(self.logit_mean + self.logit_std * n)
        elif self.weighting_scheme == "mode":
            v = torch.rand(shape, generator=generator, device=draw_device)
            u = 1.0 - v - self.mode_scale * (torch.cos(math.pi * v / 2) ** 2 - 1.0 + v)
        else:
            u = torch.rand(shape, generator=generator, device=draw_device)
        return u.to(device) if device is not None else u

    def shift_sigmas(self, sigmas: Tensor, image_seq_len: int | None = None) -> Tensor:
        """Apply the configured shift (static, or FLUX's resolution-dependent one)."""
        if self.use_dynamic_shifting:
            if image_seq_len is None:
                raise ValueError(
                    "this schedule uses dynamic (resolution-dependent) shifting: pass "
                    "image_seq_len, e.g. pref_core.schedules.image_seq_len(height, width)"
                )
            mu = resolution_shift_mu(
                image_seq_len,
                self.base_image_seq_len,
                self.max_image_seq_len,
                self.base_shift,
                self.max_shift,
            )
            return time_shift(sigmas, mu, self.time_shift_type)
        if self.shift == 1.0:
            return sigmas
        return shift_sigmas(sigmas, self.shift)

    def sample_timesteps(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        image_seq_len: int | None = None,
    ) -> Tensor:
        """Noise levels σ for training: u from the density, then shifted. float32, (B,)."""
        u = self.sample_density(batch_size, generator=generator, device=device)
        return self.shift_sigmas(u, image_seq_len)

    def model_timesteps(self, sigmas: Tensor) -> Tensor:
        """What the denoiser is called with: σ · num_train_timesteps (diffusers' SD3/FLUX)."""
        return sigmas * self.num_train_timesteps

    # ------------------------------------------------------------------ forward process
    def _check_sigmas(self, sigmas: Tensor) -> Tensor:
        sigmas = torch.as_tensor(sigmas)
        if not sigmas.dtype.is_floating_point:
            raise TypeError(
                f"flow timesteps are noise levels σ in [0, 1], got dtype {sigmas.dtype}"
            )
        if bool(((sigmas < 0) | (sigmas > 1)).any()):
            raise ValueError("flow noise levels σ must lie in [0, 1]")
        return sigmas

    def coefficients(self, sigmas: Tensor) -> NoiseCoefficients:
        """(a, b, c, d) = (1 − σ, σ, −1, 1): x_σ = (1−σ)x0 + σε, target v = ε − x0."""
        s = self._check_sigmas(sigmas)
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        return NoiseCoefficients(1.0 - s, s, -torch.ones_like(s), torch.ones_like(s))

    def add_noise(self, x0: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
        """x_σ = (1 − σ)·x0 + σ·ε, float32 (float64 for float64 data) math, x0's dtype."""
        dt = compute_dtype(x0, noise)
        s = broadcast_per_sample(self._check_sigmas(sigmas).to(dt), x0)
        return ((1.0 - s) * x0.to(dt) + s * noise.to(dt)).to(x0.dtype)

    def target(self, x0: Tensor, noise: Tensor, sigmas: Tensor | None = None) -> Tensor:
        """Velocity target v = ε − x0 (independent of σ)."""
        dt = compute_dtype(x0, noise)
        return (noise.to(dt) - x0.to(dt)).to(x0.dtype)

    # ------------------------------------------------------------------ conversions
    def to_x0(self, velocity: Tensor, x_t: Tensor, sigmas: Tensor) -> Tensor:
        """x0 = x_σ − σ·v."""
        s = broadcast_per_sample(self._check_sigmas(sigmas).double(), x_t)
        return (x_t.double() - s * velocity.double()).to(velocity.dtype)

    def to_epsilon(self, velocity: Tensor, x_t: Tensor, sigmas: Tensor) -> Tensor:
        """ε = x_σ + (1 − σ)·v."""
        s = broadcast_per_sample(self._check_sigmas(sigmas).double(), x_t)
        return (x_t.double() + (1.0 - s) * velocity.double()).to(velocity.dtype)

    def to_velocity(
        self,
        *,
        x_t: Tensor,
        sigmas: Tensor,
        x0: Tensor | None = None,
        epsilon: Tensor | None = None,
    ) -> Tensor:
        """v from x_σ and one of x0 (v = (x_σ − x0)/σ) or ε (v = (ε − x_σ)/(1 − σ))."""
        s = broadcast_per_sample(self._check_sigmas(sigmas).double(), x_t)
        if (x0 is None) == (epsilon is None):
            raise ValueError("pass exactly one of x0 or epsilon")
        if x0 is not None:
            return ((x_t.double() - x0.double()) / s).to(x0.dtype)
        return ((epsilon.double() - x_t.double()) / (1.0 - s)).to(epsilon.dtype)

    def __repr__(self) -> str:
        shift = "dynamic" if self.use_dynamic_shifting else self.shift
        return (
            f"FlowMatchingSchedule(shift={shift}, weighting_scheme={self.weighting_scheme!r}, "
            f"num_train_timesteps={self.num_train_timesteps})"
        )
