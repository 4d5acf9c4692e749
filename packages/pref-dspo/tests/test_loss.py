"""DSPO's losses against an independent float64 reference, gradients, and their properties.

The reference below is written from the paper's equations with plain float64 tensor arithmetic
(per-sample squared errors as means over the non-batch dimensions, σ(z) = 1 / (1 + e^{−z})),
not with the functions under test:

- Eq. 11: r = −(s/2)(‖ε_θ − ε‖² − ‖ε_ref − ε‖²), s = λ unless a reward scale is given;
- Eq. 13: ‖ε_θ,w − ε_w − λγ(1 − σ(r_w − r_l))(ε_θ,w − ε_ref,w)‖²;
- Eq. 45 (DSPO-E): ‖ε_θ,w − ε_w − γλ(ε_θ,w − ε_ref,w)‖²;
- DSPO-ref (Table 6): ε_ref,w in place of ε_w in Eq. 13;
- sdxl-code: ‖λγ(1 − σ(r_w − r_l))(ε_θ,w − ε_ref,w)‖².
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pref_core.losses import per_sample_mse
from pref_core.pairs import NoisedPair, PairPredictions
from pref_dspo import DSPO, VARIANTS, dspo_per_sample, dspo_weight


def _mean_sq(x: torch.Tensor) -> torch.Tensor:
    return (x.double() ** 2).reshape(x.shape[0], -1).mean(dim=1)


def _paper(pw, pl, rw, rl, tw, tl, *, lam, gamma=1.0, scale=None, variant="dspo"):
    """Per-pair loss of each variant and the logits r_w − r_l, float64."""
    pw, pl, rw, rl, tw, tl = (x.double() for x in (pw, pl, rw, rl, tw, tl))
    s = lam if scale is None else scale
    r_w = -(s / 2) * (_mean_sq(pw - tw) - _mean_sq(rw - tw))
    r_l = -(s / 2) * (_mean_sq(pl - tl) - _mean_sq(rl - tl))
    z = r_w - r_l
    shape = (-1,) + (1,) * (pw.ndim - 1)
    w = (lam * gamma * (1 - 1 / (1 + torch.exp(-z)))).reshape(shape)
    if variant == "dspo":
        residual = (pw - tw) - w * (pw - rw)
    elif variant == "dspo-e":
        residual = (pw - tw) - gamma * lam * (pw - rw)
    elif variant == "dspo-ref":
        residual = (pw - rw) - w * (pw - rw)
    else:  # sdxl-code
        residual = -w * (pw - rw)
    return _mean_sq(residual), z


def _pair(target_w, target_l):
    zero = torch.zeros(target_w.shape[0])
    return NoisedPair(
        zero, zero, zero, zero, target_w, target_l, target_w, target_l, target_w, target_l
    )


def _tensors(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(6)]


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (1, 3, 5, 7), (5, 16)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_objective_matches_paper_equations(shape, variant):
    pw, pl, rw, rl, tw, tl = _tensors(shape)
    # errors are O(1) here; s = 0.7 keeps σ informative, λ = 0.3 keeps the term visible
    for lam, gamma, scale in ((0.3, 1.0, 0.7), (0.001, 1.0, None), (0.05, 2.0, 5.0)):
        objective = DSPO(lam, gamma=gamma, reward_scale=scale, variant=variant)
        out = objective(PairPredictions(pw, pl, rw, rl), _pair(tw, tl))
        expected, z = _paper(
            pw, pl, rw, rl, tw, tl, lam=lam, gamma=gamma, scale=scale, variant=variant
        )
        assert out.loss.item() == pytest.approx(expected.mean().item(), rel=1e-5, abs=1e-7)
        torch.testing.assert_close(out.per_sample["dspo"].double(), expected, rtol=1e-5, atol=1e-7)
        if variant != "dspo-e":
            torch.testing.assert_close(out.per_sample["logits"].double(), z, rtol=1e-5, atol=1e-6)


def test_reference_code_single_beta():
    """The public code's β is λ with γ = 1, in the weight and in the reward (σ ≈ ½ at 0.001)."""
    pw, pl, rw, rl, tw, tl = _tensors((2, 4, 4, 4), seed=3)
    out = DSPO(0.001)(PairPredictions(pw, pl, rw, rl), _pair(tw, tl))
    assert out.metrics["weight"].item() == pytest.approx(0.0005, rel=1e-3)


def test_small_lambda_is_supervised_fine_tuning_on_winners():
    """λ → 0 removes the preference term: Eq. 13 becomes the pretraining MSE on the winners."""
    pw, pl, rw, rl, tw, tl = _tensors((4, 3, 6, 6), seed=1)
    out = DSPO(1e-9)(PairPredictions(pw, pl, rw, rl), _pair(tw, tl))
    torch.testing.assert_close(out.per_sample["dspo"], per_sample_mse(pw, tw), rtol=1e-6, atol=0)


def test_minimiser_of_the_residual():
    """For a fixed weight w the residual (ε_θ − ε) − w(ε_θ − ε_ref) vanishes at
    ε_θ = (ε − w ε_ref) / (1 − w) (solved by hand), so the loss there is 0."""
    g = torch.Generator().manual_seed(2)
    target, ref = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    w = torch.tensor([0.1, 0.5, 0.9])
    best = (target - w[:, None] * ref) / (1 - w[:, None])
    loss = dspo_per_sample(best, target, ref, w)
    torch.testing.assert_close(loss, torch.zeros(3), atol=1e-10, rtol=0)
    assert (dspo_per_sample(best + 0.01, target, ref, w) > 0).all()


def test_gradcheck_float64():
    pw, pl, rw, rl, tw, tl = _tensors((2, 3, 4, 4), seed=4, dtype=torch.float64)
    for variant in VARIANTS:
        objective = DSPO(0.4, reward_scale=0.8, variant=variant, kernel_backend="torch")

        def loss(policy_w, policy_l, objective=objective):
            predictions = PairPredictions(policy_w, policy_l, rw, rl)
            return objective(predictions, _pair(tw, tl)).loss

        inputs = [pw.clone().requires_grad_(True), pl.clone().requires_grad_(True)]
        if variant == "dspo-e":  # no pairwise term: only the winner is an input
            assert torch.autograd.gradcheck(lambda a: loss(a, pl), inputs[:1])
        else:
            assert torch.autograd.gradcheck(loss, inputs)


def test_loser_enters_only_through_sigma():
    """∂L/∂ε_θ,l is nonzero for Eq. 13 as written and exactly zero with ``detach_weight``;
    DSPO-E ignores the loser entirely."""
    pw, pl, rw, rl, tw, tl = _tensors((2, 3, 4, 4), seed=5)
    for detach, variant in ((False, "dspo"), (True, "dspo"), (False, "dspo-e")):
        policy_w, policy_l = pw.clone().requires_grad_(True), pl.clone().requires_grad_(True)
        objective = DSPO(0.4, reward_scale=0.8, variant=variant, detach_weight=detach)
        objective(PairPredictions(policy_w, policy_l, rw, rl), _pair(tw, tl)).loss.backward()
        assert policy_w.grad.abs().sum() > 0
        grad = policy_l.grad
        if detach or variant == "dspo-e":
            assert grad is None or torch.count_nonzero(grad) == 0
        else:
            assert grad is not None and grad.abs().sum() > 0


def test_dspo_ref_is_stationary_at_the_reference():
    """DSPO-ref's loss is (1 − w)²‖ε_θ − ε_ref‖²: zero, with zero gradient, when the policy
    equals the reference — a run started from the base does not move (docs/methods/dspo.md)."""
    _, pl, rw, rl, tw, tl = _tensors((2, 3, 4, 4), seed=6)
    policy_w = rw.clone().requires_grad_(True)
    out = DSPO(0.01, variant="dspo-ref")(PairPredictions(policy_w, pl, rw, rl), _pair(tw, tl))
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert torch.count_nonzero(policy_w.grad) == 0


@settings(max_examples=40, deadline=None)
@given(st.floats(-30.0, 30.0), st.floats(1e-4, 1.0), st.floats(0.1, 3.0))
def test_weight_properties(z, lam, gamma):
    logits = torch.tensor([z, -z], dtype=torch.float64)
    w = dspo_weight(logits, lam=lam, gamma=gamma, variant="dspo")
    # in (0, λγ); swapping winner and loser (z → −z): w(z) + w(−z) = λγ
    assert w.min().item() >= 0.0 and w.max().item() <= lam * gamma
    assert (w[0] + w[1]).item() == pytest.approx(lam * gamma, rel=1e-9)
    # the better the policy already ranks the pair, the smaller the preference term
    if z > 0:
        assert w[0] <= w[1]
    assert dspo_weight(None, lam=lam, gamma=gamma, variant="dspo-e") == pytest.approx(lam * gamma)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 0.9))
def test_swapping_winner_and_loser(seed, lam):
    """Swapping the pair trains on the other image and negates the logits (the loss is not
    symmetric: DSPO regresses the winner)."""
    pw, pl, rw, rl, tw, tl = _tensors((2, 3, 4, 4), seed=seed)
    objective = DSPO(lam, reward_scale=1.0)
    out = objective(PairPredictions(pw, pl, rw, rl), _pair(tw, tl))
    swapped = objective(PairPredictions(pl, pw, rl, rw), _pair(tl, tw))
    torch.testing.assert_close(swapped.per_sample["logits"], -out.per_sample["logits"])
    expected, _ = _paper(pl, pw, rl, rw, tl, tw, lam=lam, scale=1.0)
    torch.testing.assert_close(swapped.per_sample["dspo"].double(), expected, rtol=1e-5, atol=1e-7)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown DSPO variant 'dspo-x'"):
        DSPO(variant="dspo-x")
    with pytest.raises(ValueError, match="lam"):
        DSPO(0.0)
    with pytest.raises(ValueError, match="gamma"):
        DSPO(0.1, gamma=-1.0)
    with pytest.raises(ValueError, match="beta must be positive"):
        DSPO(0.1, reward_scale=0.0)


def test_log_two_free_sanity():
    """With policy = reference the logits are 0, σ = ½ and w = λγ/2 exactly."""
    _, _, rw, rl, tw, tl = _tensors((3, 2, 4, 4), seed=7)
    out = DSPO(0.2, gamma=1.5)(PairPredictions(rw, rl, rw, rl), _pair(tw, tl))
    assert out.metrics["weight"].item() == pytest.approx(0.15, rel=1e-6)
    expected = _mean_sq((rw - tw).double()).mean().item()
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert math.isclose(out.metrics["implicit_accuracy"].item(), 0.5)
