"""Triton kernels for :func:`pref_core.ops.combine_guidance` (imports triton; load lazily).

One launch combines up to ``MAX_TERMS`` predictions (the pointer count is fixed; ``K`` is a
constexpr). Larger K chains launches through a float32 accumulator buffer, so the result is the
same sequential float32 sum as a single launch would compute.
"""

from __future__ import annotations

import torch
import triton.language as tl

from pref_core.ops._triton_utils import lazy_jit, tl_dtype
from pref_core.ops._utils import as_rows, elementwise_geometry

__all__ = ["MAX_TERMS", "CombineGuidanceTriton"]

MAX_TERMS = 4


@lazy_jit
def _weighted_sum_kernel(
    p0_ptr,
    p1_ptr,
    p2_ptr,
    p3_ptr,
    stride_p0,
    stride_p1,
    stride_p2,
    stride_p3,
    w_ptr,  # (K, B) acc, or (K, 1) read with stride_wb == 0; unused when SCALAR_W
    stride_wk,
    stride_wb,
    w0,
    w1,
    w2,
    w3,
    acc_ptr,  # (B, D) acc partial sum of the previous launch; unused unless HAS_ACC
    out_ptr,  # (B, D) contiguous: the output, or the acc buffer of a chained launch
    D,
    tiles,
    K: tl.constexpr,
    SCALAR_W: tl.constexpr,
    HAS_ACC: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // tiles
    offs = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    row64 = row.to(tl.int64)
    w_row = w_ptr + row * stride_wb
    if HAS_ACC:
        y = tl.load(acc_ptr + row64 * D + offs, mask=mask, other=0.0).to(ACC)
    else:
        y = tl.zeros([BLOCK], ACC)
    c = w0 if SCALAR_W else tl.load(w_row)
    y += c * tl.load(p0_ptr + row64 * stride_p0 + offs, mask=mask, other=0.0).to(ACC)
    if K > 1:
        c = w1 if SCALAR_W else tl.load(w_row + stride_wk)
        y += c * tl.load(p1_ptr + row64 * stride_p1 + offs, mask=mask, other=0.0).to(ACC)
    if K > 2:
        c = w2 if SCALAR_W else tl.load(w_row + 2 * stride_wk)
        y += c * tl.load(p2_ptr + row64 * stride_p2 + offs, mask=mask, other=0.0).to(ACC)
    if K > 3:
        c = w3 if SCALAR_W else tl.load(w_row + 3 * stride_wk)
        y += c * tl.load(p3_ptr + row64 * stride_p3 + offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + row64 * D + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@lazy_jit
def _scatter_grad_kernel(
    g_ptr,  # (B, D) upstream gradient
    stride_g,
    o0_ptr,  # (B, D) contiguous gradient buffers, one per term
    o1_ptr,
    o2_ptr,
    o3_ptr,
    w_ptr,
    stride_wk,
    stride_wb,
    w0,
    w1,
    w2,
    w3,
    D,
    tiles,
    K: tl.constexpr,
    SCALAR_W: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // tiles
    offs = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    row64 = row.to(tl.int64)
    w_row = w_ptr + row * stride_wb
    # The upstream gradient is read once per launch and fanned out to up to four outputs.
    g = tl.load(g_ptr + row64 * stride_g + offs, mask=mask, other=0.0).to(ACC)
    dst = row64 * D + offs
    c = w0 if SCALAR_W else tl.load(w_row)
    tl.store(o0_ptr + dst, (c * g).to(o0_ptr.dtype.element_ty), mask=mask)
    if K > 1:
        c = w1 if SCALAR_W else tl.load(w_row + stride_wk)
        tl.store(o1_ptr + dst, (c * g).to(o1_ptr.dtype.element_ty), mask=mask)
    if K > 2:
        c = w2 if SCALAR_W else tl.load(w_row + 2 * stride_wk)
        tl.store(o2_ptr + dst, (c * g).to(o2_ptr.dtype.element_ty), mask=mask)
    if K > 3:
        c = w3 if SCALAR_W else tl.load(w_row + 3 * stride_wk)
        tl.store(o3_ptr + dst, (c * g).to(o3_ptr.dtype.element_ty), mask=mask)


def _weight_args(weights, ks: list[int], acc: torch.dtype, device: torch.device):
    """Kernel arguments for the weights of terms ``ks``: ``(w, stride_k, stride_b, scalars, scalar)``.

    Python-float weights travel as scalar kernel arguments (no host-to-device copy), except for
    float64 accumulation, where Triton would round the scalars to float32.
    """
    if isinstance(weights, tuple) and acc == torch.float32:
        scalars = [weights[k] for k in ks] + [0.0] * (MAX_TERMS - len(ks))
        return None, 0, 0, scalars, True
    if isinstance(weights, tuple):
        w = torch.tensor([weights[k] for k in ks], dtype=acc, device=device).unsqueeze(1)
    else:
        # (len(ks), 1) or (len(ks), B); the common single-launch case needs no gather.
        w = weights if ks == list(range(weights.shape[0])) else weights[ks]
        w = w.contiguous()
    stride_b = w.stride(1) if w.shape[1] > 1 else 0
    return w, w.stride(0), stride_b, [0.0] * MAX_TERMS, False


def _groups(ks: list[int]) -> list[list[int]]:
    return [ks[i : i + MAX_TERMS] for i in range(0, len(ks), MAX_TERMS)]


class CombineGuidanceTriton(torch.autograd.Function):
    """Triton version of :class:`~pref_core.ops.guidance.fallback.CombineGuidanceFunction`
    (same arguments: ``(weights, stacked, *preds) -> y``)."""

    @staticmethod
    def forward(ctx, weights, stacked, *preds):
        terms = preds[0].unbind(0) if stacked else preds
        first = terms[0]
        dtype, device = first.dtype, first.device
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        batch, d = first.shape[0], first[0].numel()
        block, tiles = elementwise_geometry(batch, d)
        rows = [as_rows(p) for p in terms]
        out = torch.empty(first.shape, dtype=dtype, device=device)
        groups = _groups(list(range(len(terms))))
        buf = None
        if len(groups) > 1:
            buf = torch.empty(first.shape, dtype=acc, device=device)
        for i, ks in enumerate(groups):
            w, stride_wk, stride_wb, scalars, scalar = _weight_args(weights, ks, acc, device)
            ptrs = [rows[k][0] for k in ks] + [rows[ks[0]][0]] * (MAX_TERMS - len(ks))
            strides = [rows[k][1] for k in ks] + [0] * (MAX_TERMS - len(ks))
            last = i == len(groups) - 1
            _weighted_sum_kernel[(batch * tiles,)](
                *ptrs,
                *strides,
                w if w is not None else ptrs[0],
                stride_wk,
                stride_wb,
                *scalars,
                buf if buf is not None else out,
                out if last else buf,
                d,
                tiles,
                K=len(ks),
                SCALAR_W=scalar,
                HAS_ACC=i > 0,
                ACC=tl_dtype(acc),
                BLOCK=block,
            )
        ctx.stacked, ctx.acc, ctx.num = stacked, acc, len(terms)
        if isinstance(weights, torch.Tensor):
            ctx.save_for_backward(weights)  # (K, 1) or (K, B)
            ctx.weights = None
        else:
            ctx.weights = weights  # tuple of floats
        return out

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (B, ...)
        weights = ctx.saved_tensors[0] if ctx.saved_tensors else ctx.weights
        acc, num = ctx.acc, ctx.num
        needs = ctx.needs_input_grad[2:]
        batch, d = grad_out.shape[0], grad_out[0].numel()
        dtype, device = grad_out.dtype, grad_out.device
        g, stride_g = as_rows(grad_out)
        block, tiles = elementwise_geometry(batch, d)
        if ctx.stacked:
            if not needs[0]:
                return None, None, None
            stacked_grad = torch.empty((num, *grad_out.shape), dtype=dtype, device=device)
            outs = dict(enumerate(stacked_grad.unbind(0)))
            wanted = list(range(num))
        else:
            wanted = [k for k, need in enumerate(needs) if need]
            outs = {k: torch.empty(grad_out.shape, dtype=dtype, device=device) for k in wanted}
        for ks in _groups(wanted):
            w, stride_wk, stride_wb, scalars, scalar = _weight_args(weights, ks, acc, device)
            dsts = [outs[k] for k in ks] + [outs[ks[0]]] * (MAX_TERMS - len(ks))
            _scatter_grad_kernel[(batch * tiles,)](
                g,
                stride_g,
                *dsts,
                w if w is not None else g,
                stride_wk,
                stride_wb,
                *scalars,
                d,
                tiles,
                K=len(ks),
                SCALAR_W=scalar,
                ACC=tl_dtype(acc),
                BLOCK=block,
            )
        if ctx.stacked:
            return None, None, stacked_grad
        return None, None, *(outs.get(k) for k in range(num))
