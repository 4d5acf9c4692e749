"""FLUX.1 backbone: the tiny random FLUX pipeline written in the Hub layout and loaded back.

Expected values come from diffusers itself, called the documented way: ``FluxPipeline``'s
static packing helpers, its ``encode_prompt`` and a direct call of the transformer with the
arguments ``FluxPipeline.__call__`` passes.
"""

import copy
import math
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import FluxPipeline

from pref_core.backbones.base import LoadOptions, VAECodec
from pref_core.backbones.flux import (
    FluxConditionEncoder,
    FluxDenoiser,
    latent_image_ids,
    load_flux,
    pack_latents,
    packed_sequence_length,
    unpack_latents,
)
from pref_core.backbones.tiny_flux import tiny_flux_transformer
from pref_core.objectives import DiffusionDPO
from pref_core.pairs import noise_pair, predict_pair
from pref_core.schedules import FlowMatchingSchedule, image_seq_len

PROMPTS = ["a red cat sitting on a chair", "two birds over the blue sea"]


@pytest.fixture(scope="module")
def flux(tiny_flux_dir):
    return load_flux(str(tiny_flux_dir), LoadOptions())


@pytest.fixture(scope="module")
def stock_pipe(tiny_flux_dir):
    return FluxPipeline.from_pretrained(str(tiny_flux_dir))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ loading
def test_loaded_backbone_fields(flux, tiny_flux_dir):
    assert flux.kind == "flux"
    assert flux.pipeline_class == "FluxPipeline"
    assert flux.denoiser_name == "transformer"
    assert flux.source == str(tiny_flux_dir)
    assert isinstance(flux.denoiser, FluxDenoiser)
    assert type(flux.model).__name__ == "FluxTransformer2DModel"
    assert isinstance(flux.encoder, FluxConditionEncoder)
    # FluxPipeline samples 128 latent pixels per side; the tiny VAE downsamples 2×.
    assert flux.sample_size == (256, 256)
    assert flux.scheduler_config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    process = flux.process
    assert isinstance(process, FlowMatchingSchedule)
    assert process.use_dynamic_shifting
    assert (process.base_shift, process.max_shift) == (0.5, 1.15)
    assert (process.base_image_seq_len, process.max_image_seq_len) == (256, 4096)
    # T5 length from tokenizer_2's model_max_length (32 in the tiny build).
    assert flux.encoder.max_sequence_length == 32


def test_codec_is_the_flux_vae_with_shift(flux):
    codec = flux.codec
    assert isinstance(codec, VAECodec)
    assert (codec.shift_factor, codec.scaling_factor) == (0.1159, 0.3611)
    assert codec.latent_channels == 4 and codec.downsample_factor == 2
    vae = codec.vae
    images = torch.rand(1, 3, 16, 16, generator=_gen(0)) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        assert torch.allclose(
            codec.encode_mode(images), (posterior.mode() - 0.1159) * 0.3611, atol=1e-6
        )
        sampled = codec.encode(images, generator=_gen(3))
        assert torch.allclose(sampled, (posterior.sample(_gen(3)) - 0.1159) * 0.3611, atol=1e-6)
        z = torch.randn(1, 4, 8, 8, generator=_gen(1))
        assert torch.allclose(codec.decode(z), vae.decode(z / 0.3611 + 0.1159).sample, atol=1e-6)


def test_frozen_parts(flux):
    encoder = flux.encoder
    for module in (encoder.clip_text_encoder, encoder.t5_encoder, flux.codec.vae):
        assert not any(p.requires_grad for p in module.parameters())
        assert not module.training
    assert all(p.requires_grad for p in flux.model.parameters())


def test_missing_component_folder_is_named(tiny_flux_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_flux_dir, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(FileNotFoundError, match="text_encoder_2/"):
        load_flux(str(broken), LoadOptions())


def test_dtype_option(tiny_flux_dir):
    backbone = load_flux(str(tiny_flux_dir), LoadOptions(dtype=torch.bfloat16))
    for module in (backbone.model, backbone.codec.vae, backbone.encoder.t5_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    cond = backbone.encode(PROMPTS)
    assert cond["prompt_embeds"].dtype == torch.bfloat16
    assert cond["guidance"].dtype == torch.float32
    x = torch.randn(2, 4, 4, 4)  # float32 in: cast inside
    out = backbone.denoiser(x, torch.tensor([500.0, 250.0]), cond)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


# ------------------------------------------------------------------------------ packing
def test_pack_unpack_match_flux_pipeline():
    b, c, h, w = 2, 4, 6, 10  # non-square: a transposed layout would not match
    latents = torch.randn(b, c, h, w, generator=_gen(0))
    packed = pack_latents(latents)
    assert packed.shape == (b, (h // 2) * (w // 2), 4 * c)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, b, c, h, w))
    assert torch.equal(unpack_latents(packed, h, w), latents)
    # _unpack_latents takes pixel sizes and the VAE factor.
    vae_factor = 8
    reference = FluxPipeline._unpack_latents(packed, h * vae_factor, w * vae_factor, vae_factor)
    assert torch.equal(unpack_latents(packed, h, w), reference)
    tokens = torch.randn(b, (h // 2) * (w // 2), 4 * c, generator=_gen(1))
    assert torch.equal(pack_latents(unpack_latents(tokens, h, w)), tokens)


def test_image_ids_match_flux_pipeline():
    ids = latent_image_ids(6, 10)
    reference = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32)
    assert ids.shape == (15, 3)
    assert torch.equal(ids, reference)


def test_packed_sequence_length():
    z = torch.zeros(3, 16, 128, 96)
    assert packed_sequence_length(z) == 64 * 48
    assert packed_sequence_length(z) == image_seq_len(1024, 768)  # 8× VAE, 2×2 patches
    assert packed_sequence_length((4, 6)) == 6


def test_odd_sizes_and_wrong_channels_are_refused(flux):
    cond = flux.encode(PROMPTS[:1])
    with pytest.raises(ValueError, match="even"):
        flux.denoiser(torch.randn(1, 4, 5, 8), torch.tensor([500.0]), cond)
    with pytest.raises(ValueError, match="4-channel latents"):
        flux.denoiser(torch.randn(1, 3, 8, 8), torch.tensor([500.0]), cond)
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 4, 8, 7))


# ------------------------------------------------------------------------------ prediction
def test_prediction_equals_the_transformer_called_like_flux_pipeline(flux):
    cond = flux.encode(PROMPTS).replace(guidance=torch.tensor([3.5, 1.0]))
    b, c, h, w = 2, 4, 6, 8
    x = torch.randn(b, c, h, w, generator=_gen(0))
    timesteps = torch.tensor([700.0, 125.0])  # σ·1000, what the flow process hands out
    with torch.no_grad():
        got = flux.denoiser(x, timesteps, cond)
        # FluxPipeline.__call__: packed latents, timestep / 1000, raw guidance scale.
        out = flux.model(
            hidden_states=FluxPipeline._pack_latents(x, b, c, h, w),
            timestep=timesteps / 1000,
            guidance=torch.tensor([3.5, 1.0]),
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=cond["text_ids"],
            img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", x.dtype),
            return_dict=False,
        )[0]
        expected = FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)
        assert got.shape == x.shape
        assert torch.equal(got, expected)
        # The guidance field reaches the guidance embedding.
        other = flux.denoiser(x, timesteps, cond.replace(guidance=torch.tensor([1.0, 1.0])))
        assert torch.equal(other[1], got[1]) and not torch.allclose(other[0], got[0])


def test_model_without_guidance_embeddings_ignores_guidance(flux):
    denoiser = FluxDenoiser(tiny_flux_transformer(seed=0, guidance_embeds=False))
    cond = flux.encode(PROMPTS)
    x = torch.randn(2, 4, 4, 4, generator=_gen(2))
    t = torch.tensor([300.0, 900.0])
    with torch.no_grad():
        a = denoiser(x, t, cond)
        b = denoiser(x, t, cond.replace(guidance=torch.tensor([4.0, 7.0])))
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ conditioning
def test_conditioning_matches_flux_pipeline_encode_prompt(flux, stock_pipe):
    cond = flux.encode(PROMPTS)
    assert set(cond.batched) == {"prompt_embeds", "pooled_prompt_embeds", "guidance"}
    assert set(cond.shared) == {"text_ids"}
    assert "guidance" in cond.ids
    assert cond["prompt_embeds"].shape == (2, 32, 32)
    assert cond["pooled_prompt_embeds"].shape == (2, 32)
    assert torch.equal(cond["guidance"], torch.ones(2))
    with torch.no_grad():
        prompt_embeds, pooled, text_ids = stock_pipe.encode_prompt(
            PROMPTS, prompt_2=None, max_sequence_length=32
        )
    assert torch.allclose(cond["prompt_embeds"], prompt_embeds, atol=1e-6)
    assert torch.allclose(cond["pooled_prompt_embeds"], pooled, atol=1e-6)
    assert torch.equal(cond["text_ids"], text_ids) and text_ids.shape == (32, 3)


def test_guidance_setting_of_the_encoder(flux):
    encoder = copy.copy(flux.encoder)
    encoder.guidance = 3.5
    assert torch.equal(encoder.encode(PROMPTS)["guidance"], torch.full((2,), 3.5))


def test_null_conditions(flux):
    empty = flux.null_condition(3, "empty")
    direct = flux.encode(["", "", ""])
    for name in ("prompt_embeds", "pooled_prompt_embeds", "guidance", "text_ids"):
        assert torch.equal(empty[name], direct[name])
    zeros = flux.null_condition(3, "zeros")
    assert torch.count_nonzero(zeros["prompt_embeds"]) == 0
    assert torch.count_nonzero(zeros["pooled_prompt_embeds"]) == 0
    assert torch.equal(zeros["guidance"], torch.ones(3))  # an id: kept
    assert torch.equal(zeros["text_ids"], direct["text_ids"])
    assert zeros["prompt_embeds"].shape == empty["prompt_embeds"].shape
    assert torch.count_nonzero(empty["pooled_prompt_embeds"]) > 0
    with pytest.raises(ValueError, match="null mode"):
        flux.null_condition(1, "none")


def test_linear_combination_by_hand(flux):
    cond = flux.encode(PROMPTS)
    null = flux.null_condition(2, "empty")
    alpha = 0.7
    proxy = -alpha * cond + (1 + alpha) * null  # the CHATS proxy prompt
    for name in ("prompt_embeds", "pooled_prompt_embeds"):
        expected = -alpha * cond[name] + (1 + alpha) * null[name]
        assert torch.allclose(proxy[name], expected, atol=1e-6)
    assert torch.equal(proxy["guidance"], cond["guidance"])
    assert torch.equal(proxy["text_ids"], cond["text_ids"])
    with pytest.raises(ValueError, match="guidance"):
        _ = cond - cond.replace(guidance=torch.full((2,), 2.0))


# ------------------------------------------------------------------------------ training
def test_diffusion_dpo_step_trains_only_the_transformer(flux):
    backbone = copy.deepcopy(flux)
    policy = backbone.denoiser
    reference = copy.deepcopy(policy).requires_grad_(False)
    frozen = {
        "clip": [p.clone() for p in backbone.encoder.clip_text_encoder.parameters()],
        "t5": [p.clone() for p in backbone.encoder.t5_encoder.parameters()],
        "vae": [p.clone() for p in backbone.codec.vae.parameters()],
        "reference": [p.clone() for p in reference.parameters()],
    }
    before = [p.detach().clone() for p in policy.parameters()]
    g = _gen(0)
    images_w = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    images_l = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        z_w = backbone.codec.encode(images_w, generator=g)  # (2, 4, 8, 8)
        z_l = backbone.codec.encode(images_l, generator=g)
    cond = backbone.encode(PROMPTS)
    with pytest.raises(ValueError, match="image_seq_len"):
        noise_pair(backbone.process, z_w, z_l, generator=g)  # dynamic shifting needs it
    assert backbone.timestep_kwargs(z_w) == {"image_seq_len": packed_sequence_length(z_w)}
    pair = noise_pair(backbone.process, z_w, z_l, generator=g, **backbone.timestep_kwargs(z_w))
    assert pair.model_t.dtype.is_floating_point and bool((pair.model_t <= 1000).all())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    predictions = predict_pair(policy, reference, pair, cond)
    assert predictions.policy_w.shape == z_w.shape
    assert not predictions.reference_w.requires_grad
    # Policy == reference before the update: the implicit reward margin starts at zero.
    assert torch.allclose(predictions.policy_w, predictions.reference_w)
    output = DiffusionDPO(beta=500.0)(predictions, pair)
    assert math.isfinite(output.loss.item())
    assert abs(output.loss.item() - math.log(2)) < 1e-5
    output.loss.backward()
    optimizer.step()
    after = list(policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    for name, module in (
        ("clip", backbone.encoder.clip_text_encoder),
        ("t5", backbone.encoder.t5_encoder),
        ("vae", backbone.codec.vae),
        ("reference", reference),
    ):
        params = list(module.parameters())
        assert all(p.grad is None for p in params), name
        assert all(torch.equal(a, b) for a, b in zip(params, frozen[name])), name


# ------------------------------------------------------------------------------ denoiser swap
def _first_weights(model):
    return model.x_embedder.weight.detach().clone()


@pytest.mark.parametrize("layout", ["transformer", "root", "custom"])
def test_denoiser_option_swaps_the_transformer(tiny_flux_dir, flux, tmp_path, layout):
    other = tiny_flux_transformer(seed=7)
    checkpoint = tmp_path / "other"
    folder = {"transformer": checkpoint / "transformer", "root": checkpoint}.get(
        layout, checkpoint / "custom"
    )
    other.save_pretrained(str(folder))
    options = LoadOptions(
        denoiser=str(checkpoint), denoiser_subfolder="custom" if layout == "custom" else None
    )
    swapped = load_flux(str(tiny_flux_dir), options)
    assert torch.equal(_first_weights(swapped.model), _first_weights(other))
    assert not torch.equal(_first_weights(swapped.model), _first_weights(flux.model))
    # The rest of the pipeline is the original.
    assert torch.equal(
        swapped.encode(PROMPTS)["prompt_embeds"], flux.encode(PROMPTS)["prompt_embeds"]
    )


def test_denoiser_option_without_a_transformer_fails_clearly(tiny_flux_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="denoiser_subfolder"):
        load_flux(str(tiny_flux_dir), LoadOptions(denoiser=str(tmp_path / "empty")))
