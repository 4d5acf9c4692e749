import pytest
import torch

from pref_core.batch import PreferenceBatch
from pref_core.objectives import DiffusionDPO
from pref_core.protocols import Denoiser, NoiseProcess, PreferenceObjective
from pref_core.schedules import DDPMSchedule, FlowMatchingSchedule
from pref_core.testing import TinyDenoiser, random_conditioning


def test_concrete_classes_satisfy_the_protocols():
    assert isinstance(TinyDenoiser(), Denoiser)
    assert isinstance(DDPMSchedule.scaled_linear(), NoiseProcess)
    assert isinstance(FlowMatchingSchedule(), NoiseProcess)
    assert isinstance(DiffusionDPO(), PreferenceObjective)
    assert not isinstance(object(), NoiseProcess)


def test_preference_batch_validates_and_swaps():
    cond = random_conditioning(2)
    w, l = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    batch = PreferenceBatch(
        cond, w, l, {"clip_w": torch.zeros(2, 5), "clip_l": torch.ones(2, 5), "prompt": ["a", "b"]}
    )
    assert len(batch) == 2
    s = batch.swapped()
    assert torch.equal(s.winner, l) and torch.equal(s.loser, w)
    assert torch.equal(s.extras["clip_w"], torch.ones(2, 5))
    assert s.extras["prompt"] == ["a", "b"]
    assert torch.equal(s.swapped().extras["clip_w"], torch.zeros(2, 5))
    with pytest.raises(ValueError, match="same shape"):
        PreferenceBatch(cond, w, l[:, :, :2])
    with pytest.raises(ValueError, match="one conditioning row per pair"):
        PreferenceBatch(random_conditioning(3), w, l)
    moved = batch.to(torch.float64)
    assert moved.winner.dtype == torch.float64 and moved.extras["clip_w"].dtype == torch.float64
    assert moved.cond["attention_mask"].dtype == torch.long


def test_dpo_objective_rejects_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        DiffusionDPO(beta=-1.0)
