"""fp32 PyTorch reference for :func:`pref_core.ops.noise_and_target`."""

from __future__ import annotations

import torch

__all__ = ["noise_and_target_reference"]


def noise_and_target_reference(
    x0: torch.Tensor,
    noise: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_t = a x0 + b noise`` and ``target = c x0 + d noise`` with ``(B,)`` coefficients,
    computed in float32 and returned in ``x0``'s dtype."""
    acc = torch.float64 if torch.float64 in (x0.dtype, noise.dtype) else torch.float32

    def coef(v: torch.Tensor) -> torch.Tensor:
        return v.to(acc).reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, ...)

    x, n = x0.to(acc), noise.to(acc)
    x_t = coef(a) * x + coef(b) * n  # (B, ...)
    target = coef(c) * x + coef(d) * n  # (B, ...)
    return x_t.to(x0.dtype), target.to(x0.dtype)
