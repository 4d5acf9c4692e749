"""The guided sampling loop and the guidance strategies.

Three kinds of evidence:

- against the stock diffusers pipelines (``StableDiffusionPipeline``,
  ``StableDiffusionXLPipeline``, ``FluxPipeline``) loaded from the same tiny hub-layout
  checkpoints with the same per-image CPU generators: the independent reference for noise,
  ``init_noise_sigma``, ``scale_model_input``, timesteps, the FLUX shift, guidance and decoding;
- guidance formulas recomputed by hand (float64) from separate denoiser calls;
- pinned output sums per scheduler on the toy backbones, which guard against unintended changes
  of the loop (the diffusers convention for full-loop tests).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

pytest.importorskip("diffusers")

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FluxPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from pref_core.backbones.flux import load_flux
from pref_core.backbones.guidance import (
    ClassifierFreeGuidance,
    DistilledGuidance,
    GuidanceStrategy,
    NoGuidance,
    TrueCFG,
    null_for_guidance,
)
from pref_core.backbones.sampling import (
    SampleResult,
    default_guidance,
    make_grid,
    make_scheduler,
    sample,
)
from pref_core.backbones.sd import load_sd15, load_sdxl
from pref_core.backbones.toy import build_toy
from pref_core.conditioning import Conditioning
from pref_core.ops import combine_guidance

PROMPTS = ["a red circle", "two blue squares", "a green star on the left"]
STEPS = 4


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def toy():
    return build_toy("toy", seed=0)


@pytest.fixture(scope="module")
def toy_flux():
    return build_toy("toy-flux", seed=0)


@pytest.fixture(scope="module")
def sd15(tiny_sd15_dir):
    return load_sd15(str(tiny_sd15_dir))


@pytest.fixture(scope="module")
def flux(tiny_flux_dir):
    return load_flux(str(tiny_flux_dir))


def generators(seeds):
    """What diffusers pipelines take for per-image seeds: a list of CPU generators."""
    return [torch.Generator().manual_seed(s) for s in seeds]


class PerSample(nn.Module):
    """Runs a denoiser one sample at a time, so its output for a sample cannot depend on the
    batch it is in (CPU kernels may round differently for different batch sizes). With it,
    batch-independence of the *sampler* is testable bit for bit."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.inner = denoiser

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        return torch.cat(
            [
                self.inner(x_t[i : i + 1], timesteps[i : i + 1], cond.index([i]))
                for i in range(x_t.shape[0])
            ]
        )


class Recording(nn.Module):
    """Records every call's inputs, then delegates."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.inner = denoiser
        self.calls: list[tuple[Tensor, Tensor, Conditioning]] = []

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        self.calls.append((x_t.clone(), timesteps.clone(), cond))
        return self.inner(x_t, timesteps, cond)


# ---------------------------------------------------------------------------------- the CHATS example
@dataclass(frozen=True)
class ProxyPromptGuidance:
    """CHATS's sampler as a strategy (CHATS Eq. 17; the example in docs/sampling.md):

    ε̃ = (1 + s)·ε⁺(c) − s·ε⁻(ĉ),   ĉ = −α·c + (1 + α)·∅.
    """

    scale: float = 5.0
    alpha: float = 0.5
    requires = ("preferred", "dispreferred")

    def prepare(self, backbone, prompts, negative_prompts=None):
        cond = backbone.encode(prompts)
        null = null_for_guidance(backbone, len(cond), negative_prompts)
        proxy = -self.alpha * cond + (1 + self.alpha) * null  # ĉ
        return cond, proxy

    def __call__(self, denoisers, x_t, timesteps, state):
        cond, proxy = state
        preferred = denoisers["preferred"](x_t, timesteps, cond)
        dispreferred = denoisers["dispreferred"](x_t, timesteps, proxy)
        return combine_guidance([preferred, dispreferred], [1 + self.scale, -self.scale])


def test_strategies_satisfy_the_protocol():
    for strategy in (
        ClassifierFreeGuidance(1.0),
        DistilledGuidance(),
        TrueCFG(1.0),
        NoGuidance(),
        ProxyPromptGuidance(),
    ):
        assert isinstance(strategy, GuidanceStrategy)


# ---------------------------------------------------------------------------------- CFG math
def _inputs(backbone, batch: int = 2, t: int = 500):
    gen = torch.Generator().manual_seed(123)
    c, h, w = 3, *backbone.sample_size
    x_t = torch.randn(batch, c, h, w, generator=gen)
    return x_t, torch.full((batch,), t, dtype=torch.long)


def test_cfg_scale_zero_is_exactly_the_conditional_prediction(toy):
    """s = 0 in pref's convention (CHATS Eq. 8) is ε(c), bit for bit — not ε(∅) as w = 0 would
    be in diffusers' convention."""
    denoiser = PerSample(toy.denoiser)
    x_t, t = _inputs(toy)
    prompts = PROMPTS[:2]
    strategy = ClassifierFreeGuidance(0.0)
    with torch.no_grad():
        guided = strategy({"policy": denoiser}, x_t, t, strategy.prepare(toy, prompts))
        conditional = denoiser(x_t, t, toy.encode(prompts))
    assert torch.equal(guided, conditional)


def test_cfg_matches_the_formula_by_hand(toy):
    """(1 + s)·ε(c) − s·ε(∅) with ∅ the encoded empty prompt, from two separate calls."""
    s = 2.5
    x_t, t = _inputs(toy)
    prompts = PROMPTS[:2]
    strategy = ClassifierFreeGuidance(s)
    with torch.no_grad():
        guided = strategy({"policy": toy.denoiser}, x_t, t, strategy.prepare(toy, prompts))
        eps_c = toy.denoiser(x_t, t, toy.encode(prompts)).double()
        eps_u = toy.denoiser(x_t, t, toy.encode(["", ""])).double()
    expected = (1 + s) * eps_c - s * eps_u
    torch.testing.assert_close(guided.double(), expected, rtol=1e-5, atol=1e-5)
    assert (guided.double() - eps_c).abs().max() > 1e-2  # guidance did something


def test_cfg_diffusers_scale_convention(toy):
    """diffusers' guidance_scale w is 1 + s: ε(∅) + w·(ε(c) − ε(∅))."""
    strategy = ClassifierFreeGuidance.from_diffusers_scale(7.5)
    assert strategy.scale == 6.5 and strategy.diffusers_scale == 7.5
    x_t, t = _inputs(toy)
    with torch.no_grad():
        guided = strategy({"policy": toy.denoiser}, x_t, t, strategy.prepare(toy, PROMPTS[:2]))
        eps_c = toy.denoiser(x_t, t, toy.encode(PROMPTS[:2])).double()
        eps_u = toy.denoiser(x_t, t, toy.encode(["", ""])).double()
    torch.testing.assert_close(guided.double(), eps_u + 7.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


def test_cfg_negative_prompts_replace_the_null(toy):
    state = ClassifierFreeGuidance(1.0).prepare(toy, PROMPTS[:2], ["blue", "red"])
    null, cond = state.chunk(2)  # [∅; c], diffusers' batch order
    assert torch.equal(null["prompt_embeds"], toy.encode(["blue", "red"])["prompt_embeds"])
    assert torch.equal(cond["prompt_embeds"], toy.encode(PROMPTS[:2])["prompt_embeds"])


def test_cfg_uses_zeros_when_the_encoder_forces_them(tiny_sdxl_dir):
    """SDXL base sets force_zeros_for_empty_prompt: ∅ is zeroed embeddings, size ids kept."""
    sdxl = load_sdxl(str(tiny_sdxl_dir))
    assert sdxl.encoder.force_zeros_for_empty_prompt
    null, cond = ClassifierFreeGuidance(1.0).prepare(sdxl, ["a cat"]).chunk(2)
    assert not null["prompt_embeds"].any() and not null["pooled_prompt_embeds"].any()
    assert torch.equal(null["add_time_ids"], cond["add_time_ids"])


def test_distilled_guidance_sets_the_guidance_id(flux):
    state = DistilledGuidance(4.0).prepare(flux, ["a cat", "a dog"])
    assert torch.equal(state["guidance"], torch.full((2,), 4.0))
    assert torch.equal(state["prompt_embeds"], flux.encode(["a cat", "a dog"])["prompt_embeds"])


def test_distilled_guidance_refuses_models_without_it(toy):
    with pytest.raises(KeyError, match="no 'guidance' entry"):
        DistilledGuidance().prepare(toy, ["a red circle"])


def test_true_cfg_matches_the_formula_by_hand(flux):
    s, g = 2.0, 2.5
    strategy = TrueCFG(s, guidance=g)
    gen = torch.Generator().manual_seed(5)
    x_t = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.full((2,), 600.0)
    with torch.no_grad():
        guided = strategy({"policy": flux.denoiser}, x_t, t, strategy.prepare(flux, ["a", "b"]))
        cond = flux.encode(["a", "b"]).replace(guidance=torch.full((2,), g))
        neg = flux.encode(["", ""]).replace(guidance=torch.full((2,), g))
        v_c = flux.denoiser(x_t, t, cond).double()
        v_n = flux.denoiser(x_t, t, neg).double()
    torch.testing.assert_close(guided.double(), (1 + s) * v_c - s * v_n, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- vs stock pipelines
@pytest.mark.parametrize(
    ("name", "scheduler_class"),
    [
        ("default", DDIMScheduler),
        ("euler", EulerDiscreteScheduler),
        ("dpm-solver", DPMSolverMultistepScheduler),
    ],
)
def test_sd15_matches_stable_diffusion_pipeline(sd15, tiny_sd15_dir, name, scheduler_class):
    """Same checkpoint, scheduler and per-image generators: the same images as diffusers
    (guidance_scale 7.5, negative prompts, 32×32 through the VAE)."""
    prompts, negatives = ["a cat on a red chair", "a dog"], ["blue", "green"]
    ours = sample(
        sd15,
        prompts,
        negative_prompts=negatives,
        scheduler=name,
        num_inference_steps=STEPS,
        seeds=[3, 4],
        progress=False,
    )
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), safety_checker=None)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompts,
        negative_prompt=negatives,
        guidance_scale=7.5,
        num_inference_steps=STEPS,
        generator=generators([3, 4]),
        output_type="pt",
    ).images
    assert ours.images.shape == (2, 3, 32, 32) and ours.images.dtype == torch.float32
    torch.testing.assert_close(ours.images, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [32, 48])
def test_sdxl_matches_stable_diffusion_xl_pipeline(tiny_sdxl_dir, size):
    """Zeroed null (force_zeros_for_empty_prompt) and size ids following the resolution."""
    sdxl = load_sdxl(str(tiny_sdxl_dir))
    prompts = ["a cat on a red chair", "a dog"]
    ours = sample(sdxl, prompts, num_inference_steps=STEPS, height=size, width=size, progress=False)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir))
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompts,
        num_inference_steps=STEPS,
        height=size,
        width=size,
        guidance_scale=7.5,
        generator=generators([0, 1]),
        output_type="pt",
    ).images
    torch.testing.assert_close(ours.images, reference, rtol=0, atol=1e-5)


def test_flux_matches_flux_pipeline(flux, tiny_flux_dir):
    """Distilled guidance 3.5 (the default for guidance-embedding models) and true CFG with
    negative prompts; σ = linspace(1, 1/N, N) shifted by μ(sequence length)."""
    pipe = FluxPipeline.from_pretrained(str(tiny_flux_dir))
    pipe.set_progress_bar_config(disable=True)
    prompts, negatives = ["a cat on a red chair", "a dog"], ["blurry", "dark"]
    common = dict(num_inference_steps=STEPS, height=32, width=32)
    length = flux.encoder.max_sequence_length

    ours = sample(flux, prompts, progress=False, **common)
    reference = pipe(
        prompts,
        guidance_scale=3.5,
        generator=generators([0, 1]),
        output_type="pt",
        max_sequence_length=length,
        **common,
    ).images
    torch.testing.assert_close(ours.images, reference, rtol=0, atol=1e-5)

    ours = sample(
        flux,
        prompts,
        guidance=TrueCFG.from_diffusers_scale(3.0, guidance=2.0),
        negative_prompts=negatives,
        progress=False,
        **common,
    )
    reference = pipe(
        prompts,
        negative_prompt=negatives,
        true_cfg_scale=3.0,
        guidance_scale=2.0,
        generator=generators([0, 1]),
        output_type="pt",
        max_sequence_length=length,
        **common,
    ).images
    torch.testing.assert_close(ours.images, reference, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------- timesteps
def test_ddpm_family_denoiser_gets_integer_timesteps(toy):
    recorder = Recording(toy.denoiser)
    sample(
        toy,
        PROMPTS[:1],
        scheduler="ddim",
        guidance=NoGuidance(),
        num_inference_steps=STEPS,
        denoisers={"policy": recorder},
        progress=False,
    )
    # DDIM, "leading" spacing, steps_offset 0 (the toy config): 1000 // 4 · (3, 2, 1, 0).
    seen = [t for _, t, _ in recorder.calls]
    assert all(t.dtype == torch.int64 and t.shape == (1,) for t in seen)
    assert [int(t) for t in seen] == [750, 500, 250, 0]


def test_flux_dynamic_shift_timesteps(flux):
    """FLUX.1-dev's config shifts σ by μ, linear in the packed sequence length: a 32×32 image
    through the 2× VAE is 16×16 latents, (16/2)·(16/2) = 64 tokens, so
    μ = 0.5 + (1.15 − 0.5)·(64 − 256)/(4096 − 256) = 0.4675 and
    σ' = e^μ / (e^μ + 1/σ − 1) for σ = 1, 3/4, 1/2, 1/4; the model gets σ'·1000."""
    recorder = Recording(flux.denoiser)
    sample(
        flux,
        ["a cat"],
        num_inference_steps=STEPS,
        height=32,
        width=32,
        denoisers={"policy": recorder},
        progress=False,
    )
    mu = 0.5 + (1.15 - 0.5) * (64 - 256) / (4096 - 256)
    expected = [1000 * math.exp(mu) / (math.exp(mu) + 1 / s - 1) for s in (1.0, 0.75, 0.5, 0.25)]
    seen = [float(t) for _, t, _ in recorder.calls]
    assert seen == pytest.approx(expected, rel=1e-6)
    assert all(c["guidance"].tolist() == [3.5] for _, _, c in recorder.calls)


def test_unshifted_flow_timesteps(toy_flux):
    """toy-flux: shift 1, no dynamic shifting: σ = linspace(1, 1/N, N), model input σ·1000."""
    recorder = Recording(toy_flux.denoiser)
    sample(
        toy_flux,
        PROMPTS[:1],
        guidance=NoGuidance(),
        num_inference_steps=STEPS,
        denoisers={"policy": recorder},
        progress=False,
    )
    assert [float(t) for _, t, _ in recorder.calls] == pytest.approx([1000, 750, 500, 250])


# ---------------------------------------------------------------------------------- pinned sums
# Sums of all output pixels for PROMPTS (3 images of 3×32×32, seeds 0, 1, 2, batch_size 2, 4
# steps, CFG s = 6.5), obtained once by running this loop on the toy backbones (seed 0) with
# torch 2.13 / diffusers 0.42 on CPU. They guard against unintended changes of the loop
# (noise, scaling, timesteps, guidance, decoding); a deliberate change updates them.
PINNED = {
    ("toy", "default"): 4309.7431640625,  # DDPMScheduler (stochastic steps, per-image generators)
    ("toy", "ddim"): 4444.58154296875,
    ("toy", "euler"): 4405.26220703125,
    ("toy", "dpm-solver"): 4407.072265625,
    ("toy-flux", "flow-euler"): 4622.7900390625,
}


@pytest.mark.parametrize(("kind", "scheduler"), sorted(PINNED))
def test_pinned_output_sum(toy, toy_flux, kind, scheduler):
    backbone = toy if kind == "toy" else toy_flux
    result = sample(
        backbone,
        PROMPTS,
        guidance=ClassifierFreeGuidance(6.5),
        scheduler=scheduler,
        num_inference_steps=STEPS,
        batch_size=2,
        progress=False,
    )
    assert result.images.shape == (3, 3, 32, 32)
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert result.seeds == [0, 1, 2] and result.prompts == PROMPTS
    assert result.images.sum().item() == pytest.approx(PINNED[kind, scheduler], rel=1e-4)


# ---------------------------------------------------------------------------------- whole-loop properties
def test_cfg_zero_loop_equals_no_guidance(toy):
    """The whole loop with s = 0 gives the unguided images (per-sample denoiser, so batch size
    2B vs B cannot change the rounding)."""
    denoisers = {"policy": PerSample(toy.denoiser)}
    common = dict(scheduler="ddim", num_inference_steps=STEPS, denoisers=denoisers, progress=False)
    cfg0 = sample(toy, PROMPTS[:2], guidance=ClassifierFreeGuidance(0.0), **common)
    plain = sample(toy, PROMPTS[:2], guidance=NoGuidance(), **common)
    assert torch.equal(cfg0.images, plain.images)


@pytest.mark.parametrize("kind", ["toy", "toy-flux"])
def test_image_does_not_depend_on_its_batch(toy, toy_flux, kind):
    """Image 1 (seed 1) alone equals image 1 inside a batch of 3: per-image generators for the
    initial noise and (DDPM's stochastic steps) for step noise."""
    backbone = toy if kind == "toy" else toy_flux
    denoisers = {"policy": PerSample(backbone.denoiser)}
    common = dict(num_inference_steps=STEPS, denoisers=denoisers, progress=False)
    batch = sample(backbone, PROMPTS, seeds=[0, 1, 2], batch_size=3, **common)
    alone = sample(backbone, [PROMPTS[1]], seeds=[1], batch_size=1, **common)
    assert torch.equal(batch.images[1], alone.images[0])
    # With the plain batched denoiser only kernel rounding differs.
    plain = sample(backbone, [PROMPTS[1]], seeds=[1], num_inference_steps=STEPS, progress=False)
    torch.testing.assert_close(plain.images[0], batch.images[1], rtol=0, atol=1e-3)


def test_seeds_default_and_base(toy):
    common = dict(scheduler="ddim", num_inference_steps=1, progress=False)
    default = sample(toy, PROMPTS[:2], **common)
    explicit = sample(toy, PROMPTS[:2], seeds=[0, 1], **common)
    based = sample(toy, PROMPTS[:2], seeds=5, **common)
    assert default.seeds == [0, 1] and based.seeds == [5, 6]
    assert torch.equal(default.images, explicit.images)
    assert not torch.equal(default.images, based.images)
    with pytest.raises(ValueError, match="one seed per image"):
        sample(toy, PROMPTS[:2], seeds=[1], **common)


# ---------------------------------------------------------------------------------- two denoisers
def _perturbed_copy(denoiser: nn.Module, seed: int) -> nn.Module:
    import copy

    other = copy.deepcopy(denoiser)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return other


def test_two_denoiser_strategy_formula(toy):
    """ProxyPromptGuidance computes (1 + s)·ε⁺(c) − s·ε⁻(ĉ) with ĉ = −α·c + (1 + α)·∅."""
    s, alpha = 3.0, 0.5
    preferred, dispreferred = toy.denoiser, _perturbed_copy(toy.denoiser, 1)
    denoisers = {"preferred": preferred, "dispreferred": dispreferred}
    strategy = ProxyPromptGuidance(s, alpha)
    x_t, t = _inputs(toy)
    with torch.no_grad():
        guided = strategy(denoisers, x_t, t, strategy.prepare(toy, PROMPTS[:2]))
        cond = toy.encode(PROMPTS[:2])
        null_embeds = toy.encode(["", ""])["prompt_embeds"]
        proxy = Conditioning(
            {"prompt_embeds": -alpha * cond["prompt_embeds"] + (1 + alpha) * null_embeds}
        )
        expected = (1 + s) * preferred(x_t, t, cond).double() - s * dispreferred(
            x_t, t, proxy
        ).double()
    torch.testing.assert_close(guided.double(), expected, rtol=1e-5, atol=1e-5)


def test_two_denoiser_strategy_plugs_into_the_loop(toy):
    """The loop runs a CHATS-like strategy unchanged; with α = 0 and one model in both roles it
    reduces to CFG (CHATS Sec. 4.2: "when α = 0, the method degenerates into CFG")."""
    preferred = Recording(toy.denoiser)
    dispreferred = Recording(_perturbed_copy(toy.denoiser, 2))
    common = dict(scheduler="ddim", num_inference_steps=STEPS, progress=False)
    chats = sample(
        toy,
        PROMPTS[:2],
        guidance=ProxyPromptGuidance(4.0, 0.5),
        denoisers={"preferred": preferred, "dispreferred": dispreferred},
        **common,
    )
    assert len(preferred.calls) == len(dispreferred.calls) == STEPS
    cfg = sample(toy, PROMPTS[:2], guidance=ClassifierFreeGuidance(4.0), **common)
    assert (chats.images - cfg.images).abs().max() > 1e-3

    same = sample(
        toy,
        PROMPTS[:2],
        guidance=ProxyPromptGuidance(4.0, 0.0),
        denoisers={"preferred": toy.denoiser, "dispreferred": toy.denoiser},
        **common,
    )
    torch.testing.assert_close(same.images, cfg.images, rtol=0, atol=1e-4)


def test_missing_denoiser_is_named(toy):
    with pytest.raises(KeyError, match="dispreferred"):
        sample(
            toy,
            PROMPTS[:1],
            guidance=ProxyPromptGuidance(),
            denoisers={"preferred": toy.denoiser},
            num_inference_steps=1,
            progress=False,
        )


# ---------------------------------------------------------------------------------- schedulers
def test_mismatched_schedulers_are_refused(toy, toy_flux):
    with pytest.raises(ValueError, match=r"integrates a flow ODE.*DDPM-family"):
        make_scheduler(toy, "flow-euler")
    with pytest.raises(ValueError, match=r"DDPM-family scheduler.*rectified-flow"):
        make_scheduler(toy_flux, "ddim")
    with pytest.raises(ValueError, match=r"DDPM-family scheduler.*rectified-flow"):
        sample(toy_flux, ["a"], scheduler=DDIMScheduler(), progress=False)
    with pytest.raises(ValueError, match="no scheduler class"):
        make_scheduler(toy, "NoSuchScheduler")


def test_schedulers_come_from_the_model_config(toy, toy_flux):
    assert type(make_scheduler(toy)).__name__ == "DDPMScheduler"  # the toy's own
    assert type(make_scheduler(toy, "dpm-solver")).__name__ == "DPMSolverMultistepScheduler"
    assert type(make_scheduler(toy_flux)).__name__ == "FlowMatchEulerDiscreteScheduler"
    ddim = make_scheduler(toy, "ddim")
    assert ddim.config.beta_schedule == "linear" and ddim.config.beta_end == 0.02
    given = DDIMScheduler.from_config(toy.scheduler_config)
    assert make_scheduler(toy, given) is not given  # the caller's scheduler is not advanced
    # "auto": DDIM instead of the shipped ancestral DDPM sampler; flow models keep their own.
    assert type(make_scheduler(toy, "auto")).__name__ == "DDIMScheduler"
    assert type(make_scheduler(toy_flux, "auto")).__name__ == "FlowMatchEulerDiscreteScheduler"


# ---------------------------------------------------------------------------------- defaults, checks
def test_default_guidance(toy, toy_flux, flux):
    assert default_guidance(toy) == ClassifierFreeGuidance(6.5)
    assert default_guidance(toy_flux) == ClassifierFreeGuidance(6.5)
    assert default_guidance(flux) == DistilledGuidance(3.5)
    schnell_like = dataclasses.replace(toy_flux, kind="flux")  # no guidance embeddings
    assert default_guidance(schnell_like) == NoGuidance()


def test_size_checks_and_training_mode(toy, toy_flux):
    with pytest.raises(ValueError, match="multiples of 2"):
        sample(toy_flux, ["a"], height=33, width=32, progress=False)
    toy.denoiser.train()
    try:
        sample(toy, ["a"], num_inference_steps=1, progress=False)
        assert toy.denoiser.training  # restored after sampling in eval mode
    finally:
        toy.denoiser.eval()


# ---------------------------------------------------------------------------------- outputs
def test_grid_png_has_the_right_size(toy, tmp_path):
    result = sample(toy, PROMPTS, scheduler="ddim", num_inference_steps=1, progress=False)
    path = result.save_grid(tmp_path / "out" / "grid.png")
    with Image.open(path) as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
        assert grid.size == (2 * 32, 2 * 32)  # 3 images, ⌈√3⌉ = 2 per row, 2 rows
        first = torch.from_numpy(np.asarray(grid.crop((0, 0, 32, 32)))).float()  # (H, W, 3)
    assert torch.equal(first, (result.images[0] * 255).round().permute(1, 2, 0))
    assert make_grid(result.images, nrow=3).size == (3 * 32, 32)
    assert make_grid(result.images, nrow=1).size == (32, 3 * 32)


def test_output_types(toy):
    common = dict(scheduler="ddim", num_inference_steps=1, seeds=[7], progress=False)
    pt = sample(toy, ["a red circle"], **common)
    pil = sample(toy, ["a red circle"], output_type="pil", **common)
    latent = sample(toy, ["a red circle"], output_type="latent", **common)
    assert isinstance(pt, SampleResult) and isinstance(pil.images[0], Image.Image)
    assert pil.images[0].size == (32, 32) and pil.grid().size == (32, 32)
    # The toy's codec is the identity: images are latents mapped from [-1, 1] to [0, 1].
    torch.testing.assert_close(pt.images, (latent.images / 2 + 0.5).clamp(0, 1))
