"""Exact PyTorch fallback for :func:`pref_core.ops.combine_guidance`.

Accumulates ``sum_k w_k * pred_k`` into one float32 buffer in place (one full-size temporary,
whatever K is) and saves nothing but the weights: the gradient ``w_k * grad_y`` does not depend
on the predictions.
"""

from __future__ import annotations

import torch

from pref_core.ops._utils import per_sample_view

__all__ = ["CombineGuidanceFunction", "weight_for"]


def weight_for(weights, k: int, ndim: int, acc: torch.dtype):
    """Weight ``k`` as a float, or as a tensor broadcastable against ``(B, ...)``.

    ``weights`` is a tuple of floats or a ``(K, 1)`` / ``(K, B)`` tensor.
    """
    if isinstance(weights, tuple):
        return weights[k]
    return per_sample_view(weights[k].to(acc), ndim)


class CombineGuidanceFunction(torch.autograd.Function):
    """``(weights, stacked, *preds) -> y``.

    ``weights``: tuple of K floats or a non-differentiable ``(K, 1)`` / ``(K, B)`` tensor.
    ``stacked``: True when ``preds`` is one ``(K, B, ...)`` tensor, else K ``(B, ...)`` tensors.
    """

    @staticmethod
    def forward(ctx, weights, stacked, *preds):
        terms = preds[0].unbind(0) if stacked else preds
        dtype = terms[0].dtype
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        ndim = terms[0].ndim
        out = None
        for k, pred in enumerate(terms):
            w = weight_for(weights, k, ndim, acc)
            if out is None:
                out = pred.to(acc, copy=True).mul_(w)  # (B, ...) acc
            elif isinstance(w, float):
                out.add_(pred, alpha=w)
            else:
                out.addcmul_(pred, w)
        ctx.stacked, ctx.acc, ctx.num = stacked, acc, len(terms)
        if isinstance(weights, torch.Tensor):
            ctx.save_for_backward(weights)  # (K, 1) or (K, B)
            ctx.weights = None
        else:
            ctx.weights = weights  # tuple of floats
        return out.to(dtype)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (B, ...)
        weights = ctx.saved_tensors[0] if ctx.saved_tensors else ctx.weights
        acc, num = ctx.acc, ctx.num
        needs = ctx.needs_input_grad[2:]
        g = grad_out.to(acc)
        if ctx.stacked:
            if not needs[0]:
                return None, None, None
            grad = torch.empty((num, *grad_out.shape), dtype=grad_out.dtype, device=g.device)
            for k in range(num):
                grad[k].copy_(g * weight_for(weights, k, g.ndim, acc))
            return None, None, grad
        grads = [
            (g * weight_for(weights, k, g.ndim, acc)).to(grad_out.dtype) if need else None
            for k, need in enumerate(needs)
        ]
        return None, None, *grads
