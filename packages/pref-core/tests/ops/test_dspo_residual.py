"""dspo_residual: both implementations against the fp32 reference, plus independent checks."""

from __future__ import annotations

import pytest
import torch

from pref_core.ops import dspo_residual
from pref_core.ops.dspo_residual import DSPOResidualFunction, dspo_residual_reference


def _inputs(shape, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    pred, target, reference = (torch.randn(shape, generator=gen).to(device, dtype) for _ in "ptr")
    weight = torch.rand(shape[0], generator=gen).to(device)  # (B,) in [0, 1), float32
    return pred, target, reference, weight


def _check(inputs, needs_grad, backend, close, dtype):
    inputs = [x.detach().requires_grad_(need) for x, need in zip(inputs, needs_grad)]
    expected = dspo_residual_reference(*inputs)
    out = dspo_residual(*inputs, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (inputs[0].shape[0],)
    close(out, expected, dtype, reduction=True)
    wrt = [x for x in inputs if x.requires_grad]
    gen = torch.Generator().manual_seed(5)
    upstream = torch.randn(out.shape, generator=gen).to(out.device)
    got = torch.autograd.grad(out, wrt, upstream)
    want = torch.autograd.grad(expected, wrt, upstream)
    for g, w, x in zip(got, want, wrt):
        assert g.dtype == x.dtype and g.shape == x.shape
        # grad_weight is a per-sample reduction; the others are elementwise in the input dtype.
        close(g, w, x.dtype, reduction=x.ndim == 1)


def test_matches_reference(backend, device, shape, dtype, close):
    _check(_inputs(shape, dtype, device), (True, True, True, True), backend, close, dtype)


@pytest.mark.parametrize(
    "needs_grad",
    [(True, False, False, False), (True, False, False, True), (False, True, True, False)],
    ids=["pred", "pred+weight", "target+reference"],
)
def test_only_requested_gradients(backend, device, close, needs_grad):
    _check(_inputs((3, 4, 17, 9), torch.float32, device), needs_grad, backend, close, torch.float32)


def test_non_contiguous_inputs(backend, device, close):
    gen = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(3, 9, 4, generator=gen).to(device).transpose(1, 2),
        torch.randn(6, 4, 9, generator=gen).to(device)[::2],
        torch.randn(1, 4, 9, generator=gen).to(device).expand(3, 4, 9),
        torch.rand(6, generator=gen).to(device)[::2],
    )
    _check(inputs, (True, True, True, True), backend, close, torch.float32)


@pytest.mark.parametrize("backend", ["triton"], indirect=True)
@pytest.mark.parametrize(("max_block", "target_programs"), [(16, 1), (16, 8), (32, 4096)])
def test_many_tiles_and_segments(backend, device, small_tiles, close, max_block, target_programs):
    small_tiles(max_block, target_programs)
    inputs = _inputs((3, 4, 17, 9), torch.float32, device)
    _check(inputs, (True, True, True, True), backend, close, torch.float32)


def test_hand_computed_example(backend, device):
    # One sample, D = 2, w = 0.5:
    #   pred - target    = [1, 2] - [0, 1] = [1, 1]
    #   pred - reference = [1, 2] - [0, 0] = [1, 2]
    #   r = [1, 1] - 0.5 * [1, 2] = [0.5, 0]      loss = (0.25 + 0) / 2 = 0.125
    # Gradients with upstream g = 1, so g * 2 / D = 1:
    #   grad_pred      = (1 - w) r = [0.25, 0]
    #   grad_target    = -r        = [-0.5, 0]
    #   grad_reference = w r       = [0.25, 0]
    #   grad_weight    = -sum(r * (pred - reference)) = -(0.5 * 1 + 0 * 2) = -0.5
    pred = torch.tensor([[1.0, 2.0]], device=device, requires_grad=True)
    target = torch.tensor([[0.0, 1.0]], device=device, requires_grad=True)
    reference = torch.tensor([[0.0, 0.0]], device=device, requires_grad=True)
    weight = torch.tensor([0.5], device=device, requires_grad=True)
    out = dspo_residual(pred, target, reference, weight, backend=backend)
    assert out.tolist() == [0.125]
    out.sum().backward()
    assert pred.grad.tolist() == [[0.25, 0.0]]
    assert target.grad.tolist() == [[-0.5, 0.0]]
    assert reference.grad.tolist() == [[0.25, 0.0]]
    assert weight.grad.tolist() == [-0.5]


def test_limits_of_the_weight(backend, device, close):
    pred, target, reference, _ = _inputs((2, 3, 4), torch.float32, device)
    pred.requires_grad_()
    # w = 0: plain per-sample MSE between prediction and target.
    out = dspo_residual(pred, target, reference, torch.zeros(2, device=device), backend=backend)
    close(out, ((pred - target) ** 2).mean(dim=(1, 2)), torch.float32, reduction=True)
    # w = 1: the prediction cancels, r = reference - target; no gradient reaches pred.
    out = dspo_residual(pred, target, reference, torch.ones(2, device=device), backend=backend)
    close(out, ((reference - target) ** 2).mean(dim=(1, 2)), torch.float32, reduction=True)
    (grad,) = torch.autograd.grad(out.sum(), pred)
    assert torch.count_nonzero(grad) == 0


def test_gradcheck_float64(backend, device):
    gen = torch.Generator().manual_seed(0)
    inputs = tuple(
        torch.randn(*s, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        for s in ((2, 3, 5), (2, 3, 5), (2, 3, 5), (2,))
    )
    if backend == "torch":
        fn = DSPOResidualFunction.apply
    else:
        from pref_core.ops.dspo_residual.triton_kernel import DSPOResidualTriton

        fn = DSPOResidualTriton.apply
    assert torch.autograd.gradcheck(fn, inputs)


def test_saves_only_inputs(backend, device, saved_tensors):
    inputs = _inputs((2, 4, 8, 8), torch.float32, device)
    inputs[0].requires_grad_()
    with saved_tensors() as rec:
        dspo_residual(*inputs, backend=backend)
    assert rec.full_size_non_inputs(inputs, batch=2) == []


def test_validation_errors():
    pred, target, reference, weight = _inputs((2, 3), torch.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(2,\)"):
        dspo_residual(pred, target, reference, torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"reference has shape \(2, 4\)"):
        dspo_residual(pred, target, torch.randn(2, 4), weight)
    with pytest.raises(TypeError, match="weight must be a tensor"):
        dspo_residual(pred, target, reference, 0.5)
