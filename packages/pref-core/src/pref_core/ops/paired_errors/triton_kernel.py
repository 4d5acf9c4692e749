"""Triton kernels for :func:`pref_core.ops.paired_errors` (imports triton; load lazily).

Forward: one pass over the six ``(B, D)`` inputs; every program sums the squared errors of one
segment of one sample for all four (prediction, target) pairs and writes four partials. Backward:
one elementwise pass that reads policy and target and writes the two policy gradients.
"""

from __future__ import annotations

import torch
import triton.language as tl

from pref_core.ops._triton_utils import lazy_jit, tl_dtype
from pref_core.ops._utils import as_rows, compute_dtype, elementwise_geometry, reduction_geometry

__all__ = ["PairedErrorsTriton"]


@lazy_jit
def _paired_errors_fwd_kernel(
    pw_ptr,
    pl_ptr,
    rw_ptr,
    rl_ptr,
    tw_ptr,
    tgt_l_ptr,
    partial_ptr,  # (4, B, S) acc: per-segment sums of squared errors
    stride_pw,
    stride_pl,
    stride_rw,
    stride_rl,
    stride_tw,
    stride_tl,
    n_programs,  # B * S
    D,
    S,
    tiles_per_segment,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = (pid // S).to(tl.int64)
    seg = pid % S
    pw_ptr += row * stride_pw
    pl_ptr += row * stride_pl
    rw_ptr += row * stride_rw
    rl_ptr += row * stride_rl
    tw_ptr += row * stride_tw
    tgt_l_ptr += row * stride_tl

    acc_pw = tl.zeros([BLOCK], ACC)
    acc_pl = tl.zeros([BLOCK], ACC)
    acc_rw = tl.zeros([BLOCK], ACC)
    acc_rl = tl.zeros([BLOCK], ACC)
    start = seg * tiles_per_segment * BLOCK
    for i in range(0, tiles_per_segment):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < D
        # Each target is loaded once and shared by the policy and the reference error.
        tw = tl.load(tw_ptr + offs, mask=mask, other=0.0).to(ACC)
        t_l = tl.load(tgt_l_ptr + offs, mask=mask, other=0.0).to(ACC)
        e = tl.load(pw_ptr + offs, mask=mask, other=0.0).to(ACC) - tw
        acc_pw += e * e
        e = tl.load(pl_ptr + offs, mask=mask, other=0.0).to(ACC) - t_l
        acc_pl += e * e
        e = tl.load(rw_ptr + offs, mask=mask, other=0.0).to(ACC) - tw
        acc_rw += e * e
        e = tl.load(rl_ptr + offs, mask=mask, other=0.0).to(ACC) - t_l
        acc_rl += e * e

    tl.store(partial_ptr + pid, tl.sum(acc_pw, axis=0))
    tl.store(partial_ptr + n_programs + pid, tl.sum(acc_pl, axis=0))
    tl.store(partial_ptr + 2 * n_programs + pid, tl.sum(acc_rw, axis=0))
    tl.store(partial_ptr + 3 * n_programs + pid, tl.sum(acc_rl, axis=0))


@lazy_jit
def _paired_errors_bwd_kernel(
    pw_ptr,
    pl_ptr,
    tw_ptr,
    tgt_l_ptr,
    gpw_ptr,  # (B, D) policy_w dtype, contiguous
    gpl_ptr,  # (B, D) policy_l dtype, contiguous
    scale_ptr,  # (2, B) acc: upstream grad * 2 / D
    stride_pw,
    stride_pl,
    stride_tw,
    stride_tl,
    B,
    D,
    tiles,
    NEED_W: tl.constexpr,
    NEED_L: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // tiles
    offs = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    row64 = row.to(tl.int64)
    if NEED_W:
        scale = tl.load(scale_ptr + row)
        p = tl.load(pw_ptr + row64 * stride_pw + offs, mask=mask, other=0.0).to(ACC)
        t = tl.load(tw_ptr + row64 * stride_tw + offs, mask=mask, other=0.0).to(ACC)
        g = scale * (p - t)
        tl.store(gpw_ptr + row64 * D + offs, g.to(gpw_ptr.dtype.element_ty), mask=mask)
    if NEED_L:
        scale = tl.load(scale_ptr + B + row)
        p = tl.load(pl_ptr + row64 * stride_pl + offs, mask=mask, other=0.0).to(ACC)
        t = tl.load(tgt_l_ptr + row64 * stride_tl + offs, mask=mask, other=0.0).to(ACC)
        g = scale * (p - t)
        tl.store(gpl_ptr + row64 * D + offs, g.to(gpl_ptr.dtype.element_ty), mask=mask)


class PairedErrorsTriton(torch.autograd.Function):
    """Triton version of :class:`~pref_core.ops.paired_errors.fallback.PairedErrorsFunction`:
    six ``(B, ...)`` tensors -> ``(4, B)`` per-sample mean squared errors."""

    @staticmethod
    def forward(ctx, policy_w, policy_l, reference_w, reference_l, target_w, target_l):
        inputs = (policy_w, policy_l, reference_w, reference_l, target_w, target_l)
        acc = compute_dtype(*inputs)
        batch, d = policy_w.shape[0], policy_w[0].numel()
        rows = [as_rows(x) for x in inputs]
        block, segments, tiles_per_segment = reduction_geometry(batch, d)
        n_programs = batch * segments
        partial = torch.empty((4, batch, segments), dtype=acc, device=policy_w.device)
        _paired_errors_fwd_kernel[(n_programs,)](
            *(x for x, _ in rows),
            partial,
            *(stride for _, stride in rows),
            n_programs,
            d,
            segments,
            tiles_per_segment,
            ACC=tl_dtype(acc),
            BLOCK=block,
        )
        out = partial.sum(dim=2).div_(d)  # (4, B)
        ctx.save_for_backward(policy_w, policy_l, target_w, target_l)
        ctx.acc = acc
        return out

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (4, B)
        policy_w, policy_l, target_w, target_l = ctx.saved_tensors
        need_w, need_l = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_w or need_l):
            return (None,) * 6
        batch, d = policy_w.shape[0], policy_w[0].numel()
        scale = (grad_out[:2].to(ctx.acc) * (2.0 / d)).contiguous()  # (2, B)
        (pw, s_pw), (pl, s_pl) = as_rows(policy_w), as_rows(policy_l)
        (tw, s_tw), (t_l, s_tl) = as_rows(target_w), as_rows(target_l)
        # An unneeded gradient gets no buffer; its pointer slot holds an input that is never read.
        grad_w = torch.empty(pw.shape, dtype=pw.dtype, device=pw.device) if need_w else pw
        grad_l = torch.empty(pl.shape, dtype=pl.dtype, device=pl.device) if need_l else pl
        block, tiles = elementwise_geometry(batch, d)
        _paired_errors_bwd_kernel[(batch * tiles,)](
            pw,
            pl,
            tw,
            t_l,
            grad_w,
            grad_l,
            scale,
            s_pw,
            s_pl,
            s_tw,
            s_tl,
            batch,
            d,
            tiles,
            NEED_W=need_w,
            NEED_L=need_l,
            ACC=tl_dtype(ctx.acc),
            BLOCK=block,
        )
        return (grad_w if need_w else None), (grad_l if need_l else None), None, None, None, None
