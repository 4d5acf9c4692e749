"""Aligner training features: batching them, and a disk cache for small datasets.

Training the Implicit Aligner needs, per preference pair (IMG Sec. 3.4): the winner's and the
loser's projected image-prompt tokens c_w, c_l (S1, D1) — the IP-Adapter's image projection of
each image — and the MLLM guidance features h (L_i, D2) of the *loser* image read with its
prompt, whose length L_i varies with the prompt (and, for Qwen2.5-VL, the image size).
:func:`collate_features` pads h to a batch; :class:`FeatureCache` stores all three once.

Why a cache only for small datasets — its size at Pick-a-Pic scale (851K pairs), at 2 bytes a
value (bf16/fp16), per pair = 2 · (2·S1·D1 + L·D2) bytes:

- SDXL + LLaVA-1.5-13B: IP-Adapter-Plus tokens 2 × 16 × 2048 = 65,536 values; guidance
  (576 image + ~60 text tokens) × 5120 = 636 × 5120 = 3,256,320 values. Together 3,321,856
  values = 6,643,712 B ≈ 6.6 MB per pair; × 851,000 = 5.654 × 10¹² B ≈ **5.7 TB** (5.1 TiB).
  The guidance is 98.0% of it; the IP tokens alone would be 111.5 GB.
- FLUX + Qwen2.5-VL-7B: XLabs IP tokens 2 × 4 × 4096 = 32,768 values; guidance
  (256–1280 image + ~60 text tokens) × 3584 — a 448 × 448 image is 32 × 32 patches of 14 px,
  merged 2 × 2 into 256 tokens — = 316 × 3584 = 1,132,544 to 1340 × 3584 = 4,802,560 values.
  Per pair 2,330,624 B ≈ 2.3 MB to 9,670,656 B ≈ 9.7 MB; × 851,000 ≈ **2.0 TB to 8.2 TB**. The
  guidance is 97.2%–99.3% of it; the IP tokens alone would be 55.8 GB.

(:func:`describe_cache_size` reproduces these numbers.) Terabytes of MLLM states are more than a
training node can store or read fast enough, so real-scale training runs the MLLM and the
IP-Adapter on the fly; the cache is for small datasets (the toy world, a few thousand pairs),
where encoding once and reading back is fastest.

Layout of a cache folder::

    manifest.json             format, version, key (+ hash), count, shapes, dtype, shards,
                              guidance length range
    shard-00000.safetensors   winner (n, S1, D1), loser (n, S1, D1), guidance (ΣL_i, D2) — the
                              samples' guidance rows concatenated, no padding — and
                              offsets (n + 1,) int64: sample j's rows are offsets[j]:offsets[j+1];
                              metadata: ids (JSON list)
"""

from __future__ import annotations

import bisect
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from pref_data import CacheKeyError, EmptyDatasetError, cache_key_hash, replace_folder

__all__ = [
    "FEATURE_CACHE_FORMAT",
    "FEATURE_CACHE_VERSION",
    "FeatureCache",
    "PairFeatures",
    "cache_bytes_per_pair",
    "collate_features",
    "describe_cache_size",
]

FEATURE_CACHE_FORMAT = "pref-img/feature-cache"
FEATURE_CACHE_VERSION = 1
_MANIFEST = "manifest.json"
_STORABLE = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


# ============================================================================ batching
@dataclass
class PairFeatures:
    """One batch of aligner training features.

    Attributes:
        winner: c_w, the winners' image-prompt tokens, (B, S1, D1).
        loser: c_l, the losers' image-prompt tokens, (B, S1, D1).
        guidance: h, the MLLM features of each loser with its prompt, right-padded with zeros,
            (B, L, D2) with L the longest in the batch.
        guidance_mask: (B, L) bool, True at real guidance tokens.
        ids: the pairs' ids when the items carried them (else empty).
    """

    winner: Tensor
    loser: Tensor
    guidance: Tensor
    guidance_mask: Tensor
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.winner.shape[0]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PairFeatures:
        """Move to ``device`` and cast the features (not the mask) to ``dtype``."""
        return PairFeatures(
            winner=self.winner.to(device=device, dtype=dtype),
            loser=self.loser.to(device=device, dtype=dtype),
            guidance=self.guidance.to(device=device, dtype=dtype),
            guidance_mask=self.guidance_mask.to(device=device),
            ids=list(self.ids),
        )


def collate_features(items: Sequence[Mapping[str, Any]]) -> PairFeatures:
    """Stack items ``{"winner": (S1, D1), "loser": (S1, D1), "guidance": (L_i, D2)}`` (and
    optionally ``"id"``) into a :class:`PairFeatures`, right-padding guidance to max L_i.

    Raises:
        ValueError: on an empty list, a missing entry, or shapes that disagree (naming the item).
    """
    if len(items) == 0:
        raise ValueError("collate_features got no items; the batch must hold at least one pair")
    for i, item in enumerate(items):
        missing = [k for k in ("winner", "loser", "guidance") if k not in item]
        if missing:
            raise ValueError(f"item {i} lacks {missing}; items need winner, loser and guidance")
    ip_shape = tuple(items[0]["winner"].shape)
    d2 = items[0]["guidance"].shape[-1] if items[0]["guidance"].ndim == 2 else None
    for i, item in enumerate(items):
        w, l, g = item["winner"], item["loser"], item["guidance"]
        if w.ndim != 2 or tuple(w.shape) != ip_shape or tuple(l.shape) != ip_shape:
            raise ValueError(
                f"item {i}: winner {tuple(w.shape)} and loser {tuple(l.shape)} must both be "
                f"(S1, D1) = {ip_shape}, like item 0's winner"
            )
        if g.ndim != 2 or g.shape[-1] != d2:
            raise ValueError(
                f"item {i}: guidance must be (L_i, D2) with D2 = {d2} as in item 0, got "
                f"{tuple(g.shape)}"
            )
    lengths = [int(item["guidance"].shape[0]) for item in items]
    first = items[0]["guidance"]
    guidance = first.new_zeros(len(items), max(lengths), d2)  # (B, L, D2)
    mask = torch.zeros(len(items), max(lengths), dtype=torch.bool, device=first.device)
    for i, (item, n) in enumerate(zip(items, lengths)):
        guidance[i, :n] = item["guidance"]
        mask[i, :n] = True
    ids = [str(item["id"]) for item in items] if all("id" in item for item in items) else []
    return PairFeatures(
        winner=torch.stack([item["winner"] for item in items]),
        loser=torch.stack([item["loser"] for item in items]),
        guidance=guidance,
        guidance_mask=mask,
        ids=ids,
    )


# ============================================================================ sizes
def cache_bytes_per_pair(
    ip_tokens: int,
    ip_dim: int,
    guidance_tokens: int,
    guidance_dim: int,
    bytes_per_value: int = 2,
) -> int:
    """Bytes one pair's features take: bytes_per_value · (2·S1·D1 + L·D2).

    Counts the tensor values (winner and loser tokens, one guidance sequence); the cache adds
    8 bytes of offset per pair and a little file metadata, which this leaves out.

    Args:
        ip_tokens: S1, image-prompt tokens per image.
        ip_dim: D1, their width.
        guidance_tokens: L, guidance tokens per pair (image + text tokens of the MLLM input).
        guidance_dim: D2, the MLLM hidden size.
        bytes_per_value: 2 for fp16/bf16, 4 for fp32.
    """
    sizes = {
        "ip_tokens": ip_tokens,
        "ip_dim": ip_dim,
        "guidance_tokens": guidance_tokens,
        "guidance_dim": guidance_dim,
        "bytes_per_value": bytes_per_value,
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return bytes_per_value * (2 * ip_tokens * ip_dim + guidance_tokens * guidance_dim)


_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def _human_bytes(n: int) -> str:
    """Decimal (SI) units with one decimal: 5653798912000 → "5.7 TB"."""
    if n < 1000:
        return f"{n} B"
    exponent = min(int(math.log10(n) // 3), len(_UNITS) - 1)
    value = n / 1000**exponent
    if round(value, 1) >= 1000 and exponent < len(_UNITS) - 1:  # 999.96 kB prints as 1.0 MB
        exponent += 1
        value = n / 1000**exponent
    return f"{value:.1f} {_UNITS[exponent]}"


def describe_cache_size(pairs: int, **sizes: int) -> str:
    """Human-readable size (SI units) of a cache of ``pairs`` pairs, e.g. ``"5.7 TB"``.

    Args:
        pairs: number of preference pairs.
        **sizes: the arguments of :func:`cache_bytes_per_pair` (``ip_tokens``, ``ip_dim``,
            ``guidance_tokens``, ``guidance_dim``, optional ``bytes_per_value``).
    """
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 0:
        raise ValueError(f"pairs must be a non-negative integer, got {pairs!r}")
    return _human_bytes(pairs * cache_bytes_per_pair(**sizes))


# ============================================================================ cache
def _canonical_key(key: Mapping[str, Any]) -> dict[str, Any]:
    cache_key_hash(key)  # raises a TypeError naming any value that is not JSON-like
    return json.loads(json.dumps(dict(key), sort_keys=True, default=str))


class _ShardWriter:
    """Buffers samples and writes full shards into ``root``."""

    def __init__(self, root: Path, shard_size: int, progress: bool) -> None:
        self.root, self.shard_size, self.progress = root, shard_size, progress
        self.winners: list[Tensor] = []
        self.losers: list[Tensor] = []
        self.guidance: list[Tensor] = []
        self.ids: list[str] = []
        self.shards: list[dict[str, Any]] = []
        self.count = 0

    def add(self, pair_id: str, winner: Tensor, loser: Tensor, guidance: Tensor) -> None:
        self.ids.append(pair_id)
        self.winners.append(winner)
        self.losers.append(loser)
        self.guidance.append(guidance)
        if len(self.ids) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        n = len(self.ids)
        if n == 0:
            return
        lengths = torch.tensor([g.shape[0] for g in self.guidance], dtype=torch.int64)
        offsets = torch.zeros(n + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        file = f"shard-{len(self.shards):05d}.safetensors"
        tensors = {
            "winner": torch.stack(self.winners).contiguous(),
            "loser": torch.stack(self.losers).contiguous(),
            "guidance": torch.cat(self.guidance).contiguous(),
            "offsets": offsets,
        }
        save_file(tensors, str(self.root / file), metadata={"ids": json.dumps(self.ids)})
        self.shards.append({"file": file, "count": n, "guidance_rows": int(offsets[-1])})
        self.count += n
        self.winners, self.losers, self.guidance, self.ids = [], [], [], []
        if self.progress:
            print(f"feature cache: {self.count} pairs written", file=sys.stderr)


class FeatureCache(Dataset):
    """Aligner features written once to disk and read back as a map-style dataset.

    Items are ``{"winner": (S1, D1), "loser": (S1, D1), "guidance": (L_i, D2), "id": str}`` as
    float32 tensors (batch them with :func:`collate_features`). Shards are read lazily through
    safetensors' memory map, one sample's slice at a time. For small datasets only (the toy
    world, a few thousand pairs): see the module docstring for the size at Pick-a-Pic scale.

    Create with :meth:`build`, reopen with :meth:`open`.
    """

    def __init__(self, root: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.manifest = dict(manifest)
        self._starts: list[int] = []
        self._offsets: list[Tensor] = []
        self._ids: list[str] = []
        for shard in self.manifest["shards"]:
            self._starts.append(len(self._ids))
            with safe_open(str(self.root / shard["file"]), framework="pt") as f:
                self._offsets.append(f.get_tensor("offsets"))
                self._ids += json.loads(f.metadata()["ids"])
        if len(self._ids) != self.manifest["count"]:
            raise ValueError(
                f"{self.root}: the shards hold {len(self._ids)} pairs but the manifest says "
                f"{self.manifest['count']}; the cache is damaged, rebuild it"
            )
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    # ------------------------------------------------------------------ properties
    @property
    def key(self) -> dict[str, Any]:
        """The key the cache was built with."""
        return self.manifest["key"]

    @property
    def ids(self) -> list[str]:
        """Pair ids in item order."""
        return list(self._ids)

    @property
    def ip_shape(self) -> tuple[int, int]:
        """(S1, D1) of the stored image-prompt tokens."""
        return tuple(self.manifest["ip_shape"])

    @property
    def guidance_dim(self) -> int:
        """D2 of the stored guidance features."""
        return self.manifest["guidance_dim"]

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype (items are returned as float32)."""
        return getattr(torch, self.manifest["dtype"])

    # ------------------------------------------------------------------ building
    @staticmethod
    def build(
        out_dir: str | os.PathLike,
        items: Iterable[tuple[str, Tensor, Tensor, Tensor]],
        *,
        key: Mapping[str, Any],
        dtype: torch.dtype = torch.float16,
        shard_size: int = 1024,
        progress: bool = True,
        overwrite: bool = False,
    ) -> FeatureCache:
        """Write a cache from ``items`` and open it.

        The cache is written into a temporary folder beside ``out_dir`` and renamed into place
        only when complete: an interrupted build leaves nothing at ``out_dir`` (and removes its
        temporary folder); with ``overwrite`` an old cache stays readable until the new one is
        complete.

        Args:
            out_dir: the cache folder to create.
            items: ``(id, c_w (S1, D1), c_l (S1, D1), h (L_i, D2))`` per pair; ids unique.
            key: what the features depend on (IP-Adapter and MLLM ids and revisions, prompt
                template, data spec, ...): JSON-like values, stored with their hash and checked
                by :meth:`open`.
            dtype: storage dtype: float16 (default), bfloat16 or float32. Values must stay
                finite in it (float16 overflows beyond 65504: use bfloat16 then).
            shard_size: pairs per shard file.
            progress: print a line to stderr after each shard.
            overwrite: replace an existing ``out_dir`` instead of raising ``FileExistsError``.
        """
        out_dir = Path(out_dir)
        if dtype not in _STORABLE:
            raise ValueError(
                f"dtype {dtype} cannot be stored; use one of {[str(d) for d in _STORABLE]}"
            )
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
        if out_dir.exists() and not overwrite:
            raise FileExistsError(f"{out_dir} exists; pass overwrite=True to rebuild the cache")
        key_json, key_hash = _canonical_key(key), cache_key_hash(key)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            writer = _ShardWriter(tmp, shard_size, progress)
            seen: set[str] = set()
            ip_shape: tuple[int, ...] | None = None
            d2: int | None = None
            lengths = []
            for entry in items:
                if len(entry) != 4:
                    raise ValueError(
                        f"each item must be (id, winner, loser, guidance), got {len(entry)} values"
                    )
                pair_id, c_w, c_l, h = entry
                pair_id = str(pair_id)
                if pair_id in seen:
                    raise ValueError(f"duplicate pair id {pair_id!r}; ids must be unique")
                seen.add(pair_id)
                if ip_shape is None:
                    ip_shape, d2 = tuple(c_w.shape), (h.shape[-1] if h.ndim == 2 else None)
                if c_w.ndim != 2 or tuple(c_w.shape) != ip_shape or tuple(c_l.shape) != ip_shape:
                    raise ValueError(
                        f"pair {pair_id!r}: winner {tuple(c_w.shape)} and loser "
                        f"{tuple(c_l.shape)} must be (S1, D1) = {ip_shape} like the first pair's"
                    )
                if h.ndim != 2 or h.shape[-1] != d2:
                    raise ValueError(
                        f"pair {pair_id!r}: guidance must be (L_i, D2) with D2 = {d2} like the "
                        f"first pair's, got {tuple(h.shape)}"
                    )
                stored = [t.detach().to(device="cpu", dtype=dtype) for t in (c_w, c_l, h)]
                for name, t in zip(("winner", "loser", "guidance"), stored):
                    if not torch.isfinite(t).all():
                        raise ValueError(
                            f"pair {pair_id!r}: {name} is not finite in {dtype} (non-finite "
                            "input, or values beyond float16's range ±65504: build with "
                            "dtype=torch.bfloat16 or torch.float32)"
                        )
                lengths.append(int(h.shape[0]))
                writer.add(pair_id, *stored)
            writer.flush()
            if writer.count == 0:
                raise EmptyDatasetError("FeatureCache.build got no items; nothing to cache")
            assert ip_shape is not None and d2 is not None
            manifest = {
                "format": FEATURE_CACHE_FORMAT,
                "version": FEATURE_CACHE_VERSION,
                "key": key_json,
                "key_hash": key_hash,
                "count": writer.count,
                "ip_shape": list(ip_shape),
                "guidance_dim": int(d2),
                "guidance_tokens": {
                    "min": min(lengths),
                    "max": max(lengths),
                    "total": sum(lengths),
                },
                "dtype": _STORABLE[dtype],
                "shards": writer.shards,
                "created": time.time(),
            }
            (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            replace_folder(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return FeatureCache(out_dir, manifest)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def open(
        out_dir: str | os.PathLike, *, expected_key: Mapping[str, Any] | None = None
    ) -> FeatureCache:
        """Open a cache written by :meth:`build`.

        Args:
            out_dir: the cache folder.
            expected_key: the key the caller would build the cache with now; when given and
                different from the stored one, :class:`pref_data.CacheKeyError` names the
                fields that differ.
        """
        out_dir = Path(out_dir)
        path = out_dir / _MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{out_dir} is not a feature cache (no {_MANIFEST}); build one with "
                "FeatureCache.build"
            )
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FEATURE_CACHE_FORMAT:
            raise ValueError(f"{path} is not a {FEATURE_CACHE_FORMAT} manifest")
        if manifest.get("version") != FEATURE_CACHE_VERSION:
            raise ValueError(
                f"{out_dir} is a version {manifest.get('version')} feature cache; this pref-img "
                f"reads version {FEATURE_CACHE_VERSION}: rebuild it with FeatureCache.build"
            )
        if expected_key is not None:
            expected_hash = cache_key_hash(expected_key)
            if expected_hash != manifest["key_hash"]:
                stored, wanted = manifest["key"], _canonical_key(expected_key)
                diffs = [
                    f"{k}: {stored.get(k, '<absent>')!r} (cache) vs "
                    f"{wanted.get(k, '<absent>')!r} (requested)"
                    for k in sorted(set(stored) | set(wanted))
                    if stored.get(k, "<absent>") != wanted.get(k, "<absent>")
                ]
                raise CacheKeyError(
                    f"the feature cache at {out_dir} was built for different models or data: "
                    + ("; ".join(diffs) or "the keys differ")
                    + ". Rebuild it with FeatureCache.build(..., overwrite=True), or point at "
                    "another cache folder."
                )
        return FeatureCache(out_dir, manifest)

    def __len__(self) -> int:
        return len(self._ids)

    def _handle(self, shard: int) -> Any:
        if os.getpid() != self._pid:  # a forked DataLoader worker opens its own handles
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            file = self.root / self.manifest["shards"][shard]["file"]
            self._handles[shard] = safe_open(str(file), framework="pt")
        return self._handles[shard]

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a cache of {n} pairs")
        index %= n
        shard = bisect.bisect_right(self._starts, index) - 1
        j = index - self._starts[shard]
        f = self._handle(shard)
        start, stop = (int(v) for v in self._offsets[shard][j : j + 2])
        return {
            "winner": f.get_slice("winner")[j : j + 1][0].to(torch.float32),
            "loser": f.get_slice("loser")[j : j + 1][0].to(torch.float32),
            "guidance": f.get_slice("guidance")[start:stop].to(torch.float32),
            "id": self._ids[index],
        }

    def __getstate__(self) -> dict[str, Any]:  # picklable for spawned DataLoader workers
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.root)!r}, pairs={len(self)}, ip_shape={self.ip_shape}, "
            f"guidance_dim={self.guidance_dim}, dtype={self.manifest['dtype']})"
        )
