"""Instruction-editing triplets (InstructPix2Pix schema, toy world) and detector agreement."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pref_data import SchemaError, Skipped
from pref_data.toy import EditTriplets, edit_instruction
from pref_img.detector import load_detector
from pref_img.tiny_mllm import build_tiny_llava
from pref_img.triplets import (
    InstructionTriplets,
    ToyTriplets,
    collate_triplets,
    content_words,
    detector_agreement,
    normalise_instruction,
)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _arrays(n, height=20, width=24):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def _table(arrays, *, corrupt=(), drop=()):
    """Rows as InstructPix2Pix stores them: images as the datasets Image struct."""
    images = [
        {"bytes": b"not a png" if i in corrupt else _png(a), "path": f"{i}.png"}
        for i, a in enumerate(arrays)
    ]
    columns = {
        "original_prompt": [f"photo {i}" for i in range(len(arrays))],
        "original_image": images,
        "edit_prompt": [f"make it red {i}" for i in range(len(arrays))],
        "edited_prompt": [f"a red photo {i}" for i in range(len(arrays))],
        "edited_image": images,
    }
    return pa.table({k: v for k, v in columns.items() if k not in drop})


def test_parquet_items_decode_the_original_image(tmp_path):
    arrays = _arrays(3)
    pq.write_table(_table(arrays, corrupt={1}), tmp_path / "train-00000-of-00001.parquet")
    data = InstructionTriplets(tmp_path / "train-00000-of-00001.parquet")
    assert len(data) == 3
    item = data[0]
    assert set(item) == {"image", "prompt", "instruction", "id"}
    assert item["prompt"] == "a red photo 0" and item["instruction"] == "make it red 0"
    expected = torch.from_numpy(arrays[0]).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(item["image"], expected)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 20, 24)
    # The corrupt row is the pref_data skip marker, not an exception.
    skipped = data[1]
    assert isinstance(skipped, Skipped) and skipped.id.endswith(":train:1")
    assert "decode" in skipped.reason
    batch = collate_triplets([data[0], data[1], data[2]])
    assert batch["images"].shape == (2, 3, 20, 24) and batch["skipped"] == [skipped.id]
    assert data[-1]["id"] == data[2]["id"]


def test_folder_resolution_and_limit(tmp_path):
    arrays = _arrays(5)
    (tmp_path / "data").mkdir()
    pq.write_table(_table(arrays[:3]), tmp_path / "data" / "train-00000-of-00002.parquet")
    pq.write_table(_table(arrays[3:]), tmp_path / "data" / "train-00001-of-00002.parquet")
    data = InstructionTriplets(tmp_path, resolution=16)
    assert len(data) == 5
    assert data[4]["image"].shape == (3, 16, 16)
    # Shorter side 20 → 16 (width 24 → 19), then the centred 16×16 square.
    expected = Image.fromarray(arrays[4]).resize((19, 16), Image.Resampling.BICUBIC)
    expected = np.asarray(expected.crop((1, 0, 17, 16)))
    assert np.array_equal(
        ((data[4]["image"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy(), expected
    )
    assert len(InstructionTriplets(tmp_path, limit=2)) == 2
    with pytest.raises(IndexError):
        InstructionTriplets(tmp_path, limit=2)[2]


def test_datasets_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    arrays = _arrays(2)
    dataset = datasets.Dataset(_table(arrays)).cast_column("original_image", datasets.Image())
    dataset.save_to_disk(str(tmp_path / "saved"))
    data = InstructionTriplets(tmp_path / "saved")
    assert data[1]["instruction"] == "make it red 1"
    expected = torch.from_numpy(arrays[1]).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(data[1]["image"], expected)


def test_missing_column_lists_found_and_needed(tmp_path):
    pq.write_table(_table(_arrays(1), drop={"edit_prompt"}), tmp_path / "x.parquet")
    with pytest.raises(SchemaError) as error:
        InstructionTriplets(tmp_path / "x.parquet")
    message = str(error.value)
    assert "missing columns ['edit_prompt']" in message
    assert "original_prompt" in message and "edited_prompt" in message


def test_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        InstructionTriplets(tmp_path / "nope.parquet")
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        InstructionTriplets(tmp_path)


def test_toy_triplets_wrap_the_toy_edit_triplets():
    toy = ToyTriplets(4, seed=3)
    reference = EditTriplets(4, seed=3)
    for i in range(4):
        item, ref = toy[i], reference[i]
        assert torch.equal(item["image"], ref["defective"])
        assert item["prompt"] == ref["prompt"] and item["instruction"] == ref["instruction"]
        assert item["instruction"] == edit_instruction(reference.prompt(i), reference.defect(i))
        assert item["id"] == f"toy-edit-3-{i}"
    assert ToyTriplets(2, seed=0, resolution=48)[0]["image"].shape == (3, 48, 48)


def test_instruction_normalisation_and_content_words():
    assert normalise_instruction("  Make it   RED. ") == "make it red"
    assert content_words("move it to the top left") == {"move", "top", "left"}
    assert content_words("Make the background white.") == {"make", "background", "white"}
    assert content_words("add a small red circle at the center") == {
        "add",
        "small",
        "red",
        "circle",
        "center",
    }


@settings(max_examples=40, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(["make", "it", "red", "the", "move", "top", "left", "a"]),
        min_size=1,
        max_size=6,
    )
)
def test_attribute_agreement_is_implied_by_exact_agreement(words):
    text = " ".join(words)
    shouted = text.upper() + "."
    assert normalise_instruction(shouted) == normalise_instruction(text)
    assert content_words(text) <= content_words(shouted)


class _ScriptedDetector:
    """Answers from a fixed list, to check the metric's arithmetic (no model involved)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def generate(self, images, prompts, *, max_new_tokens=32):
        self.calls.append(len(prompts))
        out, self.answers = self.answers[: len(prompts)], self.answers[len(prompts) :]
        return out


def test_detector_agreement_counts_exact_and_attribute_hits():
    items = [
        {"image": torch.zeros(3, 8, 8), "prompt": "p", "instruction": ins, "id": str(i)}
        for i, ins in enumerate(
            ["make it red", "move it to the top left", "make it sharp", "remove the noise"]
        )
    ]
    answers = [
        "Make it red.",  # exact (and attribute)
        "move it to the left top corner",  # attribute only
        "make it red",  # neither
        "remove noise",  # attribute only
    ]
    detector = _ScriptedDetector(answers)
    result = detector_agreement(detector, items, batch_size=3)
    assert result == {"exact": 0.25, "attribute": 0.75, "n": 4.0}
    assert detector.calls == [3, 1]
    limited = detector_agreement(_ScriptedDetector(answers), items, n=2)
    assert limited == {"exact": 0.5, "attribute": 1.0, "n": 2.0}


def test_detector_agreement_runs_a_real_detector(tmp_path):
    detector = load_detector(build_tiny_llava(tmp_path / "llava"))
    result = detector_agreement(detector, ToyTriplets(3, seed=0), batch_size=2, max_new_tokens=4)
    assert result["n"] == 3.0
    # An exact match always names the right words, so exact <= attribute.
    assert 0.0 <= result["exact"] <= result["attribute"] <= 1.0
