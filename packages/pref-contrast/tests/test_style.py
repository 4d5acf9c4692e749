"""Style-alignment datasets: toy styles, the InstructPix2Pix editor on a tiny pipeline saved to
disk, the builder read back through pref-data's Pick-a-Pic reader, the CLI and its errors."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import pref_data
from pref_contrast import style
from pref_contrast.style import (
    InstructPix2PixEditor,
    OutputExistsError,
    StyleEditor,
    ToyStyle,
    UnknownEditorError,
    UnknownStyleError,
    build_style_dataset,
    make_editor,
)
from pref_data import toy

STYLES = sorted(style.TOY_STYLES)


def _toy_images(n: int = 6, resolution: int = 32, seed: int = 0) -> list[Image.Image]:
    pairs = toy.PreferencePairs(n, seed=seed, config=toy.ToyWorldConfig(resolution=resolution))
    return [Image.fromarray(toy.from_tensor(pairs[i]["winner"])) for i in range(n)]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _table(out: Path):
    return pq.read_table(sorted((out / "data").glob("train-*.parquet"))).to_pylist()


# ------------------------------------------------------------------------------ toy styles
@pytest.mark.parametrize("name", STYLES)
@pytest.mark.parametrize("size", [(3, 3), (32, 32), (37, 29), (512, 384)])
def test_toy_style_keeps_size_and_mode_and_changes_the_image(name: str, size: tuple[int, int]):
    rng = np.random.default_rng(0)
    w, h = size
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = ToyStyle(name).edit([image], ["a prompt"])[0]
    assert out.size == image.size and out.mode == "RGB"
    assert np.asarray(out).dtype == np.uint8
    assert np.abs(_pixels(out) - _pixels(image)).mean() > 0.05
    # Deterministic: the same image gives the same pixels.
    assert np.array_equal(np.asarray(out), np.asarray(ToyStyle(name).edit([image], ["x"])[0]))


def test_sketch_is_grey_lines_on_white_paper():
    for image in _toy_images():
        out = np.asarray(style.sketch(image)).astype(int)
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    flat = Image.new("RGB", (32, 32), (255, 255, 255))
    assert np.asarray(style.sketch(flat)).min() == round(0.96 * 255)  # blank paper
    # A vertical edge on white paper becomes a dark line; the paper around it stays light.
    edge = np.full((32, 32, 3), 255, np.uint8)
    edge[:, 16:] = (200, 30, 30)
    lines = np.asarray(style.sketch(Image.fromarray(edge)))[..., 0]
    assert lines[:, 15:17].max() < 60 and lines[:, :13].min() > 240


def test_winter_is_bluer_and_brighter_with_snow():
    images = _toy_images(8)
    for image in images:
        before, after = _pixels(image), _pixels(style.winter(image))
        assert (after[..., 2] - after[..., 0]).mean() > (before[..., 2] - before[..., 0]).mean()
        luma = np.array([0.299, 0.587, 0.114])
        assert (after @ luma).mean() > (before @ luma).mean()
    # Snow: a dark flat image gets white speckles (about 1.5 % of pixels) on a grey-blue ground.
    dark = _pixels(style.winter(Image.new("RGB", (64, 64), (0, 0, 0))))
    speckles = (dark.min(-1) > 0.9).mean()
    assert 0.005 < speckles < 0.03
    ground = dark[dark.min(-1) < 0.9]
    assert (ground[:, 2] > ground[:, 0]).all()


def test_winter_snow_depends_on_seed_and_image_only():
    image = _toy_images(1)[0]
    a, b = style.winter(image, seed=0), style.winter(image, seed=0)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(style.winter(image, seed=1)))
    assert ToyStyle("winter", seed=3).describe() == {"editor": "toy", "style": "winter", "seed": 3}


def test_vangogh_paints_with_its_palette():
    palette = style.VANGOGH_PALETTE
    for image in _toy_images(4, resolution=64):
        out = _pixels(style.vangogh(image)).reshape(-1, 3)
        # Every pixel is within the brush texture and the 25 % mix of a palette colour.
        nearest = np.sqrt(((out[:, None] - palette[None]) ** 2).sum(-1)).min(1)
        assert np.median(nearest) < 0.2
    grey = Image.new("RGB", (48, 48), (128, 128, 128))
    painted = _pixels(style.vangogh(grey))
    assert painted.std() > 0.01  # brush strokes on a flat input


def test_styles_differ_from_each_other():
    images = _toy_images(4)
    outs = {name: [_pixels(im) for im in ToyStyle(name).edit(images, [""] * 4)] for name in STYLES}
    for i, a in enumerate(STYLES):
        for b in STYLES[i + 1 :]:
            gap = np.mean([np.abs(x - y).mean() for x, y in zip(outs[a], outs[b])])
            assert gap > 0.08, (a, b, gap)


def test_unknown_toy_style_names_the_known_ones():
    with pytest.raises(UnknownStyleError, match="sketch, winter, vangogh"):
        ToyStyle("cubism")
    with pytest.raises(UnknownStyleError, match="not valid"):
        make_editor("Van Gogh")


# ------------------------------------------------------------------------------ the builder
def _build(source, out: Path, name: str = "winter", **kwargs) -> Path:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("log", None)
    return build_style_dataset(source, out, ToyStyle(name), **kwargs)


def test_toy_build_reads_back_as_pickapic(tmp_path: Path):
    out = _build("toy:12", tmp_path / "winter", batch_size=5, shard_size=5)
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        f"train-0000{k}-of-00003.parquet" for k in range(3)
    ]
    source = pref_data.open_source(f"pickapic:{out}")
    assert len(source) == 12
    pairs = toy.PreferencePairs(12, seed=0, flip_rate=0.0)
    editor = ToyStyle("winter")
    rows = _table(out)
    for i, record in enumerate(source):
        row = rows[i]
        item = pairs[i]
        rejected = pref_data.decode_image(record.loser)
        # The rejected image is one of the source pair's images, unchanged ...
        original = toy.from_tensor(item[row["source_side"]])
        assert np.array_equal(np.asarray(rejected), original)
        assert record.prompt == item["prompt"]
        # ... and the preferred one is exactly its styled version.
        expected = np.asarray(editor.edit([rejected], [record.prompt])[0])
        assert np.array_equal(np.asarray(pref_data.decode_image(record.winner)), expected)
        styled = 0 if row["label_0"] == 1.0 else 1
        assert (row[f"label_{styled}"], row[f"label_{1 - styled}"]) == (1.0, 0.0)
        assert row[f"model_{styled}"] == "style:winter" and row[f"model_{1 - styled}"] == "toy"
        assert row["source_id"] == item["id"]
    # Neither the column nor the side carries a signal: both values occur.
    assert {0.0, 1.0} == {row["label_0"] for row in rows}
    assert {"winner", "loser"} == {row["source_side"] for row in rows}

    dataset = pref_data.PairDataset(source, pref_data.PairTransform(32, crop="center", flip_prob=0))
    item = dataset[3]
    assert item["winner"].shape == (3, 32, 32) and item["winner"].min() >= -1
    manifest = json.loads((out / style.MANIFEST_NAME).read_text())
    assert manifest["style"] == "winter" and manifest["count"] == 12
    assert manifest["editor"] == {"editor": "toy", "style": "winter", "seed": 0}
    assert manifest["source"] == "toy:12:32" and manifest["seed"] == 0
    assert not (out / ".tmp-style-build").exists()


def test_same_seed_same_dataset_other_seed_other_picks(tmp_path: Path):
    a = _table(_build("toy:16", tmp_path / "a", seed=5))
    b = _table(_build("toy:16", tmp_path / "b", seed=5, batch_size=3))
    assert a == b  # batching does not matter
    c = _table(_build("toy:16", tmp_path / "c", seed=6))
    picks = [(r["label_0"], r["source_side"]) for r in a]
    assert picks != [(r["label_0"], r["source_side"]) for r in c]


def test_limit_and_toy_resolution(tmp_path: Path):
    out = _build("toy:10:16", tmp_path / "small", name="sketch", limit=4)
    source = pref_data.open_source(f"pickapic:{out}")
    assert len(source) == 4
    assert pref_data.decode_image(source[0].winner).size == (16, 16)


def _records(n: int, corrupt: set[int]) -> list[pref_data.PreferenceRecord]:
    images = _toy_images(n)
    records = []
    for i, image in enumerate(images):
        flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        winner, loser = (b"not an image",) * 2 if i in corrupt else (_png(image), _png(flipped))
        records.append(
            pref_data.PreferenceRecord(
                prompt=f"prompt {i}",
                winner=winner,
                loser=loser,
                id=f"rec-{i}",
                source="test",
                metadata={"model_0": "sd-a", "model_1": "sd-b", "label_0": 0.0, "label_1": 1.0},
            )
        )
    return records


def test_corrupt_images_are_skipped_counted_and_reported(tmp_path: Path):
    records = _records(6, corrupt={1, 4})
    messages: list[str] = []
    out = build_style_dataset(
        pref_data.PreferenceSource.from_records(records, "recs"),
        tmp_path / "out",
        ToyStyle("sketch"),
        progress=False,
        log=messages.append,
    )
    rows = _table(out)
    assert [r["source_id"] for r in rows] == ["rec-0", "rec-2", "rec-3", "rec-5"]
    manifest = json.loads((out / style.MANIFEST_NAME).read_text())
    assert manifest["skipped"] == 2 and manifest["skipped_ids"] == ["rec-1", "rec-4"]
    assert "skipped 2 pairs" in messages[-1] and "rec-1" in messages[-1]
    by_id = {r.id: r for r in records}
    for row in rows:
        styled = 0 if row["label_0"] == 1.0 else 1
        record = by_id[row["source_id"]]
        side = row["source_side"]
        # label_1 > label_0 in the source: its winner came from model_1, its loser from model_0.
        assert row[f"model_{1 - styled}"] == {"winner": "sd-b", "loser": "sd-a"}[side]
        # The rejected image keeps its original encoded bytes.
        assert row[f"jpg_{1 - styled}"] == getattr(record, side)


def test_everything_corrupt_or_empty_is_an_error(tmp_path: Path):
    source = pref_data.PreferenceSource.from_records(_records(3, corrupt={0, 1, 2}), "bad")
    with pytest.raises(pref_data.EmptyDatasetError, match="all 3 picked images were undecodable"):
        _build(source, tmp_path / "a")
    assert not (tmp_path / "a" / "data").exists()
    with pytest.raises(pref_data.EmptyDatasetError, match="yielded no pairs"):
        _build([], tmp_path / "b")
    with pytest.raises(ValueError, match="toy:0 has no pairs"):
        _build("toy:0", tmp_path / "c")


def test_an_interrupted_build_leaves_no_dataset(tmp_path: Path):
    class Failing:
        name = "sketch"
        calls = 0

        def edit(self, images, prompts):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("editor crashed")
            return ToyStyle("sketch").edit(images, prompts)

        def describe(self):
            return {"editor": "failing"}

    failing = Failing()
    assert isinstance(failing, StyleEditor)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="editor crashed"):
        build_style_dataset("toy:8", out, failing, batch_size=2, progress=False, log=None)
    assert not (out / "data").exists() and not (out / style.MANIFEST_NAME).exists()
    _build("toy:8", out, name="sketch")  # the folder is free to use
    assert len(_table(out)) == 8


def test_output_folder_with_another_dataset_needs_overwrite(tmp_path: Path):
    out = _build("toy:4", tmp_path / "out", name="winter")
    messages: list[str] = []
    _build("toy:4", out, name="winter", log=messages.append)  # the same dataset: nothing to do
    assert "nothing to do" in messages[0]
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _build("toy:4", out, name="sketch")
    _build("toy:4", out, name="sketch", overwrite=True)
    assert json.loads((out / style.MANIFEST_NAME).read_text())["style"] == "sketch"
    assert {r[f"model_{0 if r['label_0'] else 1}"] for r in _table(out)} == {"style:sketch"}
    foreign = tmp_path / "foreign"
    shutil.copytree(out / "data", foreign / "data")  # parquet without a manifest
    with pytest.raises(OutputExistsError, match=r"without a style_manifest\.json"):
        _build("toy:4", foreign)


# ------------------------------------------------------------------------------ InstructPix2Pix
@pytest.fixture(scope="module")
def tiny_pix2pix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random InstructPix2Pix pipeline saved in the hub layout: the tiny SD 1.5 parts of
    pref_core's test pipelines, with a UNet taking 8 channels (noisy latents + image latents)."""
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    from pref_core.backbones.tiny_sd import make_clip_tokenizer, tiny_clip_config, tiny_vae

    root = tmp_path_factory.mktemp("pix2pix")
    tokenizer = make_clip_tokenizer(root / "tokenizer-src")
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(tiny_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=tiny_vae(seed=2, scaling_factor=0.18215),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = root / "pipe"
    pipe.save_pretrained(str(path))
    for name in ("vocab.json", "merges.txt"):  # as the real checkpoints ship them
        if not (path / "tokenizer" / name).exists():
            shutil.copyfile(root / "tokenizer-src" / name, path / "tokenizer" / name)
    return path


def _pix2pix(path: Path, **kwargs) -> InstructPix2PixEditor:
    kwargs = {"style": "vangogh", "steps": 2, "resolution": 32, "device": "cpu", **kwargs}
    return InstructPix2PixEditor(str(path), "turn it into a Van Gogh painting", **kwargs)


def test_pix2pix_editor_on_a_tiny_local_pipeline(tiny_pix2pix: Path):
    editor = _pix2pix(tiny_pix2pix, batch_size=2)
    assert isinstance(editor, StyleEditor)
    assert editor.pipe.unet.config.in_channels == 8 and editor.dtype == torch.float32
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((36, 40), (32, 32), (32, 32), (64, 48))
    ]
    prompts = ["a cat", "a dog", "a dog", "a house"]
    out = editor.edit(images, prompts)
    assert [o.size for o in out] == [im.size for im in images]
    assert all(np.abs(_pixels(o) - _pixels(im)).mean() > 0.05 for o, im in zip(out, images))
    # Each image's noise is its own: batching and order change nothing.
    alone = [editor.edit([im], [p])[0] for im, p in zip(images, prompts)]
    for a, b in zip(out, alone):
        assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 2
    reseeded = _pix2pix(tiny_pix2pix, seed=1).edit(images[:1], prompts[:1])[0]
    assert np.abs(np.asarray(reseeded, int) - np.asarray(out[0], int)).mean() > 1
    described = editor.describe()
    assert described["editor"] == "instruct-pix2pix" and described["model"] == str(tiny_pix2pix)
    assert described["instruction"] == "turn it into a Van Gogh painting"


def test_make_editor_defaults_and_errors(tiny_pix2pix: Path):
    spec = f"instruct-pix2pix:{tiny_pix2pix}"
    editor = make_editor("winter", spec, steps=1, resolution=32, device="cpu")
    assert isinstance(editor, InstructPix2PixEditor)
    assert editor.instruction == style.DEFAULT_INSTRUCTIONS["winter"] and editor.name == "winter"
    custom = make_editor("watercolor", spec, instruction="make it a watercolor of {prompt}")
    assert custom._instruction("a cat") == "make it a watercolor of a cat"
    with pytest.raises(UnknownStyleError, match="--instruction"):
        make_editor("watercolor", spec)
    with pytest.raises(UnknownEditorError, match="instruct-pix2pix:HUB_ID_OR_FOLDER"):
        make_editor("sketch", "prompt-diffusion:x")
    assert isinstance(make_editor("sketch"), ToyStyle)


# ------------------------------------------------------------------------------ command line
def test_cli_builds_a_toy_dataset(tmp_path: Path, capsys):
    out = tmp_path / "vangogh"
    argv = ["--source", "toy:6", "--style", "vangogh", "--out", str(out), "--seed", "2"]
    assert style.main([*argv, "--no-progress"]) == 0
    assert f"wrote 6 style:vangogh pairs to {out}" in capsys.readouterr().out
    manifest = json.loads((out / style.MANIFEST_NAME).read_text())
    assert (manifest["seed"], manifest["count"], manifest["editor"]["editor"]) == (2, 6, "toy")
    assert len(pref_data.open_source(f"pickapic:{out}")) == 6


def test_cli_with_instruct_pix2pix(tiny_pix2pix: Path, tmp_path: Path):
    out = tmp_path / "ip2p"
    argv = ["--source", "toy:3", "--style", "vangogh", "--out", str(out), "--no-progress"]
    editor = ["--editor", f"instruct-pix2pix:{tiny_pix2pix}", "--steps", "1", "--resolution", "32"]
    assert style.main([*argv, *editor, "--device", "cpu"]) == 0
    rows = _table(out)
    assert len(rows) == 3
    assert all("style:vangogh" in (r["model_0"], r["model_1"]) for r in rows)
    manifest = json.loads((out / style.MANIFEST_NAME).read_text())
    assert manifest["editor"]["model"] == str(tiny_pix2pix)
    assert manifest["editor"]["instruction"] == style.DEFAULT_INSTRUCTIONS["vangogh"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--style", "cubism"], "unknown toy style 'cubism'; the toy editor has sketch, winter"),
        (["--style", "sketch", "--editor", "magic"], "unknown editor 'magic'"),
        (["--style", "sketch", "--source", "toy:0"], "toy:0 has no pairs"),
        (["--style", "sketch", "--source", "toy:abc"], "toy:N or toy:N:RESOLUTION"),
        (["--style", "sketch", "--source", "pickapic:/no/such/dir"], "does not exist"),
    ],
)
def test_cli_errors_exit_2_with_a_message(tmp_path: Path, capsys, extra, message):
    argv = ["--source", "toy:4", "--out", str(tmp_path / "out"), "--no-progress"]
    assert style.main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pref-style-data: error:") and message in err


def test_cli_refuses_a_different_dataset_unless_overwrite(tmp_path: Path, capsys):
    argv = ["--source", "toy:4", "--out", str(tmp_path / "out"), "--no-progress"]
    assert style.main([*argv, "--style", "winter"]) == 0
    assert style.main([*argv, "--style", "sketch"]) == 2
    assert "already holds a different dataset" in capsys.readouterr().err
    assert style.main([*argv, "--style", "sketch", "--overwrite"]) == 0
