"""FID: the Fréchet distance against closed forms, the toy / CLIP / Inception extractors on
tiny models saved to disk, and ``pref-eval fid`` on a tiny toy model and a style dataset."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pref_apps import evaluate
from pref_apps.fid import (
    ClipFeatures,
    FeatureExtractor,
    InceptionFeatures,
    ToyFeatures,
    compute_features,
    fid,
    fid_of_model,
    frechet_distance,
    open_extractor,
    reference_features,
    statistics,
)
from pref_data import toy


# ------------------------------------------------------------------------------ the distance
def _diagonal_closed_form(mu1, var1, mu2, var2) -> float:
    """Two Gaussians with diagonal covariances: Σ_i (μ1_i − μ2_i)² + (σ1_i − σ2_i)², where σ
    is the standard deviation (tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) reduces to Σ (σ1² + σ2² − 2 σ1 σ2))."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum())


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_frechet_distance_matches_the_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = _diagonal_closed_form(mu1, var1, mu2, var2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
        expected, rel=1e-12
    )
    # A rotation of both Gaussians leaves the distance unchanged but makes Σ1, Σ2 full and
    # non-commuting with each other's eigenbases only through Q: exercises the general path.
    q = _rotation(5, 1)
    rotated = frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-10)
    # One dimension: (μ1 − μ2)² + (σ1 − σ2)².
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_is_zero_on_itself_and_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    sa, sb = statistics(a), statistics(b)
    assert frechet_distance(*sa, *sa) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(*sa, *sb) == pytest.approx(frechet_distance(*sb, *sa), rel=1e-9)
    assert frechet_distance(*sa, *sb) > 0.5


def test_frechet_distance_agrees_with_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 8)), 0.5 + rng.normal(size=(30, 8)) @ rng.normal(size=(8, 8))
    (m1, s1), (m2, s2) = statistics(a), statistics(b)
    root = linalg.sqrtm(s1 @ s2).real  # the pytorch-fid / clean-fid formula
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8)


def test_statistics_are_float64_mean_and_unbiased_covariance():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]])
    mu, sigma = statistics(x)
    assert mu.dtype == np.float64 and np.allclose(mu, [3.0, 4.0])
    assert np.allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])  # (N − 1) denominator
    with pytest.raises(ValueError, match="at least 2 samples"):
        statistics(np.ones((1, 3)))
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ------------------------------------------------------------------------------ toy features
def _renders(n: int, render_seed: int, prompt_seed: int = 0, resolution: int = 32) -> torch.Tensor:
    """(n, 3, R, R) in [0, 1]: clean renders of the toy prompts ``prompt_seed`` draws."""
    prompts = toy.sample_prompts(n, seed=prompt_seed)
    rng = np.random.default_rng(render_seed)
    images = toy.render_batch(prompts, rng, resolution=resolution)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def _grey_lines(images: torch.Tensor) -> torch.Tensor:
    """A crude sketch: grey level 1 − 4·|∇L| (lines on white), no colour."""
    luma = (images * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)
    gx = torch.nn.functional.pad(luma[..., :, 1:] - luma[..., :, :-1], (0, 1))
    return (1 - 4 * gx.abs()).clamp(0, 1).expand(-1, 3, -1, -1)


def _cold(images: torch.Tensor) -> torch.Tensor:
    """A crude winter: half-way to a pale blue."""
    return 0.5 * images + 0.5 * torch.tensor([0.8, 0.88, 1.0])[:, None, None]


def test_toy_features_shape_and_resolution():
    extractor = open_extractor("toy")
    assert isinstance(extractor, ToyFeatures) and isinstance(extractor, FeatureExtractor)
    images = _renders(4, 0)
    features = extractor.features(images)
    assert features.shape == (4, ToyFeatures.dim) and features.dtype == torch.float64
    colour = features[:, :64]
    assert torch.allclose(colour.sum(1), torch.ones(4, dtype=torch.float64))
    # Any size: a 2× nearest upscale describes nearly the same image.
    upscaled = images.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert (extractor.features(upscaled) - features).abs().mean() < 0.01


def test_toy_features_separate_styles_from_rerenders():
    a, b = _renders(48, render_seed=0), _renders(48, render_seed=1)  # same prompts, new jitter
    c = _renders(48, render_seed=2, prompt_seed=1)  # other prompts
    extractor = ToyFeatures()
    rerender, other_prompts = fid(a, b, extractor), fid(a, c, extractor)
    for styled in (_grey_lines(b), _cold(b)):
        assert fid(a, styled, extractor) > 10 * max(rerender, other_prompts)


def test_toy_features_separate_the_toy_styles():
    style = pytest.importorskip("pref_contrast.style")
    a, b = _renders(48, render_seed=0), _renders(48, render_seed=1)
    baseline = fid(a, b, "toy")
    pil = [Image.fromarray(toy.from_tensor(x * 2 - 1)) for x in b]
    for name in style.TOY_STYLES:
        styled = style.ToyStyle(name).edit(pil, [""] * len(pil))
        assert fid(a, styled, "toy") > 8 * baseline, name


def test_compute_features_accepts_mixed_sizes_and_pil():
    images = [Image.new("RGB", (32, 32), (255, 0, 0)), torch.zeros(3, 40, 40)]
    images.append(Image.new("RGB", (32, 32), (255, 0, 0)))
    features = compute_features(images, ToyFeatures(), batch_size=2)
    assert features.shape == (3, ToyFeatures.dim) and features.dtype == np.float64
    assert np.array_equal(features[0], features[2]) and not np.array_equal(features[0], features[1])


def test_unknown_extractor_lists_the_forms():
    with pytest.raises(ValueError, match=r"toy, clip:PATH_OR_HUB_ID, inception:PATH"):
        open_extractor("dinov2")


# ------------------------------------------------------------------------------ CLIP features
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pref-core's tiny full CLIPModel checkpoint (32 px, projection 24) with a preprocessor
    config that resizes and crops."""
    from pref_core.backbones.tiny_sd import build_tiny_clip

    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 36},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.2, 0.25, 0.3],
        "do_convert_rgb": True,
    }
    path = tmp_path_factory.mktemp("clip") / "clip"
    return build_tiny_clip(path, image_size=32, patch_size=8, preprocessor=preprocessor)


def test_clip_features_match_transformers_preprocessing(tiny_clip: Path):
    from transformers import CLIPImageProcessor, CLIPModel

    extractor = open_extractor(f"clip:{tiny_clip}", device="cpu")
    assert (
        isinstance(extractor, ClipFeatures) and extractor.preprocessor == "preprocessor_config.json"
    )
    rng = np.random.default_rng(0)
    # Smooth images (the resize filters of PIL and torch differ most on pixel noise).
    pil = [
        Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).resize(
            (50, 40), Image.BICUBIC
        )
        for _ in range(3)
    ]
    images = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in pil]) / 255
    ours = extractor.preprocess(images)
    reference = CLIPImageProcessor.from_pretrained(tiny_clip)(images=pil, return_tensors="pt")
    assert ours.shape == reference["pixel_values"].shape == (3, 3, 32, 32)
    assert (ours - reference["pixel_values"]).abs().mean() < 0.02
    # Already at the short side's size: only the center crop and the normalisation apply.
    square = torch.rand(2, 3, 36, 36)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    cropped = (square[..., 2:34, 2:34] - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(extractor.preprocess(square), cropped, atol=1e-6)
    features = extractor.features(images)
    assert features.shape == (3, 24) and features.dtype == torch.float64
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        vision = model.vision_model(pixel_values=reference["pixel_values"]).pooler_output
        expected = model.visual_projection(vision).double()
    assert torch.allclose(features, expected, atol=0.02 * expected.abs().mean().item())


def test_clip_features_fall_back_to_openai_constants(tiny_clip: Path, tmp_path: Path):
    vision_only = tmp_path / "vision"  # a CLIPVisionModelWithProjection checkpoint
    full = ClipFeatures(tiny_clip, device="cpu")
    full.model.save_pretrained(vision_only)
    extractor = ClipFeatures(vision_only, device="cpu")
    assert extractor.model.config.projection_dim == 24
    # No preprocessor_config.json: the vision model's image_size, not OpenAI's 224.
    assert extractor.preprocessor == "openai-default"
    assert extractor.preprocessing.size == 32 and extractor.preprocessing.crop_size == (32, 32)
    grey = torch.full((1, 3, 64, 48), 0.5)
    pixels = extractor.preprocess(grey)
    openai_mean = torch.tensor((0.48145466, 0.4578275, 0.40821073))
    expected = (0.5 - openai_mean) / torch.tensor((0.26862954, 0.26130258, 0.27577711))
    assert pixels.shape == (1, 3, 32, 32)
    assert torch.allclose(pixels[0, :, 0, 0], expected.float(), atol=1e-5)


# ------------------------------------------------------------------------------ Inception
class _TinyInception(torch.nn.Module):
    """Follows inception-2015-12-05.pt's calling convention: ``(x, return_features=True)``
    with x (N, 3, H, W) float in [0, 255]; returns per-image statistics as "features"."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if not return_features:
            return torch.zeros(x.shape[0], 1008)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)  # (N, 12)
        return torch.cat([pooled, x.amax((1, 2, 3))[:, None]], 1)


def test_inception_torchscript_by_path(tmp_path: Path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(_TinyInception()), str(path))
    extractor = open_extractor(f"inception:{path}", device="cpu")
    assert isinstance(extractor, InceptionFeatures)
    images = torch.rand(5, 3, 20, 24)
    images[0] = 1.0
    features = extractor.features(images)
    assert features.shape == (5, 13) and features.dtype == torch.float64
    assert features[0, -1] == 255.0  # uint8 range
    assert torch.equal(features[:, -1], (images.amax((1, 2, 3)) * 255).round().double())
    with pytest.raises(FileNotFoundError, match="never downloads"):
        open_extractor(f"inception:{tmp_path / 'missing.pt'}")


# ------------------------------------------------------------------------------ model FID
def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def style_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Pick-a-Pic-schema folder as pref-style-data writes it: 6 toy pairs, the preferred image
    a cold-tinted copy of the rejected one (in column 1 for even rows, 0 for odd)."""
    pairs = toy.PreferencePairs(6, seed=0)
    rows = []
    for i in range(6):
        item = pairs[i]
        rejected = toy.from_tensor(item["loser"])
        styled = (0.5 * rejected + 0.5 * np.array([204, 224, 255])).astype(np.uint8)
        cells = [(_png(styled), 1.0, "style:cold"), (_png(rejected), 0.0, "toy")]
        if i % 2 == 0:
            cells.reverse()
        rows.append(
            {
                "caption": item["prompt"],
                **{f"jpg_{c}": cells[c][0] for c in (0, 1)},
                **{f"label_{c}": cells[c][1] for c in (0, 1)},
                **{f"model_{c}": cells[c][2] for c in (0, 1)},
            }
        )
    root = tmp_path_factory.mktemp("styled") / "cold"
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "train-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pref_core.backbones.toy import build_toy, save_toy

    return save_toy(build_toy("toy", seed=0), tmp_path_factory.mktemp("toy") / "pipe")


def test_reference_features_are_the_preferred_images(style_dataset: Path):
    ref = reference_features(f"pickapic:{style_dataset}", ToyFeatures(), limit=5, batch_size=2)
    assert len(ref.prompts) == 5 and ref.features.shape == (5, ToyFeatures.dim)
    assert ref.prompts[0] == toy.PreferencePairs(6, seed=0)[0]["prompt"]
    # The cold tint lifts every pixel: no colour-histogram mass in the darkest bin.
    assert (ref.features[:, 0] == 0).all()
    same = reference_features(str(style_dataset), ToyFeatures(), limit=5)  # the folder itself
    assert np.allclose(same.features, ref.features, rtol=0, atol=1e-12)


def test_fid_of_model_on_a_tiny_toy_model(toy_model: Path, style_dataset: Path, tmp_path: Path):
    kwargs = {"extractor": "toy", "steps": 2, "batch_size": 4, "progress": False, "device": "cpu"}
    result = fid_of_model(toy_model, f"pickapic:{style_dataset}", out=tmp_path / "fid", **kwargs)
    assert result["num_images"] == 6 and result["features"] == "toy"
    assert math.isfinite(result["fid"]) and result["fid"] > 0
    assert (result["height"], result["width"]) == (32, 32)
    written = json.loads((tmp_path / "fid" / "fid.json").read_text())
    assert written == result
    assert Image.open(tmp_path / "fid" / "generated_grid.png").size[0] > 32
    again = fid_of_model(toy_model, f"pickapic:{style_dataset}", **kwargs)
    assert again["fid"] == result["fid"]  # seeded: prompt i uses seed + i
    other = fid_of_model(toy_model, f"pickapic:{style_dataset}", seed=7, **kwargs)
    assert other["fid"] != result["fid"]


def test_pref_eval_fid_cli(toy_model: Path, style_dataset: Path, tmp_path: Path, capsys):
    argv = ["fid", "--model", str(toy_model), "--reference", f"pickapic:{style_dataset}"]
    options = ["--steps", "2", "--limit", "4", "--seed", "3", "--no-progress", "--device", "cpu"]
    assert evaluate.main([*argv, *options, "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["num_images"] == 4 and result["seed"] == 3 and result["num_inference_steps"] == 2
    assert "fid.json" in captured.err
    assert json.loads((tmp_path / "out" / "fid.json").read_text())["fid"] == result["fid"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--features", "dinov2"], "unknown feature extractor 'dinov2'"),
        (["--features", "inception:/no/such.pt"], "never downloads"),
        (["--limit", "1"], "at least 2 images"),
    ],
)
def test_pref_eval_fid_errors(toy_model: Path, style_dataset: Path, capsys, extra, message):
    argv = ["fid", "--model", str(toy_model), "--reference", f"pickapic:{style_dataset}"]
    assert evaluate.main([*argv, "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pref-eval fid: error:") and message in err


def test_pref_eval_fid_missing_reference(toy_model: Path, tmp_path: Path, capsys):
    argv = ["fid", "--model", str(toy_model), "--reference", f"pickapic:{tmp_path / 'none'}"]
    assert evaluate.main([*argv, "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
