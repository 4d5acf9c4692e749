"""Small helpers shared by the noise processes (pure tensor code)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class NoiseCoefficients(NamedTuple):
    """Per-sample affine coefficients of one forward-process draw.

    ``x_t = a * x0 + b * noise`` and ``target = c * x0 + d * noise``, each of shape (B,).
    DDPM coefficients are float64 (gathered from the float64 schedule) and flow coefficients
    keep σ's dtype; consumers compute in float32, or float64 for float64 data.
    Every process in pref (DDPM ε/v/x0 prediction, rectified flow) is of this form, which is what
    lets one fused kernel (:func:`pref_core.ops.noise_and_target`) serve them all.
    """

    a: Tensor
    b: Tensor
    c: Tensor
    d: Tensor


def broadcast_per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample values (B,) to broadcast over ``like`` (B, ...)."""
    if values.ndim != 1 or values.shape[0] != like.shape[0]:
        raise ValueError(
            f"expected one value per sample, shape ({like.shape[0]},), got {tuple(values.shape)}"
        )
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name}={shape}" for name, shape in shapes.items())
        raise ValueError(f"tensors must share one shape, got {described}")


def as_generator_device(generator: torch.Generator | None, device: torch.device | str | None):
    """Device on which random numbers are drawn: the generator's device when one is given.

    Drawing on the generator's device and moving the result keeps runs reproducible across
    devices (a CPU generator gives the same timesteps whether the model is on CPU or GPU).
    """
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")
