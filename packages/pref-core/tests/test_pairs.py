import pytest
import torch

from pref_core.pairs import noise_pair, predict_pair
from pref_core.schedules import DDPMSchedule, FlowMatchingSchedule
from pref_core.testing import TinyDenoiser, random_conditioning


def latents(seed, shape=(3, 4, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize(
    "process",
    [DDPMSchedule.scaled_linear(prediction_type="v_prediction"), FlowMatchingSchedule(shift=3.0)],
)
def test_noise_pair_applies_the_process(process):
    x0_w, x0_l = latents(0)
    pair = noise_pair(process, x0_w, x0_l, generator=torch.Generator().manual_seed(1))
    assert pair.shares_timestep and pair.noise_w is pair.noise_l
    torch.testing.assert_close(pair.x_t_w, process.add_noise(x0_w, pair.noise_w, pair.t))
    torch.testing.assert_close(pair.x_t_l, process.add_noise(x0_l, pair.noise_l, pair.t))
    torch.testing.assert_close(pair.target_w, process.target(x0_w, pair.noise_w, pair.t))
    torch.testing.assert_close(pair.target_l, process.target(x0_l, pair.noise_l, pair.t))
    torch.testing.assert_close(pair.model_t, process.model_timesteps(pair.t))
    x_t, model_t = pair.stacked()
    assert x_t.shape == (6, 4, 6, 6) and model_t.shape == (6,)


def test_sharing_is_an_explicit_option():
    x0_w, x0_l = latents(0)
    sched = DDPMSchedule.scaled_linear()
    pair = noise_pair(
        sched,
        x0_w,
        x0_l,
        share_noise=False,
        share_timestep=False,
        generator=torch.Generator().manual_seed(2),
    )
    assert not torch.equal(pair.noise_w, pair.noise_l)
    assert not torch.equal(pair.t, pair.t_loser)
    torch.testing.assert_close(pair.x_t_l, sched.add_noise(x0_l, pair.noise_l, pair.t_loser))
    swapped = pair.swapped()
    assert swapped.t is pair.t_loser and swapped.x_t_w is pair.x_t_l


def test_noise_pair_is_reproducible_and_checks_shapes():
    x0_w, x0_l = latents(0)
    sched = FlowMatchingSchedule()
    a = noise_pair(sched, x0_w, x0_l, generator=torch.Generator().manual_seed(5))
    b = noise_pair(sched, x0_w, x0_l, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.x_t_w, b.x_t_w) and torch.equal(a.t, b.t)
    with pytest.raises(ValueError, match="differ"):
        noise_pair(sched, x0_w, x0_l[:2])


def test_predict_pair_runs_reference_without_grad():
    torch.manual_seed(0)
    policy, reference = TinyDenoiser(), TinyDenoiser()
    x0_w, x0_l = latents(3, (2, 4, 8, 8))
    pair = noise_pair(
        DDPMSchedule.scaled_linear(), x0_w, x0_l, generator=torch.Generator().manual_seed(0)
    )
    cond = random_conditioning(2)
    preds = predict_pair(policy, reference, pair, cond)
    assert preds.policy_w.requires_grad and not preds.reference_w.requires_grad
    torch.testing.assert_close(preds.policy_l, policy(pair.x_t_l, pair.model_t_loser, cond))
    torch.testing.assert_close(preds.reference_w, reference(pair.x_t_w, pair.model_t, cond))
