"""Instruction-editing triplets for finetuning IMG's misalignment detector, and its evaluation.

IMG finetunes its MLLM on (original image I0, edited prompt T1, edit instruction TE) triplets
taken from InstructPix2Pix (CLIP-filtered, 313K samples; supp. A.2-A.3): the model reads I0 and a
question about T1 and learns to answer TE. :class:`InstructionTriplets` reads any dataset in the
InstructPix2Pix schema; :class:`ToyTriplets` gives the toy world's equivalent (a defective render,
its intended prompt, the instruction that fixes it). Both yield the same items::

    {"image": float32 (3, H, W) in [-1, 1], "prompt": str (T1), "instruction": str (TE), "id": str}

:func:`detector_agreement` measures how often a detector's answer agrees with the ground-truth
instruction (the paper's check: 76.3% agreement after finetuning vs 42.3% before).
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from pref_data.dataset import Skipped
from pref_data.errors import CorruptImageError, EmptyDatasetError, SchemaError
from pref_data.readers import parquet_files
from pref_data.records import decode_image
from pref_data.transforms import to_tensor

__all__ = [
    "TRIPLET_COLUMNS",
    "InstructionTriplets",
    "ToyTriplets",
    "collate_triplets",
    "content_words",
    "detector_agreement",
    "normalise_instruction",
]

TRIPLET_COLUMNS = ("original_image", "edited_prompt", "edit_prompt")
"""Columns used (InstructPix2Pix's ``original_prompt`` and ``edited_image`` are ignored)."""
_HINT = (
    "InstructPix2Pix schema expected (e.g. timbrooks/instructpix2pix-clip-filtered): "
    "original_image, edited_prompt (T1), edit_prompt (TE)."
)


# ---------------------------------------------------------------------------------- images
def _square(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` (bicubic, antialiased) and centre-crop."""
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


# ---------------------------------------------------------------------------------- rows
class _ParquetTable:
    """Random access to the rows of local parquet files, one row group in memory at a time
    (decoded images are not kept; a shuffled pass reads a row group per item)."""

    def __init__(self, files: Sequence[Path]) -> None:
        import pyarrow.parquet as pq

        self.files = [str(f) for f in files]
        self._starts: list[int] = []
        self._groups: list[tuple[int, int]] = []
        total = 0
        for fi, path in enumerate(self.files):
            meta = pq.ParquetFile(path)
            if fi == 0:
                self.columns = list(meta.schema_arrow.names)
            for gi in range(meta.metadata.num_row_groups):
                self._starts.append(total)
                self._groups.append((fi, gi))
                total += meta.metadata.row_group(gi).num_rows
        self.length = total
        self._cached: tuple[int, list[dict[str, Any]]] | None = None

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers read their own groups
        return {**self.__dict__, "_cached": None}

    def row(self, index: int) -> dict[str, Any]:
        import pyarrow.parquet as pq

        group = bisect.bisect_right(self._starts, index) - 1
        if self._cached is None or self._cached[0] != group:
            fi, gi = self._groups[group]
            table = pq.ParquetFile(self.files[fi]).read_row_group(gi, columns=list(TRIPLET_COLUMNS))
            self._cached = (group, table.to_pylist())
        return self._cached[1][index - self._starts[group]]


class _HFTable:
    """Rows of a ``datasets.Dataset``, images left encoded (``{"bytes", "path"}``)."""

    def __init__(self, dataset: Any) -> None:
        import datasets

        self.columns = list(dataset.column_names)
        for name, feature in dict(dataset.features or {}).items():
            if isinstance(feature, datasets.Image) and feature.decode:
                dataset = dataset.cast_column(name, datasets.Image(decode=False))
        self.dataset = dataset
        self.length = len(dataset)

    def row(self, index: int) -> dict[str, Any]:
        return self.dataset[int(index)]


def _open_table(source: str, split: str) -> _ParquetTable | _HFTable:
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir() and any(
            (path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")
        ):
            import datasets

            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"{source} has splits {list(loaded)}, not {split!r}")
                loaded = loaded[split]
            return _HFTable(loaded)
        try:
            files = parquet_files(path, split)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}; nor is it a datasets save_to_disk folder") from None
        return _ParquetTable(files)
    if os.path.isabs(source) or source.startswith((".", "~")) or source.endswith(".parquet"):
        raise FileNotFoundError(f"triplet data {source!r} does not exist")
    import datasets

    return _HFTable(datasets.load_dataset(source, split=split))


# ---------------------------------------------------------------------------------- datasets
class InstructionTriplets(Dataset):
    """InstructPix2Pix-format triplets (original image, edited prompt, edit instruction).

    Columns used: ``original_image`` (an encoded image, or the datasets ``Image`` struct
    ``{"bytes", "path"}``), ``edited_prompt`` (T1, the prompt the image should match) and
    ``edit_prompt`` (TE, the instruction); ``original_prompt`` and ``edited_image`` may be present
    and are ignored.

    Args:
        source: a hub id (read with ``datasets.load_dataset``), a local ``.parquet`` file, a
            folder of parquet files (``data/{split}-*.parquet``, ``{split}/*.parquet`` or
            ``*.parquet``), or a ``datasets`` ``save_to_disk`` folder.
        split: the split to read.
        resolution: when given, images are resized (shorter side) and centre-cropped to a
            ``resolution``² square; otherwise kept at their size.
        limit: read only the first ``limit`` rows.

    Items: ``{"image": (3, H, W) float32 in [-1, 1], "prompt": str, "instruction": str, "id":
    str}``, or a :class:`pref_data.Skipped` (id and reason) when the image cannot be decoded —
    the convention of :class:`pref_data.PairDataset`; :func:`collate_triplets` leaves it out.

    Raises:
        SchemaError: a needed column is missing (lists those found and those needed).
        FileNotFoundError: a local path that does not exist or holds no parquet files.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        split: str = "train",
        resolution: int | None = None,
        limit: int | None = None,
    ) -> None:
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be non-negative, got {limit}")
        self.source = os.fspath(source)
        self.split = split
        self.resolution = resolution
        self._table = _open_table(self.source, split)
        missing = [c for c in TRIPLET_COLUMNS if c not in self._table.columns]
        if missing:
            raise SchemaError(self.source, self._table.columns, TRIPLET_COLUMNS, _HINT)
        self.length = self._table.length if limit is None else min(limit, self._table.length)
        if self.length == 0:
            raise EmptyDatasetError(f"{self.source}: no rows in split {split!r}")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"triplet {index} out of range ({self.length})")
        row = self._table.row(index)
        item_id = f"{Path(self.source).name or self.source}:{self.split}:{index}"
        try:
            image = decode_image(row["original_image"])
        except (CorruptImageError, TypeError) as error:
            return Skipped(item_id, str(error))
        if self.resolution is not None:
            image = _square(image, self.resolution)
        return {
            "image": to_tensor(image),
            "prompt": str(row["edited_prompt"] or ""),
            "instruction": str(row["edit_prompt"] or ""),
            "id": item_id,
        }


class ToyTriplets(Dataset):
    """The toy world's edit triplets (``pref_data.toy.EditTriplets``) in the
    :class:`InstructionTriplets` item schema: the defective render is the image, the intended
    prompt the prompt, the fixing instruction the answer.

    Args:
        n: number of triplets.
        seed: seed of the set (item ``i`` depends only on ``(seed, i)``).
        resolution: image side (the toy world's renderer resolution).
    """

    def __init__(self, n: int, seed: int, *, resolution: int = 32) -> None:
        from pref_data.toy import EditTriplets, ToyWorldConfig

        self.triplets = EditTriplets(n, seed, config=ToyWorldConfig(resolution=resolution))
        self.seed = seed

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        item = self.triplets[index]
        return {
            "image": item["defective"],
            "prompt": item["prompt"],
            "instruction": item["instruction"],
            "id": f"toy-edit-{self.seed}-{index % len(self)}",
        }


def collate_triplets(items: Sequence[Mapping[str, Any] | Skipped]) -> dict[str, Any]:
    """Stack triplet items into ``{"images": (B, 3, H, W) or None, "prompts", "instructions",
    "ids", "skipped": ids of the Skipped items}`` (images must share one size)."""
    good = [it for it in items if isinstance(it, Mapping)]
    return {
        "images": torch.stack([it["image"] for it in good]) if good else None,
        "prompts": [it["prompt"] for it in good],
        "instructions": [it["instruction"] for it in good],
        "ids": [it["id"] for it in good],
        "skipped": [it.id for it in items if isinstance(it, Skipped)],
    }


# ---------------------------------------------------------------------------------- evaluation
# Words that carry no attribute or value: articles, pronouns, prepositions, punctuation.
_FUNCTION_WORDS = frozenset(
    {"a", "an", "the", "it", "its", "to", "at", "of", "on", "in", "into", "and", "with"}
)
_WORD = re.compile(r"[a-z0-9]+")


def normalise_instruction(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: ``" Make it  RED."`` → ``"make it red"``."""
    return " ".join(text.lower().split()).rstrip(".!?;, ")


def content_words(text: str) -> set[str]:
    """The words of an instruction that name an operation, an attribute or a value (everything
    but articles, pronouns and prepositions): ``"move it to the top left"`` → ``{"move", "top",
    "left"}``."""
    return {w for w in _WORD.findall(text.lower()) if w not in _FUNCTION_WORDS}


def _batches(triplets: Dataset, n: int, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for i in range(n):
        item = triplets[i]
        if isinstance(item, Skipped):
            continue
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def detector_agreement(
    detector: Any,
    triplets: Dataset,
    *,
    n: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 32,
) -> dict[str, float]:
    """How often the detector's greedy answer agrees with the ground-truth edit instruction.

    The paper reports that its finetuned LLaVA agrees with the ground-truth instructions 76.3% of
    the time against 42.3% before finetuning (supp. A.3, Fig. 12); it does not define agreement.
    Two string proxies, both fractions of the evaluated triplets:

    - ``"exact"``: the answer equals the instruction after :func:`normalise_instruction` (case,
      whitespace, trailing punctuation);
    - ``"attribute"``: every content word of the instruction (:func:`content_words`: the
      operation, attribute and value words, e.g. ``{"make", "red"}`` for ``"make it red"``,
      ``{"move", "top", "left"}`` for ``"move it to the top left"``) appears in the answer.
      Extra words are not penalised (``"exact"`` covers that). On the toy world this is "names
      the right attribute and value"; on free-form InstructPix2Pix instructions it is a strict
      recall measure.

    Args:
        detector: a :class:`~pref_img.detector.MisalignmentDetector`.
        triplets: items with ``image``, ``prompt``, ``instruction`` (held-out data);
            :class:`~pref_data.Skipped` items are left out.
        n: evaluate the first ``n`` items (default: all).
        batch_size: images per :meth:`generate` call.
        max_new_tokens: answer length limit.

    Returns:
        ``{"exact": float, "attribute": float, "n": float}`` (``n`` = triplets evaluated).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    total = len(triplets) if n is None else min(int(n), len(triplets))
    exact = attribute = count = 0
    for batch in _batches(triplets, total, batch_size):
        images = [it["image"] for it in batch]  # a list: sizes may differ without a resolution
        answers = detector.generate(
            images, [it["prompt"] for it in batch], max_new_tokens=max_new_tokens
        )
        for item, answer in zip(batch, answers):
            truth = item["instruction"]
            exact += normalise_instruction(answer) == normalise_instruction(truth)
            attribute += content_words(truth) <= content_words(answer)
            count += 1
    if count == 0:
        raise EmptyDatasetError("detector_agreement: no decodable triplet to evaluate")
    return {"exact": exact / count, "attribute": attribute / count, "n": float(count)}
