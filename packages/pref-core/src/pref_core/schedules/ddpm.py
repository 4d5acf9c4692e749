"""DDPM-family noise schedules: SD 1.5, SD 2.x and SDXL train with these.

Pure tensor math, no diffusers import. Notation follows Ho et al. (2020):
``α_t = 1 − β_t``, ``ᾱ_t = Π_{s≤t} α_s``, forward process
``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)``, so ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε``.
Timesteps are integer indices ``t ∈ {0, …, N−1}`` into the schedule, as in diffusers.
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

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def betas_for_schedule(
    name: str,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
) -> Tensor:
    """β_t for a named schedule, float64, shape (N,).

    - ``linear``: β evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020).
    - ``scaled_linear``: √β evenly spaced, squared (Stable Diffusion; 0.00085 → 0.012).
    - ``squaredcos_cap_v2``: cosine schedule, ᾱ(t) = cos²((t/N + 0.008)/1.008 · π/2), with
      β clipped at 0.999 (Nichol & Dhariwal 2021, Eq. 17).
    """
    n = int(num_train_timesteps)
    if n < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {n}")
    if name == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if name == "squaredcos_cap_v2":

        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
            dtype=torch.float64,
        )
    raise ValueError(
        f"unknown beta_schedule {name!r}; choose one of {', '.join(BETA_SCHEDULES)} "
        "or pass trained_betas"
    )


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale β so the last timestep has zero SNR (Lin et al. 2024, Algorithm 1).

    √ᾱ is shifted so √ᾱ_{N−1} = 0 and scaled so √ᾱ_0 keeps its value; β follows from the new ᾱ.
    """
    sqrt_ab = torch.cumprod(1.0 - betas.double(), dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alphas_cumprod = sqrt_ab**2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1.0 - alphas


class DDPMSchedule:
    """A discrete variance-preserving noise schedule and its training-time math.

    Holds ``alphas_cumprod`` in float64 (so that ε/v/x0 conversions near t = 0 and t = N−1 stay
    accurate) and casts gathered coefficients to float32 on use.

    Args:
        betas: β_t, shape (N,).
        prediction_type: what the denoiser predicts: ``"epsilon"``, ``"v_prediction"`` or
            ``"sample"`` (x0). Sets :meth:`target` and :meth:`coefficients`.
    """

    def __init__(self, betas: Tensor, prediction_type: str = "epsilon") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0:
            raise ValueError("betas must not be empty")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("every beta must lie in (0, 1]")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; "
                f"choose one of {', '.join(PREDICTION_TYPES)}"
            )
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.prediction_type = prediction_type

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DDPMSchedule:
        """Build from a diffusers DDPM-family scheduler config dict (``scheduler_config.json``).

        Reads ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``,
        ``trained_betas``, ``prediction_type`` and ``rescale_betas_zero_snr``; keys that only
        affect inference (``timestep_spacing``, ``steps_offset``, ...) are ignored. Flow-matching
        configs are refused with a pointer to :class:`~pref_core.schedules.FlowMatchingSchedule`.
        """
        config = dict(config)
        class_name = str(config.get("_class_name", ""))
        if "FlowMatch" in class_name or ("shift" in config and "beta_schedule" not in config):
            raise ValueError(
                f"{class_name or 'this config'} describes a flow-matching scheduler; "
                "use FlowMatchingSchedule.from_config (or schedule_from_config) instead"
            )
        trained = config.get("trained_betas")
        if trained is not None:
            betas = torch.tensor(trained, dtype=torch.float64)
        else:
            betas = betas_for_schedule(
                config.get("beta_schedule", "linear"),
                config.get("num_train_timesteps", 1000),
                config.get("beta_start", 0.0001),
                config.get("beta_end", 0.02),
            )
        if config.get("rescale_betas_zero_snr", False):
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas, prediction_type=config.get("prediction_type", "epsilon"))

    @classmethod
    def from_config_file(cls, path: str | PathLike[str]) -> DDPMSchedule:
        """Build from a ``scheduler_config.json`` on disk (e.g. ``<model>/scheduler/``)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_config(json.load(f))

    @classmethod
    def linear(
        cls,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
    ) -> DDPMSchedule:
        """Ho et al.'s linear schedule."""
        return cls(
            betas_for_schedule("linear", num_train_timesteps, beta_start, beta_end), prediction_type
        )

    @classmethod
    def scaled_linear(
        cls,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        prediction_type: str = "epsilon",
    ) -> DDPMSchedule:
        """Stable Diffusion's schedule (SD 1.x, SD 2.x, SDXL)."""
        return cls(
            betas_for_schedule("scaled_linear", num_train_timesteps, beta_start, beta_end),
            prediction_type,
        )

    # ------------------------------------------------------------------ basic quantities
    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]

    def _gather(self, values: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"DDPM timesteps are integer indices, got dtype {t.dtype}")
        if bool(((t < 0) | (t >= self.num_train_timesteps)).any()):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_train_timesteps - 1}], "
                f"got min {int(t.min())}, max {int(t.max())}"
            )
        return values.to(t.device)[t]

    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ_t, float64, shape of ``t``."""
        return self._gather(self.alphas_cumprod, t)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t), float64 (Kingma et al. 2021)."""
        ab = self.alpha_bar(t)
        return ab / (1.0 - ab)

    def sample_timesteps(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """t ~ U{0, …, N−1}, int64, shape (batch_size,) (Diffusion-DPO, CHATS, DSPO)."""
        draw_device = as_generator_device(generator, device)
        t = torch.randint(
            0, self.num_train_timesteps, (batch_size,), generator=generator, device=draw_device
        )
        return t.to(device) if device is not None else t

    def model_timesteps(self, t: Tensor) -> Tensor:
        """What the denoiser is called with: the integer index itself for DDPM models."""
        return t

    # ------------------------------------------------------------------ forward process
    def coefficients(self, t: Tensor) -> NoiseCoefficients:
        """(a, b, c, d) with x_t = a·x0 + b·ε and target = c·x0 + d·ε, float64, shape (B,).

        ε-prediction: target ε → (c, d) = (0, 1). v-prediction (Salimans & Ho 2022):
        v = √ᾱ ε − √(1−ᾱ) x0 → (−√(1−ᾱ), √ᾱ). x0-prediction: (1, 0).
        """
        ab = self.alpha_bar(t)
        sa, sb = ab.sqrt(), (1.0 - ab).sqrt()
        if self.prediction_type == "epsilon":
            c, d = torch.zeros_like(ab), torch.ones_like(ab)
        elif self.prediction_type == "v_prediction":
            c, d = -sb, sa
        else:
            c, d = torch.ones_like(ab), torch.zeros_like(ab)
        return NoiseCoefficients(sa, sb, c, d)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε, computed in float32 (float64 for float64 data), returned
        in x0's dtype."""
        dt = compute_dtype(x0, noise)
        ab = broadcast_per_sample(self.alpha_bar(t), x0)
        out = ab.sqrt().to(dt) * x0.to(dt) + (1.0 - ab).sqrt().to(dt) * noise.to(dt)
        return out.to(x0.dtype)

    def velocity(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """v = √ᾱ_t ε − √(1−ᾱ_t) x0 (Salimans & Ho 2022, Sec. 4), float32/float64 math."""
        dt = compute_dtype(x0, noise)
        ab = broadcast_per_sample(self.alpha_bar(t), x0)
        out = ab.sqrt().to(dt) * noise.to(dt) - (1.0 - ab).sqrt().to(dt) * x0.to(dt)
        return out.to(x0.dtype)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target for this schedule's ``prediction_type``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.velocity(x0, noise, t)
        return x0

    # ------------------------------------------------------------------ conversions
    def to_x0(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, prediction_type: str | None = None
    ) -> Tensor:
        """x̂0 from a model output of the given type (default: this schedule's type).

        ε: x0 = (x_t − √(1−ᾱ) ε)/√ᾱ. v: x0 = √ᾱ x_t − √(1−ᾱ) v. sample: identity.
        """
        kind = prediction_type or self.prediction_type
        ab = broadcast_per_sample(self.alpha_bar(t), x_t)
        sa, sb = ab.sqrt(), (1.0 - ab).sqrt()
        out, xt = model_output.double(), x_t.double()
        if kind == "epsilon":
            x0 = (xt - sb * out) / sa
        elif kind == "v_prediction":
            x0 = sa * xt - sb * out
        elif kind == "sample":
            x0 = out
        else:
            raise ValueError(f"unknown prediction_type {kind!r}")
        return x0.to(model_output.dtype)

    def to_epsilon(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, prediction_type: str | None = None
    ) -> Tensor:
        """ε̂ from a model output of the given type.

        v: ε = √(1−ᾱ) x_t + √ᾱ v. sample: ε = (x_t − √ᾱ x0)/√(1−ᾱ) (undefined where ᾱ = 1).
        """
        kind = prediction_type or self.prediction_type
        ab = broadcast_per_sample(self.alpha_bar(t), x_t)
        sa, sb = ab.sqrt(), (1.0 - ab).sqrt()
        out, xt = model_output.double(), x_t.double()
        if kind == "epsilon":
            eps = out
        elif kind == "v_prediction":
            eps = sb * xt + sa * out
        elif kind == "sample":
            eps = (xt - sa * out) / sb
        else:
            raise ValueError(f"unknown prediction_type {kind!r}")
        return eps.to(model_output.dtype)

    def to_velocity(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, prediction_type: str | None = None
    ) -> Tensor:
        """v̂ = √ᾱ ε̂ − √(1−ᾱ) x̂0 from a model output of the given type."""
        kind = prediction_type or self.prediction_type
        if kind == "v_prediction":
            return model_output
        ab = broadcast_per_sample(self.alpha_bar(t), x_t)
        eps = self.to_epsilon(model_output, x_t, t, kind).double()
        x0 = self.to_x0(model_output, x_t, t, kind).double()
        return (ab.sqrt() * eps - (1.0 - ab).sqrt() * x0).to(model_output.dtype)

    def convert(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, *, source: str, target: str
    ) -> Tensor:
        """Convert a prediction between ``epsilon``, ``v_prediction`` and ``sample``."""
        if target == "epsilon":
            return self.to_epsilon(model_output, x_t, t, source)
        if target == "v_prediction":
            return self.to_velocity(model_output, x_t, t, source)
        if target == "sample":
            return self.to_x0(model_output, x_t, t, source)
        raise ValueError(f"unknown target prediction type {target!r}")

    # ------------------------------------------------------------------ posterior
    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t−1} | x_t, x0) (Ho et al. 2020, Eqs. 6–7).

        μ̃ = β_t √ᾱ_{t−1}/(1−ᾱ_t) · x0 + (1−ᾱ_{t−1}) √α_t/(1−ᾱ_t) · x_t,
        β̃ = (1−ᾱ_{t−1})/(1−ᾱ_t) · β_t, with ᾱ_{−1} = 1 (so β̃_0 = 0).
        Returns (mean in x_t's dtype, variance float64 of shape (B,)).
        """
        t = torch.as_tensor(t)
        ab = self.alpha_bar(t)
        prev_idx = (t - 1).clamp(min=0)
        ab_prev = torch.where(
            t > 0, self._gather(self.alphas_cumprod, prev_idx), torch.ones_like(ab)
        )
        beta = self._gather(self.betas, t)
        alpha = self._gather(self.alphas, t)
        coef_x0 = beta * ab_prev.sqrt() / (1.0 - ab)
        coef_xt = (1.0 - ab_prev) * alpha.sqrt() / (1.0 - ab)
        variance = (1.0 - ab_prev) / (1.0 - ab) * beta
        mean = (
            broadcast_per_sample(coef_x0, x0) * x0.double()
            + broadcast_per_sample(coef_xt, x_t) * x_t.double()
        )
        return mean.to(x_t.dtype), variance

    def __repr__(self) -> str:
        return (
            f"DDPMSchedule(num_train_timesteps={self.num_train_timesteps}, "
            f"prediction_type={self.prediction_type!r})"
        )
