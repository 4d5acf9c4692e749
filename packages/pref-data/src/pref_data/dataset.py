"""Torch datasets over preference sources: decode lazily, transform as a pair, skip bad images.

An item whose image cannot be decoded is not an exception (one bad JPEG in a million must not
stop a run) and not silently dropped either: the dataset returns a :class:`Skipped` carrying the
record's id and the reason, :func:`collate_pairs` leaves it out of the batch and lists its id
under ``"skipped"``, and a :class:`SkipCounter` gathers them for the end-of-run report.

Each item's random crop and flip come from a generator seeded by ``(seed, epoch, index)``
(:func:`item_seed`), so item ``i`` looks the same whatever order or worker loads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from pref_data.errors import CorruptImageError
from pref_data.records import PreferenceRecord, PreferenceSource, decode_image
from pref_data.transforms import PairTransform

__all__ = [
    "IterablePairDataset",
    "PairDataset",
    "SkipCounter",
    "Skipped",
    "collate_pairs",
    "item_seed",
]


@dataclass(frozen=True)
class Skipped:
    """Stands in for an item whose images could not be loaded."""

    id: str
    reason: str


def item_seed(seed: int, index: int, epoch: int = 0) -> int:
    """A 63-bit seed for item ``index`` that depends only on (seed, epoch, index).

    Hashed (BLAKE2b) rather than added, so nearby seeds and indices give unrelated streams.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _load(
    record: PreferenceRecord, transform: PairTransform, generator: torch.Generator
) -> dict[str, Any] | Skipped:
    try:
        winner = decode_image(record.winner)
        loser = decode_image(record.loser)
    except CorruptImageError as exc:
        return Skipped(record.id, str(exc))
    transform_with_params = getattr(transform, "transform_with_params", None)
    if transform_with_params is not None:
        w, l, params = transform_with_params(winner, loser, generator)
        extra = {"original_size": params.original_size, "crop_top_left": params.top_left}
    else:  # any callable with PairTransform's call signature
        w, l = transform(winner, loser, generator)
        extra = {}
    return {"prompt": record.prompt, "winner": w, "loser": l, "id": record.id, **extra}


class PairDataset(Dataset):
    """Map-style dataset over a materialised (non-streaming) :class:`PreferenceSource`.

    ``dataset[i]`` reads record ``i``, decodes both images and applies ``transform`` with a
    generator seeded by :func:`item_seed` ``(seed, epoch, i)``. It returns ``{"prompt": str,
    "winner": (3, R, R), "loser": (3, R, R), "id": str, "original_size": (H, W),
    "crop_top_left": (top, left)}`` (the last two when the transform is a
    :class:`PairTransform`), or a :class:`Skipped` when an image is corrupt, truncated or
    missing. Batch with :func:`collate_pairs`.

    Call :meth:`set_epoch` at the start of each epoch to draw new crops and flips; without it
    every epoch repeats epoch 0's augmentation.
    """

    def __init__(self, source: PreferenceSource, transform: PairTransform, *, seed: int = 0):
        if getattr(source, "streaming", False):
            raise TypeError(
                f"{source.name} is streaming; use IterablePairDataset, or open it with "
                "streaming=False for random access"
            )
        self.source = source
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        index = int(index)  # a tensor or numpy index must seed like the plain int
        generator = torch.Generator().manual_seed(item_seed(self.seed, index, self.epoch))
        return _load(self.source[index], self.transform, generator)


class IterablePairDataset(IterableDataset):
    """Iterable dataset over a (usually streaming) source, shardable and resumable.

    Record ``k`` of the stream (counting from the start of the source, skipped records
    included) uses the generator of :func:`item_seed` ``(seed, epoch, k)``. Records are dealt
    round-robin: with ``world_size`` processes and ``W`` DataLoader workers each, record ``k``
    goes to the shard ``k mod (world_size·W)`` = ``rank·W + worker``.

    Resuming: ``dataset.skip(n)`` returns a dataset that starts at record ``n``. Records before
    ``n`` are still read from the source (without decoding images) and thrown away. Pass ``n`` =
    records consumed so far = steps × batch size × world size; with W workers it is exact
    whenever every worker has delivered the same number of batches (the DataLoader's
    round-robin order guarantees it at multiples of W batches).

    Items are as in :class:`PairDataset`; batch with :func:`collate_pairs`.
    """

    def __init__(
        self,
        source: Iterable[PreferenceRecord],
        transform: PairTransform,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.source = source
        self.transform = transform
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.start = int(start)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, n: int) -> IterablePairDataset:
        """A copy that starts ``n`` records later (see the class docstring for resuming)."""
        if n < 0:
            raise ValueError(f"cannot skip a negative number of records: {n}")
        copy = IterablePairDataset(
            self.source,
            self.transform,
            self.seed,
            rank=self.rank,
            world_size=self.world_size,
            start=self.start + n,
        )
        copy.epoch = self.epoch
        return copy

    def __iter__(self) -> Iterator[dict[str, Any] | Skipped]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        shards = self.world_size * workers
        shard = self.rank * workers + worker
        for k, record in enumerate(islice(iter(self.source), self.start, None), self.start):
            if k % shards != shard:
                continue
            generator = torch.Generator().manual_seed(item_seed(self.seed, k, self.epoch))
            yield _load(record, self.transform, generator)


def collate_pairs(items: Sequence[dict[str, Any] | Skipped | None]) -> dict[str, Any]:
    """Stack loaded items into a batch, leaving skipped ones out.

    Returns ``{"prompts": list[str], "winner": (B, 3, R, R), "loser": (B, 3, R, R),
    "ids": list[str], "skipped": list[str] (ids of the Skipped items), "skipped_reasons":
    list[str]}``, plus ``"original_sizes"`` and ``"crop_top_lefts"`` (lists of pairs) when the
    items carry them. B counts the loaded items only and may be 0: ``winner``/``loser`` are then
    ``None`` and the trainer should skip the step. A bare ``None`` item (from a custom dataset)
    is counted as skipped with id ``"?"``.
    """
    good = [it for it in items if isinstance(it, Mapping)]
    skipped = [
        it if isinstance(it, Skipped) else Skipped("?", "item was None")
        for it in items
        if not isinstance(it, Mapping)
    ]
    batch: dict[str, Any] = {
        "prompts": [it["prompt"] for it in good],
        "winner": torch.stack([it["winner"] for it in good]) if good else None,
        "loser": torch.stack([it["loser"] for it in good]) if good else None,
        "ids": [it["id"] for it in good],
        "skipped": [s.id for s in skipped],
        "skipped_reasons": [s.reason for s in skipped],
    }
    if good and all("original_size" in it for it in good):
        batch["original_sizes"] = [tuple(it["original_size"]) for it in good]
        batch["crop_top_lefts"] = [tuple(it["crop_top_left"]) for it in good]
    return batch


class SkipCounter:
    """Collects skipped ids over a run (each id once) for a final report.

    ``counter.update(batch)`` after each batch (or ``counter.add(id, reason)``), then
    ``print(counter.report())`` → ``"skipped 2 undecodable images: ids a, b"``.
    """

    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}

    def add(self, id: str, reason: str = "") -> None:
        self._reasons.setdefault(str(id), reason)

    def update(self, batch_or_items: Mapping[str, Any] | Iterable[Any]) -> None:
        """Record the skips of a collated batch or of an iterable of items/Skipped."""
        if isinstance(batch_or_items, Mapping):
            ids = batch_or_items.get("skipped", [])
            reasons = batch_or_items.get("skipped_reasons", [""] * len(ids))
            for i, r in zip(ids, reasons):
                self.add(i, r)
            return
        for item in batch_or_items:
            if isinstance(item, Skipped):
                self.add(item.id, item.reason)

    @property
    def count(self) -> int:
        return len(self._reasons)

    @property
    def ids(self) -> list[str]:
        return list(self._reasons)

    @property
    def reasons(self) -> dict[str, str]:
        return dict(self._reasons)

    def __len__(self) -> int:
        return self.count

    def report(self, max_ids: int = 20) -> str:
        """One line: how many, and the first ``max_ids`` ids."""
        if not self._reasons:
            return "skipped 0 undecodable images"
        shown = ", ".join(self.ids[:max_ids])
        more = f" (and {self.count - max_ids} more)" if self.count > max_ids else ""
        return f"skipped {self.count} undecodable images: ids {shown}{more}"
