"""Triton kernels for :func:`pref_core.ops.dspo_residual` (imports triton; load lazily).

Forward: per-sample sums of the squared residual over ``(B, segments)`` programs. Backward: the
same grid recomputes the residual, writes the requested elementwise gradients and, for the
weight gradient, a per-segment partial of ``sum r * (pred - reference)``; the partials are
summed by torch, so there are no atomics and the result is reproducible.
"""

from __future__ import annotations

import torch
import triton.language as tl

from pref_core.ops._triton_utils import lazy_jit, tl_dtype
from pref_core.ops._utils import as_rows, compute_dtype, reduction_geometry

__all__ = ["DSPOResidualTriton"]


@lazy_jit
def _dspo_residual_fwd_kernel(
    pred_ptr,
    target_ptr,
    ref_ptr,
    w_ptr,  # (B,) acc
    partial_ptr,  # (B, S) acc
    stride_pred,
    stride_target,
    stride_ref,
    D,
    S,
    tiles_per_segment,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // S
    seg = pid % S
    row64 = row.to(tl.int64)
    pred_ptr += row64 * stride_pred
    target_ptr += row64 * stride_target
    ref_ptr += row64 * stride_ref
    w = tl.load(w_ptr + row)
    acc = tl.zeros([BLOCK], ACC)
    start = seg * tiles_per_segment * BLOCK
    for i in range(0, tiles_per_segment):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < D
        p = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(ACC)
        t = tl.load(target_ptr + offs, mask=mask, other=0.0).to(ACC)
        ref = tl.load(ref_ptr + offs, mask=mask, other=0.0).to(ACC)
        r = (p - t) - w * (p - ref)
        acc += r * r
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@lazy_jit
def _dspo_residual_bwd_kernel(
    pred_ptr,
    target_ptr,
    ref_ptr,
    w_ptr,  # (B,) acc
    scale_ptr,  # (B,) acc: upstream grad * 2 / D
    grad_pred_ptr,  # (B, D) contiguous, pred dtype
    grad_target_ptr,  # (B, D) contiguous, target dtype
    grad_ref_ptr,  # (B, D) contiguous, reference dtype
    partial_ptr,  # (B, S) acc: partial sums of r * (pred - reference)
    stride_pred,
    stride_target,
    stride_ref,
    D,
    S,
    tiles_per_segment,
    NEED_PRED: tl.constexpr,
    NEED_TARGET: tl.constexpr,
    NEED_REF: tl.constexpr,
    NEED_W: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // S
    seg = pid % S
    row64 = row.to(tl.int64)
    pred_ptr += row64 * stride_pred
    target_ptr += row64 * stride_target
    ref_ptr += row64 * stride_ref
    grad_pred_ptr += row64 * D
    grad_target_ptr += row64 * D
    grad_ref_ptr += row64 * D
    w = tl.load(w_ptr + row)
    scale = tl.load(scale_ptr + row)
    acc = tl.zeros([BLOCK], ACC)
    start = seg * tiles_per_segment * BLOCK
    for i in range(0, tiles_per_segment):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < D
        p = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(ACC)
        t = tl.load(target_ptr + offs, mask=mask, other=0.0).to(ACC)
        ref = tl.load(ref_ptr + offs, mask=mask, other=0.0).to(ACC)
        p_minus_ref = p - ref
        r = (p - t) - w * p_minus_ref
        if NEED_PRED:
            g = (scale * (1.0 - w)) * r
            tl.store(grad_pred_ptr + offs, g.to(grad_pred_ptr.dtype.element_ty), mask=mask)
        if NEED_TARGET:
            g = -scale * r
            tl.store(grad_target_ptr + offs, g.to(grad_target_ptr.dtype.element_ty), mask=mask)
        if NEED_REF:
            g = (scale * w) * r
            tl.store(grad_ref_ptr + offs, g.to(grad_ref_ptr.dtype.element_ty), mask=mask)
        if NEED_W:
            acc += r * p_minus_ref
    if NEED_W:
        tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


class DSPOResidualTriton(torch.autograd.Function):
    """Triton version of :class:`~pref_core.ops.dspo_residual.fallback.DSPOResidualFunction`:
    ``(pred, target, reference, weight) -> (B,)``."""

    @staticmethod
    def forward(ctx, pred, target, reference, weight):
        acc = compute_dtype(pred, target, reference)
        batch, d = pred.shape[0], pred[0].numel()
        (p, s_p), (t, s_t), (ref, s_r) = as_rows(pred), as_rows(target), as_rows(reference)
        w = weight.to(acc).contiguous()
        block, segments, tiles_per_segment = reduction_geometry(batch, d)
        partial = torch.empty((batch, segments), dtype=acc, device=pred.device)
        _dspo_residual_fwd_kernel[(batch * segments,)](
            p,
            t,
            ref,
            w,
            partial,
            s_p,
            s_t,
            s_r,
            d,
            segments,
            tiles_per_segment,
            ACC=tl_dtype(acc),
            BLOCK=block,
        )
        ctx.save_for_backward(pred, target, reference, weight)
        ctx.acc = acc
        return partial.sum(dim=1).div_(d)  # (B,)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (B,)
        pred, target, reference, weight = ctx.saved_tensors
        need_pred, need_target, need_ref, need_w = ctx.needs_input_grad
        if not (need_pred or need_target or need_ref or need_w):
            return None, None, None, None
        acc = ctx.acc
        batch, d = pred.shape[0], pred[0].numel()
        (p, s_p), (t, s_t), (ref, s_r) = as_rows(pred), as_rows(target), as_rows(reference)
        w = weight.to(acc).contiguous()
        scale = (grad_out.to(acc) * (2.0 / d)).contiguous()  # (B,)
        block, segments, tiles_per_segment = reduction_geometry(batch, d)

        def grad_buffer(x: torch.Tensor, needed: bool) -> torch.Tensor:
            # Slots of gradients that are not needed hold an input that the kernel never touches.
            return torch.empty(x.shape, dtype=x.dtype, device=x.device) if needed else p

        grad_pred = grad_buffer(pred, need_pred)
        grad_target = grad_buffer(target, need_target)
        grad_ref = grad_buffer(reference, need_ref)
        partial = torch.empty((batch, segments), dtype=acc, device=pred.device) if need_w else w
        _dspo_residual_bwd_kernel[(batch * segments,)](
            p,
            t,
            ref,
            w,
            scale,
            grad_pred,
            grad_target,
            grad_ref,
            partial,
            s_p,
            s_t,
            s_r,
            d,
            segments,
            tiles_per_segment,
            NEED_PRED=need_pred,
            NEED_TARGET=need_target,
            NEED_REF=need_ref,
            NEED_W=need_w,
            ACC=tl_dtype(acc),
            BLOCK=block,
        )
        grad_w = (-scale * partial.sum(dim=1)).to(weight.dtype) if need_w else None
        return (
            grad_pred if need_pred else None,
            grad_target if need_target else None,
            grad_ref if need_ref else None,
            grad_w,
        )
