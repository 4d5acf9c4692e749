"""combine_guidance: both implementations against the fp32 reference, plus independent checks."""

from __future__ import annotations

import pytest
import torch

from pref_core.ops import combine_guidance
from pref_core.ops.guidance import CombineGuidanceFunction, combine_guidance_reference


def _preds(k, shape, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(device, dtype).requires_grad_() for _ in range(k)]


def _weights(kind, k, batch, device):
    gen = torch.Generator().manual_seed(7)
    if kind == "floats":
        return [1.5 - 0.75 * i for i in range(k)]
    if kind == "per_term":
        return torch.randn(k, generator=gen).to(device)  # (K,)
    return torch.randn(k, batch, generator=gen).to(device)  # (K, B)


def _check(preds, weights, backend, close, dtype, *, stacked):
    gen = torch.Generator().manual_seed(3)
    upstream = torch.randn(preds[0].shape, generator=gen).to(preds[0].device, dtype)
    expected = combine_guidance_reference(preds, weights)
    want = torch.autograd.grad(expected, preds, upstream)
    if stacked:
        stack = torch.stack([p.detach() for p in preds]).requires_grad_()
        out = combine_guidance(stack, weights, backend=backend)
        (grad,) = torch.autograd.grad(out, stack, upstream)
        got = grad.unbind(0)
    else:
        out = combine_guidance(preds, weights, backend=backend)
        got = torch.autograd.grad(out, preds, upstream)
    assert out.dtype == dtype and out.shape == preds[0].shape
    close(out, expected, dtype)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        close(g, w, dtype)


@pytest.mark.parametrize("stacked", [False, True], ids=["list", "stacked"])
@pytest.mark.parametrize("kind", ["floats", "per_term", "per_sample"])
def test_matches_reference(backend, device, shape, dtype, close, kind, stacked):
    preds = _preds(3, shape, dtype, device)
    _check(preds, _weights(kind, 3, shape[0], device), backend, close, dtype, stacked=stacked)


@pytest.mark.parametrize("stacked", [False, True], ids=["list", "stacked"])
@pytest.mark.parametrize("kind", ["floats", "per_sample"])
@pytest.mark.parametrize("k", [1, 2, 4, 5, 9])
def test_any_number_of_terms(backend, device, close, k, kind, stacked):
    # The Triton kernel takes 4 pointers per launch: K = 5 and 9 chain launches through a
    # float32 accumulator and must give the same float32 sum.
    preds = _preds(k, (2, 3, 5, 7), torch.bfloat16, device)
    weights = _weights(kind, k, 2, device)
    _check(preds, weights, backend, close, torch.bfloat16, stacked=stacked)


def test_non_contiguous_inputs(backend, device, close):
    gen = torch.Generator().manual_seed(0)
    preds = [
        torch.randn(3, 9, 4, generator=gen).to(device).transpose(1, 2),
        torch.randn(6, 4, 9, generator=gen).to(device)[1::2],
        torch.randn(1, 4, 9, generator=gen).to(device).expand(3, 4, 9),
        torch.randn(3, 4, 18, generator=gen).to(device)[..., ::2],
        torch.randn(3, 4, 9, generator=gen).to(device),
    ]
    preds = [p.requires_grad_() if p.is_leaf else p for p in preds]
    weights = torch.randn(5, 3, generator=gen).to(device).t().contiguous().t()  # (K, B), strided
    _check(preds, weights, backend, close, torch.float32, stacked=False)


def test_cfg_hand_computed(backend, device):
    # Classifier-free guidance y = (1 + s) eps(c) - s eps(0) with s = 7.5:
    #   eps(c) = 2, eps(0) = 1  ->  8.5 * 2 - 7.5 * 1 = 9.5
    #   eps(c) = -1, eps(0) = 0.5 -> -8.5 - 3.75 = -12.25
    s = 7.5
    eps_c = torch.tensor([[2.0, -1.0]], device=device, requires_grad=True)
    eps_u = torch.tensor([[1.0, 0.5]], device=device, requires_grad=True)
    y = combine_guidance([eps_c, eps_u], [1 + s, -s], backend=backend)
    assert y.tolist() == [[9.5, -12.25]]
    y.sum().backward()
    assert eps_c.grad.tolist() == [[8.5, 8.5]]
    assert eps_u.grad.tolist() == [[-7.5, -7.5]]


def test_chats_three_term_hand_computed(backend, device):
    # CHATS Eq. 16, y = (1 + s) eps+(c) + s*alpha eps-(c) - s(1 + alpha) eps-(0), s = 2,
    # alpha = 0.5 -> weights (3, 1, -3). With eps+(c) = 1, eps-(c) = 2, eps-(0) = 3:
    #   y = 3 + 2 - 9 = -4.
    s, alpha = 2.0, 0.5
    preds = [torch.full((1, 4), v, device=device) for v in (1.0, 2.0, 3.0)]
    y = combine_guidance(preds, [1 + s, s * alpha, -s * (1 + alpha)], backend=backend)
    assert y.tolist() == [[-4.0] * 4]


def test_per_sample_guidance_scale_hand_computed(backend, device):
    # Two samples with their own CFG scales s = (1, 3): weights (K, B) = [[1 + s], [-s]].
    # eps(c) = 1, eps(0) = 0.5 everywhere: sample 0 -> 2 - 0.5 = 1.5; sample 1 -> 4 - 1.5 = 2.5.
    s = torch.tensor([1.0, 3.0], device=device)
    eps_c = torch.ones(2, 3, device=device)
    eps_u = torch.full((2, 3), 0.5, device=device)
    y = combine_guidance(torch.stack([eps_c, eps_u]), torch.stack([1 + s, -s]), backend=backend)
    assert y.tolist() == [[1.5] * 3, [2.5] * 3]


@pytest.mark.parametrize("stacked", [False, True], ids=["list", "stacked"])
@pytest.mark.parametrize("kind", ["floats", "per_sample"])
def test_gradcheck_float64(backend, device, kind, stacked):
    gen = torch.Generator().manual_seed(0)
    k = 6  # more than one Triton launch
    preds = [torch.randn(2, 3, generator=gen, dtype=torch.float64).to(device) for _ in range(k)]
    if kind == "floats":
        weights = tuple(1.0 - 0.4 * i for i in range(k))
    else:
        weights = torch.randn(k, 2, generator=gen, dtype=torch.float64).to(device)
    if backend == "torch":
        fn = CombineGuidanceFunction.apply
    else:
        from pref_core.ops.guidance.triton_kernel import CombineGuidanceTriton

        fn = CombineGuidanceTriton.apply
    if stacked:
        inputs = (torch.stack(preds).requires_grad_(),)
    else:
        inputs = tuple(p.requires_grad_() for p in preds)
    assert torch.autograd.gradcheck(lambda *p: fn(weights, stacked, *p), inputs)


def test_gradient_only_for_inputs_that_need_it(backend, device):
    preds = [torch.randn(2, 5, device=device) for _ in range(6)]
    preds[1].requires_grad_()
    preds[4].requires_grad_()
    y = combine_guidance(preds, [float(i) for i in range(6)], backend=backend)
    y.sum().backward()
    assert preds[1].grad.tolist() == [[1.0] * 5] * 2
    assert preds[4].grad.tolist() == [[4.0] * 5] * 2
    assert preds[0].grad is None


def test_saves_nothing_full_size(backend, device, saved_tensors):
    preds = _preds(3, (2, 4, 8, 8), torch.float32, device)
    with saved_tensors() as rec:
        combine_guidance(preds, torch.ones(3, 2, device=device), backend=backend)
    assert rec.full_size_non_inputs([], batch=2) == []


def test_weights_requiring_grad_raise():
    preds = _preds(2, (2, 3), torch.float32)
    with pytest.raises(ValueError, match="not differentiable"):
        combine_guidance(preds, torch.ones(2, requires_grad=True))


def test_validation_errors():
    preds = _preds(2, (2, 3), torch.float32)
    with pytest.raises(ValueError, match="got 3 weights for 2 predictions"):
        combine_guidance(preds, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(2, 2\)"):
        combine_guidance(preds, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"preds\[1\] has shape \(2, 4\)"):
        combine_guidance([preds[0], torch.randn(2, 4)], [1.0, 1.0])
    with pytest.raises(ValueError, match="share one dtype"):
        combine_guidance([preds[0], preds[1].detach().half()], [1.0, 1.0])
    with pytest.raises(ValueError, match="at least one"):
        combine_guidance([], [])
    with pytest.raises(ValueError, match=r"\(K, B, \.\.\.\)"):
        combine_guidance(torch.randn(4), [1.0] * 4)
    with pytest.raises(TypeError, match="real numbers"):
        combine_guidance(preds, [1.0, "2"])
