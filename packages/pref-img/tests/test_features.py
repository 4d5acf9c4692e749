"""Aligner training features: collation, the disk cache (round trip, key check, atomic build)
and the size arithmetic."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from pref_data import CacheKeyError
from pref_img.features import (
    FeatureCache,
    PairFeatures,
    cache_bytes_per_pair,
    collate_features,
    describe_cache_size,
)

S1, D1, D2 = 2, 8, 6
KEY = {"ip_adapter": "tiny-ip", "mllm": "tiny-llava", "template": 3, "data": ["toy", 5]}


def _items(lengths=(3, 0, 5, 1, 2), seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            f"pair-{i}",
            torch.randn(S1, D1, generator=g) * scale,
            torch.randn(S1, D1, generator=g) * scale,
            torch.randn(n, D2, generator=g) * scale,
        )
        for i, n in enumerate(lengths)
    ]


# ---------------------------------------------------------------- collation
def test_collate_pads_guidance_and_builds_the_mask():
    a = {"winner": torch.full((S1, D1), 1.0), "loser": torch.full((S1, D1), -1.0), "id": "a"}
    b = {"winner": torch.full((S1, D1), 2.0), "loser": torch.full((S1, D1), -2.0), "id": "b"}
    c = {"winner": torch.full((S1, D1), 3.0), "loser": torch.full((S1, D1), -3.0), "id": "c"}
    a["guidance"] = torch.tensor([[1.0] * D2, [2.0] * D2])  # L = 2
    b["guidance"] = torch.zeros(0, D2)  # L = 0
    c["guidance"] = torch.tensor([[5.0] * D2, [6.0] * D2, [7.0] * D2])  # L = 3
    batch = collate_features([a, b, c])
    assert isinstance(batch, PairFeatures) and len(batch) == 3
    assert batch.winner.shape == batch.loser.shape == (3, S1, D1)
    assert batch.winner[:, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert batch.loser[:, 0, 0].tolist() == [-1.0, -2.0, -3.0]
    assert batch.guidance.shape == (3, 3, D2)
    assert batch.guidance[:, :, 0].tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [5.0, 6.0, 7.0]]
    assert batch.guidance_mask.dtype == torch.bool
    assert batch.guidance_mask.tolist() == [
        [True, True, False],
        [False, False, False],
        [True, True, True],
    ]
    assert batch.ids == ["a", "b", "c"]
    moved = batch.to(dtype=torch.float64)
    assert moved.guidance.dtype == torch.float64 and moved.guidance_mask.dtype == torch.bool


def test_collate_rejects_bad_items():
    good = {
        "winner": torch.zeros(S1, D1),
        "loser": torch.zeros(S1, D1),
        "guidance": torch.zeros(2, D2),
    }
    with pytest.raises(ValueError, match="no items"):
        collate_features([])
    with pytest.raises(ValueError, match="lacks"):
        collate_features([{"winner": good["winner"]}])
    with pytest.raises(ValueError, match="item 1: winner"):
        collate_features([good, {**good, "loser": torch.zeros(S1 + 1, D1)}])
    with pytest.raises(ValueError, match="item 1: guidance"):
        collate_features([good, {**good, "guidance": torch.zeros(2, D2 + 1)}])


# ---------------------------------------------------------------- cache round trip
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cache_round_trip(tmp_path, dtype):
    items = _items()
    cache = FeatureCache.build(
        tmp_path / "cache", items, key=KEY, dtype=dtype, shard_size=2, progress=False
    )
    assert len(cache) == 5 and cache.ids == [i for i, *_ in items]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "manifest.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    reopened = FeatureCache.open(tmp_path / "cache", expected_key=KEY)
    assert reopened.ip_shape == (S1, D1) and reopened.guidance_dim == D2 and reopened.dtype == dtype
    assert reopened.manifest["guidance_tokens"] == {"min": 0, "max": 5, "total": 11}
    for i, (pair_id, c_w, c_l, h) in enumerate(items):
        for got in (reopened[i], reopened[i - 5]):  # negative indices too
            assert got["id"] == pair_id
            assert got["guidance"].shape == h.shape
            for name, value in (("winner", c_w), ("loser", c_l), ("guidance", h)):
                assert got[name].dtype == torch.float32
                # exactly the input rounded to the storage dtype ...
                assert torch.equal(got[name], value.to(dtype).float()), name
                # ... which is within that dtype's half-ulp of the input (|x| < 8 here)
                tol = {torch.float16: 4e-3, torch.bfloat16: 3.2e-2, torch.float32: 0.0}[dtype]
                torch.testing.assert_close(got[name], value, rtol=0, atol=tol)
    with pytest.raises(IndexError):
        reopened[5]


def test_cache_items_feed_a_dataloader_and_survive_pickling(tmp_path):
    cache = FeatureCache.build(tmp_path / "c", _items(), key=KEY, shard_size=3, progress=False)
    _ = cache[4]  # open a shard handle before pickling
    clone = pickle.loads(pickle.dumps(cache))
    assert torch.equal(clone[4]["guidance"], cache[4]["guidance"])
    batches = list(DataLoader(cache, batch_size=2, collate_fn=collate_features))
    assert [len(b) for b in batches] == [2, 2, 1]
    first = batches[1]  # pairs 2 and 3: guidance lengths 5 and 1
    assert first.guidance.shape == (2, 5, D2)
    assert first.guidance_mask.sum(dim=1).tolist() == [5, 1]
    assert first.ids == ["pair-2", "pair-3"]


def test_cache_key_mismatch_names_the_fields(tmp_path):
    FeatureCache.build(tmp_path / "c", _items(), key=KEY, progress=False)
    # the same key in another order (and with a tuple for the list) opens
    same = {"data": ("toy", 5), "template": 3, "mllm": "tiny-llava", "ip_adapter": "tiny-ip"}
    assert len(FeatureCache.open(tmp_path / "c", expected_key=same)) == 5
    other = {**KEY, "mllm": "tiny-qwen", "extra": 1}
    with pytest.raises(CacheKeyError) as info:
        FeatureCache.open(tmp_path / "c", expected_key=other)
    message = str(info.value)
    assert "mllm: 'tiny-llava' (cache) vs 'tiny-qwen' (requested)" in message
    assert "extra: '<absent>' (cache) vs 1 (requested)" in message
    assert "ip_adapter" not in message and "overwrite=True" in message
    assert FeatureCache.open(tmp_path / "c").key == {
        "data": ["toy", 5],
        "ip_adapter": "tiny-ip",
        "mllm": "tiny-llava",
        "template": 3,
    }
    with pytest.raises(FileNotFoundError, match="not a feature cache"):
        FeatureCache.open(tmp_path / "nothing")


# ---------------------------------------------------------------- atomic build and errors
def test_build_is_atomic(tmp_path):
    out = tmp_path / "cache"
    seen_during_build = []

    def failing_items():
        for n, item in enumerate(_items(lengths=(1, 2, 3, 4, 5))):
            if n == 3:  # after the first shard (shard_size 2) has been written to disk
                seen_during_build.append(out.exists())
                raise RuntimeError("encoder crashed")
            yield item

    with pytest.raises(RuntimeError, match="encoder crashed"):
        FeatureCache.build(out, failing_items(), key=KEY, shard_size=2, progress=False)
    assert seen_during_build == [False]  # nothing visible while the build runs
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # and the temporary folder is gone

    # a failed rebuild leaves the old cache intact and readable
    FeatureCache.build(out, _items(), key=KEY, shard_size=2, progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        FeatureCache.build(out, _items(), key=KEY, progress=False)
    with pytest.raises(RuntimeError):
        FeatureCache.build(
            out, failing_items(), key={"v": 2}, shard_size=2, progress=False, overwrite=True
        )
    assert len(FeatureCache.open(out, expected_key=KEY)) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
    # a successful rebuild replaces it
    rebuilt = FeatureCache.build(
        out, _items(lengths=(2, 2)), key={"v": 2}, overwrite=True, progress=False
    )
    assert len(rebuilt) == 2 and FeatureCache.open(out).key == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_build_rejects_bad_items(tmp_path):
    items = _items()
    with pytest.raises(ValueError, match="duplicate pair id 'pair-0'"):
        FeatureCache.build(tmp_path / "a", [*items, items[0]], key=KEY, progress=False)
    bad_shape = [
        *items[:2],
        ("x", torch.zeros(S1, D1 + 1), torch.zeros(S1, D1 + 1), torch.zeros(1, D2)),
    ]
    with pytest.raises(ValueError, match="pair 'x': winner"):
        FeatureCache.build(tmp_path / "b", bad_shape, key=KEY, progress=False)
    with pytest.raises(ValueError, match="bfloat16"):  # 1e5 overflows float16
        FeatureCache.build(tmp_path / "c", _items(scale=1e5), key=KEY, progress=False)
    assert (
        len(
            FeatureCache.build(
                tmp_path / "d", _items(scale=1e5), key=KEY, dtype=torch.bfloat16, progress=False
            )
        )
        == 5
    )
    with pytest.raises(ValueError, match="no items"):
        FeatureCache.build(tmp_path / "e", [], key=KEY, progress=False)
    with pytest.raises(ValueError, match="cannot be stored"):
        FeatureCache.build(tmp_path / "f", items, key=KEY, dtype=torch.int8, progress=False)
    with pytest.raises(TypeError):  # keys hold JSON-like values only
        FeatureCache.build(tmp_path / "g", items, key={"model": object()}, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# ---------------------------------------------------------------- sizes
def test_cache_bytes_per_pair_by_hand():
    # 2 bytes · (2 · 16 · 2048 + 636 · 5120) = 2 · (65,536 + 3,256,320) = 6,643,712
    assert cache_bytes_per_pair(16, 2048, 636, 5120) == 6_643_712
    # FLUX + Qwen2.5-VL at 448²: 2 · (2 · 4 · 4096 + 316 · 3584) = 2 · (32,768 + 1,132,544)
    assert cache_bytes_per_pair(4, 4096, 316, 3584) == 2_330_624
    # float32, tiny: 4 · (2 · 2 · 8 + 3 · 6) = 4 · 50 = 200
    assert cache_bytes_per_pair(2, 8, 3, 6, bytes_per_value=4) == 200
    with pytest.raises(ValueError, match="ip_dim"):
        cache_bytes_per_pair(2, -1, 3, 6)


def test_cache_payload_on_disk_matches_the_formula(tmp_path):
    lengths = (3, 0, 5, 1, 2)
    FeatureCache.build(tmp_path / "c", _items(lengths), key=KEY, shard_size=2, progress=False)
    payload = 0
    for shard in sorted((tmp_path / "c").glob("shard-*.safetensors")):
        tensors = load_file(str(shard))
        payload += sum(t.numel() * t.element_size() for n, t in tensors.items() if n != "offsets")
    assert payload == sum(cache_bytes_per_pair(S1, D1, n, D2) for n in lengths)


def test_describe_cache_size_at_pick_a_pic_scale():
    # 851,000 · 6,643,712 B = 5,653,798,912,000 B
    sdxl = {"ip_tokens": 16, "ip_dim": 2048, "guidance_tokens": 636, "guidance_dim": 5120}
    assert describe_cache_size(851_000, **sdxl) == "5.7 TB"
    # 851,000 · 2,330,624 B = 1,983,361,024,000 B; 851,000 · 2 · (32,768 + 1340 · 3584) B
    # = 851,000 · 9,670,656 B = 8,229,728,256,000 B
    flux = {"ip_tokens": 4, "ip_dim": 4096, "guidance_dim": 3584}
    assert describe_cache_size(851_000, guidance_tokens=316, **flux) == "2.0 TB"
    assert describe_cache_size(851_000, guidance_tokens=1340, **flux) == "8.2 TB"
    # IP tokens alone: 851,000 · 2 · 2 · 16 · 2048 B = 111,542,272,000 B
    assert describe_cache_size(851_000, **{**sdxl, "guidance_tokens": 0}) == "111.5 GB"
    assert (
        describe_cache_size(1, ip_tokens=2, ip_dim=8, guidance_tokens=3, guidance_dim=6) == "100 B"
    )
    assert (
        describe_cache_size(15, ip_tokens=2, ip_dim=8, guidance_tokens=3, guidance_dim=6)
        == "1.5 kB"
    )
    assert (
        describe_cache_size(99_996, ip_tokens=0, ip_dim=0, guidance_tokens=5, guidance_dim=1)
        == "1.0 MB"
    )
