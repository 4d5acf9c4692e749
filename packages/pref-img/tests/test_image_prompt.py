"""Image prompts: tiny IP-Adapters in the published layouts (h94 SDXL Plus, XLabs FLUX), loaded
through diffusers' conversion onto tiny backbones saved in the Hub layout, and the toy adapter.

Expected values are computed independently of ``pref_img.image_prompt``: pixel values from
transformers' ``CLIPImageProcessor``, features from the CLIP model called directly, the
projection converted by the network's own diffusers converter from the file's tensors read with
``safe_open``, plain ``sample()`` on a separately loaded backbone without any adapter, and the
IP-Adapter loss written out from the forward process (x_t = √ᾱ x0 + √(1−ᾱ) ε, target ε).
"""

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel, UNet2DConditionModel
from PIL import Image
from safetensors import safe_open
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from pref_core.backbones import load_backbone
from pref_core.backbones.guidance import ClassifierFreeGuidance, DistilledGuidance, TrueCFG
from pref_core.backbones.sampling import sample
from pref_core.backbones.tiny_flux import build_tiny_flux
from pref_core.backbones.tiny_sd import build_tiny_sdxl
from pref_core.backbones.toy import build_toy, save_toy
from pref_core.clip_images import read_preprocessor_config
from pref_core.conditioning import Conditioning
from pref_img.image_prompt import (
    IP_ADAPTER_FILE,
    ImagePromptModel,
    ProjectedTokens,
    attach_ip_adapter,
    ip_adapter_loss,
    load_image_prompt_model,
    save_ip_adapter,
    trainable_ip_parameters,
)
from pref_img.tiny_ip import (
    build_tiny_clip_vision,
    build_tiny_flux_ip_adapter,
    build_tiny_sdxl_ip_adapter_plus,
)

PROMPTS = ["a red cat sitting on a chair", "two birds over the blue sea"]
TOY_PROMPTS = ["a red circle on the left", "two small blue squares , top right"]
STEPS = 2
FLUX_SIZE = {"height": 32, "width": 32}  # the tiny FLUX's default is 256 px


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def uint8_images(count, seed=0, size=32):
    """Random uint8 pictures (exactly representable, so transformers' uint8 pipeline and pref's
    float one see the same pixels) as (N, H, W, 3) arrays and as (N, 3, H, W) in [−1, 1]."""
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    tensor = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    return arrays, tensor


def file_tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def n_cross_attentions(unet):
    return sum(1 for n in unet.attn_processors if n.endswith("attn2.processor"))


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("image-prompt")


@pytest.fixture(scope="module")
def encoder_dir(root):
    return build_tiny_clip_vision(root / "image_encoder", seed=0)


@pytest.fixture(scope="module")
def sdxl_dir(root):
    return build_tiny_sdxl(root / "sdxl", seed=0)


@pytest.fixture(scope="module")
def flux_dir(root):
    return build_tiny_flux(root / "flux", seed=0)


@pytest.fixture(scope="module")
def sdxl_file(root, sdxl_dir, encoder_dir):
    # The UNet given as the pipeline folder: the builder reads unet/config.json.
    return build_tiny_sdxl_ip_adapter_plus(
        root / "h94" / "sdxl_models", unet=sdxl_dir, image_encoder_path=encoder_dir, seed=1
    )


@pytest.fixture(scope="module")
def flux_file(root, flux_dir, encoder_dir):
    return build_tiny_flux_ip_adapter(
        root / "xlabs", transformer=flux_dir, image_encoder_path=encoder_dir, seed=2
    )


@pytest.fixture(scope="module")
def sdxl_model(sdxl_dir, sdxl_file, encoder_dir):
    return load_image_prompt_model(
        load_backbone(str(sdxl_dir)), sdxl_file, image_encoder=encoder_dir
    )


@pytest.fixture(scope="module")
def flux_model(flux_dir, flux_file, encoder_dir):
    return load_image_prompt_model(
        load_backbone(str(flux_dir)), flux_file.parent, image_encoder=encoder_dir
    )


@pytest.fixture(scope="module")
def plain_sdxl(sdxl_dir):
    return load_backbone(str(sdxl_dir))


@pytest.fixture(scope="module")
def plain_flux(flux_dir):
    return load_backbone(str(flux_dir))


def fresh_toy(encoder_dir, **kwargs):
    encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_dir))
    return attach_ip_adapter(
        build_toy("toy", seed=0),
        encoder,
        preprocessor_config=read_preprocessor_config(encoder_dir),
        **kwargs,
    )


@pytest.fixture(scope="module")
def toy_model(encoder_dir):
    return fresh_toy(encoder_dir, seed=0)


# ------------------------------------------------------------------------------ plumbing
def test_projected_tokens_has_the_multi_projection_structure():
    tokens = torch.randn(2, 16, 8)
    out = ProjectedTokens()([tokens])
    assert len(out) == 1 and out[0].shape == (2, 1, 16, 8)
    assert torch.equal(out[0][:, 0], tokens)
    assert torch.equal(ProjectedTokens()(tokens)[0][:, 0], tokens)  # a bare tensor works too
    assert ProjectedTokens()([tokens[:, None]])[0].shape == (2, 1, 16, 8)
    assert ProjectedTokens().num_ip_adapters == 1
    with pytest.raises(ValueError, match="2 IP-Adapters"):
        ProjectedTokens()([tokens, tokens])
    with pytest.raises(ValueError, match=r"\(B, S, D\)"):
        ProjectedTokens()([tokens[0]])


# ------------------------------------------------------------------------------ SDXL Plus
def test_sdxl_plus_loads_with_the_published_layout(sdxl_model, sdxl_file):
    assert (sdxl_model.kind, sdxl_model.style) == ("sdxl-plus", "plus")
    assert (sdxl_model.num_tokens, sdxl_model.token_dim) == (16, 32 + 48)  # both text widths
    assert sdxl_model.feature_dim == 32  # the image encoder's hidden size
    keys = file_tensors(sdxl_file)
    assert "image_proj.latents" in keys and "image_proj.layers.3.0.to_kv.weight" in keys
    unet = sdxl_model.network
    assert len(sdxl_model.ip_processors) == n_cross_attentions(unet)
    assert isinstance(unet.encoder_hid_proj, ProjectedTokens)
    assert sdxl_model.encode(uint8_images(3)[1]).shape == (3, 16, 80)


def test_sdxl_encode_equals_encoder_and_converted_resampler(
    sdxl_model, sdxl_dir, sdxl_file, encoder_dir
):
    arrays, images = uint8_images(2, seed=1)
    processor = CLIPImageProcessor.from_pretrained(str(encoder_dir))
    pixels = processor(
        images=[Image.fromarray(a) for a in arrays], return_tensors="pt"
    ).pixel_values
    encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_dir))
    raw = {
        k.removeprefix("image_proj."): v
        for k, v in file_tensors(sdxl_file).items()
        if k.startswith("image_proj.")
    }
    unet = UNet2DConditionModel.from_pretrained(str(sdxl_dir), subfolder="unet")
    resampler = unet._convert_ip_adapter_image_proj_to_diffusers(raw, low_cpu_mem_usage=False)
    with torch.no_grad():
        hidden = encoder(pixels, output_hidden_states=True).hidden_states[-2]  # penultimate
        expected = resampler(hidden)  # (B, 16, 80)
    got = sdxl_model.encode(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not got.requires_grad


def test_sdxl_generate_at_scale_zero_is_plain_sampling(sdxl_model, plain_sdxl):
    tokens = sdxl_model.encode(uint8_images(2, seed=2)[1])
    seeds = [3, 4]
    got = sdxl_model.generate(PROMPTS, tokens, seeds=seeds, scale=0.0, num_inference_steps=STEPS)
    plain = sample(plain_sdxl, PROMPTS, seeds=seeds, num_inference_steps=STEPS, progress=False)
    torch.testing.assert_close(got.images, plain.images, rtol=0, atol=1e-6)
    assert got.seeds == seeds
    # No tokens at all: the plain model (IMG's initial generation).
    none = sdxl_model.generate(PROMPTS, None, seeds=seeds, num_inference_steps=STEPS)
    torch.testing.assert_close(none.images, plain.images, rtol=0, atol=1e-6)


def test_sdxl_image_prompt_changes_images_deterministically(sdxl_model):
    tokens = sdxl_model.encode(uint8_images(2, seed=5)[1])
    kwargs = {"seeds": [7, 8], "num_inference_steps": STEPS, "scale": 1.0}
    base = sdxl_model.generate(PROMPTS, None, seeds=[7, 8], num_inference_steps=STEPS)
    first = sdxl_model.generate(PROMPTS, tokens, **kwargs)
    again = sdxl_model.generate(PROMPTS, tokens, **kwargs, batch_size=1)  # one image a batch
    swapped = sdxl_model.generate(PROMPTS, tokens.flip(0), **kwargs)
    assert (first.images - base.images).abs().max() > 1e-3
    # Same seed, same tokens → same image, whatever the batching (tokens follow their prompt).
    torch.testing.assert_close(again.images, first.images, rtol=0, atol=1e-5)
    assert (swapped.images - first.images).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_generate_restores_the_previous_scale(sdxl_model):
    sdxl_model.set_scale(0.35)
    tokens = sdxl_model.negative_tokens(1)
    sdxl_model.generate(PROMPTS[:1], tokens, seeds=[0], scale=0.8, num_inference_steps=1)
    assert sdxl_model.scale == pytest.approx(0.35)
    assert all(p.scale == [0.35] for p in sdxl_model.ip_processors)
    with pytest.raises(ValueError, match="finite"):
        sdxl_model.set_scale(float("nan"))


def test_cfg_guidance_puts_black_tokens_on_the_null_branch(sdxl_model, plain_sdxl):
    tokens = sdxl_model.encode(uint8_images(3, seed=6)[1])
    black = sdxl_model.encode(torch.full((1, 3, 32, 32), -1.0))
    guidance = sdxl_model.guidance(tokens, scale=0.5)
    assert isinstance(guidance.base, ClassifierFreeGuidance)
    first = guidance.prepare(plain_sdxl, PROMPTS)
    assert first.batch_size == 4
    torch.testing.assert_close(first["ip_tokens"][:2], black.expand(2, -1, -1))
    assert torch.equal(first["ip_tokens"][2:], tokens[:2])
    second = guidance.prepare(plain_sdxl, PROMPTS[:1])
    assert torch.equal(second["ip_tokens"][1:], tokens[2:])
    assert sdxl_model.scale == 0.5
    with pytest.raises(ValueError, match="3 token sets"):
        guidance.prepare(plain_sdxl, PROMPTS[:1])
    guidance.reset()
    assert torch.equal(guidance.prepare(plain_sdxl, PROMPTS[:1])["ip_tokens"][1:], tokens[:1])
    # Given negatives: one set for all, or one per image.
    neg = torch.randn(1, 16, 80)
    state = sdxl_model.guidance(tokens, negative_tokens=neg).prepare(plain_sdxl, PROMPTS)
    assert torch.equal(state["ip_tokens"][:2], neg.expand(2, -1, -1))
    with pytest.raises(ValueError, match="one per image"):
        sdxl_model.guidance(tokens, negative_tokens=torch.randn(2, 16, 80))
    with pytest.raises(ValueError, match=r"\(16, 80\)"):
        sdxl_model.guidance(tokens[..., :8])


def test_generate_checks_tokens(sdxl_model):
    tokens = sdxl_model.negative_tokens(2)
    with pytest.raises(ValueError, match="2 token sets for 1 prompts"):
        sdxl_model.generate(PROMPTS[:1], tokens, seeds=[0], num_inference_steps=1)
    with pytest.raises(ValueError, match=r"\(N, S, D\)"):
        sdxl_model.generate(PROMPTS[:1], tokens[0], seeds=[0], num_inference_steps=1)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        sdxl_model.encode(torch.zeros(2, 32, 32))


# ------------------------------------------------------------------------------ FLUX XLabs
def test_flux_xlabs_loads_with_the_published_layout(flux_model, flux_file):
    assert (flux_model.kind, flux_model.style) == ("flux-xlabs", "plain")
    assert (flux_model.num_tokens, flux_model.token_dim) == (4, 32)  # joint_attention_dim
    keys = file_tensors(flux_file)
    assert "ip_adapter_proj_model.proj.weight" in keys
    assert "double_blocks.0.processor.ip_adapter_double_stream_k_proj.bias" in keys
    transformer = flux_model.network
    assert len(flux_model.ip_processors) == transformer.config.num_layers  # double blocks only
    assert flux_model.encode(uint8_images(2)[1]).shape == (2, 4, 32)


def test_flux_encode_equals_image_embeds_and_converted_projection(
    flux_model, flux_dir, flux_file, encoder_dir
):
    arrays, images = uint8_images(2, seed=3)
    source = str(encoder_dir)
    pixels = CLIPImageProcessor.from_pretrained(source)(
        images=[Image.fromarray(a) for a in arrays], return_tensors="pt"
    ).pixel_values
    encoder = CLIPVisionModelWithProjection.from_pretrained(source)
    prefix = "ip_adapter_proj_model."
    raw = {k.removeprefix(prefix): v for k, v in file_tensors(flux_file).items() if prefix in k}
    transformer = FluxTransformer2DModel.from_pretrained(str(flux_dir), subfolder="transformer")
    projection = transformer._convert_ip_adapter_image_proj_to_diffusers(
        raw, low_cpu_mem_usage=False
    )
    with torch.no_grad():
        expected = projection(encoder(pixels).image_embeds)  # (B, 4, 32)
    torch.testing.assert_close(flux_model.encode(images), expected, rtol=1e-4, atol=1e-5)


def test_flux_generate_at_scale_zero_is_plain_sampling(flux_model, plain_flux):
    tokens = flux_model.encode(uint8_images(2, seed=4)[1])
    kwargs = {"seeds": [1, 2], "num_inference_steps": STEPS, **FLUX_SIZE}
    assert isinstance(flux_model.guidance(tokens).base, DistilledGuidance)
    got = flux_model.generate(PROMPTS, tokens, scale=0.0, **kwargs)
    plain = sample(plain_flux, PROMPTS, progress=False, **kwargs)
    assert torch.equal(got.images, plain.images)  # 0 · IP attention is added: exact
    strong = flux_model.generate(PROMPTS, tokens, scale=1.0, **kwargs)
    assert (strong.images - plain.images).abs().max() > 1e-3
    repeat = flux_model.generate(PROMPTS, tokens, scale=1.0, **kwargs)
    assert torch.equal(repeat.images, strong.images)


def test_flux_true_cfg_negative_branch_gets_black_tokens(flux_model, plain_flux):
    tokens = flux_model.encode(uint8_images(2, seed=9)[1])
    true_cfg = TrueCFG(2.5, guidance=3.5)
    state = flux_model.guidance(tokens, base=true_cfg).prepare(plain_flux, PROMPTS)
    black = flux_model.negative_tokens(2)
    torch.testing.assert_close(state["ip_tokens"], torch.cat([black, tokens]))
    kwargs = {"seeds": [5, 6], "num_inference_steps": STEPS, "guidance": true_cfg, **FLUX_SIZE}
    at_zero = flux_model.generate(PROMPTS, tokens, scale=0.0, **kwargs)
    plain = sample(plain_flux, PROMPTS, progress=False, **kwargs)
    assert torch.equal(at_zero.images, plain.images)
    default_negative = flux_model.generate(PROMPTS, tokens, scale=1.0, **kwargs)
    own_negative = flux_model.generate(PROMPTS, tokens, scale=1.0, negative_tokens=tokens, **kwargs)
    assert (default_negative.images - own_negative.images).abs().max() > 1e-4


# ------------------------------------------------------------------------------ toy adapter
def test_toy_adapter_defaults(toy_model):
    assert (toy_model.kind, toy_model.style) == ("toy", "plus")
    assert (toy_model.num_tokens, toy_model.token_dim) == (16, 64)
    assert toy_model.scale == 1.0
    unet = toy_model.network
    names = [n.removesuffix(".processor") for n in unet.attn_processors if "attn2" in n]
    assert len(toy_model.ip_processors) == len(names)
    # Ye et al.'s initialisation: the IP key/value projections start as the text ones.
    for name, processor in zip(names, toy_model.ip_processors, strict=True):
        attn = unet.get_submodule(name)
        assert torch.equal(processor.to_k_ip[0].weight, attn.to_k.weight)
        assert torch.equal(processor.to_v_ip[0].weight, attn.to_v.weight)


def test_toy_plain_style(encoder_dir):
    model = fresh_toy(encoder_dir, style="plain")
    assert (model.style, model.num_tokens, model.feature_dim) == ("plain", 4, 24)
    assert model.encode(uint8_images(2)[1]).shape == (2, 4, 64)
    with pytest.raises(ValueError, match="4 tokens"):
        fresh_toy(encoder_dir, style="plain", num_tokens=8)
    with pytest.raises(ValueError, match="style"):
        fresh_toy(encoder_dir, style="full")


def _reference_loss(model, x0, cond, images, generators, *, drop_text=False, drop_image=False):
    """IP-Adapter's ε loss written out: t, ε, u drawn per sample in that order."""
    process = model.backbone.process
    losses = []
    for i, g in enumerate(generators):
        t = process.sample_timesteps(1, generator=g)
        noise = torch.randn((1, *x0.shape[1:]), generator=g)
        torch.rand(1, generator=g)  # the dropout draw
        ab = process.alpha_bar(t).float().reshape(1, 1, 1, 1)
        x_t = ab.sqrt() * x0[i : i + 1] + (1 - ab).sqrt() * noise
        pixels = model.preprocessing(images[i : i + 1])
        if drop_image:
            pixels = torch.zeros_like(pixels)
        with torch.no_grad():
            hidden = model.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
            tokens = model.projection(hidden)
            text = model.backbone.encode([""]) if drop_text else cond.index([i])
            batched = {**text.batched, "ip_tokens": tokens}
            c = Conditioning(batched, text.shared, ids=text.ids)
            pred = model.backbone.denoiser(x_t, t, c)
        losses.append(((pred - noise) ** 2).mean())
    return torch.stack(losses)


def test_ip_adapter_loss_matches_the_written_out_objective(toy_model):
    _, images = uint8_images(3, seed=11)
    cond = toy_model.backbone.encode([*TOY_PROMPTS, "a green triangle"])
    gens = lambda: [_gen(100 + i) for i in range(3)]  # noqa: E731
    zero = {"drop_text": 0.0, "drop_image": 0.0, "drop_both": 0.0}
    with torch.no_grad():
        got = ip_adapter_loss(
            toy_model, images, cond, images, toy_model.backbone.process, gens(), **zero
        )
        expected = _reference_loss(toy_model, images, cond, images, gens())
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
        assert got.shape == (3,)
        # Dropout certain: the image (zero CLIP pixels, plus style), the text, both.
        for kwargs, drops in (
            ({"drop_image": 1.0}, {"drop_image": True}),
            ({"drop_text": 1.0}, {"drop_text": True}),
            ({"drop_both": 1.0}, {"drop_image": True, "drop_text": True}),
        ):
            probs = {**zero, **kwargs}
            got = ip_adapter_loss(
                toy_model, images, cond, images, toy_model.backbone.process, gens(), **probs
            )
            expected = _reference_loss(toy_model, images, cond, images, gens(), **drops)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
        # Per-sample generators: a sample's loss does not depend on its batch.
        alone = ip_adapter_loss(
            toy_model,
            images[1:2],
            cond.index([1]),
            images[1:2],
            toy_model.backbone.process,
            [_gen(101)],
        )
        batch = ip_adapter_loss(toy_model, images, cond, images, toy_model.backbone.process, gens())
        torch.testing.assert_close(alone[0], batch[1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="sum to at most 1"):
        ip_adapter_loss(
            toy_model,
            images,
            cond,
            images,
            toy_model.backbone.process,
            gens(),
            drop_text=0.9,
            drop_image=0.2,
        )
    with pytest.raises(ValueError, match="must agree"):
        ip_adapter_loss(toy_model, images[:2], cond, images[:2], toy_model.backbone.process, gens())


def _snapshot(modules):
    return {
        f"{i}.{name}": p.detach().clone()
        for i, module in enumerate(modules)
        for name, p in module.named_parameters()
    }


def test_training_lowers_the_loss_and_touches_only_the_adapter(encoder_dir, tmp_path):
    model = fresh_toy(encoder_dir, seed=3)
    trainable = trainable_ip_parameters(model)
    trainable_ids = {id(p) for p in trainable}
    modules = [
        model.backbone.denoiser,
        model.backbone.encoder,
        model.image_encoder,
        model.projection,
    ]
    named = {
        f"{i}.{n}": p for i, module in enumerate(modules) for n, p in module.named_parameters()
    }
    assert {id(p) for p in named.values() if p.requires_grad} == trainable_ids
    before = _snapshot(modules)
    _, images = uint8_images(4, seed=12)
    cond = model.backbone.encode([*TOY_PROMPTS, *TOY_PROMPTS])
    optimizer = torch.optim.Adam(trainable, lr=1e-3)

    def loss():
        gens = [_gen(200 + i) for i in range(4)]  # the same noise every step
        return ip_adapter_loss(
            model,
            images,
            cond,
            images,
            model.backbone.process,
            gens,
            drop_text=0.0,
            drop_image=0.0,
            drop_both=0.0,
        ).mean()

    initial = loss().item()
    for _ in range(4):
        optimizer.zero_grad()
        value = loss()
        assert torch.isfinite(value)
        value.backward()
        optimizer.step()
    with torch.no_grad():
        final = loss().item()
    assert final < initial
    after = _snapshot(modules)
    for key, param in named.items():
        changed = not torch.equal(before[key], after[key])
        assert changed == (id(param) in trainable_ids), key

    # Save → load round trip: identical tokens and images.
    saved = save_ip_adapter(model, tmp_path / "toy-ip")
    assert (saved / IP_ADAPTER_FILE).is_file()
    assert (saved / "image_encoder" / "preprocessor_config.json").is_file()
    base_dir = save_toy(build_toy("toy", seed=0), tmp_path / "toy-base")
    loaded = load_image_prompt_model(load_backbone(str(base_dir)), saved, local_files_only=True)
    assert isinstance(loaded, ImagePromptModel)
    assert (loaded.kind, loaded.style, loaded.num_tokens) == ("toy", "plus", 16)
    with torch.no_grad():
        tokens = model.encode(images[:2])
        assert torch.equal(loaded.encode(images[:2]), tokens)
    kwargs = {"seeds": [0, 1], "num_inference_steps": STEPS, "scale": 0.2}
    torch.testing.assert_close(
        loaded.generate(TOY_PROMPTS, tokens, **kwargs).images,
        model.generate(TOY_PROMPTS, tokens, **kwargs).images,
        rtol=0,
        atol=0,
    )


# ------------------------------------------------------------------------------ files
def test_saved_files_reproduce_the_published_layouts(
    sdxl_model, sdxl_file, flux_model, flux_file, tmp_path
):
    for model, original in ((sdxl_model, sdxl_file), (flux_model, flux_file)):
        folder = save_ip_adapter(model, tmp_path / model.kind)
        written, source = file_tensors(folder / IP_ADAPTER_FILE), file_tensors(original)
        assert sorted(written) == sorted(source)
        for key, value in source.items():
            assert torch.equal(written[key], value), key


def test_local_snapshot_layout_finds_the_adapter_and_encoder(
    root, sdxl_dir, sdxl_file, encoder_dir
):
    """h94's repository layout: sdxl_models/<file> and models/image_encoder/."""
    import shutil

    snapshot = root / "h94"
    shutil.copytree(encoder_dir, snapshot / "models" / "image_encoder", dirs_exist_ok=True)
    model = load_image_prompt_model(load_backbone(str(sdxl_dir)), snapshot, local_files_only=True)
    assert model.kind == "sdxl-plus"
    assert model.preprocessor_config["crop_size"] == {"height": 32, "width": 32}


# ------------------------------------------------------------------------------ errors
def test_missing_adapter_file(plain_sdxl, tmp_path, encoder_dir):
    with pytest.raises(FileNotFoundError, match="no IP-Adapter at"):
        load_image_prompt_model(
            plain_sdxl, tmp_path / "nope.safetensors", image_encoder=encoder_dir
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cannot tell which"):
        load_image_prompt_model(plain_sdxl, tmp_path / "empty", image_encoder=encoder_dir)
    with pytest.raises(FileNotFoundError, match="no IP-Adapter file"):
        load_image_prompt_model(
            plain_sdxl, tmp_path / "empty", weight_name="x.safetensors", image_encoder=encoder_dir
        )


def test_adapter_for_the_wrong_family(sdxl_dir, flux_dir, sdxl_file, flux_file, encoder_dir):
    sdxl = load_backbone(str(sdxl_dir))
    with pytest.raises(ValueError, match=r"FLUX \(XLabs\) IP-Adapter, but the backbone is 'sdxl'"):
        load_image_prompt_model(sdxl, flux_file, image_encoder=encoder_dir)
    flux = load_backbone(str(flux_dir))
    with pytest.raises(ValueError, match="UNet IP-Adapter, but the backbone is 'flux'"):
        load_image_prompt_model(flux, sdxl_file, image_encoder=encoder_dir)
    with pytest.raises(ValueError, match="not 'flux-xlabs'"):
        load_image_prompt_model(sdxl, sdxl_file, image_encoder=encoder_dir, kind="flux-xlabs")
    toy_flux = build_toy("toy-flux", seed=0)
    with pytest.raises(ValueError, match="sdxl, flux and toy"):
        load_image_prompt_model(toy_flux, flux_file, image_encoder=encoder_dir)
    # Nothing was installed by the refused loads.
    assert not any(hasattr(p, "to_k_ip") for p in sdxl.model.attn_processors.values())
    assert not any(hasattr(p, "to_k_ip") for p in flux.model.attn_processors.values())


def test_adapter_of_another_width_and_encoder_of_another_width(
    root, sdxl_dir, sdxl_file, encoder_dir
):
    sdxl = load_backbone(str(sdxl_dir))
    toy_sized = build_tiny_sdxl_ip_adapter_plus(
        root / "toy-sized.safetensors", unet=build_toy("toy").model, image_encoder_path=encoder_dir
    )
    with pytest.raises(ValueError, match="width 64 but this UNet cross-attends to width 80"):
        load_image_prompt_model(sdxl, toy_sized, image_encoder=encoder_dir)
    wide = build_tiny_clip_vision(root / "wide-encoder", hidden_size=48)
    with pytest.raises(ValueError, match="width 48"):
        load_image_prompt_model(sdxl, sdxl_file, image_encoder=wide)
    assert not any(hasattr(p, "to_k_ip") for p in sdxl.model.attn_processors.values())
    encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_dir))
    with pytest.raises(ValueError, match="IP-Adapter-Plus"):
        attach_ip_adapter(sdxl, encoder, style="plain")
    flux = build_toy("toy-flux", seed=0)
    with pytest.raises(ValueError, match="not a UNet"):
        attach_ip_adapter(flux, encoder)
