"""Public entry point of the guidance-combination op."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from pref_core.ops._backend import resolve_backend
from pref_core.ops._utils import check_same_shape
from pref_core.ops.guidance.fallback import CombineGuidanceFunction

__all__ = ["combine_guidance"]

_OP = "combine_guidance"


def _normalise_weights(weights, num: int, batch: int, like: torch.Tensor, acc: torch.dtype):
    """K floats -> tuple of floats; a (K,) / (K, B) tensor -> (K, 1) / (K, B) in ``acc``."""
    if isinstance(weights, torch.Tensor):
        if weights.requires_grad:
            raise ValueError(
                f"{_OP}: weights require grad, but guidance weights are not differentiable "
                "here; pass weights.detach()"
            )
        if not weights.is_floating_point():
            raise TypeError(f"{_OP}: weights must be a floating-point tensor, got {weights.dtype}")
        if weights.device != like.device:
            raise ValueError(
                f"{_OP}: weights are on {weights.device} but the predictions are on "
                f"{like.device}; move them with .to({str(like.device)!r}) or pass Python floats"
            )
        if weights.shape == (num,):
            return weights.to(acc).reshape(num, 1)
        if weights.shape == (num, batch):
            return weights.to(acc)
        raise ValueError(
            f"{_OP}: a weights tensor must have shape ({num},) or ({num}, {batch}) for {num} "
            f"predictions of batch size {batch}, got {tuple(weights.shape)}"
        )
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(
            f"{_OP}: weights must be a sequence of floats or a tensor, got {type(weights).__name__}"
        )
    if len(weights) != num:
        raise ValueError(f"{_OP}: got {len(weights)} weights for {num} predictions")
    for w in weights:
        if not isinstance(w, numbers.Real) or isinstance(w, bool):
            raise TypeError(
                f"{_OP}: weights must be real numbers (use a tensor for per-sample weights), "
                f"got {type(w).__name__}"
            )
    return tuple(float(w) for w in weights)


def combine_guidance(
    preds: Sequence[torch.Tensor] | torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Weighted sum of model predictions, ``y = sum_k w_k * pred_k``, in one pass.

    Covers classifier-free guidance (Ho & Salimans 2022), ``y = (1 + s) eps(c) - s eps(0)``:
    ``combine_guidance([eps_c, eps_u], [1 + s, -s])``, and the three-term guidance of CHATS
    (Eq. 16), ``y = (1 + s) eps+(c) + s*alpha eps-(c) - s(1 + alpha) eps-(0)``:
    ``combine_guidance([eps_pos_c, eps_neg_c, eps_neg_u], [1 + s, s * a, -s * (1 + a)])``.

    Args:
        preds: K tensors of one shape and dtype ``(B, ...)``, or one stacked ``(K, B, ...)``
            tensor (e.g. the output of a batched CFG forward reshaped to ``(K, B, ...)``).
        weights: K Python floats; or a ``(K,)`` tensor; or a ``(K, B)`` tensor of per-sample
            weights (e.g. per-sample guidance scales). Weights are not differentiable.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or ``None`` (``$PREF_CORE_KERNELS``).

    Returns:
        ``(B, ...)`` in the predictions' dtype; the sum is accumulated in float32 (float64 for
        float64 inputs) and rounded once. Gradients flow to the predictions,
        ``grad_pred_k = w_k * grad_y``; nothing but the weights is saved for backward.
    """
    if isinstance(preds, torch.Tensor):
        if preds.ndim < 2:
            raise ValueError(
                f"{_OP}: a stacked preds tensor must have shape (K, B, ...), "
                f"got {tuple(preds.shape)}"
            )
        terms = list(preds.unbind(0))
        stacked, inputs = True, (preds,)
    else:
        terms = list(preds)
        stacked, inputs = False, tuple(terms)
    if not terms:
        raise ValueError(f"{_OP}: need at least one prediction")
    batch, _ = check_same_shape(_OP, {f"preds[{k}]": p for k, p in enumerate(terms)})
    dtypes = {p.dtype for p in terms}
    if len(dtypes) > 1:
        raise ValueError(
            f"{_OP}: predictions must share one dtype (the output's), got "
            f"{sorted(str(d) for d in dtypes)}"
        )
    acc = torch.float64 if terms[0].dtype == torch.float64 else torch.float32
    w = _normalise_weights(weights, len(terms), batch, terms[0], acc)
    if resolve_backend(backend, *inputs) == "triton":
        from pref_core.ops.guidance.triton_kernel import CombineGuidanceTriton

        return CombineGuidanceTriton.apply(w, stacked, *inputs)
    return CombineGuidanceFunction.apply(w, stacked, *inputs)
