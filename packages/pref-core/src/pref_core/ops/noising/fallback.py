"""Exact PyTorch fallback for :func:`pref_core.ops.noise_and_target`.

The op is linear in ``(x0, noise)``, so backward needs only the ``(4, B)`` coefficients: nothing
full-size is saved.
"""

from __future__ import annotations

import torch

from pref_core.ops._utils import compute_dtype, per_sample_view

__all__ = ["NoiseAndTargetFunction"]


def _combine(u, v, cu, cv, acc, dtype):
    """``cu * u + cv * v`` in ``acc`` (``cu``, ``cv``: ``(B,)``), returned as ``dtype``.

    ``u`` or ``v`` may be None (treated as zero, e.g. an unused output's gradient).
    """
    out = None
    if u is not None:
        out = u.to(acc, copy=True).mul_(per_sample_view(cu, u.ndim))
    if v is not None:
        if out is None:
            out = v.to(acc, copy=True).mul_(per_sample_view(cv, v.ndim))
        else:
            out.addcmul_(v, per_sample_view(cv, v.ndim))
    return out.to(dtype)


class NoiseAndTargetFunction(torch.autograd.Function):
    """``(x0, noise, coeffs) -> (x_t, target)``; ``coeffs`` is a ``(4, B)`` tensor ``(a, b, c, d)``
    in the accumulation dtype and is not differentiable."""

    @staticmethod
    def forward(ctx, x0, noise, coeffs):
        acc = compute_dtype(x0, noise)
        a, b, c, d = coeffs.to(acc).unbind(0)
        x_t = _combine(x0, noise, a, b, acc, x0.dtype)
        target = _combine(x0, noise, c, d, acc, x0.dtype)
        ctx.save_for_backward(coeffs)
        ctx.acc, ctx.x0_dtype, ctx.noise_dtype = acc, x0.dtype, noise.dtype
        # An unused output gets a None gradient instead of a materialised full-size zero tensor.
        ctx.set_materialize_grads(False)
        return x_t, target

    @staticmethod
    def backward(ctx, grad_x_t, grad_target):
        (coeffs,) = ctx.saved_tensors
        need_x0, need_noise = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_x_t is None and grad_target is None:
            return None, None, None
        a, b, c, d = coeffs.to(ctx.acc).unbind(0)
        grad_x0 = grad_noise = None
        if need_x0:
            grad_x0 = _combine(grad_x_t, grad_target, a, c, ctx.acc, ctx.x0_dtype)
        if need_noise:
            grad_noise = _combine(grad_x_t, grad_target, b, d, ctx.acc, ctx.noise_dtype)
        return grad_x0, grad_noise, None
