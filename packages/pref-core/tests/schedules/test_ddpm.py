"""DDPM schedule math against values derived by hand or from the defining formulas in plain
Python floats (independent of the tensor code under test)."""

import json
import math

import pytest
import torch

from pref_core.schedules import DDPMSchedule, rescale_zero_terminal_snr, schedule_from_config

# SD 1.5's scheduler/scheduler_config.json, as shipped with the model.
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def python_alpha_bar(betas):
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return out


def test_scaled_linear_matches_formula():
    n, b0, b1 = 1000, 0.00085, 0.012
    betas = [(b0**0.5 + (b1**0.5 - b0**0.5) * i / (n - 1)) ** 2 for i in range(n)]
    expected = python_alpha_bar(betas)
    sched = DDPMSchedule.from_config(SD15_CONFIG)
    assert sched.num_train_timesteps == 1000
    assert sched.prediction_type == "epsilon"
    got = sched.alphas_cumprod.tolist()
    assert got[0] == pytest.approx(1 - 0.00085, rel=1e-15)
    for i in (0, 1, 499, 998, 999):
        assert got[i] == pytest.approx(expected[i], rel=1e-12)
    # SD's well-known terminal ᾱ ≈ 0.0047 (SNR ≈ 0.0047: never pure noise).
    assert got[-1] == pytest.approx(0.004660, abs=2e-6)


def test_linear_and_cosine_endpoints():
    lin = DDPMSchedule.linear()
    assert lin.betas[0].item() == pytest.approx(1e-4)
    assert lin.betas[-1].item() == pytest.approx(0.02)
    cos = DDPMSchedule.from_config({"beta_schedule": "squaredcos_cap_v2"})

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    assert cos.betas[0].item() == pytest.approx(1 - f(1 / 1000) / f(0), rel=1e-12)
    assert cos.betas.max().item() <= 0.999


def test_trained_betas_and_prediction_type_from_config():
    sched = DDPMSchedule.from_config(
        {"trained_betas": [0.1, 0.2, 0.5], "prediction_type": "v_prediction"}
    )
    assert sched.alphas_cumprod.tolist() == pytest.approx([0.9, 0.72, 0.36])
    assert sched.prediction_type == "v_prediction"


def test_config_file_round_trip(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(SD15_CONFIG))
    a = DDPMSchedule.from_config_file(path)
    b = DDPMSchedule.from_config(SD15_CONFIG)
    assert torch.equal(a.alphas_cumprod, b.alphas_cumprod)


def test_bad_configs_are_refused_with_a_pointer():
    with pytest.raises(ValueError, match="beta_schedule"):
        DDPMSchedule.from_config({"beta_schedule": "quadratic"})
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMSchedule.from_config({"prediction_type": "eps"})
    with pytest.raises(ValueError, match="FlowMatchingSchedule"):
        DDPMSchedule.from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    assert isinstance(schedule_from_config(SD15_CONFIG), DDPMSchedule)


def test_zero_terminal_snr_rescale():
    betas = DDPMSchedule.scaled_linear().betas
    new = rescale_zero_terminal_snr(betas)
    ab_old = torch.cumprod(1 - betas, 0)
    ab_new = torch.cumprod(1 - new, 0)
    assert ab_new[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert ab_new[0].item() == pytest.approx(ab_old[0].item(), rel=1e-12)
    # √ᾱ is an affine map of the old √ᾱ: check the midpoint against the formula.
    s_old, s_new = ab_old.sqrt(), ab_new.sqrt()
    expected = (s_old[500] - s_old[-1]) * s_old[0] / (s_old[0] - s_old[-1])
    assert s_new[500].item() == pytest.approx(expected.item(), rel=1e-12)
    sched = DDPMSchedule.from_config({**SD15_CONFIG, "rescale_betas_zero_snr": True})
    assert sched.snr(torch.tensor([999])).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_coefficients_match_add_noise_and_target(kind):
    sched = DDPMSchedule.scaled_linear(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    ab = torch.tensor([sched.alphas_cumprod[i].item() for i in (0, 500, 999)], dtype=torch.float64)
    sa, sb = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    expected_xt = sa * x0 + sb * eps
    expected_target = {"epsilon": eps, "v_prediction": sa * eps - sb * x0, "sample": x0}[kind]
    torch.testing.assert_close(sched.add_noise(x0, eps, t), expected_xt, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sched.target(x0, eps, t), expected_target, rtol=1e-12, atol=1e-12)
    a, b, c, d = (v.view(-1, 1, 1, 1) for v in sched.coefficients(t))
    torch.testing.assert_close(a * x0 + b * eps, expected_xt, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c * x0 + d * eps, expected_target, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("source", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("target", ["epsilon", "v_prediction", "sample"])
def test_prediction_conversions_round_trip(source, target):
    sched = DDPMSchedule.scaled_linear()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 400, 998])
    xt = sched.add_noise(x0, eps, t)
    truth = {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": DDPMSchedule.scaled_linear(prediction_type="v_prediction").target(
            x0, eps, t
        ),
    }
    out = sched.convert(truth[source], xt, t, source=source, target=target)
    torch.testing.assert_close(out, truth[target], rtol=1e-9, atol=1e-9)


def test_posterior_equals_product_of_gaussians():
    # q(x_{t-1}|x_t,x0) ∝ N(x_t; √α_t x_{t-1}, β_t) · N(x_{t-1}; √ᾱ_{t-1} x0, 1-ᾱ_{t-1}):
    # precision = α_t/β_t + 1/(1-ᾱ_{t-1}); mean = var·(√α_t x_t/β_t + √ᾱ_{t-1} x0/(1-ᾱ_{t-1})).
    sched = DDPMSchedule.linear()
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    xt = torch.tensor([[1.1, 0.4]], dtype=torch.float64)
    for step in (1, 37, 999):
        beta = sched.betas[step].item()
        alpha = 1 - beta
        ab_prev = math.prod(1 - sched.betas[i].item() for i in range(step))
        var = 1 / (alpha / beta + 1 / (1 - ab_prev))
        mean = var * (math.sqrt(alpha) * xt / beta + math.sqrt(ab_prev) * x0 / (1 - ab_prev))
        got_mean, got_var = sched.posterior(x0, xt, torch.tensor([step]))
        assert got_var.item() == pytest.approx(var, rel=1e-9)
        torch.testing.assert_close(got_mean, mean, rtol=1e-9, atol=1e-12)
    # t = 0: the posterior collapses onto x0.
    mean0, var0 = sched.posterior(x0, xt, torch.tensor([0]))
    assert var0.item() == 0.0
    torch.testing.assert_close(mean0, x0)


def test_snr_and_timestep_sampling():
    sched = DDPMSchedule.scaled_linear()
    ab = sched.alphas_cumprod[123].item()
    assert sched.snr(torch.tensor([123])).item() == pytest.approx(ab / (1 - ab))
    g = torch.Generator().manual_seed(0)
    t = sched.sample_timesteps(20_000, generator=g)
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    # Uniform over 1000 steps: mean 499.5, sd 288.7 → the sample mean's sd is ≈ 2.
    assert abs(t.float().mean().item() - 499.5) < 10
    again = sched.sample_timesteps(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_invalid_timesteps_are_refused():
    sched = DDPMSchedule.scaled_linear()
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        sched.alpha_bar(torch.tensor([1000]))
    with pytest.raises(TypeError, match="integer"):
        sched.alpha_bar(torch.tensor([0.5]))
