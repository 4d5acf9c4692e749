"""noise_and_target: both implementations against the fp32 reference, plus independent checks."""

from __future__ import annotations

import math

import pytest
import torch

from pref_core.ops import noise_and_target
from pref_core.ops.noising import NoiseAndTargetFunction, noise_and_target_reference


def _coefficients(kind, batch, device):
    """(a, b, c, d) for each parameterisation, from alpha-bar / sigma drawn in (0, 1), float64
    as a schedule would hand them over."""
    gen = torch.Generator().manual_seed(11)
    u = (0.05 + 0.9 * torch.rand(batch, generator=gen, dtype=torch.float64)).to(device)
    sa, sb = u.sqrt(), (1 - u).sqrt()
    ones, zeros = torch.ones_like(u), torch.zeros_like(u)
    return {
        "epsilon": (sa, sb, zeros, ones),
        "v": (sa, sb, -sb, sa),
        "x0": (sa, sb, ones, zeros),
        "flow": (1 - u, u, -ones, ones),
    }[kind]


def _inputs(shape, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0, noise = (torch.randn(shape, generator=gen).to(device, dtype) for _ in "xn")
    return x0.requires_grad_(), noise.requires_grad_()


def _check(x0, noise, coeffs, backend, close, dtype, *, use=(True, True)):
    expected = noise_and_target_reference(x0, noise, *coeffs)
    out = noise_and_target(x0, noise, *coeffs, backend=backend)
    for got, want in zip(out, expected):
        assert got.dtype == x0.dtype and got.shape == x0.shape
        close(got, want, dtype)
    gen = torch.Generator().manual_seed(2)
    upstream = [torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype) for _ in out]
    used = [i for i in range(2) if use[i]]
    wrt = [x for x in (x0, noise) if x.requires_grad]
    got = torch.autograd.grad([out[i] for i in used], wrt, [upstream[i] for i in used])
    want = torch.autograd.grad([expected[i] for i in used], wrt, [upstream[i] for i in used])
    for g, w, x in zip(got, want, wrt):
        assert g.dtype == x.dtype
        close(g, w, x.dtype)


@pytest.mark.parametrize("kind", ["epsilon", "v", "x0", "flow"])
def test_matches_reference(backend, device, shape, dtype, close, kind):
    x0, noise = _inputs(shape, dtype, device)
    _check(x0, noise, _coefficients(kind, shape[0], device), backend, close, dtype)


@pytest.mark.parametrize("use", [(True, False), (False, True)], ids=["x_t-only", "target-only"])
def test_one_output_unused(backend, device, close, use):
    # The unused output's gradient arrives as None and is treated as zero.
    x0, noise = _inputs((3, 4, 17, 9), torch.float32, device)
    coeffs = _coefficients("v", 3, device)
    _check(x0, noise, coeffs, backend, close, torch.float32, use=use)


def test_only_noise_requires_grad(backend, device, close):
    x0, noise = _inputs((2, 3, 5), torch.float32, device)
    _check(x0.detach(), noise, _coefficients("flow", 2, device), backend, close, torch.float32)


def test_non_contiguous_and_mixed_dtype_inputs(backend, device, close):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 9, 4, generator=gen).to(device, torch.bfloat16).transpose(1, 2)
    noise = torch.randn(6, 4, 9, generator=gen).to(device)[::2]  # float32, strided batch
    x0.requires_grad_()
    noise.requires_grad_()
    _check(x0, noise, _coefficients("v", 3, device), backend, close, torch.bfloat16)


@pytest.mark.parametrize("backend", ["triton"], indirect=True)
def test_many_tiles(backend, device, small_tiles, close):
    small_tiles(16, 1)
    x0, noise = _inputs((3, 4, 17, 9), torch.float32, device)
    _check(x0, noise, _coefficients("x0", 3, device), backend, close, torch.float32)


def test_epsilon_and_flow_targets_are_exact(backend, device):
    # With (c, d) = (0, 1) the float32 target is exactly the noise; with (-1, 1) it is exactly
    # noise - x0 rounded once, as float32 subtraction gives.
    x0, noise = (t.detach() for t in _inputs((2, 4, 8, 8), torch.float32, device))
    _, target = noise_and_target(x0, noise, *_coefficients("epsilon", 2, device), backend=backend)
    assert torch.equal(target, noise)
    _, target = noise_and_target(x0, noise, *_coefficients("flow", 2, device), backend=backend)
    assert torch.equal(target, noise - x0)


def test_hand_computed_example(backend, device):
    # v-prediction at alpha-bar = 0.64: a = 0.8, b = 0.6, c = -0.6, d = 0.8. With x0 = 1 and
    # noise = 2: x_t = 0.8 + 1.2 = 2.0, v = -0.6 + 1.6 = 1.0. Upstream (g_xt, g_target) = (1, 1):
    # grad_x0 = a + c = 0.2, grad_noise = b + d = 1.4.
    x0 = torch.ones(1, 2, device=device, requires_grad=True)
    noise = torch.full((1, 2), 2.0, device=device, requires_grad=True)
    coeffs = [torch.tensor([v], dtype=torch.float64, device=device) for v in (0.8, 0.6, -0.6, 0.8)]
    x_t, v = noise_and_target(x0, noise, *coeffs, backend=backend)
    torch.testing.assert_close(x_t, torch.full_like(x_t, 2.0))
    torch.testing.assert_close(v, torch.full_like(v, 1.0))
    (x_t.sum() + v.sum()).backward()
    torch.testing.assert_close(x0.grad, torch.full_like(x0, 0.2))
    torch.testing.assert_close(noise.grad, torch.full_like(noise, 1.4))


def test_scalar_coefficients_broadcast(backend, device, close):
    # Rectified flow shares (c, d) = (-1, 1) across the batch: Python numbers are accepted.
    x0, noise = _inputs((3, 5), torch.float32, device)
    sigma = torch.tensor([0.1, 0.5, 0.9], device=device)
    coeffs = (1 - sigma, sigma, -1, torch.tensor(1.0, device=device))
    x_t, target = noise_and_target(x0, noise, *coeffs, backend=backend)
    close(x_t, (1 - sigma)[:, None] * x0 + sigma[:, None] * noise, torch.float32)
    close(target, noise - x0, torch.float32)


def test_gradcheck_float64(backend, device):
    gen = torch.Generator().manual_seed(0)
    x0, noise = (
        torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        for _ in "xn"
    )
    coeffs = torch.stack(_coefficients("v", 2, device))  # (4, B)
    if backend == "torch":
        fn = NoiseAndTargetFunction.apply
    else:
        from pref_core.ops.noising.triton_kernel import NoiseAndTargetTriton

        fn = NoiseAndTargetTriton.apply
    assert torch.autograd.gradcheck(lambda x, n: fn(x, n, coeffs), (x0, noise))


def test_saves_nothing_full_size(backend, device, saved_tensors):
    x0, noise = _inputs((2, 4, 8, 8), torch.float32, device)
    with saved_tensors() as rec:
        noise_and_target(x0, noise, *_coefficients("v", 2, device), backend=backend)
    # Linear in (x0, noise): backward needs only the (4, B) coefficients.
    assert rec.full_size_non_inputs([], batch=2) == []
    assert all(math.prod(t.shape) <= 8 for t in rec.saved)


def test_coefficients_requiring_grad_raise():
    x0, noise = _inputs((2, 3), torch.float32)
    a = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="a requires grad"):
        noise_and_target(x0, noise, a, 0.0, 0.0, 1.0)


def test_validation_errors():
    x0, noise = _inputs((2, 3), torch.float32)
    with pytest.raises(ValueError, match=r"noise has shape \(2, 4\)"):
        noise_and_target(x0, torch.randn(2, 4), 1.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"b must have shape \(2,\) or a scalar"):
        noise_and_target(x0, noise, 1.0, torch.ones(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="is on meta"):
        noise_and_target(x0, noise, torch.ones(2, device="meta"), 0.0, 0.0, 1.0)
