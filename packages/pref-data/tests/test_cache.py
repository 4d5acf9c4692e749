"""Latent cache: round trip equals direct encoding, keys guard against stale caches, writes are
atomic. First with small pure-torch codec/encoder stand-ins, then with real tiny backbones."""

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pref_core.conditioning import Conditioning
from pref_data.cache import (
    CachedPairDataset,
    build_cache,
    cache_key_hash,
    collate_cached,
    open_cache,
)
from pref_data.dataset import PairDataset, collate_pairs
from pref_data.errors import CacheKeyError, EmptyDatasetError
from pref_data.records import PreferenceRecord, PreferenceSource
from pref_data.transforms import PairTransform

HAS_DIFFUSERS = all(importlib.util.find_spec(m) for m in ("diffusers", "transformers"))


class PoolCodec:
    """Average-pools by 2 and appends a noise channel drawn from the generator, so the test
    also checks that the cache threads the generator through like a VAE posterior sample."""

    latent_channels, downsample_factor = 4, 2

    def encode(self, images, *, generator=None):
        pooled = torch.nn.functional.avg_pool2d(images, 2)
        noise = torch.randn(pooled[:, :1].shape, generator=generator)
        return torch.cat([pooled, noise], dim=1)

    def decode(self, latents):  # the pooled image back at full size (the noise channel dropped)
        return torch.nn.functional.interpolate(latents[:, :3], scale_factor=2)


class CharEncoder:
    """Prompt → embeddings from its characters, a mask, and shared entries (a tensor, a value)."""

    def encode(self, prompts):
        codes = torch.zeros(len(prompts), 5, dtype=torch.long)
        for i, p in enumerate(prompts):
            chars = [ord(c) for c in p[:5]]
            codes[i, : len(chars)] = torch.tensor(chars)
        embeds = torch.stack([codes.float() / 100, codes.float().sqrt()], dim=-1)  # (B, 5, 2)
        return Conditioning(
            {"prompt_embeds": embeds, "attention_mask": (codes > 0).long()},
            {"text_ids": torch.arange(15.0).reshape(5, 3), "max_length": 5},
        )


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def make_dataset(n=7, broken=(2,), size=16, resolution=8):
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        w, l = (png(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)) for _ in range(2))
        records.append(PreferenceRecord(f"prompt {i}", b"bad" if i in broken else w, l, f"id{i}"))
    source = PreferenceSource.from_records(records, name="mem")
    return PairDataset(source, PairTransform(resolution), seed=3)


def direct(dataset, codec, encoder, batch_size, seed=0):
    """What the cache should hold: the same batches encoded directly, by id."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_pairs):
        if not batch["ids"]:
            continue
        with torch.no_grad():
            latents = codec.encode(
                torch.cat([batch["winner"], batch["loser"]]), generator=generator
            )
            cond = encoder.encode(batch["prompts"])
        n = len(batch["ids"])
        for j, rid in enumerate(batch["ids"]):
            out[rid] = (latents[j], latents[n + j], cond.index([j]), batch["prompts"][j])
    return out


KEY = {"model": "tiny", "revision": "abc", "data": "mem", "transform": {"resolution": 8}}


def test_round_trip_equals_direct_encoding(tmp_path):
    dataset = make_dataset()
    codec, encoder = PoolCodec(), CharEncoder()
    manifest = build_cache(
        dataset,
        codec=codec,
        encoder=encoder,
        out_dir=tmp_path / "cache",
        key=KEY,
        shard_size=2,
        batch_size=3,
        progress=False,
    )
    assert manifest.count == 6 and len(manifest.shards) == 3
    assert [s["id"] for s in manifest.skipped] == ["id2"]
    assert "cannot decode" in manifest.skipped[0]["reason"]
    stored = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert stored["key_hash"] == cache_key_hash(KEY) and stored["count"] == 6

    cached = open_cache(tmp_path / "cache", expected_key=KEY)
    assert isinstance(cached, CachedPairDataset) and len(cached) == 6
    expected = direct(dataset, codec, encoder, batch_size=3)
    assert cached.ids == list(expected)
    for i in range(len(cached)):
        item = cached[i]
        latent_w, latent_l, cond, prompt = expected[item["id"]]
        assert item["prompt"] == prompt
        torch.testing.assert_close(item["latent_w"], latent_w)
        torch.testing.assert_close(item["latent_l"], latent_l)
        assert item["cond"].batch_size == 1
        for name in ("prompt_embeds", "attention_mask"):
            assert torch.equal(item["cond"][name], cond[name])
        assert torch.equal(item["cond"]["text_ids"], cond["text_ids"])
        assert item["cond"]["max_length"] == 5

    batch = collate_cached([cached[i] for i in (0, 3, 5)])
    assert batch["latent_w"].shape == (3, 4, 4, 4) and batch["cond"].batch_size == 3
    assert batch["ids"] == [cached.ids[i] for i in (0, 3, 5)]
    loader = DataLoader(cached, batch_size=4, num_workers=2, collate_fn=collate_cached)
    assert [len(b["ids"]) for b in loader] == [4, 2]  # memory-mapped reads in worker processes


def test_key_mismatch_says_what_differs_and_how_to_rebuild(tmp_path):
    build_cache(
        make_dataset(),
        codec=PoolCodec(),
        encoder=CharEncoder(),
        out_dir=tmp_path / "cache",
        key=KEY,
        progress=False,
    )
    other = {**KEY, "revision": "def"}
    with pytest.raises(CacheKeyError) as info:
        open_cache(tmp_path / "cache", expected_key=other)
    text = str(info.value)
    assert "different model, data or transform" in text
    assert "revision: 'abc' (cache) vs 'def' (requested)" in text and "overwrite=True" in text
    assert len(open_cache(tmp_path / "cache")) == 6  # no expected key: no check


def test_cache_key_hash_is_canonical():
    a = {"model": "m", "transform": {"resolution": 8, "crop": "center"}, "sizes": (1, 2)}
    b = {"sizes": [1, 2], "transform": {"crop": "center", "resolution": 8}, "model": "m"}
    assert cache_key_hash(a) == cache_key_hash(b)
    assert cache_key_hash(a) != cache_key_hash({**a, "model": "n"})
    assert len(cache_key_hash(a)) == 64
    assert cache_key_hash({"p": Path("/x")}) == cache_key_hash({"p": "/x"})
    with pytest.raises(TypeError, match=r"key\.bad"):
        cache_key_hash({"bad": object()})


def test_writes_are_atomic_and_overwrite_is_explicit(tmp_path):
    out = tmp_path / "cache"
    args = {"codec": PoolCodec(), "encoder": CharEncoder(), "out_dir": out, "progress": False}
    build_cache(make_dataset(), key=KEY, **args)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_cache(make_dataset(), key=KEY, **args)

    class Failing(CharEncoder):
        calls = 0

        def encode(self, prompts):
            Failing.calls += 1
            if Failing.calls == 2:
                raise RuntimeError("boom")
            return super().encode(prompts)

    with pytest.raises(RuntimeError, match="boom"):
        build_cache(
            make_dataset(),
            key={**KEY, "v": 2},
            overwrite=True,
            batch_size=2,
            **{**args, "encoder": Failing()},
        )
    # The failed rebuild left the old cache intact and no temporary folder behind.
    assert open_cache(out, expected_key=KEY).key == json.loads(json.dumps(KEY))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]

    build_cache(make_dataset(n=3, broken=()), key={**KEY, "v": 2}, overwrite=True, **args)
    assert len(open_cache(out, expected_key={**KEY, "v": 2})) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_nothing_to_cache_is_an_error(tmp_path):
    with pytest.raises(EmptyDatasetError, match="all 2 pairs were skipped"):
        build_cache(
            make_dataset(n=2, broken=(0, 1)),
            codec=PoolCodec(),
            encoder=CharEncoder(),
            out_dir=tmp_path / "cache",
            key=KEY,
            progress=False,
        )
    assert not any(tmp_path.iterdir())


def test_progress_lines_go_to_stderr(tmp_path, capsys):
    build_cache(
        make_dataset(),
        codec=PoolCodec(),
        encoder=CharEncoder(),
        out_dir=tmp_path / "c",
        key=KEY,
        shard_size=4,
    )
    err = capsys.readouterr().err
    assert "cached 4/7 pairs" in err and "done 6/7 pairs (1 skipped)" in err


# ---------------------------------------------------------------------------- real tiny models
@pytest.mark.skipif(not HAS_DIFFUSERS, reason="needs pref-core[diffusers]")
def test_tiny_sd15_vae_and_clip_round_trip(tmp_path):
    from pref_core.backbones import load_backbone
    from pref_core.backbones.tiny_sd import build_tiny_sd15

    backbone = load_backbone(str(build_tiny_sd15(tmp_path / "sd15")))
    dataset = make_dataset(n=5, broken=(), size=40, resolution=32)
    build_cache(
        dataset,
        codec=backbone.codec,
        encoder=backbone.encoder,
        out_dir=tmp_path / "cache",
        key=KEY,
        batch_size=2,
        progress=False,
        seed=11,
    )
    cached = open_cache(tmp_path / "cache", expected_key=KEY)
    expected = direct(dataset, backbone.codec, backbone.encoder, batch_size=2, seed=11)
    for item in (cached[i] for i in range(len(cached))):
        latent_w, latent_l, cond, _ = expected[item["id"]]
        assert item["latent_w"].shape == (4, 16, 16)
        torch.testing.assert_close(item["latent_w"], latent_w)
        torch.testing.assert_close(item["latent_l"], latent_l)
        torch.testing.assert_close(item["cond"]["prompt_embeds"], cond["prompt_embeds"])


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="needs pref-core[diffusers]")
def test_toy_flux_shared_text_ids_are_stored_once(tmp_path):
    from pref_core.backbones.toy import build_toy

    backbone = build_toy("toy-flux")
    dataset = make_dataset(n=3, broken=(), size=32, resolution=32)
    manifest = build_cache(
        dataset,
        codec=backbone.codec,
        encoder=backbone.encoder,
        out_dir=tmp_path / "cache",
        key=KEY,
        progress=False,
    )
    assert manifest.shared_tensors == ["text_ids"] and "guidance" in manifest.cond_ids
    cached = open_cache(tmp_path / "cache")
    batch = collate_cached([cached[i] for i in range(3)])
    reference = backbone.encode(batch["prompts"])
    assert set(batch["cond"].keys()) == set(reference.keys())
    for name in reference:
        torch.testing.assert_close(batch["cond"][name], reference[name])
    torch.testing.assert_close(
        batch["latent_w"], torch.stack([dataset[i]["winner"] for i in range(3)])
    )
