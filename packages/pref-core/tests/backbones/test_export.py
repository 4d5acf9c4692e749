"""Export round trips: what pref trains loads in stock diffusers with identical predictions."""

import pytest
import torch

from pref_core.backbones.export import export_denoiser, export_lora, export_pipeline
from pref_core.backbones.loading import load_backbone
from pref_core.backbones.training import LoraSettings, PolicySet


def trained_policies(path, mode, seed=0):
    backbone = load_backbone(str(path))
    policies = PolicySet(backbone, mode=mode, lora=LoraSettings(rank=4, alpha=8))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # stand-in for training: move every trainable weight
        for p in policies.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return backbone, policies


def inputs(backbone, size=8):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, backbone.codec.latent_channels, size, size, generator=g)
    t = backbone.process.model_timesteps(
        backbone.process.sample_timesteps(2, generator=g, **backbone.timestep_kwargs(x))
    )
    return x, t, backbone.encode(["a red square", "a blue circle"])


def stock_prediction(kind, pipe, x, t, cond):
    """The stock pipeline's network, called the way its pipeline calls it."""
    if kind == "sd15":
        return pipe.unet(x, t, encoder_hidden_states=cond["prompt_embeds"]).sample
    if kind == "sdxl":
        added = {"text_embeds": cond["pooled_prompt_embeds"], "time_ids": cond["add_time_ids"]}
        return pipe.unet(
            x, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added
        ).sample
    from pref_core.backbones.flux import FluxDenoiser

    return FluxDenoiser(pipe.transformer)(x, t, cond)


def stock_pipeline(kind, path):
    import diffusers

    cls = {
        "sd15": diffusers.StableDiffusionPipeline,
        "sdxl": diffusers.StableDiffusionXLPipeline,
        "flux": diffusers.FluxPipeline,
    }[kind]
    return cls.from_pretrained(str(path))


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "flux"])
def test_lora_loads_in_stock_diffusers(request, tmp_path, kind):
    path = request.getfixturevalue(f"tiny_{kind}_dir")
    backbone, policies = trained_policies(path, "lora")
    x, t, cond = inputs(backbone)
    with torch.no_grad():
        expected = policies["policy"](x, t, cond)
        weights = export_lora(policies, "policy", tmp_path / "lora")
        assert weights.name == "pytorch_lora_weights.safetensors"
        pipe = stock_pipeline(kind, path)
        before = stock_prediction(kind, pipe, x, t, cond)
        pipe.load_lora_weights(str(tmp_path / "lora"))
        got = stock_prediction(kind, pipe, x, t, cond)
    assert not torch.allclose(before, expected, atol=1e-4)  # the LoRA matters
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_denoiser_folder_loads_with_from_pretrained(tiny_sd15_dir, tmp_path, mode):
    from diffusers import UNet2DConditionModel

    backbone, policies = trained_policies(tiny_sd15_dir, mode)
    x, t, cond = inputs(backbone)
    with torch.no_grad():
        expected = policies["policy"](x, t, cond)
        export_denoiser(policies, "policy", tmp_path / "unet")
        unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
        got = unet(x, t, encoder_hidden_states=cond["prompt_embeds"]).sample
    assert not any("lora" in k for k in unet.state_dict())
    # merged LoRA weights differ from the unmerged sum by float rounding only
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_pipeline_folder_round_trip(tiny_flux_dir, tmp_path):
    backbone, policies = trained_policies(tiny_flux_dir, "full")
    x, t, cond = inputs(backbone)
    export_pipeline(policies, "policy", tiny_flux_dir, tmp_path / "pipe")
    reloaded = load_backbone(str(tmp_path / "pipe"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.denoiser(x, t, cond), policies["policy"](x, t, cond))
        pipe = stock_pipeline("flux", tmp_path / "pipe")
        torch.testing.assert_close(
            stock_prediction("flux", pipe, x, t, cond), policies["policy"](x, t, cond)
        )
