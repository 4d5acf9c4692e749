"""Projected IP-Adapter tokens in the conditioning (``ip_tokens``) reach the UNet and the FLUX
transformer.

The adapters are installed with diffusers' own ``_load_ip_adapter_weights`` from small random
state dicts in the IP-Adapter file layout (a plain adapter: ``proj`` + ``norm`` and one
``to_k_ip``/``to_v_ip`` pair per cross-attention). The expected outputs come from the networks
called the way diffusers' pipelines call them — raw image embeddings through the adapter's own
``MultiIPAdapterImageProjection`` — and from the network before the adapter was installed.
pref-core knows no pass-through projection of its own (pref-img provides one), so these tests
define a minimal one.
"""

from contextlib import contextmanager

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

from diffusers import FluxPipeline

from pref_core.backbones.base import LoadOptions
from pref_core.backbones.flux import load_flux
from pref_core.backbones.guidance import ClassifierFreeGuidance
from pref_core.backbones.sd import load_sdxl
from pref_core.backbones.toy import build_toy
from pref_core.conditioning import Conditioning

EMBED = 12  # width of the raw "image embedding" the plain projection reads
PROMPTS = ["a red cat sitting on a chair", "two birds over the blue sea"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class PassThrough(nn.Module):
    """Projected tokens in, diffusers' projected structure out: [(B, 1, S, D)]."""

    takes_projected_tokens = True

    def forward(self, image_embeds):
        return [image_embeds[0].unsqueeze(1)]


def _plain_projection(width, seed):
    g = _gen(seed)
    return {
        "proj.weight": torch.randn(4 * width, EMBED, generator=g) / EMBED**0.5,
        "proj.bias": torch.randn(4 * width, generator=g) * 0.1,
        "norm.weight": torch.ones(width),
        "norm.bias": torch.zeros(width),
    }


def unet_adapter(unet, seed=0):
    """A plain UNet IP-Adapter state dict: ids 1, 3, 5, ... for the cross-attentions."""
    width = unet.config.cross_attention_dim
    g = _gen(seed + 1)
    names = [n for n in unet.attn_processors if not n.endswith("attn1.processor")]
    ip = {}
    for i, name in enumerate(names):
        inner = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        for kv in ("k", "v"):
            ip[f"{2 * i + 1}.to_{kv}_ip.weight"] = torch.randn(inner, width, generator=g) * 0.2
    return {"image_proj": _plain_projection(width, seed), "ip_adapter": ip}


def flux_adapter(transformer, seed=0):
    """An XLabs-style FLUX IP-Adapter state dict (diffusers names): one biased pair per
    double-stream block."""
    width, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    g = _gen(seed + 1)
    ip = {}
    for block in range(transformer.config.num_layers):
        for kv in ("k", "v"):
            ip[f"{block}.to_{kv}_ip.weight"] = torch.randn(inner, width, generator=g) * 0.2
            ip[f"{block}.to_{kv}_ip.bias"] = torch.randn(inner, generator=g) * 0.1
    return {"image_proj": _plain_projection(width, seed), "ip_adapter": ip}


def ip_processors(network):
    return [p for p in network.attn_processors.values() if hasattr(p, "to_k_ip")]


def set_scale(network, scale):
    for processor in ip_processors(network):
        processor.scale = [scale]


@contextmanager
def installed(network, state):
    """The adapter installed by diffusers' loader for a block (yields its
    MultiIPAdapterImageProjection); the network's processors and projection are restored
    afterwards, so module-scoped fixtures stay adapter-free."""
    processors = dict(network.attn_processors)
    hid_type = network.config.get("encoder_hid_dim_type")
    network._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    try:
        yield network.encoder_hid_proj
    finally:
        network.set_attn_processor(processors)
        network.encoder_hid_proj = None
        network.config.encoder_hid_dim_type = hid_type


def with_tokens(cond, tokens):
    return Conditioning({**cond.batched, "ip_tokens": tokens}, cond.shared, ids=cond.ids)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def toy():
    return build_toy("toy", seed=0)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    return load_sdxl(str(tiny_sdxl_dir), LoadOptions())


@pytest.fixture(scope="module")
def flux(tiny_flux_dir):
    return load_flux(str(tiny_flux_dir), LoadOptions())


# ------------------------------------------------------------------------------ UNet
@pytest.mark.parametrize("which", ["toy", "sdxl"])
def test_unet_ip_tokens_match_diffusers_projection_path(which, request):
    """SD-style (added_cond_kwargs created) and SDXL (merged with text_embeds/time_ids)."""
    backbone = request.getfixturevalue(which)
    unet, denoiser = backbone.model, backbone.denoiser
    channels, size = unet.config.in_channels, 8
    x = torch.randn(2, channels, size, size, generator=_gen(0))
    t = torch.tensor([900, 150])
    cond = backbone.encode(PROMPTS)
    raw = torch.randn(2, EMBED, generator=_gen(3))  # (B, E) image embeddings
    with torch.no_grad():
        before = denoiser(x, t, cond)
    with torch.no_grad(), installed(unet, unet_adapter(unet)) as projection:
        set_scale(unet, 0.7)
        # diffusers' path: raw embeddings (one image per sample) through its own projection.
        added = {"image_embeds": [raw[:, None]]}
        if which == "sdxl":
            added.update(text_embeds=cond["pooled_prompt_embeds"], time_ids=cond["add_time_ids"])
        expected = unet(
            x, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added
        ).sample
        tokens = projection.image_projection_layers[0](raw)  # (B, 4, D)
        unet.encoder_hid_proj = PassThrough()
        got = denoiser(x, t, with_tokens(cond, tokens))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, before, atol=1e-3)  # the image prompt matters
        other = denoiser(x, t, with_tokens(cond, tokens.flip(0)))
        assert not torch.allclose(other, got, atol=1e-3)
        # IP scale 0: the network without the adapter (diffusers skips the IP attention).
        set_scale(unet, 0.0)
        torch.testing.assert_close(denoiser(x, t, with_tokens(cond, tokens)), before)
    with torch.no_grad():  # restored: no adapter, same output as before
        assert torch.equal(denoiser(x, t, cond), before)


def test_unet_without_ip_tokens_is_unchanged(toy):
    unet = toy.model
    x = torch.randn(2, 3, 8, 8, generator=_gen(1))
    t = torch.tensor([10, 500])
    cond = toy.encode(PROMPTS)
    with torch.no_grad():
        direct = unet(x, t, encoder_hidden_states=cond["prompt_embeds"]).sample
        assert torch.equal(toy.denoiser(x, t, cond), direct)


def test_unet_ip_token_errors(toy):
    unet, denoiser = toy.model, toy.denoiser
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([100])
    cond = toy.encode(PROMPTS[:1])
    width = unet.config.cross_attention_dim
    with pytest.raises(ValueError, match="no IP-Adapter attention"):
        denoiser(x, t, with_tokens(cond, torch.zeros(1, 4, width)))
    with pytest.raises(ValueError, match=f"\\(B, S, {width}\\)"):
        denoiser(x, t, with_tokens(cond, torch.zeros(1, 4, width + 1)))
    # diffusers' own projection still in place: it would project the tokens again.
    with installed(unet, unet_adapter(unet)), pytest.raises(ValueError, match="pass-through"):
        denoiser(x, t, with_tokens(cond, torch.zeros(1, 4, width)))


# ------------------------------------------------------------------------------ FLUX
def test_flux_ip_tokens_match_diffusers_projection_path(flux):
    transformer, denoiser = flux.model, flux.denoiser
    b, c, h, w = 2, 4, 6, 8
    x = torch.randn(b, c, h, w, generator=_gen(0))
    t = torch.tensor([700.0, 125.0])
    cond = flux.encode(PROMPTS)
    raw = torch.randn(b, EMBED, generator=_gen(4))
    with torch.no_grad():
        before = denoiser(x, t, cond)
    with torch.no_grad(), installed(transformer, flux_adapter(transformer)) as projection:
        set_scale(transformer, 0.6)
        # FluxPipeline's call: per adapter (B, n_images, E) raw embeddings, its projection.
        out = transformer(
            hidden_states=FluxPipeline._pack_latents(x, b, c, h, w),
            timestep=t / 1000,
            guidance=cond["guidance"],
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=cond["text_ids"],
            img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", x.dtype),
            joint_attention_kwargs={"ip_adapter_image_embeds": [raw[:, None]]},
            return_dict=False,
        )[0]
        expected = FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)
        tokens = projection.image_projection_layers[0](raw)  # (B, 4, D)
        transformer.encoder_hid_proj = PassThrough()
        got = denoiser(x, t, with_tokens(cond, tokens))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, before, atol=1e-3)
        # Scale 0 adds 0 · attention: exactly the network without the adapter.
        set_scale(transformer, 0.0)
        assert torch.equal(denoiser(x, t, with_tokens(cond, tokens)), before)
        with pytest.raises(ValueError, match="projected image tokens"):
            denoiser(x, t, with_tokens(cond, tokens[..., :-1]))
    with torch.no_grad():
        assert torch.equal(denoiser(x, t, cond), before)


def test_flux_without_adapter_refuses_ip_tokens(tiny_flux_dir):
    fresh = load_flux(str(tiny_flux_dir), LoadOptions())
    cond = fresh.encode(PROMPTS[:1])
    width = fresh.model.config.joint_attention_dim
    with pytest.raises(ValueError, match="no IP-Adapter"):
        fresh.denoiser(
            torch.randn(1, 4, 4, 4),
            torch.tensor([500.0]),
            with_tokens(cond, torch.zeros(1, 4, width)),
        )


# ------------------------------------------------------------------------------ conditioning
def test_ip_tokens_ride_through_conditioning_operations(toy):
    cond = toy.encode(PROMPTS)
    null = toy.null_condition(1)
    pos = torch.randn(2, 4, 64, generator=_gen(5))
    neg = torch.randn(1, 4, 64, generator=_gen(6))
    c, n = with_tokens(cond, pos), with_tokens(null, neg)
    stacked = Conditioning.cat([with_tokens(toy.null_condition(2), neg.expand(2, -1, -1)), c])
    assert torch.equal(stacked["ip_tokens"], torch.cat([neg.expand(2, -1, -1), pos]))
    dropped = c.where(torch.tensor([True, False]), n)
    assert torch.equal(dropped["ip_tokens"][0], neg[0])
    assert torch.equal(dropped["ip_tokens"][1], pos[1])
    assert torch.equal(c.zeros_like()["ip_tokens"], torch.zeros_like(pos))
    mixed = 2.0 * c - c  # a linear combination, as embedding-space guidance makes
    torch.testing.assert_close(mixed["ip_tokens"], pos)
    assert torch.equal(c.index([1])["ip_tokens"], pos[1:])
    assert torch.equal(c.repeat(2)["ip_tokens"], torch.cat([pos, pos]))


def test_cfg_branches_get_their_own_tokens(toy):
    """ClassifierFreeGuidance on a [∅; c] state with [negative; positive] tokens equals
    (1 + s)·ε(c, positive) − s·ε(∅, negative), each branch run on its own."""
    unet, denoiser = toy.model, toy.denoiser
    with installed(unet, unet_adapter(unet, seed=2)):
        unet.encoder_hid_proj = PassThrough()
        set_scale(unet, 0.5)
        cond, null = toy.encode(PROMPTS), toy.null_condition(2)
        pos = torch.randn(2, 4, 64, generator=_gen(7))
        neg = torch.randn(2, 4, 64, generator=_gen(8))
        state = Conditioning.cat([with_tokens(null, neg), with_tokens(cond, pos)])
        x, t = torch.randn(2, 3, 8, 8, generator=_gen(9)), torch.tensor([400, 600])
        with torch.no_grad():
            got = ClassifierFreeGuidance(2.0)({"policy": denoiser}, x, t, state)
            e_c = denoiser(x, t, with_tokens(cond, pos))
            e_u = denoiser(x, t, with_tokens(null, neg))
        torch.testing.assert_close(got, 3.0 * e_c - 2.0 * e_u, rtol=1e-4, atol=1e-5)
