"""PairTransform (same crop and flip for both images), PairDataset/IterablePairDataset (lazy
decoding, reproducible items, skipped images), collate_pairs and SkipCounter."""

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pref_data.dataset import (
    IterablePairDataset,
    PairDataset,
    SkipCounter,
    Skipped,
    collate_pairs,
    item_seed,
)
from pref_data.records import PreferenceRecord, PreferenceSource
from pref_data.transforms import PairTransform


def coordinate_image(width, height, blue, scale=1):
    """R = x, G = y (times ``scale``), B = ``blue``: every pixel says where it came from."""
    y, x = np.mgrid[0:height, 0:width] * scale
    array = np.stack([x, y, np.full_like(x, blue)], axis=-1).astype(np.uint8)
    return Image.fromarray(array)


def to_uint8(t):
    return ((t + 1) * 127.5).round().to(torch.int64)


def test_winner_and_loser_get_the_same_crop_and_flip():
    transform = PairTransform(32, crop="random", flip_prob=0.5)
    winner, loser = coordinate_image(48, 32, 0), coordinate_image(48, 32, 255)
    seen_flips, seen_lefts = set(), set()
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        w, l, params = transform.transform_with_params(winner, loser, g)
        assert w.shape == l.shape == (3, 32, 32) and w.dtype == torch.float32
        assert w.min() >= -1 and w.max() <= 1
        w8, l8 = to_uint8(w), to_uint8(l)
        assert torch.equal(w8[:2], l8[:2])  # same pixels taken from both
        assert (w8[2] == 0).all() and (l8[2] == 255).all()
        top, left = params.top_left
        xs = w8[0, 0].tolist()  # the x coordinates along the first row
        expected = list(range(left, left + 32))
        assert xs == (expected[::-1] if params.flipped else expected)
        assert w8[1, :, 0].tolist() == list(range(top, top + 32))
        seen_flips.add(params.flipped)
        seen_lefts.add(left)
    assert seen_flips == {True, False} and len(seen_lefts) > 3  # it does randomise


def test_transform_is_deterministic_given_the_generator():
    transform = PairTransform(16)
    winner, loser = coordinate_image(40, 24, 0), coordinate_image(40, 24, 9)
    a = transform(winner, loser, torch.Generator().manual_seed(3))
    b = transform(winner, loser, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_resize_shorter_side_center_crop_and_loser_resized_to_winner():
    transform = PairTransform(24, crop="center", flip_prob=0.0)
    assert transform.resized_size((48, 64)) == (24, 32)
    assert transform.resized_size((64, 48)) == (32, 24)
    winner = coordinate_image(64, 48, 0)
    # Half size, in the winner's coordinates: scaled up to the winner's size first.
    loser = coordinate_image(32, 24, 255, scale=2)
    w, l, params = transform.transform_with_params(winner, loser, torch.Generator())
    assert params.top_left == (0, 4) and params.resized_size == (24, 32)
    assert params.original_size == (48, 64) and not params.flipped
    assert w.shape == l.shape == (3, 24, 24)
    # Same geometry: the coordinate channels agree to within resampling error.
    assert (to_uint8(w)[:2] - to_uint8(l)[:2]).abs().float().mean() < 3


def test_transform_validates_arguments():
    with pytest.raises(ValueError):
        PairTransform(0)
    with pytest.raises(ValueError):
        PairTransform(8, crop="left")
    with pytest.raises(ValueError):
        PairTransform(8, flip_prob=2)


# ---------------------------------------------------------------------------- datasets
def png(color, size=(20, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def noisy_png(seed) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def source():
    records = [
        PreferenceRecord(f"prompt {i}", noisy_png(i), noisy_png(100 + i), f"r{i}") for i in range(6)
    ]
    records[2] = PreferenceRecord("broken", b"garbage", png((0, 0, 255)), "r2")
    records[4] = PreferenceRecord("cut", png((255, 0, 0)), png((0, 0, 255))[:30], "r4")
    return PreferenceSource.from_records(records, name="mem")


def test_pair_dataset_items_skips_and_reproducibility(source):
    dataset = PairDataset(source, PairTransform(16), seed=5)
    assert len(dataset) == 6
    item = dataset[3]
    assert item["prompt"] == "prompt 3" and item["id"] == "r3"
    assert item["winner"].shape == (3, 16, 16) and item["original_size"] == (20, 28)
    assert dataset[2] == Skipped("r2", dataset[2].reason) and "cannot decode" in dataset[2].reason
    assert isinstance(dataset[4], Skipped) and dataset[4].id == "r4"
    # Item i depends on (seed, epoch, i) only: any order, any copy of the dataset.
    order = [dataset[i] for i in (5, 3, 1, 0)]
    again = PairDataset(source, PairTransform(16), seed=5)
    for i, it in zip((5, 3, 1, 0), order):
        assert torch.equal(again[i]["winner"], it["winner"])
        assert torch.equal(again[i]["loser"], it["loser"])
    crops = set()
    for epoch in range(6):
        again.set_epoch(epoch)
        crops.add(tuple(again[3]["crop_top_left"]))
    assert len(crops) > 1  # new epochs draw new crops


def test_item_seed_depends_on_all_three_parts():
    seeds = {item_seed(s, i, e) for s in range(3) for i in range(3) for e in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)


def test_pair_dataset_refuses_streaming_sources():
    stream = PreferenceSource("s", iterate=lambda: iter([]), streaming=True)
    with pytest.raises(TypeError, match="IterablePairDataset"):
        PairDataset(stream, PairTransform(8))


def test_collate_leaves_skipped_out_and_reports_them(source):
    dataset = PairDataset(source, PairTransform(16))
    batch = collate_pairs([dataset[i] for i in range(6)])
    assert batch["ids"] == ["r0", "r1", "r3", "r5"] and batch["skipped"] == ["r2", "r4"]
    assert batch["winner"].shape == (4, 3, 16, 16) and batch["loser"].shape == (4, 3, 16, 16)
    assert batch["prompts"][2] == "prompt 3" and len(batch["original_sizes"]) == 4
    empty = collate_pairs([dataset[2], None])
    assert empty["winner"] is None and empty["ids"] == [] and empty["skipped"] == ["r2", "?"]

    counter = SkipCounter()
    counter.update(batch)
    counter.update([dataset[2], dataset[0]])  # the same id again counts once
    assert counter.count == 2 and counter.ids == ["r2", "r4"]
    assert counter.report() == "skipped 2 undecodable images: ids r2, r4"
    assert counter.report(max_ids=1).endswith("ids r2 (and 1 more)")
    assert SkipCounter().report() == "skipped 0 undecodable images"


def test_dataloader_with_workers(source):
    dataset = PairDataset(source, PairTransform(16), seed=1)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_pairs)
    batches = list(loader)
    assert sum(len(b["ids"]) for b in batches) == 4
    assert sorted(i for b in batches for i in b["skipped"]) == ["r2", "r4"]
    assert torch.equal(batches[0]["winner"][0], dataset[0]["winner"])
    pickle.dumps(dataset)  # workers under spawn/forkserver need a picklable dataset


def test_iterable_dataset_matches_map_style_and_resumes(source):
    transform = PairTransform(16)
    mapped = PairDataset(source, transform, seed=7)
    stream = IterablePairDataset(source, transform, seed=7)
    items = list(stream)
    assert len(items) == 6 and isinstance(items[2], Skipped)
    for i in (0, 1, 3, 5):
        assert torch.equal(items[i]["winner"], mapped[i]["winner"])
    resumed = list(stream.skip(3))
    assert [it.id if isinstance(it, Skipped) else it["id"] for it in resumed] == [
        "r3",
        "r4",
        "r5",
    ]
    assert torch.equal(resumed[0]["loser"], mapped[3]["loser"])
    odd = list(IterablePairDataset(source, transform, seed=7, rank=1, world_size=2))
    assert [it["id"] for it in odd if not isinstance(it, Skipped)] == ["r1", "r3", "r5"]


def test_iterable_dataset_shards_over_workers(source):
    stream = IterablePairDataset(source, PairTransform(16), seed=0)
    loader = DataLoader(stream, batch_size=2, num_workers=2, collate_fn=collate_pairs)
    ids = [i for b in loader for i in (*b["ids"], *b["skipped"])]
    assert sorted(ids) == [f"r{i}" for i in range(6)]  # each record exactly once
