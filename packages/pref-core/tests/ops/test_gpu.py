"""Compiled Triton kernels on a CUDA GPU at realistic latent sizes (skipped without a GPU).

The interpreter tests cover the kernels' logic on small shapes; these check the compiled code at
the sizes training uses: many tiles and segments per sample, bf16 latents, and bitwise
reproducibility of the per-sample reductions (no atomics).
"""

from __future__ import annotations

import pytest
import torch

from pref_core.ops import combine_guidance, dspo_residual, noise_and_target, paired_errors
from pref_core.ops.dspo_residual import dspo_residual_reference
from pref_core.ops.guidance import combine_guidance_reference
from pref_core.ops.noising import noise_and_target_reference
from pref_core.ops.paired_errors import paired_errors_reference

pytestmark = pytest.mark.gpu

LATENTS = [(8, 4, 64, 64), (4, 4, 128, 128), (2, 4096, 64), (3, 16, 45, 37)]
IDS = ["sd15", "sdxl", "flux-packed", "odd"]


def _randn(shape, dtype, device, n, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", LATENTS, ids=IDS)
def test_paired_errors_cuda(cuda, shape, dtype, close):
    xs = _randn(shape, dtype, cuda, 6)
    xs[0].requires_grad_()
    xs[1].requires_grad_()
    out = paired_errors(*xs, backend="triton")
    again = paired_errors(*xs, backend="triton")
    expected = paired_errors_reference(*xs)
    for got, rerun, want in zip(out, again, expected):
        assert torch.equal(got, rerun), "per-sample reduction must be bitwise reproducible"
        close(got, want, dtype, reduction=True)
    grads = torch.autograd.grad(out[0].sum() + 2 * out[1].sum(), xs[:2])
    want = torch.autograd.grad(expected[0].sum() + 2 * expected[1].sum(), xs[:2])
    for g, w in zip(grads, want):
        close(g, w, dtype)


@pytest.mark.parametrize("k", [2, 3, 6])
@pytest.mark.parametrize("shape", LATENTS, ids=IDS)
def test_combine_guidance_cuda(cuda, shape, k, close):
    preds = [p.requires_grad_() for p in _randn(shape, torch.bfloat16, cuda, k)]
    weights = torch.randn(k, shape[0], device=cuda)
    out = combine_guidance(preds, weights, backend="triton")
    expected = combine_guidance_reference(preds, weights)
    close(out, expected, torch.bfloat16)
    upstream = torch.randn_like(out)
    for g, w in zip(
        torch.autograd.grad(out, preds, upstream),
        torch.autograd.grad(expected, preds, upstream),
    ):
        close(g, w, torch.bfloat16)


@pytest.mark.parametrize("shape", LATENTS, ids=IDS)
def test_dspo_residual_cuda(cuda, shape, close):
    pred, target, reference = _randn(shape, torch.bfloat16, cuda, 3)
    weight = torch.rand(shape[0], device=cuda)
    inputs = [pred.requires_grad_(), target, reference, weight.requires_grad_()]
    out = dspo_residual(*inputs, backend="triton")
    assert torch.equal(out, dspo_residual(*inputs, backend="triton"))
    expected = dspo_residual_reference(*inputs)
    close(out, expected, torch.bfloat16, reduction=True)
    got = torch.autograd.grad(out.sum(), [pred, weight])
    want = torch.autograd.grad(expected.sum(), [pred, weight])
    close(got[0], want[0], torch.bfloat16)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", LATENTS, ids=IDS)
def test_noise_and_target_cuda(cuda, shape, close):
    x0, noise = (t.requires_grad_() for t in _randn(shape, torch.bfloat16, cuda, 2))
    ab = torch.rand(shape[0], device=cuda, dtype=torch.float64)
    coeffs = (ab.sqrt(), (1 - ab).sqrt(), -(1 - ab).sqrt(), ab.sqrt())
    out = noise_and_target(x0, noise, *coeffs, backend="triton")
    expected = noise_and_target_reference(x0, noise, *coeffs)
    upstream = [torch.randn_like(o) for o in out]
    for got, want in zip(out, expected):
        close(got, want, torch.bfloat16)
    for g, w in zip(
        torch.autograd.grad(out, [x0, noise], upstream),
        torch.autograd.grad(expected, [x0, noise], upstream),
    ):
        close(g, w, torch.bfloat16)
