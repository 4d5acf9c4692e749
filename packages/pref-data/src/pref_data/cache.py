"""Latent and text-embedding cache: encode a dataset once, train from memory-mapped shards.

Encoding images with a VAE and prompts with text encoders costs more than a training step of a
small adapter. :func:`build_cache` runs both once over a :class:`~pref_data.dataset.PairDataset`
and writes safetensors shards; :func:`open_cache` reads them back memory-mapped, one item at a
time, so training never holds the whole cache in memory.

Layout of a cache folder::

    manifest.json               format, version, key and its hash, count, shards, skipped ids,
                                conditioning layout (entry names, ids, shared values)
    shared.safetensors          the conditioning's shared tensors (no batch dimension), once
    shard-00000.safetensors     latent_w (n, C, h, w), latent_l (n, C, h, w), cond.<name>
                                (n, ...) per batched conditioning entry; metadata: ids, prompts

A cache is only valid for the model, data and transform it was built with. The caller describes
those in ``key`` (model id, revision, data spec, transform parameters, ...); the manifest stores
the key and its hash (:func:`cache_key_hash`), and ``open_cache(..., expected_key=...)`` refuses
a cache whose hash differs. Note that a cache freezes augmentation: each pair is stored with the
one crop and flip it drew (epoch 0), and VAE latents are one posterior sample (``seed``).
"""

from __future__ import annotations

import bisect
import hashlib
import inspect
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pref_core.conditioning import Conditioning
from pref_data.dataset import collate_pairs
from pref_data.errors import CacheKeyError, EmptyDatasetError

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "CacheManifest",
    "CachedPairDataset",
    "build_cache",
    "cache_key_hash",
    "collate_cached",
    "open_cache",
]

CACHE_FORMAT = "pref-data/latent-cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
SHARED = "shared.safetensors"


# ============================================================================ keys
def _canonical(value: Any, where: str = "key") -> Any:
    """JSON-ready form of a key: mappings with sorted string keys, tuples as lists, paths and
    dtypes as strings."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in sorted(value.items(), key=str)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (os.PathLike, torch.dtype, torch.device)):
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    raise TypeError(
        f"{where} is a {type(value).__name__}; cache keys hold strings, numbers, booleans, "
        "None, lists and dicts"
    )


def cache_key_hash(key: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``key``: the same for equal keys in any order, in
    any process or Python version."""
    text = json.dumps(_canonical(key), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ============================================================================ manifest
@dataclass
class CacheManifest:
    """What ``manifest.json`` holds (see the module docstring)."""

    path: str
    key: dict[str, Any]
    key_hash: str
    count: int
    shards: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    cond_batched: list[str]
    cond_ids: list[str]
    shared_tensors: list[str]
    shared_values: dict[str, Any]
    format: str = CACHE_FORMAT
    version: int = CACHE_VERSION
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        return data

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> CacheManifest:
        path = Path(out_dir) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{out_dir} is not a latent cache (no {MANIFEST})")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path} is not a {CACHE_FORMAT} manifest")
        if data.get("version") != CACHE_VERSION:
            raise ValueError(
                f"{out_dir} is a version {data.get('version')} cache; this pref-data reads "
                f"version {CACHE_VERSION}: rebuild it with build_cache"
            )
        return cls(path=str(Path(out_dir)), **data)


# ============================================================================ building
def _device_of(module: Any) -> torch.device:
    params = getattr(module, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


class _Writer:
    """Buffers encoded samples and writes full shards into ``root``."""

    def __init__(self, root: Path, shard_size: int) -> None:
        self.root, self.shard_size = root, shard_size
        self.buffer: dict[str, list[Tensor]] = {}
        self.ids: list[str] = []
        self.prompts: list[str] = []
        self.shards: list[dict[str, Any]] = []
        self.count = 0

    def add(self, tensors: Mapping[str, Tensor], ids: list[str], prompts: list[str]) -> None:
        for name, value in tensors.items():
            self.buffer.setdefault(name, []).append(value.detach().cpu())
        self.ids += ids
        self.prompts += prompts
        while len(self.ids) >= self.shard_size:
            self.flush(self.shard_size)

    def flush(self, n: int | None = None) -> None:
        n = len(self.ids) if n is None else n
        if n == 0:
            return
        joined = {}
        for name, parts in self.buffer.items():
            try:
                joined[name] = torch.cat(parts)
            except RuntimeError as exc:
                shapes = sorted({tuple(p.shape[1:]) for p in parts})
                raise ValueError(
                    f"cache entry {name!r} changes shape between batches {shapes}; every sample "
                    "must encode to the same shape (fixed resolution, fixed prompt length)"
                ) from exc
        file = f"shard-{len(self.shards):05d}.safetensors"
        tensors = {name: t[:n].contiguous() for name, t in joined.items()}
        metadata = {"ids": json.dumps(self.ids[:n]), "prompts": json.dumps(self.prompts[:n])}
        save_file(tensors, str(self.root / file), metadata=metadata)
        self.shards.append({"file": file, "count": n})
        self.count += n
        self.buffer = {name: [t[n:]] for name, t in joined.items() if t.shape[0] > n}
        self.ids, self.prompts = self.ids[n:], self.prompts[n:]


def _size_conditions(encoder: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
    """SDXL-style micro-conditioning from the crops actually taken, for encoders that take it
    (``encode(prompts, original_sizes=..., crops=..., target_sizes=...)``)."""
    if "original_sizes" not in batch:
        return {}
    try:
        parameters = inspect.signature(encoder.encode).parameters
    except (TypeError, ValueError):
        return {}
    if not {"original_sizes", "crops", "target_sizes"} <= set(parameters):
        return {}
    size = tuple(batch["winner"].shape[-2:])
    return {
        "original_sizes": [tuple(s) for s in batch["original_sizes"]],
        "crops": [tuple(c) for c in batch["crop_top_lefts"]],
        "target_sizes": [size] * len(batch["ids"]),
    }


def build_cache(
    dataset: Dataset,
    *,
    codec: Any,
    encoder: Any,
    out_dir: str | os.PathLike,
    key: Mapping[str, Any],
    shard_size: int = 1024,
    batch_size: int = 8,
    progress: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    overwrite: bool = False,
) -> CacheManifest:
    """Encode every pair of ``dataset`` and write a cache to ``out_dir``.

    For each batch (in index order; skipped items are listed in the manifest, not cached):
    ``codec.encode(cat([winners, losers]), generator=g)`` → latents, split back into
    ``latent_w`` and ``latent_l``; ``encoder.encode(prompts)`` → a
    :class:`~pref_core.conditioning.Conditioning` whose batched tensors are stored per sample
    and whose shared entries are stored once (they must be equal for every batch). Work runs
    under ``torch.no_grad()`` on the codec's device; ``g`` is a generator on that device seeded
    with ``seed``, so VAE posterior samples are reproducible.

    The cache is written to a temporary folder next to ``out_dir`` and renamed into place only
    when complete, so an interrupted build never leaves a half cache behind.

    Args:
        dataset: a :class:`~pref_data.dataset.PairDataset` (any map-style dataset whose items
            ``collate_pairs`` accepts).
        codec: a ``pref_core.protocols.LatentCodec`` (images (B, 3, H, W) in [−1, 1] →
            latents).
        encoder: a ``pref_core.protocols.ConditionEncoder`` (prompts → Conditioning).
        out_dir: the cache folder to create.
        key: what the cache depends on (model id, revision, data spec, transform parameters,
            ...): JSON-like values; stored, and hashed with :func:`cache_key_hash`.
        shard_size: samples per shard file.
        batch_size: pairs encoded per call (the codec sees ``2 × batch_size`` images).
        progress: print a line to stderr after each shard.
        seed: seed of the codec's sampling generator.
        num_workers: DataLoader workers decoding images.
        overwrite: replace an existing ``out_dir`` (atomically, after the new one is complete)
            instead of raising ``FileExistsError``.
    """
    out_dir = Path(out_dir)
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive: {shard_size}, {batch_size}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to rebuild the cache")
    key_json, key_hash = _canonical(dict(key)), cache_key_hash(key)
    device = _device_of(codec)
    generator = torch.Generator(device).manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_pairs,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = _Writer(tmp, shard_size)
        skipped: list[dict[str, str]] = []
        layout: Conditioning | None = None
        total = len(dataset) if hasattr(dataset, "__len__") else None
        for batch in loader:
            skipped += [
                {"id": i, "reason": r} for i, r in zip(batch["skipped"], batch["skipped_reasons"])
            ]
            if not batch["ids"]:
                continue
            images = torch.cat([batch["winner"], batch["loser"]]).to(device)
            with torch.no_grad():
                latents = codec.encode(images, generator=generator)
                cond = encoder.encode(batch["prompts"], **_size_conditions(encoder, batch))
            n = len(batch["ids"])
            if cond.batch_size != n:
                raise ValueError(f"the encoder returned batch {cond.batch_size} for {n} prompts")
            layout = _check_layout(layout, cond)
            latent_w, latent_l = latents.split(n)
            tensors = {"latent_w": latent_w, "latent_l": latent_l}
            tensors |= {f"cond.{k}": v for k, v in cond.batched.items()}
            shards_before = len(writer.shards)
            writer.add(tensors, batch["ids"], batch["prompts"])
            if progress and len(writer.shards) > shards_before:
                _report(out_dir, writer.count, total, len(skipped))
        writer.flush()
        if writer.count == 0:
            raise EmptyDatasetError(
                f"nothing to cache: all {len(skipped)} pairs were skipped (first: {skipped[:3]})"
            )
        assert layout is not None
        shared_tensors = {k: v for k, v in layout.shared.items() if isinstance(v, Tensor)}
        shared_values = {k: v for k, v in layout.shared.items() if not isinstance(v, Tensor)}
        try:
            shared_values = json.loads(json.dumps(shared_values))
        except TypeError as exc:
            raise TypeError(f"shared conditioning values must be tensors or JSON: {exc}") from exc
        if shared_tensors:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in shared_tensors.items()},
                str(tmp / SHARED),
            )
        manifest = CacheManifest(
            path=str(out_dir),
            key=key_json,
            key_hash=key_hash,
            count=writer.count,
            shards=writer.shards,
            skipped=skipped,
            cond_batched=list(layout.batched),
            cond_ids=sorted(layout.ids),
            shared_tensors=list(shared_tensors),
            shared_values=shared_values,
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        _report(out_dir, manifest.count, total, len(skipped), done=True)
    return manifest


def _check_layout(layout: Conditioning | None, cond: Conditioning) -> Conditioning:
    if layout is None:
        return cond
    if set(cond.batched) != set(layout.batched) or set(cond.shared) != set(layout.shared):
        raise ValueError(
            f"the encoder's entries changed between batches: {layout.keys()} vs {cond.keys()}"
        )
    for k, v in layout.shared.items():
        w = cond.shared[k]
        same = (
            isinstance(w, Tensor) and v.shape == w.shape and torch.equal(v.cpu(), w.cpu())
            if isinstance(v, Tensor)
            else v == w
        )
        if not same:
            raise ValueError(
                f"shared conditioning entry {k!r} differs between batches; a cache stores "
                "shared entries once"
            )
    return layout


def replace_folder(tmp: Path, out_dir: Path) -> None:
    """Move the finished folder ``tmp`` to ``out_dir``, replacing an old one only at the end
    (readers never see a half-written folder)."""
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _report(out_dir: Path, count: int, total: int | None, skipped: int, done=False) -> None:
    of = f"/{total}" if total is not None else ""
    state = "done" if done else "cached"
    print(f"{out_dir}: {state} {count}{of} pairs ({skipped} skipped)", file=sys.stderr)


# ============================================================================ reading
def _key_differences(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(stored) | set(expected)):
        a, b = stored.get(k, "<absent>"), expected.get(k, "<absent>")
        if a != b:
            out.append(f"{k}: {a!r} (cache) vs {b!r} (requested)")
    return out


def open_cache(
    out_dir: str | os.PathLike, expected_key: Mapping[str, Any] | None = None
) -> CachedPairDataset:
    """Open a cache written by :func:`build_cache`.

    Args:
        out_dir: the cache folder.
        expected_key: the key the caller would build the cache with now; if given and its hash
            differs from the stored one, :class:`CacheKeyError` says which fields differ.
    """
    manifest = CacheManifest.load(out_dir)
    if expected_key is not None:
        expected_hash = cache_key_hash(expected_key)
        if expected_hash != manifest.key_hash:
            diffs = _key_differences(manifest.key, _canonical(dict(expected_key)))
            raise CacheKeyError(
                f"the cache at {out_dir} was built for a different model, data or transform "
                f"(key hash {manifest.key_hash[:12]} vs {expected_hash[:12]} requested): "
                + ("; ".join(diffs) or "the keys differ")
                + ". Rebuild it with build_cache(..., out_dir=..., overwrite=True), "
                "or point at another cache folder."
            )
    return CachedPairDataset(out_dir, manifest)


class CachedPairDataset(Dataset):
    """Map-style dataset over a latent cache; items are read memory-mapped on demand.

    ``dataset[i]`` → ``{"prompt": str, "id": str, "latent_w": (C, h, w), "latent_l":
    (C, h, w), "cond": Conditioning}`` where ``cond`` has batch size 1 (its shared entries
    attached). Batch with :func:`collate_cached`. Shard files are opened lazily, once per
    process (DataLoader workers open their own).
    """

    def __init__(self, out_dir: str | os.PathLike, manifest: CacheManifest | None = None):
        self.root = Path(out_dir)
        self.manifest = CacheManifest.load(out_dir) if manifest is None else manifest
        self._starts: list[int] = []
        self._ids: list[str] = []
        self._prompts: list[str] = []
        for shard in self.manifest.shards:
            self._starts.append(len(self._ids))
            with safe_open(str(self.root / shard["file"]), framework="pt") as f:
                meta = f.metadata() or {}
            self._ids += json.loads(meta["ids"])
            self._prompts += json.loads(meta["prompts"])
        self.shared: dict[str, Any] = dict(self.manifest.shared_values)
        if self.manifest.shared_tensors:
            with safe_open(str(self.root / SHARED), framework="pt") as f:
                self.shared |= {k: f.get_tensor(k) for k in self.manifest.shared_tensors}
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def key(self) -> dict[str, Any]:
        return dict(self.manifest.key)

    def __len__(self) -> int:
        return len(self._ids)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, s: int) -> Any:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if s not in self._handles:
            path = self.root / self.manifest.shards[s]["file"]
            self._handles[s] = safe_open(str(path), framework="pt")
        return self._handles[s]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for a cache of {len(self)}")
        s = bisect.bisect_right(self._starts, index) - 1
        j = index - self._starts[s]
        f = self._handle(s)
        latent_w = f.get_slice("latent_w")[j : j + 1][0]
        latent_l = f.get_slice("latent_l")[j : j + 1][0]
        batched = {k: f.get_slice(f"cond.{k}")[j : j + 1] for k in self.manifest.cond_batched}
        cond = Conditioning(batched, self.shared, ids=self.manifest.cond_ids)
        return {
            "prompt": self._prompts[index],
            "id": self._ids[index],
            "latent_w": latent_w,
            "latent_l": latent_l,
            "cond": cond,
        }


def collate_cached(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch cached items: ``{"prompts", "ids", "latent_w" (B, C, h, w), "latent_l",
    "cond": Conditioning (batch B)}``."""
    if not items:
        raise ValueError("cannot collate an empty list of cached items")
    return {
        "prompts": [it["prompt"] for it in items],
        "ids": [it["id"] for it in items],
        "latent_w": torch.stack([it["latent_w"] for it in items]),
        "latent_l": torch.stack([it["latent_l"] for it in items]),
        "cond": Conditioning.cat([it["cond"] for it in items]),
    }
