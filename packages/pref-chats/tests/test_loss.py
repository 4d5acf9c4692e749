"""Eq. 13/14 against an independent float64 reference, gradients, and the loss's properties.

The reference below is written from the paper's equation with plain float64 tensor arithmetic
(per-sample squared errors averaged over C, H, W; log σ(z) = −log(1 + e^{−z})), not with the
functions under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pref_chats import CHATS, chats_logits, chats_loss
from pref_core.pairs import NoisedPair, PairPredictions


def _paper_loss(pre_w, dis_l, ref_w, ref_l, target_w, target_l, T, reference=True):
    """−E log σ(−T[(‖ε⁺−ε_θ⁺‖² − ‖ε⁺−ε_ref‖²) + (‖ε⁻−ε_θ⁻‖² − ‖ε⁻−ε_ref‖²)]) in float64."""
    dims = tuple(range(1, target_w.ndim))
    e = lambda target, pred: ((target.double() - pred.double()) ** 2).mean(dim=dims)  # noqa: E731
    inner = e(target_w, pre_w) + e(target_l, dis_l)
    if reference:
        inner = inner - e(target_w, ref_w) - e(target_l, ref_l)
    z = -T * inner
    losses = [math.log1p(math.exp(-float(v))) if v > -30 else -float(v) for v in z]
    return sum(losses) / len(losses), z


def _pair(target_w, target_l):
    b = target_w.shape[0]
    zero = torch.zeros(b)
    return NoisedPair(
        zero, zero, zero, zero, target_w, target_l, target_w, target_l, target_w, target_l
    )


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (1, 3, 5, 7), (5, 16)])
@pytest.mark.parametrize("reference", [True, False])
def test_objective_matches_paper_equation(shape, reference):
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(shape, generator=g) for _ in range(6)]
    pre_w, dis_l, ref_w, ref_l, target_w, target_l = t
    # Errors ~O(1): T = 0.3 keeps z moderate so log σ is informative (T = 1000 saturates).
    for T in (0.3, 1000.0):
        objective = CHATS(T, reference=reference, kernel_backend="torch")
        out = objective(PairPredictions(pre_w, dis_l, ref_w, ref_l), _pair(target_w, target_l))
        expected, z = _paper_loss(pre_w, dis_l, ref_w, ref_l, target_w, target_l, T, reference)
        assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        torch.testing.assert_close(out.per_sample["logits"].double(), z, rtol=1e-5, atol=1e-4)


def test_t_1000_without_half():
    """Paper and code: T multiplies the summed differences directly (no ½ as in DPO)."""
    z = chats_logits(
        torch.tensor([0.010]), torch.tensor([0.020]), torch.tensor([0.012]), torch.tensor([0.021])
    )
    # −1000·[(0.010 − 0.012) + (0.020 − 0.021)] = 3
    assert z.item() == pytest.approx(3.0, abs=1e-5)
    assert chats_loss(
        torch.tensor([0.010]), torch.tensor([0.020]), torch.tensor([0.012]), torch.tensor([0.021])
    ).item() == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-5)


def test_at_initialisation_loss_is_log2():
    e = torch.rand(4)
    f = torch.rand(4)
    assert chats_loss(e, f, e, f).item() == pytest.approx(math.log(2), abs=1e-7)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    args = [torch.rand(3, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *a: chats_loss(*a, temperature=2.0), args)

    preds = [torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g) for _ in range(4)]
    targets = [torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g) for _ in range(2)]
    objective = CHATS(0.5, kernel_backend="torch")

    def through_objective(pre_w, dis_l):
        return objective(PairPredictions(pre_w, dis_l, preds[2], preds[3]), _pair(*targets)).loss

    inputs = [p.clone().requires_grad_(True) for p in preds[:2]]
    assert torch.autograd.gradcheck(through_objective, inputs)


def test_winner_term_moves_only_preferred_and_loser_term_only_dispreferred():
    """∂L/∂e⁺_w and ∂L/∂e⁻_l are both −T·σ(−z)·(−1)/B > 0, and the references get none."""
    e = [torch.tensor([0.3, 0.1], requires_grad=True) for _ in range(2)]
    ref = [torch.tensor([0.2, 0.2]), torch.tensor([0.1, 0.4])]
    loss = chats_loss(e[0], e[1], ref[0], ref[1], temperature=1.0)
    loss.backward()
    z = -((e[0] - ref[0]) + (e[1] - ref[1])).detach()
    expected = torch.sigmoid(-z) / 2  # d(−log σ(z))/dz = −σ(−z); dz/de = −T
    torch.testing.assert_close(e[0].grad, expected)
    torch.testing.assert_close(e[1].grad, expected)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    st.floats(0.01, 50.0),
)
def test_properties(values, temperature):
    e_w, e_l, r_w, r_l = (torch.tensor([v], dtype=torch.float64) for v in values)
    base = chats_loss(e_w, e_l, r_w, r_l, temperature=temperature)
    # the two halves enter symmetrically: exchanging (θ⁺, winner) and (θ⁻, loser) changes nothing
    assert chats_loss(e_l, e_w, r_l, r_w, temperature=temperature).item() == pytest.approx(
        base.item(), rel=1e-12
    )
    # fitting either half better than before (lower error) never raises the loss
    better = chats_loss(e_w * 0.5, e_l, r_w, r_l, temperature=temperature)
    assert better.item() <= base.item() + 1e-12
    # a shared shift of model and reference errors on one half cancels
    shifted = chats_loss(e_w + 0.25, e_l, r_w + 0.25, r_l, temperature=temperature)
    assert shifted.item() == pytest.approx(base.item(), rel=1e-9, abs=1e-12)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="temperature"):
        CHATS(0.0)
    with pytest.raises(ValueError, match="p_uncond"):
        CHATS(p_uncond=1.5)
    with pytest.raises(ValueError, match="training null"):
        CHATS(null="blank")
    with pytest.raises(ValueError, match="sampler"):
        CHATS(sampler="cfg")
