"""fp32 PyTorch reference for :func:`pref_core.ops.dspo_residual`."""

from __future__ import annotations

import torch

__all__ = ["dspo_residual_reference"]


def dspo_residual_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    reference: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """DSPO per-sample residual loss (Zhu et al. 2025, Eq. 13), in float32.

    ``mean(((pred - target) - weight[b] * (pred - reference))^2)`` over the non-batch dims.
    ``pred``, ``target``, ``reference``: ``(B, ...)``; ``weight``: ``(B,)``. Returns ``(B,)``.
    """
    acc = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    p, t, r = pred.to(acc), target.to(acc), reference.to(acc)
    w = weight.to(acc).reshape(-1, *([1] * (pred.ndim - 1)))  # (B, 1, ...)
    resid = (p - t) - w * (p - r)  # (B, ...)
    return (resid**2).reshape(resid.shape[0], -1).mean(dim=1)  # (B,)
