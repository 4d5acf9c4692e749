"""Tests of pref_contrast.embeddings: CLIP and toy embedders, combine(), the pair-embedding cache
and the dataset wrapper.

The CLIP tests build a tiny random CLIPModel from config, save it with a tiny CLIP tokenizer
(pref-core's test helpers) and a preprocessor_config.json, and load it back by path.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pref_contrast.embeddings import (
    MODALITIES,
    ClipEmbedder,
    ClipPreprocessing,
    EmbeddedPairs,
    PairEmbedder,
    PairEmbeddings,
    ToyEmbedder,
    combine,
    compute_pair_embeddings,
    load_or_compute_pair_embeddings,
    open_embedder,
)
from pref_data import Skipped
from pref_data.toy import PreferencePairs, grammar, parse_prompt, render, to_tensor

# The tiny CLIP's preprocessing: shorter side to 20, centre crop 18 (the vision model's size),
# deliberately not OpenAI's mean/std so the test sees they are read from the folder.
SHORT, CROP = 20, 18
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
MAX_LENGTH = 16


# ============================================================================ tiny CLIP
def save_tiny_clip(folder: Path, *, image_size: int, patch_size: int, preprocessor=None) -> Path:
    """pref-core's tiny CLIP (width 32, projection 24), with or without a preprocessor file."""
    from pref_core.backbones.tiny_sd import build_tiny_clip

    build_tiny_clip(
        folder,
        image_size=image_size,
        patch_size=patch_size,
        model_max_length=MAX_LENGTH,
        preprocessor=preprocessor,
    )
    if preprocessor is None:
        (folder / "preprocessor_config.json").unlink()
    return folder


PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": SHORT},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": CROP, "width": CROP},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(MEAN),
    "image_std": list(STD),
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "clip"
    return save_tiny_clip(folder, image_size=CROP, patch_size=6, preprocessor=PREPROCESSOR)


@pytest.fixture(scope="module")
def clip_embedder(tiny_clip) -> ClipEmbedder:
    return ClipEmbedder(str(tiny_clip), device="cpu", batch_size=2)


PROMPTS = [
    "a photo of a cat",
    "a dog running in the green park",
    # longer than MAX_LENGTH tokens: must be truncated, not rejected
    "an astronaut riding a white horse on the moon by the lake at sunset in the rain at night",
]


def _images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, height, width, generator=g) * 2 - 1  # pref's [-1, 1]


def reference_pixels(images: torch.Tensor) -> torch.Tensor:
    """CLIP preprocessing written independently: PIL bicubic on float ("F") channels, shorter
    side → SHORT with the longer int(SHORT · long / short), clamp, centre crop, normalise."""
    out = []
    for image in images:
        x = ((image.numpy() + 1.0) / 2.0).clip(0.0, 1.0).astype(np.float32)
        h, w = x.shape[1:]
        nh, nw = (SHORT, int(SHORT * w / h)) if h <= w else (int(SHORT * h / w), SHORT)
        resized = np.stack(
            [np.asarray(Image.fromarray(c).resize((nw, nh), Image.BICUBIC)) for c in x]
        ).clip(0.0, 1.0)
        top, left = (nh - CROP) // 2, (nw - CROP) // 2
        crop = resized[:, top : top + CROP, left : left + CROP]
        out.append((crop - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None])
    return torch.from_numpy(np.stack(out)).float()


def test_clip_matches_a_direct_clipmodel_computation(tiny_clip, clip_embedder):
    from transformers import CLIPModel, CLIPTokenizer

    images = _images(3, 24, 33)  # not square: resize to 20×27 (int, not round), crop cols 4..22
    image_features, text_features = clip_embedder.embed(images, PROMPTS)

    model = CLIPModel.from_pretrained(str(tiny_clip)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_clip))
    tokens = tokenizer(
        PROMPTS, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():  # CLIPModel.forward returns L2-normalised image and text embeddings
        out = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=reference_pixels(images),
        )
    assert image_features.shape == (3, 24) and text_features.shape == (3, 24)
    assert image_features.dtype == text_features.dtype == torch.float32
    assert image_features.device.type == text_features.device.type == "cpu"
    torch.testing.assert_close(image_features.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(text_features.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(image_features, out.image_embeds, atol=2e-5, rtol=0)
    torch.testing.assert_close(text_features, out.text_embeds, atol=2e-5, rtol=0)


def test_clip_preprocessing_reads_the_folder_config(clip_embedder):
    images = _images(2, 41, 30, seed=1)  # taller than wide: 27×20, crop rows 4..22, cols 1..19
    assert clip_embedder.preprocessing == ClipPreprocessing(
        size=SHORT, crop_size=(CROP, CROP), image_mean=MEAN, image_std=STD
    )
    torch.testing.assert_close(
        clip_embedder.preprocessing(images), reference_pixels(images), atol=1e-5, rtol=0
    )


def test_clip_is_frozen_and_deterministic(clip_embedder):
    images = _images(3, 24, 33).requires_grad_()
    first = clip_embedder.embed(images, PROMPTS)
    second = clip_embedder.embed(images.detach().clone(), PROMPTS)
    assert not clip_embedder.model.training
    assert not any(p.requires_grad for p in clip_embedder.model.parameters())
    assert all(not f.requires_grad and f.grad_fn is None for f in first)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # batch size does not change the result
    one_batch = ClipEmbedder(clip_embedder.source, device="cpu", batch_size=64)
    torch.testing.assert_close(one_batch.embed(images.detach(), PROMPTS)[0], first[0])
    assert one_batch.identity == clip_embedder.identity


def test_clip_identity_and_open_embedder(tiny_clip, clip_embedder):
    assert isinstance(clip_embedder, PairEmbedder)
    assert clip_embedder.identity.startswith(f"clip:{tiny_clip.resolve()}@local-")
    assert clip_embedder.identity.endswith("/float32")
    for spec in (f"clip:{tiny_clip}", str(tiny_clip)):
        embedder = open_embedder(spec, device="cpu")
        assert isinstance(embedder, ClipEmbedder) and embedder.identity == clip_embedder.identity
    assert isinstance(open_embedder("toy"), ToyEmbedder)
    with pytest.raises(ValueError, match="empty embedder spec"):
        open_embedder("clip:")


def test_clip_truncates_to_the_text_model_length(tmp_path, tiny_clip, clip_embedder):
    """A tokenizer without a real model_max_length (transformers' huge default) is capped at
    the text model's max_position_embeddings."""
    folder = tmp_path / "unbounded"
    shutil.copytree(tiny_clip, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = int(1e30)
    config_path.write_text(json.dumps(config))
    embedder = ClipEmbedder(str(folder), device="cpu")
    assert embedder.max_length == MAX_LENGTH
    torch.testing.assert_close(
        embedder.text_features(PROMPTS), clip_embedder.text_features(PROMPTS), atol=1e-6, rtol=0
    )


def test_clip_without_preprocessor_config_uses_openai_defaults(tmp_path):
    folder = save_tiny_clip(tmp_path / "clip224", image_size=224, patch_size=32)
    embedder = ClipEmbedder(str(folder), device="cpu")
    expected = ClipPreprocessing(
        size=224,
        crop_size=(224, 224),
        image_mean=(0.48145466, 0.4578275, 0.40821073),
        image_std=(0.26862954, 0.26130258, 0.27577711),
    )
    assert embedder.preprocessing == expected
    assert embedder.preprocessing(_images(1, 32, 48)).shape == (1, 3, 224, 224)
    image_features, text_features = embedder.embed(_images(2, 32, 32), ["a cat", "a dog"])
    assert image_features.shape == text_features.shape == (2, 24)


def test_clip_rejects_a_crop_the_vision_model_cannot_take(tmp_path):
    preprocessor = {**PREPROCESSOR, "crop_size": {"height": 20, "width": 20}}
    folder = save_tiny_clip(
        tmp_path / "bad", image_size=CROP, patch_size=6, preprocessor=preprocessor
    )
    with pytest.raises(ValueError, match=r"crops to \(20, 20\).*18×18"):
        ClipEmbedder(str(folder), device="cpu")


# ============================================================================ toy embedder
def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1))


def _toy_text(*prompts: str) -> torch.Tensor:
    return ToyEmbedder().text_features(list(prompts))


def test_toy_text_vocabulary_comes_from_the_grammar():
    embedder = ToyEmbedder()
    slots = dict(embedder.text_slots)
    assert slots["colour"] == tuple(grammar.PALETTE) and slots["shape"] == grammar.SHAPES
    assert slots["background"] == tuple(grammar.BACKGROUNDS)
    words = {word for values in slots.values() for word in values}
    assert words == grammar.all_words() - {"a", "at", "the", "on", "background"}
    assert embedder.text_dim == 6 + 4 + 2 + 5 + 3
    with pytest.raises(ValueError, match="toy-world prompt"):
        embedder.text_features(["a photo of a cat"])


def test_toy_text_features_share_attributes():
    base = "a large red circle at the top left"
    same, right, blue, blue_small, background = _toy_text(
        base,
        base,
        "a large red circle at the top right",
        "a large blue circle at the top left",
        "a small blue circle at the top left",
        base + " on a white background",
    )[1:]
    first = _toy_text(base)[0]
    assert torch.equal(first, same)
    torch.testing.assert_close(first.norm(), torch.tensor(1.0))
    # Block cosines averaged over the 4 named attributes: position shares "top" (1/2),
    # one attribute changed (3/4), two changed (2/4); a named background adds a fifth unit
    # block: 4 / (2 · √5).
    assert _cos(first, right) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert _cos(first, blue) == pytest.approx(3 / 4)
    assert _cos(first, blue_small) == pytest.approx(2 / 4)
    assert _cos(first, background) == pytest.approx(4 / (2 * math.sqrt(5)))
    assert 1 > _cos(first, right) > _cos(first, blue) > _cos(first, blue_small)


def test_toy_image_features_definition_and_colour_sensitivity():
    embedder = ToyEmbedder()
    prompt = parse_prompt("a large red circle at the center")
    red = to_tensor(render(prompt, np.random.default_rng(3)))
    red_again = to_tensor(render(prompt, np.random.default_rng(3)))
    blue = to_tensor(render(prompt.replace(colour="blue"), np.random.default_rng(3)))
    features = embedder.image_features(torch.stack([red, red_again, blue]))
    assert features.shape == (3, 192)
    assert torch.equal(features[0], features[1])
    assert _cos(features[0], features[2]) < 0.99

    # The documented definition, independently: 4×4 block means of the 32×32 render.
    pooled = red.numpy().reshape(3, 8, 4, 8, 4).mean(axis=(2, 4)).reshape(-1)
    centred = pooled - pooled.mean()
    expected = torch.from_numpy(centred / np.linalg.norm(centred)).float()
    torch.testing.assert_close(features[0], expected, atol=1e-6, rtol=0)
    # invariant to brightness and contrast; a uniform image has no direction
    torch.testing.assert_close(embedder.image_features(0.5 * red[None] + 0.2)[0], features[0])
    assert torch.equal(embedder.image_features(torch.zeros(1, 3, 32, 32)), torch.zeros(1, 192))


# ============================================================================ combine
def test_both_cosine_is_the_mean_of_image_and_text_cosines():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 5, generator=g), dim=1)
    text = F.normalize(torch.randn(6, 7, generator=g), dim=1)
    both = combine(image, text, "both")
    assert both.shape == (6, 12)
    torch.testing.assert_close(both.norm(dim=1), torch.ones(6))
    for i, j in [(0, 1), (2, 5), (3, 3), (4, 0)]:
        mean = (float(image[i] @ image[j]) + float(text[i] @ text[j])) / 2
        assert _cos(both[i], both[j]) == pytest.approx(mean, abs=1e-6)
    assert torch.equal(combine(image, text, "image"), image)
    assert torch.equal(combine(image, text, "text"), text)


def test_combine_rejects_unknown_modalities():
    assert MODALITIES == ("both", "image", "text")
    with pytest.raises(ValueError, match="choose one of both, image, text"):
        combine(torch.ones(2, 3), torch.ones(2, 3), "joint")


# ============================================================================ per-pair embeddings
class Counting:
    """A PairEmbedder wrapper that counts embed() calls (and can pretend another identity)."""

    def __init__(self, identity: str = "toy-v1") -> None:
        self.inner = ToyEmbedder()
        self.identity = identity
        self.calls = 0

    def embed(self, images, prompts):
        self.calls += 1
        return self.inner.embed(images, prompts)


class WithSkips:
    """A pair dataset whose items at ``bad`` are pref_data.Skipped (undecodable images)."""

    def __init__(self, pairs, bad=()) -> None:
        self.pairs, self.bad = pairs, set(bad)
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index):
        return Skipped(f"x{index}", "truncated") if index in self.bad else self.pairs[index]

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def pairs() -> PreferencePairs:
    return PreferencePairs(5, seed=0)


@pytest.fixture(scope="module")
def pair_embeddings(pairs) -> PairEmbeddings:
    return compute_pair_embeddings(pairs, ToyEmbedder(), progress=False)


def test_compute_is_index_aligned_and_batched(pairs, pair_embeddings):
    embedder = Counting()
    embeddings = compute_pair_embeddings(pairs, embedder, batch_size=2, progress=False)
    assert embedder.calls == 3 and embeddings.identity == "toy-v1"
    assert embeddings.image_w.shape == embeddings.image_l.shape == (5, 192)
    assert embeddings.text.shape == (5, 20) and bool(embeddings.valid.all())
    toy = ToyEmbedder()
    for i in range(5):
        item = pairs[i]
        w, t = toy.embed(item["winner"][None], [item["prompt"]])
        l, _ = toy.embed(item["loser"][None], [item["prompt"]])
        assert torch.equal(embeddings.image_w[i], w[0]) and torch.equal(embeddings.text[i], t[0])
        assert torch.equal(embeddings.image_l[i], l[0])
    torch.testing.assert_close(embeddings.image_w, pair_embeddings.image_w)  # batch-independent


def test_skipped_items_get_nan_rows(pairs, capsys):
    embeddings = compute_pair_embeddings(WithSkips(pairs, bad={1, 4}), ToyEmbedder(), batch_size=2)
    assert embeddings.valid.tolist() == [True, False, True, True, False]
    for t in (embeddings.image_w, embeddings.image_l, embeddings.text):
        assert bool(t[[1, 4]].isnan().all()) and bool(t[[0, 2, 3]].isfinite().all())
    assert "2 of 5 items could not be loaded" in capsys.readouterr().err
    with pytest.raises(ValueError, match="none of the 5 pairs"):
        compute_pair_embeddings(WithSkips(pairs, bad=range(5)), ToyEmbedder(), progress=False)


def _assert_same(a: PairEmbeddings, b: PairEmbeddings) -> None:
    for x, y in [(a.image_w, b.image_w), (a.image_l, b.image_l), (a.text, b.text)]:
        torch.testing.assert_close(x, y, equal_nan=True, atol=0, rtol=0)
    assert a.identity == b.identity


def test_cache_reuses_only_an_exact_key(pairs, tmp_path, capsys):
    data = WithSkips(pairs, bad={3})
    cache = tmp_path / "emb"
    embedder = Counting()

    def run(key, embedder=embedder):
        return load_or_compute_pair_embeddings(
            data, embedder, cache, key=key, batch_size=2, progress=False
        )

    first = run({"data": "toy", "seed": 0, "crop": (32, 32)})
    assert embedder.calls == 3
    assert sorted(p.name for p in cache.iterdir()) == ["embeddings.json", "embeddings.safetensors"]
    manifest = json.loads((cache / "embeddings.json").read_text())
    assert manifest["key"]["embedder"] == "toy-v1" and manifest["key"]["pairs"] == 5
    assert manifest["invalid"] == 1
    capsys.readouterr()

    again = run({"crop": [32, 32], "seed": 0, "data": "toy"})  # same key, any order, list=tuple
    assert embedder.calls == 3
    _assert_same(first, again)
    assert "reusing 5 pair embeddings" in capsys.readouterr().err

    seed0_tensors = (cache / "embeddings.safetensors").read_bytes()
    run({"data": "toy", "seed": 1, "crop": (32, 32)})  # the caller's key changed
    assert embedder.calls == 6
    err = capsys.readouterr().err
    assert "different key" in err and "recomputing" in err and "'seed': 0" in err

    # a tensors file from another write (as if interrupted between the two renames)
    (cache / "embeddings.safetensors").write_bytes(seed0_tensors)
    run({"data": "toy", "seed": 1, "crop": (32, 32)})
    assert embedder.calls == 9 and "does not belong" in capsys.readouterr().err

    other = Counting(identity="toy-v2")
    run({"data": "toy", "seed": 1, "crop": (32, 32)}, embedder=other)  # another embedder
    assert other.calls == 3 and "toy-v2" in capsys.readouterr().err

    (cache / "embeddings.safetensors").write_bytes(b"not safetensors")
    recomputed = run({"data": "toy", "seed": 1, "crop": (32, 32)}, embedder=other)
    assert other.calls == 6 and "unreadable" in capsys.readouterr().err
    _assert_same(recomputed, PairEmbeddings(first.image_w, first.image_l, first.text, "toy-v2"))
    assert sorted(p.name for p in cache.iterdir()) == ["embeddings.json", "embeddings.safetensors"]


# ============================================================================ dataset wrapper
def test_embedded_pairs_attach_index_aligned_extras(pairs, pair_embeddings):
    dataset = EmbeddedPairs(pairs, pair_embeddings)
    assert len(dataset) == 5
    toy = ToyEmbedder()
    for i in (0, 3):
        item = dataset[i]
        assert item["prompt"] == pairs[i]["prompt"] and torch.equal(
            item["winner"], pairs[i]["winner"]
        )
        w, t = toy.embed(item["winner"][None], [item["prompt"]])
        l, _ = toy.embed(item["loser"][None], [item["prompt"]])
        torch.testing.assert_close(item["extras"]["contrast_w"], combine(w, t, "both")[0])
        torch.testing.assert_close(item["extras"]["contrast_l"], combine(l, t, "both")[0])
        assert item["extras"]["contrast_w"].shape == (192 + 20,)

    text_only = EmbeddedPairs(pairs, pair_embeddings, modality="text")[2]["extras"]
    assert torch.equal(text_only["contrast_w"], text_only["contrast_l"])  # shared prompt
    image = EmbeddedPairs(pairs, pair_embeddings, modality="image")[2]["extras"]
    torch.testing.assert_close(image["contrast_w"], pair_embeddings.image_w[2])
    with pytest.raises(ValueError, match="unknown modality"):
        EmbeddedPairs(pairs, pair_embeddings, modality="joint")


def test_embedded_pairs_passes_skips_and_epochs_and_checks_length(pairs, pair_embeddings):
    data = WithSkips(pairs, bad={1})
    dataset = EmbeddedPairs(data, pair_embeddings, modality="image")
    assert isinstance(dataset[1], Skipped)
    kept = EmbeddedPairs(
        [{**pairs[0], "extras": {"ids": "p0"}}],
        PairEmbeddings(
            pair_embeddings.image_w[:1],
            pair_embeddings.image_l[:1],
            pair_embeddings.text[:1],
            "toy-v1",
        ),
    )[0]["extras"]
    assert sorted(kept) == ["contrast_l", "contrast_w", "ids"]  # other extras are kept
    dataset.set_epoch(4)
    assert data.epochs == [4]
    EmbeddedPairs(pairs, pair_embeddings).set_epoch(1)  # no set_epoch: nothing to forward
    with pytest.raises(ValueError, match="5 rows but the dataset has 4 items"):
        EmbeddedPairs(PreferencePairs(4, seed=0), pair_embeddings)
