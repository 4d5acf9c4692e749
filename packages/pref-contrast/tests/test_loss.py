"""Diff-contrast's loss against an independent float64 reference written from the paper.

The reference loops over (i, j) with plain float64 arithmetic: ω̃_ij = exp(−(1 − cos(f_i^w,
f_j^l))/τ), ω_ij = ω̃_ij / Σ_j ω̃_ij (Sec. 2.1), Z_ij = −(β/2)[(e_θ,w,i − e_ref,w,i) −
(e_θ,l,j − e_ref,l,j)] and L = −(1/M) Σ_i Σ_j ω_ij log σ(Z_ij) (Eq. 9); RPO's form (appendix
Eq. 15) is −(1/M²) Σ_ij log σ(ω_ij Z_ij). Per-sample errors are means over C, H, W.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pref_contrast import DiffContrast, contrast_logits, contrast_loss, contrast_weights
from pref_core.batch import PreferenceBatch
from pref_core.conditioning import Conditioning
from pref_core.objectives import DiffusionDPO
from pref_core.pairs import NoisedPair, PairPredictions
from pref_core.recipes import StepContext, preference_step
from pref_core.schedules import DDPMSchedule
from pref_core.testing import ObjectiveConformance


def _err(pred, target):
    return [float(((p.double() - t.double()) ** 2).mean()) for p, t in zip(pred, target)]


def _cos(a, b):
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def _paper(pw, pl, rw, rl, tw, tl, fw, fl, *, beta, tau, placement="outside"):
    m = pw.shape[0]
    e_pw, e_pl, e_rw, e_rl = _err(pw, tw), _err(pl, tl), _err(rw, tw), _err(rl, tl)
    total = 0.0
    for i in range(m):
        raw = [math.exp(-(1 - _cos(fw[i], fl[j])) / tau) for j in range(m)]
        for j in range(m):
            w = raw[j] / sum(raw)
            z = -(beta / 2) * ((e_pw[i] - e_rw[i]) - (e_pl[j] - e_rl[j]))
            if placement == "outside":
                total += -w * math.log(1 / (1 + math.exp(-z))) / m
            else:
                total += -math.log(1 / (1 + math.exp(-w * z))) / (m * m)
    return total


def _pair(tw, tl):
    zero = torch.zeros(tw.shape[0])
    return NoisedPair(zero, zero, zero, zero, tw, tl, tw, tl, tw, tl)


def _batch(fw, fl):
    m = fw.shape[0]
    cond = Conditioning({"prompt_embeds": torch.zeros(m, 1, 1)})
    x = torch.zeros(m, 1)
    return PreferenceBatch(cond, x, x, {"contrast_w": fw, "contrast_l": fl})


def _inputs(m, shape=(3, 4, 4), seed=0, dtype=torch.float32, d=6):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn((m, *shape), generator=g, dtype=dtype) for _ in range(6)]
    fw, fl = torch.randn(m, d, generator=g), torch.randn(m, d, generator=g)
    return tensors, fw, fl


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("placement", ["outside", "inside"])
def test_objective_matches_paper_equation(m, placement):
    (pw, pl, rw, rl, tw, tl), fw, fl = _inputs(m)
    # errors are O(1): β = 0.6 keeps Z moderate; τ from sharp to flat
    for beta, tau in ((0.6, 0.5), (0.6, 5.0), (3.0, 0.1)):
        objective = DiffContrast(beta, tau, placement=placement)
        out = objective(PairPredictions(pw, pl, rw, rl), _pair(tw, tl), _batch(fw, fl))
        expected = _paper(pw, pl, rw, rl, tw, tl, fw, fl, beta=beta, tau=tau, placement=placement)
        assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_one_pair_is_diffusion_dpo_exactly():
    for seed in range(5):
        (pw, pl, rw, rl, tw, tl), fw, fl = _inputs(1, seed=seed)
        predictions, pair = PairPredictions(pw, pl, rw, rl), _pair(tw, tl)
        for placement in ("outside", "inside"):
            out = DiffContrast(5000.0, 0.01, placement=placement)(predictions, pair, _batch(fw, fl))
            dpo = DiffusionDPO(5000.0)(predictions, pair)
            assert torch.equal(out.loss, dpo.loss)
            assert torch.equal(out.per_sample["logits"], dpo.per_sample["logits"])


def test_diagonal_is_each_pairs_diffusion_dpo_logit():
    (pw, pl, rw, rl, tw, tl), fw, fl = _inputs(4, seed=2)
    predictions = PairPredictions(pw, pl, rw, rl)
    out = DiffContrast(100.0, 1.0)(predictions, _pair(tw, tl), _batch(fw, fl))
    dpo = DiffusionDPO(100.0)(predictions, _pair(tw, tl))
    torch.testing.assert_close(out.per_sample["logits"], dpo.per_sample["logits"])
    assert out.metrics["implicit_accuracy"] == dpo.metrics["implicit_accuracy"]


def test_temperature_limits():
    g = torch.Generator().manual_seed(3)
    fw, fl = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    # τ → ∞: uniform rows
    flat = contrast_weights(fw, fl, tau=1e6)
    torch.testing.assert_close(flat, torch.full((6, 6), 1 / 6), atol=1e-5, rtol=0)
    # τ → 0: all of row i's weight on its nearest loser (largest cosine similarity)
    sharp = contrast_weights(fw, fl, tau=1e-4)
    cos = torch.nn.functional.normalize(fw, dim=1) @ torch.nn.functional.normalize(fl, dim=1).T
    nearest = cos.argmax(dim=1)
    torch.testing.assert_close(sharp, torch.eye(6)[nearest], atol=1e-6, rtol=0)
    # no 0/0 at the paper's τ = 0.01 even for distances near 2 (exp(−200) underflows)
    far = contrast_weights(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]]), tau=0.01)
    assert torch.equal(far, torch.ones(1, 1))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.floats(1e-3, 100.0), st.integers(0, 10_000))
def test_weight_properties(m, tau, seed):
    g = torch.Generator().manual_seed(seed)
    fw, fl = torch.randn(m, 5, generator=g), torch.randn(m, 5, generator=g)
    w = contrast_weights(fw, fl, tau)
    assert torch.all(w >= 0) and not w.requires_grad
    torch.testing.assert_close(w.sum(dim=1), torch.ones(m), atol=1e-5, rtol=0)
    # scale-invariant in f (cosine), and permuting pairs permutes rows and columns alike
    torch.testing.assert_close(contrast_weights(3.0 * fw, 0.5 * fl, tau), w, atol=1e-5, rtol=1e-4)
    perm = torch.randperm(m, generator=g)
    torch.testing.assert_close(contrast_weights(fw[perm], fl[perm], tau), w[perm][:, perm])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_permuting_the_batch_permutes_the_per_winner_losses(m, seed):
    (pw, pl, rw, rl, tw, tl), fw, fl = _inputs(m, seed=seed)
    objective = DiffContrast(1.0, 0.3)
    out = objective(PairPredictions(pw, pl, rw, rl), _pair(tw, tl), _batch(fw, fl))
    p = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    permuted = objective(
        PairPredictions(pw[p], pl[p], rw[p], rl[p]), _pair(tw[p], tl[p]), _batch(fw[p], fl[p])
    )
    torch.testing.assert_close(permuted.per_sample["contrast"], out.per_sample["contrast"][p])


def test_gradcheck_float64():
    (pw, pl, rw, rl, tw, tl), fw, fl = _inputs(3, seed=4, dtype=torch.float64)
    for placement in ("outside", "inside"):
        objective = DiffContrast(0.8, 0.5, placement=placement, kernel_backend="torch")

        def loss(policy_w, policy_l, objective=objective):
            predictions = PairPredictions(policy_w, policy_l, rw, rl)
            return objective(predictions, _pair(tw, tl), _batch(fw, fl)).loss

        inputs = [pw.clone().requires_grad_(True), pl.clone().requires_grad_(True)]
        assert torch.autograd.gradcheck(loss, inputs)
    # and the loss of Z alone
    z = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    w = contrast_weights(fw, fl, 0.5).double()
    assert torch.autograd.gradcheck(lambda x: contrast_loss(x, w).mean(), [z])


def test_logits_matrix_by_hand():
    z = contrast_logits(
        torch.tensor([0.3, 0.1]),
        torch.tensor([0.2, 0.5]),
        torch.tensor([0.25, 0.1]),
        torch.tensor([0.2, 0.4]),
        beta=2.0,
    )
    # Δ_w = [0.05, 0.0], Δ_l = [0.0, 0.1]; Z_ij = −(Δ_w,i − Δ_l,j)
    expected = torch.tensor([[-0.05, 0.05], [0.0, 0.1]])
    torch.testing.assert_close(z, expected)


def test_missing_embeddings_are_named():
    (pw, pl, rw, rl, tw, tl), _, _ = _inputs(2)
    cond = Conditioning({"prompt_embeds": torch.zeros(2, 1, 1)})
    batch = PreferenceBatch(cond, torch.zeros(2, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"contrast_w.*prepare_data"):
        DiffContrast()(PairPredictions(pw, pl, rw, rl), _pair(tw, tl), batch)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="tau"):
        DiffContrast(tau=0.0)
    with pytest.raises(ValueError, match="beta"):
        DiffContrast(beta=-1.0)
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        DiffContrast(modality="audio")
    with pytest.raises(ValueError, match="unknown placement"):
        DiffContrast(placement="middle")


# ------------------------------------------------------------------------------ protocols
class TestDiffContrastConformance(ObjectiveConformance):
    def make_objective(self):
        return DiffContrast(50.0, 0.5)

    def make_batch(self, generator):
        batch = super().make_batch(generator)
        fw = torch.randn(self.batch_size, 8, generator=generator)
        fl = torch.randn(self.batch_size, 8, generator=generator)
        return PreferenceBatch(
            batch.cond, batch.winner, batch.loser, {"contrast_w": fw, "contrast_l": fl}
        )


class _Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.9))
        self.samples = 0

    def forward(self, x_t, t, cond):
        self.samples += x_t.shape[0]
        return self.a * x_t


def test_two_m_evaluations_not_m_squared():
    m = 6
    g = torch.Generator().manual_seed(5)
    cond = Conditioning({"prompt_embeds": torch.randn(m, 2, 2, generator=g)})
    batch = PreferenceBatch(
        cond,
        torch.randn(m, 1, 2, 2, generator=g),
        torch.randn(m, 1, 2, 2, generator=g),
        {
            "contrast_w": torch.randn(m, 4, generator=g),
            "contrast_l": torch.randn(m, 4, generator=g),
        },
    )
    policy, reference = _Counting(), _Counting()
    ctx = StepContext(
        policies={"policy": policy},
        reference=reference,
        process=DDPMSchedule.linear(),
        objective=DiffContrast(10.0, 1.0),
        generators=[torch.Generator().manual_seed(i) for i in range(m)],
    )
    out = preference_step(ctx, batch)
    assert policy.samples == reference.samples == 2 * m
    assert torch.isfinite(out.loss)
    assert 1.0 <= out.metrics["weight_perplexity"].item() <= m
