"""SD 1.5 and SDXL backbones: tiny pipelines written in the hub layout, loaded by load_sd15/
load_sdxl, and checked against the stock diffusers pipelines and networks called directly.

Expected values come from diffusers itself (``StableDiffusionPipeline.encode_prompt``,
``StableDiffusionXLPipeline.encode_prompt``/``_get_add_time_ids``, ``unet(...)`` called the
documented way, ``vae.encode``) or are written out by hand, never from the code under test.
"""

import copy
import math
import shutil

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from pref_core.backbones.base import LoadOptions, VAECodec
from pref_core.backbones.sd import (
    CLIPConditionEncoder,
    SDXLConditionEncoder,
    UNetDenoiser,
    load_sd15,
    load_sdxl,
)
from pref_core.backbones.tiny_sd import (
    build_tiny_sd15,
    build_tiny_sdxl,
    tiny_sd15_unet,
    tiny_sdxl_unet,
)
from pref_core.objectives import DiffusionDPO
from pref_core.pairs import noise_pair, predict_pair
from pref_core.schedules import DDPMSchedule

PROMPTS = ["a photo of a cat", "a red car parked near a tall tree", "zebra!"]


@pytest.fixture(scope="module")
def sd15(tiny_sd15_dir):
    return load_sd15(str(tiny_sd15_dir), LoadOptions())


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    return load_sdxl(str(tiny_sdxl_dir), LoadOptions())


@pytest.fixture(scope="module")
def sd15_pipe(tiny_sd15_dir):
    return StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir))


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_sdxl_dir):
    return StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir))


def latents(batch, seed=0, size=16):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


def images(batch, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- loading
def test_sd15_components_and_process(sd15, tiny_sd15_dir):
    assert sd15.kind == "sd15"
    assert sd15.pipeline_class == "StableDiffusionPipeline"
    assert sd15.denoiser_name == "unet"
    assert sd15.source == str(tiny_sd15_dir)
    assert isinstance(sd15.denoiser, UNetDenoiser)
    assert isinstance(sd15.model, UNet2DConditionModel)
    assert isinstance(sd15.encoder, CLIPConditionEncoder)
    assert isinstance(sd15.encoder.text_encoder, CLIPTextModel)
    assert isinstance(sd15.codec, VAECodec) and isinstance(sd15.codec.vae, AutoencoderKL)
    # UNet latent sample_size 16 × VAE downsampling 2 (two blocks).
    assert sd15.sample_size == (32, 32)
    assert sd15.scheduler_config["_class_name"] == "DDIMScheduler"
    assert isinstance(sd15.process, DDPMSchedule)
    assert sd15.process.prediction_type == "epsilon"
    # The schedule is the checkpoint's own: ᾱ equals the diffusers scheduler's alphas_cumprod.
    scheduler = DDIMScheduler.from_pretrained(str(tiny_sd15_dir), subfolder="scheduler")
    t = torch.tensor([0, 1, 250, 999])
    torch.testing.assert_close(
        sd15.process.alpha_bar(t).float(), scheduler.alphas_cumprod[t], rtol=1e-5, atol=1e-7
    )
    # Text encoder and VAE are frozen; the UNet is left to the training mode.
    assert not any(p.requires_grad for p in sd15.encoder.parameters())
    assert not any(p.requires_grad for p in sd15.codec.parameters())
    assert all(p.requires_grad for p in sd15.model.parameters())


def test_v_prediction_checkpoint_trains_on_v(tmp_path):
    path = build_tiny_sd15(tmp_path / "sd2", prediction_type="v_prediction")
    backbone = load_sd15(str(path), LoadOptions())
    assert backbone.process.prediction_type == "v_prediction"
    # The regression target is v = √ᾱ ε − √(1−ᾱ) x0 with ᾱ from the diffusers scheduler.
    x0_w, x0_l = latents(2, seed=1), latents(2, seed=2)
    pair = noise_pair(backbone.process, x0_w, x0_l, generator=torch.Generator().manual_seed(3))
    alphas = DDIMScheduler.from_pretrained(str(path), subfolder="scheduler").alphas_cumprod
    ab = alphas[pair.t].reshape(-1, 1, 1, 1)
    v_w = ab.sqrt() * pair.noise_w - (1 - ab).sqrt() * x0_w
    torch.testing.assert_close(pair.target_w, v_w, rtol=1e-5, atol=1e-5)


def test_sdxl_components_and_process(sdxl, tiny_sdxl_dir):
    assert sdxl.kind == "sdxl"
    assert sdxl.pipeline_class == "StableDiffusionXLPipeline"
    assert sdxl.denoiser_name == "unet"
    assert isinstance(sdxl.denoiser, UNetDenoiser) and sdxl.denoiser.uses_added_conditions
    encoder = sdxl.encoder
    assert isinstance(encoder, SDXLConditionEncoder)
    assert isinstance(encoder.text_encoder, CLIPTextModel)
    assert isinstance(encoder.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(sdxl.codec, VAECodec)
    assert sdxl.sample_size == (32, 32)
    assert sdxl.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    assert sdxl.process.prediction_type == "epsilon"
    scheduler = EulerDiscreteScheduler.from_pretrained(str(tiny_sdxl_dir), subfolder="scheduler")
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(
        sdxl.process.alpha_bar(t).float(), scheduler.alphas_cumprod[t], rtol=1e-5, atol=1e-7
    )
    # Defaults from model_index.json and the sampling resolution.
    assert encoder.force_zeros_for_empty_prompt is True
    assert encoder.sampling_null_mode == "zeros"
    assert encoder.original_size == encoder.target_size == (32, 32)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_sdxl_force_zeros_flag_is_read_from_the_pipeline_config(tmp_path):
    path = build_tiny_sdxl(tmp_path / "xl", force_zeros_for_empty_prompt=False)
    backbone = load_sdxl(str(path), LoadOptions())
    assert backbone.encoder.force_zeros_for_empty_prompt is False
    assert backbone.encoder.sampling_null_mode == "empty"


def test_wrong_family_is_refused(tiny_sd15_dir, tiny_sdxl_dir):
    with pytest.raises(ValueError, match="load_sdxl"):
        load_sd15(str(tiny_sdxl_dir), LoadOptions())
    with pytest.raises(FileNotFoundError, match="text_encoder_2/"):
        load_sdxl(str(tiny_sd15_dir), LoadOptions())


@pytest.mark.parametrize("missing", ["vae", "tokenizer", "scheduler"])
def test_missing_component_folder_is_named(tiny_sd15_dir, tmp_path, missing):
    copy_dir = tmp_path / "broken"
    shutil.copytree(tiny_sd15_dir, copy_dir)
    shutil.rmtree(copy_dir / missing)
    with pytest.raises(FileNotFoundError, match=rf"'{missing}/'.*model_index\.json"):
        load_sd15(str(copy_dir), LoadOptions())


def test_a_path_that_does_not_exist_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_sdxl(str(tmp_path / "nowhere"), LoadOptions())


def test_bfloat16_option(tiny_sd15_dir, tiny_sdxl_dir):
    for backbone in (
        load_sd15(str(tiny_sd15_dir), LoadOptions(dtype=torch.bfloat16)),
        load_sdxl(str(tiny_sdxl_dir), LoadOptions(dtype=torch.bfloat16)),
    ):
        for part in (backbone.model, backbone.encoder, backbone.codec):
            assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
        cond = backbone.encode(PROMPTS[:2])
        assert cond["prompt_embeds"].dtype == torch.bfloat16
        out = backbone.denoiser(latents(2), torch.tensor([10, 900]), cond)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# --------------------------------------------------------------------------- SD 1.5 encoder
def test_sd15_encoder_matches_the_pipeline(sd15, sd15_pipe):
    cond = sd15.encode(PROMPTS)
    assert cond.keys() == ["prompt_embeds"]
    assert cond["prompt_embeds"].shape == (3, 77, 32)
    expected, _ = sd15_pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    torch.testing.assert_close(cond["prompt_embeds"], expected, rtol=0, atol=0)
    # ...and by hand: last hidden state of the text encoder on max-length padded tokens.
    tokens = sd15_pipe.tokenizer(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    by_hand = sd15_pipe.text_encoder(tokens.input_ids).last_hidden_state
    torch.testing.assert_close(cond["prompt_embeds"], by_hand)
    assert not cond["prompt_embeds"].requires_grad


def test_sd15_null_conditions(sd15, sd15_pipe):
    empty = sd15.encoder.null(2, "empty")
    torch.testing.assert_close(
        empty["prompt_embeds"], sd15.encode(["", ""])["prompt_embeds"], rtol=0, atol=0
    )
    # The pipeline's CFG negative for no negative prompt is the encoded "".
    _, negative = sd15_pipe.encode_prompt(PROMPTS[:2], "cpu", 1, True)
    torch.testing.assert_close(empty["prompt_embeds"], negative, rtol=0, atol=0)
    zeros = sd15.null_condition(2, "zeros")
    assert zeros["prompt_embeds"].shape == (2, 77, 32)
    assert torch.count_nonzero(zeros["prompt_embeds"]) == 0
    with pytest.raises(ValueError, match="null mode"):
        sd15.encoder.null(2, "blank")


def test_sd15_proxy_prompt_combination(sd15):
    alpha = 0.7
    cond, null = sd15.encode(PROMPTS[:2]), sd15.encoder.null(2, "empty")
    proxy = -alpha * cond + (1 + alpha) * null
    expected = -alpha * cond["prompt_embeds"] + (1 + alpha) * null["prompt_embeds"]
    torch.testing.assert_close(proxy["prompt_embeds"], expected)


# --------------------------------------------------------------------------- SDXL encoder
def test_sdxl_encoder_matches_the_pipeline(sdxl, sdxl_pipe):
    cond = sdxl.encode(PROMPTS)
    assert cond.keys() == ["prompt_embeds", "pooled_prompt_embeds", "add_time_ids"]
    assert cond.ids == {"add_time_ids"}
    # Widths 32 + 48 concatenated; pooled = projection (24) of the second encoder.
    assert cond["prompt_embeds"].shape == (3, 77, 80)
    assert cond["pooled_prompt_embeds"].shape == (3, 24)
    assert cond["add_time_ids"].shape == (3, 6) and cond["add_time_ids"].dtype == torch.float32
    embeds, _, pooled, _ = sdxl_pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    torch.testing.assert_close(cond["prompt_embeds"], embeds, rtol=0, atol=0)
    torch.testing.assert_close(cond["pooled_prompt_embeds"], pooled, rtol=0, atol=0)
    # By hand: penultimate hidden states of both encoders, pooled text_embeds of the second.
    outs = []
    for tokenizer, encoder in (
        (sdxl_pipe.tokenizer, sdxl_pipe.text_encoder),
        (sdxl_pipe.tokenizer_2, sdxl_pipe.text_encoder_2),
    ):
        ids = tokenizer(
            PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        outs.append(encoder(ids, output_hidden_states=True))
    torch.testing.assert_close(
        cond["prompt_embeds"],
        torch.cat([outs[0].hidden_states[-2], outs[1].hidden_states[-2]], dim=-1),
    )
    torch.testing.assert_close(cond["pooled_prompt_embeds"], outs[1].text_embeds)
    # Sampling-time ids: original = target = (32, 32), no crop.
    expected_ids = sdxl_pipe._get_add_time_ids(
        (32, 32), (0, 0), (32, 32), dtype=torch.float32, text_encoder_projection_dim=24
    )
    torch.testing.assert_close(cond["add_time_ids"], expected_ids.expand(3, 6))


def test_sdxl_per_sample_sizes_and_crops(sdxl, sdxl_pipe):
    cond = sdxl.encoder.encode(
        PROMPTS[:2],
        original_sizes=[(512, 768), (1023, 640)],
        crops=[(0, 0), (12, 40)],
        target_sizes=(1024, 1024),
    )
    expected = torch.cat(
        [
            sdxl_pipe._get_add_time_ids((512, 768), (0, 0), (1024, 1024), torch.float32, 24),
            sdxl_pipe._get_add_time_ids((1023, 640), (12, 40), (1024, 1024), torch.float32, 24),
        ]
    )
    torch.testing.assert_close(cond["add_time_ids"], expected, rtol=0, atol=0)
    assert cond["add_time_ids"][1, 0].item() == 1023.0  # stays exact
    with pytest.raises(ValueError, match="original_sizes"):
        sdxl.encoder.encode(PROMPTS[:2], original_sizes=[(1, 2), (3, 4), (5, 6)])


def test_sdxl_null_conditions(sdxl, sdxl_pipe):
    empty = sdxl.encoder.null(2, "empty")
    encoded = sdxl.encode(["", ""])
    for name in ("prompt_embeds", "pooled_prompt_embeds", "add_time_ids"):
        torch.testing.assert_close(empty[name], encoded[name], rtol=0, atol=0)
    zeros = sdxl.null_condition(2, "zeros")
    assert torch.count_nonzero(zeros["prompt_embeds"]) == 0
    assert torch.count_nonzero(zeros["pooled_prompt_embeds"]) == 0
    torch.testing.assert_close(zeros["add_time_ids"], encoded["add_time_ids"], rtol=0, atol=0)
    assert zeros["add_time_ids"][0].tolist() == [32.0, 32.0, 0.0, 0.0, 32.0, 32.0]
    # The stock sampler's negatives: zeros with force_zeros_for_empty_prompt (SDXL base)...
    _, neg, _, neg_pooled = sdxl_pipe.encode_prompt(
        PROMPTS[:2], device="cpu", do_classifier_free_guidance=True
    )
    torch.testing.assert_close(zeros["prompt_embeds"], neg, rtol=0, atol=0)
    torch.testing.assert_close(zeros["pooled_prompt_embeds"], neg_pooled, rtol=0, atol=0)
    # ...and the encoded "" without it.
    pipe = copy.copy(sdxl_pipe)
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    _, neg, _, neg_pooled = pipe.encode_prompt(
        PROMPTS[:2], device="cpu", do_classifier_free_guidance=True
    )
    sdxl_pipe.register_to_config(force_zeros_for_empty_prompt=True)
    torch.testing.assert_close(empty["prompt_embeds"], neg, rtol=0, atol=0)
    torch.testing.assert_close(empty["pooled_prompt_embeds"], neg_pooled, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["empty", "zeros"])
def test_sdxl_proxy_prompt_combines_every_embedding_and_keeps_ids(sdxl, mode):
    alpha = 0.35
    sizes = dict(original_sizes=[(512, 512), (640, 480)], crops=[(0, 0), (8, 16)])
    cond = sdxl.encoder.encode(PROMPTS[:2], **sizes)
    null = sdxl.encoder.null(2, mode, **sizes)
    proxy = -alpha * cond + (1 + alpha) * null
    for name in ("prompt_embeds", "pooled_prompt_embeds"):
        expected = -alpha * cond[name] + (1 + alpha) * null[name]
        torch.testing.assert_close(proxy[name], expected)
    torch.testing.assert_close(proxy["add_time_ids"], cond["add_time_ids"], rtol=0, atol=0)


# --------------------------------------------------------------------------- denoiser
def test_sd15_adapter_is_the_unet_called_directly(sd15):
    cond = sd15.encode(PROMPTS[:2])
    x_t, t = latents(2), torch.tensor([3, 912])
    expected = sd15.model(x_t, t, encoder_hidden_states=cond["prompt_embeds"]).sample
    torch.testing.assert_close(sd15.denoiser(x_t, t, cond), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="latents"):
        sd15.denoiser(images(2), t, cond)


def test_sdxl_adapter_is_the_unet_called_directly(sdxl):
    cond = sdxl.encoder.encode(PROMPTS[:2], original_sizes=[(512, 512), (1024, 768)])
    x_t, t = latents(2), torch.tensor([40, 700])
    time_ids = torch.tensor([[512.0, 512, 0, 0, 32, 32], [1024.0, 768, 0, 0, 32, 32]])
    expected = sdxl.model(
        x_t,
        t,
        encoder_hidden_states=cond["prompt_embeds"],
        added_cond_kwargs={"text_embeds": cond["pooled_prompt_embeds"], "time_ids": time_ids},
    ).sample
    torch.testing.assert_close(sdxl.denoiser(x_t, t, cond), expected, rtol=0, atol=0)
    # The micro-conditioning matters: other sizes, other prediction.
    other = cond.replace(add_time_ids=time_ids.flip(0))
    assert not torch.allclose(sdxl.denoiser(x_t, t, other), expected)


def test_sdxl_unet_without_sdxl_fields_is_explained(sdxl):
    cond = sdxl.encode(PROMPTS[:2])
    from pref_core.conditioning import Conditioning

    sd_style = Conditioning({"prompt_embeds": cond["prompt_embeds"]})
    with pytest.raises(ValueError, match=r"pooled_prompt_embeds.*add_time_ids"):
        sdxl.denoiser(latents(2), torch.tensor([1, 2]), sd_style)


def test_sd15_conditioning_on_sdxl_unet_is_explained(sd15, sdxl):
    with pytest.raises(ValueError, match=r"width 32.*width 80"):
        sdxl.denoiser(latents(2), torch.tensor([1, 2]), sd15.encode(PROMPTS[:2]))


# --------------------------------------------------------------------------- codec
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_vae_codec_uses_the_scaling_factor(family, request):
    backbone = request.getfixturevalue(family)
    vae = backbone.codec.vae
    scaling = {"sd15": 0.18215, "sdxl": 0.13025}[family]
    assert vae.config.scaling_factor == scaling
    x = images(2)
    z = backbone.codec.encode_mode(x)
    assert z.shape == (2, 4, 16, 16)
    torch.testing.assert_close(z, vae.encode(x).latent_dist.mode() * scaling, rtol=0, atol=0)
    sampled = backbone.codec.encode(x, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 4, 16, 16) and not torch.equal(sampled, z)
    decoded = backbone.codec.decode(z)
    assert decoded.shape == (2, 3, 32, 32)
    torch.testing.assert_close(decoded, vae.decode(z / scaling).sample, rtol=0, atol=0)


# --------------------------------------------------------------------------- denoiser swap
def test_sd15_denoiser_option_swaps_only_the_unet(sd15, tiny_sd15_dir, tmp_path):
    other = tiny_sd15_unet(seed=7)
    other.save_pretrained(tmp_path / "other-unet")  # weights at the folder's root
    swapped = load_sd15(str(tiny_sd15_dir), LoadOptions(denoiser=str(tmp_path / "other-unet")))
    cond = swapped.encode(PROMPTS[:2])
    x_t, t = latents(2), torch.tensor([5, 600])
    expected = other(x_t, t, encoder_hidden_states=cond["prompt_embeds"]).sample
    torch.testing.assert_close(swapped.denoiser(x_t, t, cond), expected, rtol=0, atol=0)
    assert not torch.allclose(sd15.denoiser(x_t, t, cond), expected)
    for name, value in params(sd15.encoder).items():
        assert torch.equal(params(swapped.encoder)[name], value), name
    for name, value in params(sd15.codec).items():
        assert torch.equal(params(swapped.codec)[name], value), name


def test_sdxl_denoiser_option_reads_a_unet_subfolder(sdxl, tiny_sdxl_dir, tmp_path):
    other = tiny_sdxl_unet(seed=11)
    other.save_pretrained(tmp_path / "dpo-sdxl" / "unet")  # the hub layout of SDXL-DPO
    swapped = load_sdxl(str(tiny_sdxl_dir), LoadOptions(denoiser=str(tmp_path / "dpo-sdxl")))
    cond = swapped.encode(PROMPTS[:2])
    x_t, t = latents(2), torch.tensor([5, 600])
    expected = other(
        x_t,
        t,
        encoder_hidden_states=cond["prompt_embeds"],
        added_cond_kwargs={
            "text_embeds": cond["pooled_prompt_embeds"],
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2),
        },
    ).sample
    torch.testing.assert_close(swapped.denoiser(x_t, t, cond), expected, rtol=0, atol=0)
    for name, value in params(sdxl.encoder).items():
        assert torch.equal(params(swapped.encoder)[name], value), name


def test_variant_applies_to_the_pipeline_and_a_plain_denoiser_still_loads(tiny_sd15_dir, tmp_path):
    fp16_dir = tmp_path / "variant"
    StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir)).save_pretrained(
        fp16_dir, variant="fp16"
    )
    assert (fp16_dir / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (fp16_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    other = tiny_sd15_unet(seed=5)
    other.save_pretrained(tmp_path / "plain-unet")  # no fp16 variant
    backbone = load_sd15(
        str(fp16_dir), LoadOptions(variant="fp16", denoiser=str(tmp_path / "plain-unet"))
    )
    for name, value in other.state_dict().items():
        assert torch.equal(backbone.model.state_dict()[name], value), name
    with pytest.raises(OSError, match="fp16"):
        load_sd15(str(tiny_sd15_dir), LoadOptions(variant="fp16"))


def test_denoiser_option_errors(tiny_sd15_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"unet\.save_pretrained"):
        load_sd15(str(tiny_sd15_dir), LoadOptions(denoiser=str(tmp_path / "empty")))
    tiny_sdxl_unet(seed=1).save_pretrained(tmp_path / "xl")
    with pytest.raises(ValueError, match="load_sdxl"):
        load_sd15(str(tiny_sd15_dir), LoadOptions(denoiser=str(tmp_path / "xl")))


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("build", [build_tiny_sd15, build_tiny_sdxl], ids=["sd15", "sdxl"])
def test_a_dpo_step_trains_the_unet_only(build, tmp_path):
    path = build(tmp_path / "model")
    loader = load_sd15 if build is build_tiny_sd15 else load_sdxl
    backbone = loader(str(path), LoadOptions())
    frozen_before = {"encoder": params(backbone.encoder), "codec": params(backbone.codec)}

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x0_w = backbone.codec.encode(images(2, seed=1), generator=g)
        x0_l = backbone.codec.encode(images(2, seed=2), generator=g)
    cond = backbone.encode(["a cat on a chair", "a dog in the park"])

    policy = backbone.denoiser
    policy.train()
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    pair = noise_pair(backbone.process, x0_w, x0_l, generator=g)
    predictions = predict_pair(policy, reference, pair, cond)
    out = DiffusionDPO(beta=500.0)(predictions, pair)
    # Policy = reference at the start: every DPO logit is 0 and the loss is log 2 (up to float
    # rounding, which β amplifies: the forward with autograd may take other kernels).
    assert torch.isfinite(out.loss)
    assert out.per_sample["logits"].abs().max() < 1e-3
    assert math.isclose(out.loss.item(), math.log(2.0), rel_tol=1e-3)
    assert predictions.policy_w.requires_grad and not predictions.reference_w.requires_grad

    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    optimizer.zero_grad()
    out.loss.backward()
    unet_before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    optimizer.step()

    with_grad = [
        n for n, p in policy.model.named_parameters() if p.grad is not None and p.grad.any()
    ]
    assert len(with_grad) > 0.9 * len(unet_before)
    for name, p in policy.model.named_parameters():
        if name in with_grad:
            assert not torch.equal(p.detach(), unet_before[name]), f"{name} did not move"
    for part in ("encoder", "codec"):
        module = getattr(backbone, part)
        assert all(p.grad is None for p in module.parameters())
        for name, value in params(module).items():
            assert torch.equal(value, frozen_before[part][name]), f"{part} {name} changed"
    # The reference stayed where it was.
    for name, p in reference.model.named_parameters():
        assert torch.equal(p, unet_before[name])
