"""Exact PyTorch fallback for :func:`pref_core.ops.dspo_residual`.

Saves only the inputs; backward recomputes the residual in float32 and computes only the
gradients that are needed.
"""

from __future__ import annotations

import torch

from pref_core.ops._utils import compute_dtype, per_sample_sum, per_sample_view

__all__ = ["DSPOResidualFunction"]


def _residual(pred, target, reference, weight, acc):
    """``(r, pred - reference)`` in ``acc`` with ``r = (pred - target) - w * (pred - reference)``."""
    w = per_sample_view(weight.to(acc), pred.ndim)  # (B, 1, ...)
    p = pred.to(acc)
    p_minus_ref = p - reference  # (B, ...) acc
    r = (p - target).sub_(p_minus_ref * w)  # (B, ...) acc
    return r, p_minus_ref


class DSPOResidualFunction(torch.autograd.Function):
    """``(pred, target, reference, weight) -> (B,)`` DSPO residual loss per sample."""

    @staticmethod
    def forward(ctx, pred, target, reference, weight):
        acc = compute_dtype(pred, target, reference)
        r, _ = _residual(pred, target, reference, weight, acc)
        out = per_sample_sum(r.square_()).div_(pred[0].numel())  # (B,)
        ctx.save_for_backward(pred, target, reference, weight)
        ctx.acc = acc
        return out

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (B,)
        pred, target, reference, weight = ctx.saved_tensors
        need_pred, need_target, need_ref, need_w = ctx.needs_input_grad
        if not (need_pred or need_target or need_ref or need_w):
            return None, None, None, None
        acc = ctx.acc
        r, p_minus_ref = _residual(pred, target, reference, weight, acc)
        scale = grad_out.to(acc) * (2.0 / pred[0].numel())  # (B,): g * 2 / D
        w = weight.to(acc)
        ndim = pred.ndim
        grad_w = None
        if need_w:
            grad_w = (-scale * per_sample_sum(r * p_minus_ref)).to(weight.dtype)
        del p_minus_ref
        grad_pred = grad_target = grad_ref = None
        if need_pred:
            grad_pred = (r * per_sample_view(scale * (1.0 - w), ndim)).to(pred.dtype)
        if need_target:
            grad_target = (r * per_sample_view(-scale, ndim)).to(target.dtype)
        if need_ref:
            grad_ref = (r * per_sample_view(scale * w, ndim)).to(reference.dtype)
        return grad_pred, grad_target, grad_ref, grad_w
