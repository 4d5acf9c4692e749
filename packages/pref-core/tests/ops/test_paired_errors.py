"""paired_errors: both implementations against the fp32 reference, plus independent checks."""

from __future__ import annotations

import pytest
import torch

from pref_core.ops import PairedErrors, paired_errors, paired_errors_stacked
from pref_core.ops.paired_errors import PairedErrorsFunction, paired_errors_reference

NAMES = ("policy_w", "policy_l", "reference_w", "reference_l", "target_w", "target_l")


def _inputs(shape, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=gen).to(device, dtype) for _ in NAMES]
    xs[0].requires_grad_()
    xs[1].requires_grad_()
    return xs


def _check_against_reference(xs, backend, close, dtype):
    out = paired_errors(*xs, backend=backend)
    expected = paired_errors_reference(*xs)
    assert isinstance(out, PairedErrors)
    for got, want in zip(out, expected):
        assert got.dtype == torch.float32 and got.shape == (xs[0].shape[0],)
        close(got, want, dtype, reduction=True)

    gen = torch.Generator().manual_seed(1)
    upstream = [torch.randn(xs[0].shape[0], generator=gen).to(xs[0].device) for _ in range(4)]
    got = torch.autograd.grad(out, xs[:2], upstream)
    # Reference and target do not require grad, so only the two policy rows carry a gradient.
    want = torch.autograd.grad(expected[:2], xs[:2], upstream[:2])
    for g, w, x in zip(got, want, xs[:2]):
        assert g.dtype == x.dtype and g.shape == x.shape
        close(g, w, x.dtype)


def test_matches_reference(backend, device, shape, dtype, close):
    _check_against_reference(_inputs(shape, dtype, device), backend, close, dtype)


def test_non_contiguous_and_broadcast_inputs(backend, device, close):
    gen = torch.Generator().manual_seed(0)
    b = 3
    xs = [
        torch.randn(b, 8, 4, 5, generator=gen).transpose(1, 2),  # inner dims permuted
        torch.randn(2 * b, 4, 8, 5, generator=gen)[::2],  # strided batch, contiguous rows
        torch.randn(b, 4, 8, 10, generator=gen)[..., ::2],  # strided innermost dim
        torch.randn(b, 4, 8, 5, generator=gen),
        torch.randn(1, 4, 8, 5, generator=gen).expand(b, 4, 8, 5),  # batch stride 0
        torch.randn(b, 5, 8, 4, generator=gen).permute(0, 3, 2, 1),
    ]
    xs = [x.to(device) for x in xs]
    assert not any(x.is_contiguous() for i, x in enumerate(xs) if i != 3)
    xs[0].requires_grad_()
    xs[1].requires_grad_()
    _check_against_reference(xs, backend, close, torch.float32)


def test_mixed_input_dtypes(backend, device, close):
    xs = _inputs((2, 3, 7), torch.float32, device)
    xs = [x.detach().to(dt) for x, dt in zip(xs, [torch.bfloat16, torch.float32] * 3)]
    xs[0].requires_grad_()
    xs[1].requires_grad_()
    _check_against_reference(xs, backend, close, torch.bfloat16)


@pytest.mark.parametrize("backend", ["triton"], indirect=True)
@pytest.mark.parametrize(("max_block", "target_programs"), [(16, 1), (16, 8), (32, 4096)])
def test_many_tiles_and_segments(backend, device, small_tiles, close, max_block, target_programs):
    # Forces multi-tile loops and several per-sample partial sums through the Triton kernels.
    small_tiles(max_block, target_programs)
    xs = _inputs((3, 4, 17, 9), torch.float32, device)
    _check_against_reference(xs, backend, close, torch.float32)


def test_hand_computed_example(backend, device):
    # One sample, two elements (D = 2), so mean = sum / 2:
    #   policy_w    [1, 2]   vs target_w [0, 0]: (1^2 + 2^2) / 2        = 2.5
    #   policy_l    [3, -1]  vs target_l [1, 1]: (2^2 + (-2)^2) / 2     = 4.0
    #   reference_w [0.5, 2] vs target_w [0, 0]: (0.25 + 4) / 2         = 2.125
    #   reference_l [1, 1]   vs target_l [1, 1]: 0
    policy_w = torch.tensor([[1.0, 2.0]], device=device, requires_grad=True)
    policy_l = torch.tensor([[3.0, -1.0]], device=device, requires_grad=True)
    reference_w = torch.tensor([[0.5, 2.0]], device=device)
    reference_l = torch.tensor([[1.0, 1.0]], device=device)
    target_w = torch.tensor([[0.0, 0.0]], device=device)
    target_l = torch.tensor([[1.0, 1.0]], device=device)
    out = paired_errors(
        policy_w, policy_l, reference_w, reference_l, target_w, target_l, backend=backend
    )
    assert out.policy_w.tolist() == [2.5]
    assert out.policy_l.tolist() == [4.0]
    assert out.reference_w.tolist() == [2.125]
    assert out.reference_l.tolist() == [0.0]
    # d/dp mean((p - t)^2) = 2/D (p - t) = (p - t) for D = 2. Upstream g_w = 1, g_l = 0.5:
    #   grad_policy_w = 1 * [1, 2] = [1, 2];  grad_policy_l = 0.5 * [2, -2] = [1, -1].
    (out.policy_w + 0.5 * out.policy_l + 7.0 * out.reference_w).sum().backward()
    assert policy_w.grad.tolist() == [[1.0, 2.0]]
    assert policy_l.grad.tolist() == [[1.0, -1.0]]


def test_gradcheck_float64(backend, device):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).to(device) for _ in NAMES]
    xs[0].requires_grad_()
    xs[1].requires_grad_()
    if backend == "torch":
        fn = PairedErrorsFunction.apply
    else:
        from pref_core.ops.paired_errors.triton_kernel import PairedErrorsTriton

        fn = PairedErrorsTriton.apply
    assert torch.autograd.gradcheck(fn, tuple(xs))
    out = paired_errors(*xs, backend=backend)
    assert out.policy_w.dtype == torch.float64  # float64 inputs keep float64 accumulation


def test_stacked_layout_matches_split_pairs(backend, device, close):
    gen = torch.Generator().manual_seed(0)
    policy = torch.randn(6, 4, 5, generator=gen).to(device).requires_grad_()
    reference = torch.randn(6, 4, 5, generator=gen).to(device)
    target = torch.randn(6, 4, 5, generator=gen).to(device)
    out = paired_errors_stacked(policy, reference, target, backend=backend)
    # [winners; losers]: rows 0..2 are winners, 3..5 losers.
    expected = paired_errors_reference(
        policy[:3], policy[3:], reference[:3], reference[3:], target[:3], target[3:]
    )
    for got, want in zip(out, expected):
        close(got, want, torch.float32, reduction=True)
    (out.policy_w.sum() + 2 * out.policy_l.sum()).backward()
    diff = (policy - target).detach()
    expected_grad = torch.cat([diff[:3], 2 * diff[3:]]) * (2 / 20)
    close(policy.grad, expected_grad, torch.float32)


def test_stacked_layout_rejects_odd_batch():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"\(2B, \.\.\.\)"):
        paired_errors_stacked(x, x, x)


def test_saves_only_inputs(backend, device, saved_tensors):
    xs = _inputs((2, 4, 8, 8), torch.float32, device)
    with saved_tensors() as rec:
        paired_errors(*xs, backend=backend)
    assert rec.saved, "backward needs the policy and target tensors"
    assert rec.full_size_non_inputs(xs, batch=2) == []
    # The reference predictions are constants of the loss: not kept alive for backward.
    reference_ptrs = {xs[2].data_ptr(), xs[3].data_ptr()}
    assert not any(t.data_ptr() in reference_ptrs for t in rec.saved)


def test_no_grad_needed_for_frozen_metrics(backend, device):
    xs = [x.detach() for x in _inputs((2, 3), torch.float32, device)]
    out = paired_errors(*xs, backend=backend)
    assert not out.policy_w.requires_grad


@pytest.mark.parametrize("index", [2, 3, 4, 5], ids=lambda i: NAMES[i])
def test_reference_or_target_requiring_grad_raises(index):
    xs = _inputs((2, 3), torch.float32)
    xs[index] = xs[index].detach().requires_grad_()
    with pytest.raises(ValueError, match=rf"{NAMES[index]} requires grad.*no_grad"):
        paired_errors(*xs)


def test_shape_mismatch_raises():
    xs = _inputs((2, 3, 4), torch.float32)
    xs[4] = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"target_w has shape \(2, 4, 3\)"):
        paired_errors(*xs)


def test_device_mismatch_raises():
    xs = [x.detach() for x in _inputs((2, 3), torch.float32)]
    xs[5] = torch.empty(2, 3, device="meta")
    with pytest.raises(ValueError, match="same device"):
        paired_errors(*xs)


def test_empty_and_non_float_inputs_raise():
    empty = [torch.randn(0, 3) for _ in NAMES]
    with pytest.raises(ValueError, match="empty"):
        paired_errors(*empty)
    ints = [torch.ones(2, 3, dtype=torch.int64) for _ in NAMES]
    with pytest.raises(TypeError, match="floating-point"):
        paired_errors(*ints)
