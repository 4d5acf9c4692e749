"""The toy backbones: built from the packaged configs, saved in the Hub layout, loaded back,
tokenised word by word, and trained for one Diffusion-DPO step on a CPU."""

import copy
import json
import math
import time

import pytest
import torch

pytest.importorskip("diffusers")

from pref_core.backbones.base import IdentityCodec, LoadOptions
from pref_core.backbones.flux import FluxConditionEncoder, FluxDenoiser
from pref_core.backbones.sd import CLIPConditionEncoder, UNetDenoiser
from pref_core.backbones.toy import (
    DEFAULT_VOCABULARY,
    build_toy,
    load_toy,
    make_word_tokenizer,
    parameter_counts,
    save_toy,
    toy_config,
)
from pref_core.objectives import DiffusionDPO
from pref_core.pairs import noise_pair, predict_pair
from pref_core.schedules import DDPMSchedule, FlowMatchingSchedule

KINDS = ["toy", "toy-flux"]
PROMPTS = ["a red circle on the left", "two small blue squares , top right"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def toys():
    return {kind: build_toy(kind, seed=0) for kind in KINDS}


@pytest.fixture(scope="module")
def saved(toys, tmp_path_factory):
    return {
        kind: save_toy(backbone, tmp_path_factory.mktemp(kind)) for kind, backbone in toys.items()
    }


def _timesteps(backbone, batch, seed=0):
    t = backbone.process.sample_timesteps(batch, generator=_gen(seed))
    return backbone.process.model_timesteps(t)


# ------------------------------------------------------------------------------ building
def test_toy_parts(toys):
    toy = toys["toy"]
    assert toy.kind == "toy" and toy.pipeline_class == "StableDiffusionPipeline"
    assert toy.denoiser_name == "unet" and toy.source is None
    assert isinstance(toy.denoiser, UNetDenoiser)
    assert isinstance(toy.encoder, CLIPConditionEncoder)
    assert isinstance(toy.codec, IdentityCodec) and toy.codec.latent_channels == 3
    assert isinstance(toy.process, DDPMSchedule) and toy.process.prediction_type == "epsilon"
    assert toy.process.num_train_timesteps == 1000
    # Ho et al.'s linear betas, from the packaged scheduler config.
    assert torch.allclose(
        toy.process.betas[[0, -1]], torch.tensor([1e-4, 2e-2], dtype=torch.float64)
    )
    assert toy.sample_size == (32, 32) and toy.model.config.sample_size == 32


def test_toy_flux_parts(toys):
    toy = toys["toy-flux"]
    assert toy.kind == "toy-flux" and toy.pipeline_class == "FluxPipeline"
    assert toy.denoiser_name == "transformer"
    assert isinstance(toy.denoiser, FluxDenoiser) and isinstance(toy.encoder, FluxConditionEncoder)
    assert toy.model.config.in_channels == 12  # 2×2 patches of 3 pixel channels
    assert not toy.model.config.guidance_embeds
    assert isinstance(toy.codec, IdentityCodec)
    assert isinstance(toy.process, FlowMatchingSchedule)
    assert toy.process.shift == 1.0 and not toy.process.use_dynamic_shifting


@pytest.mark.parametrize("kind", KINDS)
def test_small_and_frozen_text_encoders(toys, kind):
    counts = parameter_counts(toys[kind])
    assert sum(counts.values()) < 2_000_000, counts
    encoder = toys[kind].encoder
    text_encoders = (
        [encoder.text_encoder] if kind == "toy" else [encoder.clip_text_encoder, encoder.t5_encoder]
    )
    for module in text_encoders:
        assert not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_weights(toys, kind):
    again = build_toy(kind, seed=0)
    other = build_toy(kind, seed=1)
    for a, b, _ in zip(
        toys[kind].model.parameters(), again.model.parameters(), other.model.parameters()
    ):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, c)
        for a, c in zip(toys[kind].model.parameters(), other.model.parameters())
    )


def test_conditioning_fields(toys):
    cond = toys["toy"].encode(PROMPTS)
    assert set(cond.keys()) == {"prompt_embeds"}
    assert cond["prompt_embeds"].shape == (2, 24, 64)
    flux_cond = toys["toy-flux"].encode(PROMPTS)
    assert flux_cond["prompt_embeds"].shape == (2, 24, 64)
    assert flux_cond["pooled_prompt_embeds"].shape == (2, 64)
    assert torch.equal(flux_cond["guidance"], torch.ones(2))
    assert torch.equal(flux_cond["text_ids"], torch.zeros(24, 3))
    zeros = toys["toy"].null_condition(2, "zeros")
    assert torch.count_nonzero(zeros["prompt_embeds"]) == 0
    empty = toys["toy"].null_condition(2, "empty")
    assert torch.equal(empty["prompt_embeds"], toys["toy"].encode(["", ""])["prompt_embeds"])


def test_image_size_option():
    small = build_toy("toy", image_size=16)
    assert small.sample_size == (16, 16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = small.denoiser(x, torch.tensor([10, 900]), small.encode(PROMPTS))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="multiple of 4"):
        build_toy("toy", image_size=18)
    with pytest.raises(ValueError, match="even"):
        build_toy("toy-flux", image_size=15)
    with pytest.raises(ValueError, match="unknown toy kind"):
        build_toy("toy-sdxl")


# ------------------------------------------------------------------------------ tokenizer
def test_word_level_tokenizer():
    tokenizer = make_word_tokenizer()
    vocab = tokenizer.get_vocab()
    specials = ("<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>")
    assert [vocab[t] for t in specials] == [0, 1, 2, 3]
    for word in ("red", "circle", "left", "two", "a", "the", "and", "on", "right"):
        assert word in DEFAULT_VOCABULARY
        assert tokenizer(word).input_ids == [2, vocab[word], 3]  # one id per known word
    ids = tokenizer("A  Red circle, xyzzy").input_ids
    assert ids == [2, vocab["a"], vocab["red"], vocab["circle"], vocab[","], 1, 3]
    padded = tokenizer(["red"], padding="max_length", max_length=24).input_ids[0]
    assert len(padded) == 24 and padded[3:] == [0] * 21
    long = tokenizer(" ".join(["red"] * 40), truncation=True, max_length=24).input_ids
    assert len(long) == 24 and long[-1] == 3  # the end token survives truncation


def test_custom_vocabulary():
    tokenizer = make_word_tokenizer(["Zebra", "moon", "zebra"], max_length=8)
    assert len(tokenizer) == 6 and tokenizer.model_max_length == 8
    assert tokenizer("zebra moon red").input_ids == [2, 4, 5, 1, 3]
    backbone = build_toy("toy", vocabulary=["zebra", "moon"])
    assert backbone.encoder.text_encoder.config.vocab_size == 6
    with pytest.raises(ValueError, match="single words"):
        make_word_tokenizer(["two words"])


# ------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(toys, saved, kind):
    path = saved[kind]
    index = json.loads((path / "model_index.json").read_text())
    assert index["_pref_kind"] == kind
    assert index["_class_name"] == toy_config(kind)["pipeline_class"]
    assert index["vae"] == [None, None]
    assert (path / "tokenizer" / "tokenizer.json").is_file()
    assert (path / "scheduler" / "scheduler_config.json").is_file()
    loaded = load_toy(str(path), LoadOptions())
    original = toys[kind]
    assert loaded.kind == kind and loaded.source == str(path)
    assert loaded.sample_size == original.sample_size
    assert loaded.scheduler_config["_class_name"] == original.scheduler_config["_class_name"]
    assert type(loaded.process) is type(original.process)
    tokenizer = loaded.encoder.tokenizer if kind == "toy" else loaded.encoder.t5_tokenizer
    reference = original.encoder.tokenizer if kind == "toy" else original.encoder.t5_tokenizer
    assert tokenizer("a red xyzzy").input_ids == reference("a red xyzzy").input_ids
    cond, cond_loaded = original.encode(PROMPTS), loaded.encode(PROMPTS)
    for name in cond:
        assert torch.equal(cond[name], cond_loaded[name]), name
    x = torch.randn(2, 3, 32, 32, generator=_gen(0))
    t = _timesteps(original, 2)
    with torch.no_grad():
        assert torch.equal(original.denoiser(x, t, cond), loaded.denoiser(x, t, cond_loaded))


def test_load_options(saved, toys, tmp_path):
    other = save_toy(build_toy("toy", seed=5), tmp_path / "other")
    swapped = load_toy(str(saved["toy"]), LoadOptions(denoiser=str(other)))
    first = next(swapped.model.parameters())
    assert torch.equal(first, next(build_toy("toy", seed=5).model.parameters()))
    assert not torch.equal(first, next(toys["toy"].model.parameters()))
    flux = load_toy(
        str(saved["toy-flux"]),
        LoadOptions(dtype=torch.float64, flow_density={"weighting_scheme": "uniform"}),
    )
    assert flux.process.weighting_scheme == "uniform"
    assert next(flux.model.parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match="not a toy backbone"):
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
        load_toy(str(tmp_path / "real"), LoadOptions())


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("kind", KINDS)
def test_diffusion_dpo_training_step(kind):
    backbone = build_toy(kind, seed=0)
    policy = backbone.denoiser
    reference = copy.deepcopy(policy).requires_grad_(False)
    text_before = [p.clone() for p in backbone.encoder.parameters()]
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    g = _gen(0)
    x_w = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1  # 8 pairs = 16 images
    x_l = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    prompts = [PROMPTS[i % 2] for i in range(8)]
    cond = backbone.encode(prompts)
    start = time.perf_counter()
    pair = noise_pair(
        backbone.process, backbone.codec.encode(x_w), backbone.codec.encode(x_l), generator=g
    )
    predictions = predict_pair(policy, reference, pair, cond)
    output = DiffusionDPO(beta=1000.0)(predictions, pair)
    output.loss.backward()
    optimizer.step()
    elapsed = time.perf_counter() - start
    assert math.isfinite(output.loss.item())
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), before))
    assert all(torch.equal(a, b) for a, b in zip(backbone.encoder.parameters(), text_before))
    assert all(p.grad is None for p in backbone.encoder.parameters())
    # Generous bound (a shared 2-core machine): the measured time is ~0.5 s.
    assert elapsed < 10.0, elapsed
