"""Triton kernels for :func:`pref_core.ops.noise_and_target` (imports triton; load lazily).

Forward reads ``x0`` and ``noise`` once and writes both ``x_t`` and the target. Backward reads
the two upstream gradients once and writes the gradients of ``x0`` and ``noise``. Both are the
same kernel with different coefficients: the op is a per-sample 2x2 linear map
``[x_t; target] = [[a, b], [c, d]] [x0; noise]`` and its backward is the transposed map.
"""

from __future__ import annotations

import torch
import triton.language as tl

from pref_core.ops._triton_utils import lazy_jit, tl_dtype
from pref_core.ops._utils import as_rows, compute_dtype, elementwise_geometry

__all__ = ["NoiseAndTargetTriton"]


@lazy_jit
def _linear2x2_kernel(
    u_ptr,
    v_ptr,
    out0_ptr,  # (B, D) contiguous: m00 * u + m01 * v
    out1_ptr,  # (B, D) contiguous: m10 * u + m11 * v
    coeff_ptr,  # (4, B) acc: rows m00, m01, m10, m11
    stride_u,
    stride_v,
    B,
    D,
    tiles,
    HAS_U: tl.constexpr,
    HAS_V: tl.constexpr,
    WRITE0: tl.constexpr,
    WRITE1: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // tiles
    offs = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    row64 = row.to(tl.int64)
    if HAS_U:
        u = tl.load(u_ptr + row64 * stride_u + offs, mask=mask, other=0.0).to(ACC)
    else:
        u = tl.zeros([BLOCK], ACC)
    if HAS_V:
        v = tl.load(v_ptr + row64 * stride_v + offs, mask=mask, other=0.0).to(ACC)
    else:
        v = tl.zeros([BLOCK], ACC)
    dst = row64 * D + offs
    if WRITE0:
        m00 = tl.load(coeff_ptr + row)
        m01 = tl.load(coeff_ptr + B + row)
        tl.store(out0_ptr + dst, (m00 * u + m01 * v).to(out0_ptr.dtype.element_ty), mask=mask)
    if WRITE1:
        m10 = tl.load(coeff_ptr + 2 * B + row)
        m11 = tl.load(coeff_ptr + 3 * B + row)
        tl.store(out1_ptr + dst, (m10 * u + m11 * v).to(out1_ptr.dtype.element_ty), mask=mask)


def _launch(u, v, coeffs, out0, out1, batch, d, acc):
    """Run the 2x2 map on ``(u, v)``; either input may be None (zero), either output None."""
    present = u if u is not None else v
    (u_rows, stride_u) = as_rows(u) if u is not None else (present, 0)
    (v_rows, stride_v) = as_rows(v) if v is not None else (present, 0)
    block, tiles = elementwise_geometry(batch, d)
    _linear2x2_kernel[(batch * tiles,)](
        u_rows,
        v_rows,
        out0 if out0 is not None else present,
        out1 if out1 is not None else present,
        coeffs,
        stride_u,
        stride_v,
        batch,
        d,
        tiles,
        HAS_U=u is not None,
        HAS_V=v is not None,
        WRITE0=out0 is not None,
        WRITE1=out1 is not None,
        ACC=tl_dtype(acc),
        BLOCK=block,
    )


class NoiseAndTargetTriton(torch.autograd.Function):
    """Triton version of :class:`~pref_core.ops.noising.fallback.NoiseAndTargetFunction`:
    ``(x0, noise, coeffs (4, B)) -> (x_t, target)``."""

    @staticmethod
    def forward(ctx, x0, noise, coeffs):
        acc = compute_dtype(x0, noise)
        batch, d = x0.shape[0], x0[0].numel()
        coeffs_acc = coeffs.to(acc).contiguous()  # (4, B): a, b, c, d
        x_t = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
        target = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
        _launch(x0, noise, coeffs_acc, x_t, target, batch, d, acc)
        ctx.save_for_backward(coeffs)
        ctx.acc, ctx.x0_dtype, ctx.noise_dtype = acc, x0.dtype, noise.dtype
        ctx.set_materialize_grads(False)
        return x_t, target

    @staticmethod
    def backward(ctx, grad_x_t, grad_target):
        (coeffs,) = ctx.saved_tensors
        need_x0, need_noise = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        present = grad_x_t if grad_x_t is not None else grad_target
        if present is None or not (need_x0 or need_noise):
            return None, None, None
        a, b, c, d = coeffs.to(ctx.acc).unbind(0)
        # Transposed map: grad_x0 = a g_xt + c g_target, grad_noise = b g_xt + d g_target.
        coeffs_t = torch.stack([a, c, b, d]).contiguous()
        batch, numel = present.shape[0], present[0].numel()
        device = present.device
        grad_x0 = torch.empty(present.shape, dtype=ctx.x0_dtype, device=device) if need_x0 else None
        grad_noise = (
            torch.empty(present.shape, dtype=ctx.noise_dtype, device=device) if need_noise else None
        )
        _launch(grad_x_t, grad_target, coeffs_t, grad_x0, grad_noise, batch, numel, ctx.acc)
        return grad_x0, grad_noise, None
