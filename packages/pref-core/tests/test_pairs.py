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


@pytest.mark.parametrize("share", [True, False])
def test_per_sample_generators_make_pairs_independent_of_the_batch_split(share):
    """With one generator per pair, pairs 0-1 and 2-3 drawn as two batches equal the four drawn
    as one batch (what lets 2 processes × 2 pairs match 1 process × 4 pairs)."""
    schedule = DDPMSchedule.scaled_linear()
    x0_w, x0_l = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)

    def gens(indices):
        return [torch.Generator().manual_seed(1000 + i) for i in indices]

    whole = noise_pair(
        schedule, x0_w, x0_l, generator=gens(range(4)), share_noise=share, share_timestep=share
    )
    parts = [
        noise_pair(
            schedule,
            x0_w[s],
            x0_l[s],
            generator=gens(range(4)[s]),
            share_noise=share,
            share_timestep=share,
        )
        for s in (slice(0, 2), slice(2, 4))
    ]
    for name in ("t", "t_loser", "x_t_w", "x_t_l", "target_w", "target_l", "noise_w", "noise_l"):
        joined = torch.cat([getattr(p, name) for p in parts])
        assert torch.equal(getattr(whole, name), joined), name
    if not share:
        return
    # Pair i's noise is exactly generator i's first draw after its timestep draw.
    g = torch.Generator().manual_seed(1002)
    t2 = schedule.sample_timesteps(1, generator=g)
    assert torch.equal(whole.t[2:3], t2)
    assert torch.equal(whole.noise_w[2:3], torch.randn(1, 3, 5, 5, generator=g))


def test_per_sample_generators_must_match_the_batch():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="one per sample"):
        noise_pair(DDPMSchedule.scaled_linear(), x, x, generator=[torch.Generator()] * 2)
