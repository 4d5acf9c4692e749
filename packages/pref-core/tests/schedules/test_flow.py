"""Rectified-flow math against hand-derived values."""

import math

import pytest
import torch

from pref_core.schedules import (
    FlowMatchingSchedule,
    image_seq_len,
    resolution_shift_mu,
    schedule_from_config,
    shift_sigmas,
    time_shift,
)

# FLUX.1-dev's scheduler/scheduler_config.json.
FLUX_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.30.0.dev0",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
SD3_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}


def test_interpolation_and_velocity_target():
    flow = FlowMatchingSchedule()
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    eps = torch.tensor([[0.0, 4.0], [-1.5, 2.0]], dtype=torch.float64)
    sig = torch.tensor([0.25, 1.0], dtype=torch.float64)
    # row 0: 0.75·[1, −2] + 0.25·[0, 4] = [0.75, −0.5]; row 1 at σ = 1 is pure noise.
    expected = torch.tensor([[0.75, -0.5], [-1.5, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(flow.add_noise(x0, eps, sig), expected)
    torch.testing.assert_close(flow.target(x0, eps, sig), eps - x0)
    a, b, c, d = flow.coefficients(sig)
    torch.testing.assert_close(a[:, None] * x0 + b[:, None] * eps, expected)
    torch.testing.assert_close(c[:, None] * x0 + d[:, None] * eps, eps - x0)


def test_conversions_recover_x0_and_noise():
    flow = FlowMatchingSchedule()
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    sig = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    xt, v = flow.add_noise(x0, eps, sig), flow.target(x0, eps)
    torch.testing.assert_close(flow.to_x0(v, xt, sig), x0)
    torch.testing.assert_close(flow.to_epsilon(v, xt, sig), eps)
    torch.testing.assert_close(flow.to_velocity(x_t=xt, sigmas=sig, x0=x0), v)
    torch.testing.assert_close(flow.to_velocity(x_t=xt, sigmas=sig, epsilon=eps), v)


def test_static_shift_by_hand():
    # s = 3, σ = 0.5: 1.5 / (1 + 2·0.5) = 0.75. σ = 0 and 1 are fixed points.
    sig = torch.tensor([0.0, 0.5, 1.0])
    assert shift_sigmas(sig, 3.0).tolist() == pytest.approx([0.0, 0.75, 1.0])


def test_flux_resolution_shift_by_hand():
    assert image_seq_len(1024, 1024) == 4096
    assert image_seq_len(512, 512) == 1024
    assert resolution_shift_mu(256) == pytest.approx(0.5)
    assert resolution_shift_mu(4096) == pytest.approx(1.15)
    # 1024 tokens: 0.5 + (1.15 − 0.5)·768/3840 = 0.63
    assert resolution_shift_mu(1024) == pytest.approx(0.63)
    # exponential shift at σ = ½: e^μ / (e^μ + 1) = sigmoid(μ)
    out = time_shift(torch.tensor([0.5], dtype=torch.float64), 1.15)
    assert out.item() == pytest.approx(1 / (1 + math.exp(-1.15)), rel=1e-12)
    # with power 1 the exponential form is the static shift with s = e^μ
    sig = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    torch.testing.assert_close(time_shift(sig, 0.8), shift_sigmas(sig, math.exp(0.8)))
    # linear form: μ / (μ + (1/σ − 1)); at σ = 0.2, μ = 2: 2 / (2 + 4) = 1/3
    lin = time_shift(torch.tensor([0.2], dtype=torch.float64), 2.0, kind="linear")
    assert lin.item() == pytest.approx(1 / 3)


def test_from_config_flux_and_sd3():
    flux = schedule_from_config(FLUX_CONFIG, weighting_scheme="uniform")
    assert isinstance(flux, FlowMatchingSchedule) and flux.use_dynamic_shifting
    with pytest.raises(ValueError, match="image_seq_len"):
        flux.sample_timesteps(4)
    g = torch.Generator().manual_seed(0)
    u = flux.sample_density(5, generator=g)
    got = flux.sample_timesteps(5, generator=torch.Generator().manual_seed(0), image_seq_len=4096)
    torch.testing.assert_close(got, torch.sigmoid(torch.logit(u) + 1.15))
    sd3 = FlowMatchingSchedule.from_config(SD3_CONFIG)
    assert sd3.shift == 3.0 and not sd3.use_dynamic_shifting
    with pytest.raises(ValueError, match="DDPM"):
        FlowMatchingSchedule.from_config({"beta_schedule": "scaled_linear"})


def test_logit_normal_density_statistics():
    flow = FlowMatchingSchedule(weighting_scheme="logit_normal", logit_mean=0.5, logit_std=0.8)
    u = flow.sample_density(50_000, generator=torch.Generator().manual_seed(0))
    logit = torch.logit(u.double())
    assert abs(logit.mean().item() - 0.5) < 0.02
    assert abs(logit.std().item() - 0.8) < 0.02


def test_mode_density_matches_sd3_formula():
    flow = FlowMatchingSchedule(weighting_scheme="mode", mode_scale=1.29)
    u = flow.sample_density(4, generator=torch.Generator().manual_seed(3))
    v = torch.rand(4, generator=torch.Generator().manual_seed(3))
    expected = 1 - v - 1.29 * (torch.cos(math.pi * v / 2) ** 2 - 1 + v)
    torch.testing.assert_close(u, expected)
    # mode_scale = 0 is uniform (as 1 − v)
    flat = FlowMatchingSchedule(weighting_scheme="mode", mode_scale=0.0)
    w = flat.sample_density(3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(w, 1 - torch.rand(3, generator=torch.Generator().manual_seed(4)))


def test_model_timesteps_and_validation():
    flow = FlowMatchingSchedule()
    assert flow.model_timesteps(torch.tensor([0.25])).item() == pytest.approx(250.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow.coefficients(torch.tensor([1.5]))
    with pytest.raises(TypeError):
        flow.coefficients(torch.tensor([1]))
    with pytest.raises(ValueError, match="weighting_scheme"):
        FlowMatchingSchedule(weighting_scheme="cosmap")
