"""Eq. 4, 6, 7 against an independent float64 reference, a hand-worked example, gradients,
properties, and the reference-update rule of Eq. 18.

The reference (:func:`_paper_loss`) is written from the supplementary's Eq. 17 and 19 with
explicit Python loops over samples, tokens and features (d = mean of squared differences, the
documented choice; ℓ(x) = log(1 + e^(−x))), not with the functions under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pref_img.aligner import AlignerConfig, ImplicitAligner
from pref_img.objective import (
    ReferenceUpdate,
    base_loss,
    copy_into,
    feature_distance,
    img_loss,
    preference_loss,
    preference_margin,
)


def _d(a, b, reduction="mean"):
    """‖a − b‖² of one sample (S, D) by explicit loops, as a Python float."""
    total, count = 0.0, 0
    for s in range(a.shape[0]):
        for j in range(a.shape[1]):
            diff = float(a[s, j]) - float(b[s, j])
            total += diff * diff
            count += 1
    return total / count if reduction == "mean" else total


def _ell(x):
    """ℓ(x) = log(1 + e^(−x)), evaluated stably in float64."""
    return math.log1p(math.exp(-x)) if x > -30 else -x + math.log1p(math.exp(x))


def _paper_loss(pred, ref, w, l, lam, reduction="mean"):
    """Eq. 19: mean_b [d(w, f_θ) + λ ℓ(−z)] with z of Eq. 17; returns (loss, base, pref, z)."""
    base, pref, zs = [], [], []
    for b in range(pred.shape[0]):
        d_w, d_w_ref = _d(w[b], pred[b], reduction), _d(w[b], ref[b], reduction)
        d_l, d_l_ref = _d(l[b], pred[b], reduction), _d(l[b], ref[b], reduction)
        d_ref = _d(ref[b], pred[b], reduction)
        z = 2 * (d_w - d_w_ref) - (d_l - d_l_ref) - d_ref
        base.append(d_w)
        pref.append(_ell(-z))
        zs.append(z)
    n = len(base)
    loss = sum(bb + lam * pp for bb, pp in zip(base, pref)) / n
    return loss, base, pref, zs


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def _four(shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * scale for _ in range(4)
    ]


# ---------------------------------------------------------------- against the equations
@pytest.mark.parametrize("shape", [(3, 2, 4), (1, 1, 1), (4, 3, 5)])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0])
def test_img_loss_matches_the_paper_equations(shape, lam):
    pred, ref, w, l = _four(shape, seed=sum(shape))
    out = img_loss(pred, ref, w, l, lam=lam)
    loss, base, pref, z = _paper_loss(pred, ref, w, l, lam)
    assert out.loss.item() == pytest.approx(loss, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(out.per_sample["base"].double(), _t(base), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.per_sample["pref"].double(), _t(pref), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.per_sample["margin"].double(), _t(z), rtol=1e-5, atol=1e-5)
    # the building blocks agree with the same reference
    torch.testing.assert_close(base_loss(pred, w).double(), _t(base), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        preference_margin(pred, ref, w, l).double(), _t(z), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        preference_loss(pred, ref, w, l).double(), _t(pref), rtol=1e-5, atol=1e-6
    )


def test_metrics_match_the_reference():
    pred, ref, w, l = _four((5, 2, 3), seed=7)
    out = img_loss(pred, ref, w, l, lam=1.0)
    _, base, pref, z = _paper_loss(pred, ref, w, l, 1.0)
    n = 5
    d_w_ref = [_d(w[b], ref[b]) for b in range(n)]
    d_l = [_d(l[b], pred[b]) for b in range(n)]
    expected = {
        "loss": sum(b + p for b, p in zip(base, pref)) / n,
        "base": sum(base) / n,
        "pref": sum(pref) / n,
        "margin": sum(z) / n,
        "dist_winner": sum(base) / n,
        "dist_winner_ref": sum(d_w_ref) / n,
        "dist_loser": sum(d_l) / n,
        "closer_than_ref": sum(b < r for b, r in zip(base, d_w_ref)) / n,
    }
    assert set(out.metrics) == set(expected)
    for name, value in expected.items():
        m = out.metrics[name]
        assert m.ndim == 0 and not m.requires_grad, name
        assert m.item() == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_hand_worked_scalar_example():
    """One token, one feature: f_θ = 0.5, f_ref = 0, c_w = 1, c_l = −1.

    d(c_w, f_θ) = 0.25, d(c_w, f_ref) = 1, d(c_l, f_θ) = 2.25, d(c_l, f_ref) = 1,
    d(f_ref, f_θ) = 0.25, so z = 2(0.25 − 1) − (2.25 − 1) − 0.25 = −1.5 − 1.25 − 0.25 = −3.
    L_pref = ℓ(3) = log(1 + e^(−3)) = 0.0485873515737...; L_base = 0.25;
    L = 0.25 + 1·0.0485873515737 = 0.2985873515737 (λ = 1), and 0.25 + 2·0.04858735 with λ = 2.
    f_θ is closer to c_w than f_ref is: closer_than_ref = 1.
    """
    t = lambda v: torch.tensor([[[v]]])  # noqa: E731  (B, S, D) = (1, 1, 1)
    pred, ref, w, l = t(0.5), t(0.0), t(1.0), t(-1.0)
    assert preference_margin(pred, ref, w, l).item() == pytest.approx(-3.0)
    out = img_loss(pred, ref, w, l)
    assert out.metrics["base"].item() == pytest.approx(0.25)
    assert out.metrics["pref"].item() == pytest.approx(0.0485873515737, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.2985873515737, rel=1e-6)
    assert img_loss(pred, ref, w, l, lam=2.0).loss.item() == pytest.approx(
        0.3471747031474, rel=1e-6
    )
    assert out.metrics["closer_than_ref"].item() == 1.0


def test_gradcheck_in_float64():
    pred, ref, w, l = _four((2, 3, 4), seed=3, dtype=torch.float64)
    pred.requires_grad_(True)
    for reduction in ("mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda p, r=reduction: img_loss(p, ref, w, l, lam=1.0, reduction=r).loss,
            (pred,),
            eps=1e-6,
            atol=1e-6,
        )


# ---------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**20), b=st.integers(1, 4), s=st.integers(1, 4), d=st.integers(1, 5))
def test_policy_equal_to_reference(seed, b, s, d):
    """f_θ = f_ref: every difference in z vanishes (d(c_w,f) − d(c_w,f) = 0, likewise for c_l,
    and d(f, f) = 0), so z = 0 and L_pref = softplus(0) = log 2 for every sample, whatever the
    pair. The gradient is then σ(0)·∂z/∂f = ½·(2·2(f − c_w) − 2(f − c_l))/N = (f − 2c_w + c_l)/N
    per element (N = S·D, ∂d(f_ref, f)/∂f = 0 at f = f_ref), divided by B for the batch mean."""
    pred, _, w, l = _four((b, s, d), seed=seed, dtype=torch.float64)
    ref = pred.clone()
    pred.requires_grad_(True)
    out = img_loss(pred, ref, w, l, lam=1.0)
    torch.testing.assert_close(out.per_sample["margin"], torch.zeros(b, dtype=torch.float64))
    torch.testing.assert_close(
        out.per_sample["pref"], torch.full((b,), math.log(2.0), dtype=torch.float64)
    )
    pref_only = img_loss(pred, ref, w, l, lam=1.0).metrics  # detached: no effect on the graph
    assert pref_only["pref"].item() == pytest.approx(math.log(2.0))
    grad_pref = torch.autograd.grad(preference_loss(pred, ref, w, l).mean(), pred)[0]
    expected = (pred.detach() - 2 * w + l) / (s * d) / b
    torch.testing.assert_close(grad_pref, expected)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**20), shift=st.floats(-5, 5))
def test_translation_invariance(seed, shift):
    """Every term is a distance between two of the four features: shifting all four by one
    constant changes nothing."""
    pred, ref, w, l = _four((2, 3, 2), seed=seed, dtype=torch.float64)
    a = img_loss(pred, ref, w, l)
    b = img_loss(pred + shift, ref + shift, w + shift, l + shift)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-9, abs=1e-9)


def test_lambda_zero_is_the_base_loss_and_lambda_is_linear():
    pred, ref, w, l = _four((3, 2, 4), seed=11)
    base = base_loss(pred, w).mean()
    pref = preference_loss(pred, ref, w, l).mean()
    assert img_loss(pred, ref, w, l, lam=0.0).loss.item() == pytest.approx(base.item(), rel=1e-6)
    for lam in (0.5, 1.0, 2.0):
        got = img_loss(pred, ref, w, l, lam=lam).loss.item()
        assert got == pytest.approx(base.item() + lam * pref.item(), rel=1e-6)
    with pytest.raises(ValueError, match="lam"):
        img_loss(pred, ref, w, l, lam=-1.0)


def test_mean_and_sum_reductions_differ_by_s_times_d():
    s, d = 3, 5
    pred, ref, w, l = _four((4, s, d), seed=2, dtype=torch.float64)
    mean = feature_distance(pred, w)
    total = feature_distance(pred, w, reduction="sum")
    torch.testing.assert_close(total, mean * s * d)
    torch.testing.assert_close(base_loss(pred, w, reduction="sum"), base_loss(pred, w) * s * d)
    torch.testing.assert_close(
        preference_margin(pred, ref, w, l, reduction="sum"),
        preference_margin(pred, ref, w, l) * s * d,
    )
    out_sum = img_loss(pred, ref, w, l, reduction="sum")
    out_mean = img_loss(pred, ref, w, l)
    assert out_sum.metrics["base"].item() == pytest.approx(out_mean.metrics["base"].item() * s * d)
    loss, *_ = _paper_loss(pred, ref, w, l, 1.0, reduction="sum")
    assert out_sum.loss.item() == pytest.approx(loss, rel=1e-9)
    with pytest.raises(ValueError, match="unknown reduction"):
        feature_distance(pred, w, reduction="none")


def test_reference_requiring_grad_raises():
    pred, ref, w, l = _four((2, 2, 2))
    with pytest.raises(ValueError, match=r"ref_pred requires grad.*no_grad"):
        img_loss(pred, ref.requires_grad_(True), w, l)


def test_shape_mismatch_raises():
    pred, ref, w, l = _four((2, 2, 2))
    with pytest.raises(ValueError, match="share one shape"):
        img_loss(pred, ref, w, l[:, :1])
    with pytest.raises(ValueError, match="differ in shape"):
        feature_distance(pred, w[:1])


def test_precision_and_extreme_margins():
    pred, ref, w, l = _four((2, 2, 3), dtype=torch.bfloat16)
    assert feature_distance(pred, w).dtype == torch.float32
    assert img_loss(pred, ref, w, l).loss.dtype == torch.float32
    assert feature_distance(pred.double(), w.double()).dtype == torch.float64
    # z of ±10^6: the softplus stays finite and exact (≈ z for large z, ≈ e^z for very negative z)
    t = lambda v: torch.tensor([[[v]]])  # noqa: E731
    huge = preference_loss(t(0.0), t(0.0), t(0.0), t(1000.0))  # z = −(10^6 − 10^6) − 0 = 0
    assert huge.item() == pytest.approx(math.log(2.0))
    far = preference_loss(t(1000.0), t(0.0), t(0.0), t(0.0))  # z = 2·10^6 − 10^6 − 10^6 = 0
    assert far.item() == pytest.approx(math.log(2.0))
    big = preference_loss(t(0.0), t(1000.0), t(1000.0), t(0.0))  # z = 2·10^6 + 10^6 − 10^6
    assert big.item() == pytest.approx(2e6, rel=1e-6)
    small = preference_loss(t(1000.0), t(0.0), t(1000.0), t(0.0))  # z = −2·10^6 − 10^6 − 10^6
    assert small.item() == 0.0


# ---------------------------------------------------------------- reference update (Eq. 18)
def test_reference_update_on_a_scripted_sequence():
    rule = ReferenceUpdate(k=3)
    # (dist_policy, dist_reference) per step and whether a copy is due after it
    script = [
        ((0.5, 1.0), False),  # streak 1
        ((0.4, 1.0), False),  # streak 2
        ((1.2, 1.0), False),  # not closer: streak 0
        ((0.9, 1.0), False),  # 1
        ((0.8, 1.0), False),  # 2
        ((0.7, 1.0), True),  # 3 = k: copy, streak 0
        ((0.6, 0.7), False),  # 1 (streak restarted after the copy)
        ((0.7, 0.7), False),  # equal is not closer (Eq. 18 is strict): 0
        ((float("nan"), 0.7), False),  # NaN is not closer: 0
        ((0.1, 0.7), False),  # 1
        ((0.1, 0.7), False),  # 2
        ((0.1, 0.7), True),  # 3: copy
    ]
    streaks = [1, 2, 0, 1, 2, 0, 1, 0, 0, 1, 2, 0]
    for ((p, r), due), streak in zip(script, streaks):
        assert rule.observe(p, r) is due
        assert rule.streak == streak
    assert rule.updates == 2


def test_reference_update_accepts_scalar_tensors_and_rejects_batches():
    rule = ReferenceUpdate(k=1)
    assert rule.observe(torch.tensor(0.1), torch.tensor(0.2)) is True
    assert rule.observe(torch.tensor([0.3]), torch.tensor(0.2)) is False
    with pytest.raises(ValueError, match="batch-mean"):
        rule.observe(torch.tensor([0.1, 0.2]), torch.tensor(0.3))
    with pytest.raises(ValueError, match="positive integer"):
        ReferenceUpdate(k=0)


def test_reference_update_resumes_exactly():
    g = torch.Generator().manual_seed(0)
    pairs = [
        (float(a), float(b)) for a, b in torch.rand(60, 2, generator=g) * torch.tensor([0.8, 1.0])
    ]
    full = ReferenceUpdate(k=4)
    uninterrupted = [full.observe(p, r) for p, r in pairs]
    assert sum(uninterrupted) >= 2  # the script exercises copies
    first = ReferenceUpdate(k=4)
    resumed = [first.observe(p, r) for p, r in pairs[:23]]
    state = first.state_dict()
    second = ReferenceUpdate(k=4)
    second.load_state_dict(state)
    assert second.streak == first.streak and second.updates == first.updates
    resumed += [second.observe(p, r) for p, r in pairs[23:]]
    assert resumed == uninterrupted
    assert second.state_dict() == full.state_dict()
    with pytest.raises(ValueError, match="k=4"):
        ReferenceUpdate(k=10).load_state_dict(state)


def test_copy_into_loads_weights_without_aliasing():
    config = AlignerConfig(ip_dim=8, guidance_dim=4, num_layers=1, num_heads=2, ff_mult=1)
    torch.manual_seed(0)
    policy = ImplicitAligner(config)
    torch.manual_seed(1)
    reference = ImplicitAligner(config).requires_grad_(False)  # its own random initialisation
    with torch.no_grad():
        policy.out.weight.normal_()
    ip, h = torch.randn(2, 3, 8), torch.randn(2, 5, 4)
    assert not torch.equal(reference(ip, h), policy(ip, h))
    copy_into(reference, policy)
    assert torch.equal(reference(ip, h), policy(ip, h))
    assert not any(p.requires_grad for p in reference.parameters())
    with torch.no_grad():
        policy.out.bias.add_(1.0)  # the policy keeps training: the reference must not follow
    assert not torch.equal(reference.out.bias, policy.out.bias)
    with pytest.raises(ValueError, match="same module"):
        copy_into(policy, policy)
    other = ImplicitAligner(AlignerConfig(ip_dim=8, guidance_dim=4, num_layers=2, num_heads=2))
    with pytest.raises(RuntimeError):
        copy_into(other, policy)


def test_objective_trains_an_aligner_with_reference_updates():
    """A short run of Eq. 7 with the Eq. 18 rule: the distance to the winner falls, the
    reference gets copied once the policy beats it k times in a row, and on the step right
    after a copy f_θ = f_ref, so z = 0 and L_pref = log 2 exactly (the total loss is a sawtooth;
    ``base`` is the curve that shows progress)."""
    config = AlignerConfig(ip_dim=8, guidance_dim=4, num_layers=1, num_heads=2, ff_mult=2)
    torch.manual_seed(0)
    policy = ImplicitAligner(config)
    reference = ImplicitAligner(config).requires_grad_(False)
    with torch.no_grad():  # f_ref starts random, including its output layer
        reference.out.weight.normal_(std=0.3)
    g = torch.Generator().manual_seed(0)
    loser, h = torch.randn(8, 2, 8, generator=g), torch.randn(8, 3, 4, generator=g)
    winner = loser + 0.5 * torch.randn(8, 2, 8, generator=g)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=1e-4)
    rule = ReferenceUpdate(k=3)
    base, copied_before = [], []
    for _ in range(40):
        with torch.no_grad():
            ref_pred = reference(loser, h)
        out = img_loss(policy(loser, h), ref_pred, winner, loser, lam=1.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert math.isfinite(out.loss.item())
        base.append(out.metrics["base"].item())
        if copied_before and copied_before[-1]:
            assert out.metrics["margin"].item() == 0.0
            assert out.metrics["pref"].item() == pytest.approx(math.log(2.0))
        copied = rule.observe(out.metrics["dist_winner"], out.metrics["dist_winner_ref"])
        if copied:
            copy_into(reference, policy)
        copied_before.append(copied)
    assert base[-1] < 0.5 * base[0]
    assert rule.updates >= 2 and rule.updates == sum(copied_before)
