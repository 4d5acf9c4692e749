"""fp32 PyTorch reference for :func:`pref_core.ops.combine_guidance`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["combine_guidance_reference"]


def combine_guidance_reference(
    preds: Sequence[torch.Tensor] | torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """``y = sum_k w_k * pred_k`` in float32, returned in the predictions' dtype.

    ``preds``: K tensors ``(B, ...)`` or one ``(K, B, ...)`` tensor. ``weights``: K floats, or a
    ``(K,)`` / ``(K, B)`` tensor (per-sample weights broadcast over the non-batch dims).
    """
    preds = list(preds.unbind(0)) if isinstance(preds, torch.Tensor) else list(preds)
    acc = torch.float64 if any(p.dtype == torch.float64 for p in preds) else torch.float32
    out = None
    for k, pred in enumerate(preds):
        w = weights[k]
        if isinstance(w, torch.Tensor):
            w = w.to(acc)
            if w.ndim == 1:  # (B,) per-sample weight
                w = w.reshape(-1, *([1] * (pred.ndim - 1)))
        term = w * pred.to(acc)  # (B, ...)
        out = term if out is None else out + term
    return out.to(preds[0].dtype)
