"""Diffusion-DPO against an independent float64 implementation written from the paper.

    L = −log σ(−β/2 · [(‖ε_w − ε_θ(x_w,t)‖² − ‖ε_w − ε_ref(x_w,t)‖²)
                      − (‖ε_l − ε_θ(x_l,t)‖² − ‖ε_l − ε_ref(x_l,t)‖²)])

with ‖·‖² a mean over the non-batch dimensions (shared/papers/README.md). The reference below
uses plain Python floats, one sample at a time.
"""

import math

import pytest
import torch

from pref_core.batch import PreferenceBatch
from pref_core.losses import (
    diffusion_dpo_loss,
    dpo_logits,
    implicit_accuracy,
    per_sample_mse,
)
from pref_core.objectives import DiffusionDPO
from pref_core.pairs import PairPredictions, noise_pair
from pref_core.schedules import DDPMSchedule, FlowMatchingSchedule
from pref_core.testing import ObjectiveConformance, random_conditioning


def mean_sq(a: torch.Tensor, b: torch.Tensor) -> float:
    xs, ys = a.flatten().tolist(), b.flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(xs, ys, strict=True)) / len(xs)


def reference_loss(pol_w, pol_l, ref_w, ref_l, tgt_w, tgt_l, beta: float) -> float:
    total = 0.0
    for i in range(pol_w.shape[0]):
        inner = (mean_sq(tgt_w[i], pol_w[i]) - mean_sq(tgt_w[i], ref_w[i])) - (
            mean_sq(tgt_l[i], pol_l[i]) - mean_sq(tgt_l[i], ref_l[i])
        )
        z = -beta / 2 * inner
        # −log σ(z) = log(1 + e^{−z}), written to stay finite for large |z|
        total += math.log1p(math.exp(-z)) if z > -30 else -z + math.log1p(math.exp(z))
    return total / pol_w.shape[0]


def independent_targets(kind, x0_w, x0_l, noise, t):
    """Targets from their definitions, not from the schedule classes' target()."""
    if kind == "flow":
        return noise - x0_w, noise - x0_l
    n, b0, b1 = 1000, 0.00085, 0.012
    acc, ab = 1.0, []
    for i in range(n):
        acc *= 1.0 - (b0**0.5 + (b1**0.5 - b0**0.5) * i / (n - 1)) ** 2
        ab.append(acc)
    a = torch.tensor([ab[i] for i in t.tolist()], dtype=torch.float64).view(-1, 1, 1, 1)
    if kind == "epsilon":
        return noise, noise
    assert kind == "v_prediction"
    return (a.sqrt() * noise - (1 - a).sqrt() * x0_w, a.sqrt() * noise - (1 - a).sqrt() * x0_l)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "flow"])
def test_objective_matches_float64_reference(kind):
    g = torch.Generator().manual_seed(7)
    batch_size, shape = 5, (4, 6, 5)
    x0_w = torch.randn(batch_size, *shape, generator=g, dtype=torch.float64)
    x0_l = torch.randn(batch_size, *shape, generator=g, dtype=torch.float64)
    process = (
        FlowMatchingSchedule()
        if kind == "flow"
        else DDPMSchedule.scaled_linear(prediction_type=kind)
    )
    pair = noise_pair(process, x0_w, x0_l, generator=g)
    assert pair.noise_w is pair.noise_l and pair.t is pair.t_loser  # shared by default
    tgt_w, tgt_l = independent_targets(kind, x0_w, x0_l, pair.noise_w, pair.t)
    torch.testing.assert_close(pair.target_w, tgt_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pair.target_l, tgt_l, rtol=1e-12, atol=1e-12)

    # Predictions near their targets so errors are O(0.1) and β = 50 gives O(1) logits.
    preds = [
        t + 0.3 * torch.randn(t.shape, generator=g, dtype=torch.float64)
        for t in (tgt_w, tgt_l, tgt_w, tgt_l)
    ]
    beta = 50.0
    expected = reference_loss(*preds, tgt_w, tgt_l, beta)

    out = DiffusionDPO(beta=beta)(
        PairPredictions(*preds), pair, PreferenceBatch(random_conditioning(batch_size), x0_w, x0_l)
    )
    assert out.loss.dtype == torch.float64
    assert abs(out.loss.item() - expected) / abs(expected) < 1e-9

    functional = diffusion_dpo_loss(
        per_sample_mse(preds[0], tgt_w),
        per_sample_mse(preds[1], tgt_l),
        per_sample_mse(preds[2], tgt_w),
        per_sample_mse(preds[3], tgt_l),
        beta=beta,
    )
    assert abs(functional.item() - expected) / abs(expected) < 1e-9


def test_hand_worked_example():
    # e_θ,w = 0.5, e_ref,w = 0.6, e_θ,l = 0.7, e_ref,l = 0.6, β = 10 (½ convention):
    # Δ_w = −0.1, Δ_l = 0.1, z = −5·(−0.2) = 1, loss = log(1 + e^{−1}) = 0.3132616875182228
    e = [torch.tensor([v], dtype=torch.float64) for v in (0.5, 0.7, 0.6, 0.6)]
    z = dpo_logits(*e, beta=10.0)
    assert z.item() == pytest.approx(1.0, rel=1e-12)
    loss = diffusion_dpo_loss(*e, beta=10.0)
    assert loss.item() == pytest.approx(0.3132616875182228, rel=1e-12)
    # The folded convention: β = 5 without the ½ is the same objective.
    assert diffusion_dpo_loss(*e, beta=5.0, halve_beta=False).item() == pytest.approx(loss.item())


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    errs = [torch.rand(4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *e: diffusion_dpo_loss(*e, beta=3.0), errs)

    tgt = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
    pol_w = torch.randn(3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pol_l = torch.randn(3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)

    def through_errors(pw, pl):
        return diffusion_dpo_loss(
            per_sample_mse(pw, tgt),
            per_sample_mse(pl, tgt),
            per_sample_mse(ref, tgt),
            per_sample_mse(ref, tgt),
            beta=2.0,
        )

    assert torch.autograd.gradcheck(through_errors, (pol_w, pol_l))


def test_swapping_winner_and_loser():
    g = torch.Generator().manual_seed(1)
    pw, pl, rw, rl = (torch.rand(64, generator=g, dtype=torch.float64) for _ in range(4))
    z = dpo_logits(pw, pl, rw, rl, beta=20.0)
    z_swapped = dpo_logits(pl, pw, rl, rw, beta=20.0)
    torch.testing.assert_close(z_swapped, -z)
    a, b = implicit_accuracy(z).item(), implicit_accuracy(z_swapped).item()
    assert a + b == pytest.approx(1.0)
    assert 0 < a < 1
    # −log σ(z) + log σ(−z) = −z, so the two mean losses differ by −mean(z).
    loss = diffusion_dpo_loss(pw, pl, rw, rl, beta=20.0)
    loss_swapped = diffusion_dpo_loss(pl, pw, rl, rw, beta=20.0)
    assert (loss - loss_swapped).item() == pytest.approx(-z.mean().item(), rel=1e-10)


def test_ties_count_half_and_extreme_logits_stay_finite():
    assert implicit_accuracy(torch.tensor([0.0, 1.0, -1.0, 0.0])).item() == 0.5
    big = torch.tensor([1e4], dtype=torch.float32)
    e0 = torch.zeros(1)
    assert torch.isfinite(diffusion_dpo_loss(big, e0, e0, e0, beta=5000.0))
    assert diffusion_dpo_loss(e0, big, e0, e0, beta=5000.0).item() == 0.0


def test_per_sample_mse_is_a_mean_in_float32():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.bfloat16)
    tgt = torch.tensor([[0.0, 0.0], [3.0, 1.0]], dtype=torch.bfloat16)
    out = per_sample_mse(pred, tgt)
    assert out.dtype == torch.float32
    assert out.tolist() == [2.5, 5.0]  # (1 + 4)/2, (9 + 1)/2
    with pytest.raises(ValueError, match="differ"):
        per_sample_mse(pred, tgt[:1])


def test_bad_arguments():
    e = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        diffusion_dpo_loss(e, e, e, e, beta=0.0)
    with pytest.raises(ValueError, match="reduction"):
        diffusion_dpo_loss(e, e, e, e, beta=1.0, reduction="avg")


class TestDiffusionDPOConformance(ObjectiveConformance):
    def make_objective(self):
        return DiffusionDPO(beta=200.0)


class TestDiffusionDPOFlowConformance(ObjectiveConformance):
    def make_objective(self):
        return DiffusionDPO(beta=200.0, halve_beta=False)

    def make_process(self):
        return FlowMatchingSchedule(weighting_scheme="logit_normal")
