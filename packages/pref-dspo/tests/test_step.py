"""DSPO through pref-core's protocols: the conformance checks every objective passes, and the
training step (DSPO-E runs the networks on the winners only, on the same x_t as DSPO)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pref_core.batch import PreferenceBatch
from pref_core.conditioning import Conditioning
from pref_core.recipes import StepContext, preference_step
from pref_core.schedules import DDPMSchedule, FlowMatchingSchedule
from pref_core.testing import ObjectiveConformance
from pref_dspo import DSPO, dspo_step


class TestDSPOConformance(ObjectiveConformance):
    def make_objective(self):
        return DSPO(0.3, reward_scale=50.0)


class TestDSPORefConformance(ObjectiveConformance):
    def make_objective(self):
        return DSPO(0.3, reward_scale=50.0, variant="dspo-ref")


class TestSDXLCodeConformance(ObjectiveConformance):
    def make_objective(self):
        return DSPO(0.3, reward_scale=50.0, variant="sdxl-code")


class TestDSPOEConformance(ObjectiveConformance):
    def make_objective(self):
        return DSPO(0.3, variant="dspo-e")

    def check_swap(self, original, swapped):
        """No pairwise term: the weight is the constant λγ either way, and the loss moves to
        the other image (it regresses whichever sample is called the winner)."""
        assert float(original.metrics["weight"]) == pytest.approx(0.3)
        assert float(swapped.metrics["weight"]) == pytest.approx(0.3)
        assert not math.isclose(original.loss.item(), swapped.loss.item(), rel_tol=1e-6)


class _Counting(nn.Module):
    """ε̂ = a·x_t + b·mean(prompt_embeds), counting the samples it is called on."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))
        self.samples = 0
        self.inputs: list[torch.Tensor] = []

    def forward(self, x_t, t, cond):
        self.samples += x_t.shape[0]
        self.inputs.append(x_t.detach().clone())
        e = cond["prompt_embeds"].mean(dim=(1, 2))[:, None, None, None]
        return self.a * x_t + self.b * e


def _batch(b=4):
    g = torch.Generator().manual_seed(3)
    cond = Conditioning({"prompt_embeds": torch.randn(b, 3, 2, generator=g)})
    return PreferenceBatch(
        cond, torch.randn(b, 1, 2, 2, generator=g), torch.randn(b, 1, 2, 2, generator=g)
    )


def _ctx(objective, policy, reference, process=None, b=4):
    return StepContext(
        policies={"policy": policy},
        reference=reference,
        process=process or DDPMSchedule.linear(),
        objective=objective,
        generators=[torch.Generator().manual_seed(i) for i in range(b)],
    )


@pytest.mark.parametrize("process", [DDPMSchedule.linear(), FlowMatchingSchedule()])
def test_dspo_e_runs_the_winners_only_on_the_same_noised_winners(process):
    policy, reference = _Counting(0.9, 0.1), _Counting(1.0, 0.0)
    batch = _batch()
    out_e = dspo_step(_ctx(DSPO(0.2, variant="dspo-e"), policy, reference, process), batch)
    assert policy.samples == reference.samples == 4  # winners only
    winners_e = policy.inputs[-1]

    policy2, reference2 = _Counting(0.9, 0.1), _Counting(1.0, 0.0)
    out = dspo_step(_ctx(DSPO(0.2), policy2, reference2, process), batch)
    assert policy2.samples == reference2.samples == 8  # winners and losers, one call each
    torch.testing.assert_close(policy2.inputs[-1][:4], winners_e)
    assert torch.isfinite(out_e.loss) and torch.isfinite(out.loss)


def test_dspo_step_equals_the_generic_preference_step_for_pairwise_variants():
    batch = _batch()
    for variant in ("dspo", "dspo-ref", "sdxl-code"):
        objective = DSPO(0.2, reward_scale=3.0, variant=variant)
        a = dspo_step(_ctx(objective, _Counting(0.9, 0.1), _Counting(1.0, 0.0)), batch)
        b = preference_step(_ctx(objective, _Counting(0.9, 0.1), _Counting(1.0, 0.0)), batch)
        assert torch.equal(a.loss, b.loss)


def test_step_refuses_other_objectives():
    from pref_core.objectives import DiffusionDPO

    with pytest.raises(TypeError, match="DSPO objective"):
        dspo_step(_ctx(DiffusionDPO(), _Counting(1.0, 0.0), _Counting(1.0, 0.0)), _batch())
