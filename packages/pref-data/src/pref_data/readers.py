"""Readers: open a preference dataset on disk or on the Hub as a :class:`PreferenceSource`.

Every reader checks the data's schema when it is called (columns of the first file, fields of
the first item, the first record's image files) and raises :class:`SchemaError` or
:class:`EmptyDatasetError` then — before any model is loaded — rather than at training step
N. Images are never decoded here; records carry them encoded (see ``docs/data.md``).

- :func:`pickapic`: Pick-a-Pic v2 parquet (local file or folder, hub id, ``datasets`` object);
- :func:`pickapic_webdataset`: Pick-a-Pic as webdataset ``.tar`` shards;
- :func:`open_image_preferences`: OpenImagePreferences (prompt, chosen, rejected);
- :func:`hpdv2`: HPDv2 JSON annotations + image folders (every ordered pair per prompt);
- :func:`manifest`: a JSONL/CSV of prompt, winner, loser paths;
- :func:`folder`: ``prompts.jsonl`` + ``winner/ID.png`` + ``loser/ID.png``;
- :func:`open_source`: a string spec (``"pickapic:PATH_OR_ID"``, ...) → one of the above.

Local parquet is read with ``pyarrow`` and hub ids with ``datasets``: both come with the ``hf``
extra (``pip install 'pref-data[hf]'``); the other readers need neither.
"""

from __future__ import annotations

import bisect
import csv
import functools
import glob as globlib
import importlib
import json
import os
import re
import tarfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pref_data.errors import EmptyDatasetError, SchemaError
from pref_data.records import PreferenceRecord, PreferenceSource

__all__ = [
    "OIP_COLUMNS",
    "PICKAPIC_COLUMNS",
    "folder",
    "hpdv2",
    "manifest",
    "open_image_preferences",
    "open_source",
    "pickapic",
    "pickapic_webdataset",
]

PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1")
OIP_COLUMNS = ("prompt", "chosen", "rejected")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PICKAPIC_GONE = (
    "The original hub repository yuvalkirstain/pickapic_v2 is no longer available; pass any "
    "mirror with the same schema (a hub id, or a local folder of its parquet files)."
)


def _require(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{purpose} needs {module!r}, which is not installed; install it with "
            "`pip install 'pref-data[hf]'`"
        ) from exc


# ============================================================================ row backends
class _ParquetRows:
    """Rows of local parquet files, read with pyarrow.

    Sequential reading goes a row group at a time. Random access (``row(i)``) reads the row
    group holding row ``i`` and keeps the last two in memory, so nearby indices are cheap and a
    shuffled pass costs one row-group read per item: cache latents first for random-order
    training (``docs/data.md``). File handles are opened per process, so the object can be
    handed to DataLoader workers.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        pq = _require("pyarrow.parquet", "reading parquet files")
        self.files = [str(f) for f in files]
        self.columns: list[str] = []
        self._starts: list[int] = []  # global index of each (file, row group)'s first row
        self._groups: list[tuple[int, int]] = []  # (file index, row group index)
        total = 0
        for fi, path in enumerate(self.files):
            pf = pq.ParquetFile(path)
            names = list(pf.schema_arrow.names)
            if fi == 0:
                self.columns = names
            for gi in range(pf.metadata.num_row_groups):
                self._starts.append(total)
                self._groups.append((fi, gi))
                total += pf.metadata.row_group(gi).num_rows
        self._length = total
        self._handles: dict[int, Any] = {}
        self._cache: dict[int, list[dict[str, Any]]] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_cache"] = {}, {}
        return state

    def _file(self, fi: int) -> Any:
        if self._pid != os.getpid():  # a forked worker: never share the parent's handles
            self._handles, self._cache, self._pid = {}, {}, os.getpid()
        if fi not in self._handles:
            pq = _require("pyarrow.parquet", "reading parquet files")
            self._handles[fi] = pq.ParquetFile(self.files[fi])
        return self._handles[fi]

    def _group_rows(self, g: int) -> list[dict[str, Any]]:
        fi, gi = self._groups[g]
        return self._file(fi).read_row_group(gi).to_pylist()

    def column(self, name: str) -> list[Any]:
        out: list[Any] = []
        for fi in range(len(self.files)):
            out += self._file(fi).read(columns=[name]).column(name).to_pylist()
        return out

    def row(self, i: int) -> dict[str, Any]:
        g = bisect.bisect_right(self._starts, i) - 1
        if self._pid != os.getpid():
            self._handles, self._cache, self._pid = {}, {}, os.getpid()
        if g not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[g] = self._group_rows(g)
        return self._cache[g][i - self._starts[g]]

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        for g in range(len(self._groups)):
            yield from self._group_rows(g)


class _HFRows:
    """Rows of a ``datasets.Dataset`` (random access, memory-mapped Arrow) or
    ``datasets.IterableDataset`` (streaming). Image features are switched to undecoded
    ``{"bytes", "path"}`` dicts so records stay cheap."""

    def __init__(self, dataset: Any) -> None:
        datasets = _require("datasets", "reading a datasets.Dataset")
        for name, feature in dict(dataset.features or {}).items():
            if isinstance(feature, datasets.Image) and feature.decode:
                dataset = dataset.cast_column(name, datasets.Image(decode=False))
        self.dataset = dataset
        self.streaming = not isinstance(dataset, datasets.Dataset)
        names = dataset.column_names
        if names is None:  # a stream without declared features: look at its first row
            first = next(iter(dataset), None)
            names = list(first) if first is not None else []
        self.columns: list[str] = list(names)

    def __len__(self) -> int:
        return len(self.dataset)

    def column(self, name: str) -> list[Any]:
        table = self.dataset.select_columns([name]).with_format("arrow")[:]
        return table.column(name).to_pylist()

    def row(self, i: int) -> dict[str, Any]:
        return self.dataset[int(i)]

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        return iter(self.dataset)


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.endswith((".parquet", ".json", ".tar"))


_HUB_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}")


def parquet_files(root: Path, split: str) -> list[Path]:
    """Parquet files of ``split`` under a local file or folder (see :func:`pickapic`): the
    hub layouts (``data/SPLIT-*.parquet``, ``SPLIT/*.parquet``, ...), else every ``*.parquet``
    at the top. Raises ``FileNotFoundError`` naming what was looked for."""
    if root.is_file():
        return [root]
    for pattern in (
        f"data/{split}-*.parquet",
        f"data/{split}/*.parquet",
        f"{split}-*.parquet",
        f"{split}/*.parquet",
    ):
        files = sorted(root.glob(pattern))
        if files:
            return files
    files = sorted(root.glob("*.parquet"))
    shards = sorted({m["split"] for f in files if (m := _HUB_SHARD.match(f.name))})
    shards += sorted(
        {m["split"] for f in root.glob("data/*.parquet") if (m := _HUB_SHARD.match(f.name))}
    )
    if shards:
        raise FileNotFoundError(
            f"{root} has no parquet files for split {split!r}; splits found: {sorted(set(shards))}"
        )
    if not files:
        raise FileNotFoundError(
            f"{root} holds no parquet files (looked for data/{split}-*.parquet, "
            f"data/{split}/*.parquet, {split}-*.parquet, {split}/*.parquet and *.parquet)"
        )
    return files


def _open_rows(path_or_hub_id: Any, split: str, streaming: bool, load_kwargs, reader: str):
    """(rows, name, streaming) for a local parquet file/folder, a hub id or a datasets object."""
    if not isinstance(path_or_hub_id, (str, os.PathLike)):
        rows = _HFRows(path_or_hub_id)  # a datasets.Dataset / IterableDataset
        return rows, f"{reader}:<{type(path_or_hub_id).__name__}>", rows.streaming
    spec = os.fspath(path_or_hub_id)
    local = Path(spec).expanduser()
    if local.exists():
        return _ParquetRows(parquet_files(local, split)), f"{reader}:{spec}", streaming
    if _looks_local(spec):
        raise FileNotFoundError(f"{spec} does not exist")
    datasets = _require("datasets", f"loading {spec!r} from the Hugging Face Hub")
    try:
        dataset = datasets.load_dataset(
            spec, split=split, streaming=streaming, **dict(load_kwargs or {})
        )
    except Exception as exc:
        if spec.rstrip("/") == "yuvalkirstain/pickapic_v2":
            raise FileNotFoundError(f"cannot load {spec}: {exc}. {PICKAPIC_GONE}") from exc
        raise
    rows = _HFRows(dataset)
    return rows, f"{reader}:{spec}", rows.streaming


class _Selected:
    """Records from the kept rows of a table: ``get(i)`` builds record ``i`` from row
    ``kept[i]``; ``iterate()`` reads the table sequentially. Picklable (no closures)."""

    def __init__(self, rows: Any, kept: Sequence[int], make: Callable[..., PreferenceRecord]):
        self.rows, self.kept, self.make = rows, kept, make

    def get(self, i: int) -> PreferenceRecord:
        j = self.kept[i]
        return self.make(self.rows.row(j), j)

    def iterate(self) -> Iterator[PreferenceRecord]:
        kept = iter(self.kept)
        want = next(kept, None)
        for j, row in enumerate(self.rows.iter_rows()):
            if want is None:
                return
            if j == want:
                yield self.make(row, j)
                want = next(kept, None)


class _Stream:
    """A streaming pass: ``accept(row) -> None`` (keep) or the reason the row is dropped."""

    def __init__(self, rows: Any, name: str, accept: Callable, make: Callable) -> None:
        self.rows, self.name, self.accept, self.make = rows, name, accept, make

    def iterate(self) -> Iterator[PreferenceRecord]:
        kept, dropped = 0, {}
        for j, row in enumerate(self.rows.iter_rows()):
            reason = self.accept(row)
            if reason is None:
                kept += 1
                yield self.make(row, j)
            else:
                dropped[reason] = dropped.get(reason, 0) + 1
        if kept == 0:
            raise EmptyDatasetError(_empty_message(self.name, sum(dropped.values()), dropped))


def _empty_message(name: str, rows: int, dropped: Mapping[str, int]) -> str:
    if rows == 0:
        return f"{name}: the data has no rows"
    parts = [f"{n} {why}" for why, n in dropped.items() if n]
    message = f"{name}: all {rows} rows were dropped ({', '.join(parts)})"
    if dropped.get("ties") == rows:
        message = (
            f"{name}: all {rows} rows were ties (label_0 == label_1); ties are dropped unless "
            "keep_ties=True"
        )
    return message


def _metadata(row: Mapping[str, Any], exclude: Collection[str]) -> dict[str, Any]:
    return {
        k: v
        for k, v in row.items()
        if k not in exclude and not isinstance(v, (bytes, bytearray, Mapping))
    }


def _check_columns(name: str, found: Sequence[str], required: Sequence[str], hint: str) -> None:
    if any(c not in found for c in required):
        raise SchemaError(name, found, required, hint)


# ============================================================================ Pick-a-Pic
def _pickapic_drop(row: Mapping[str, Any], models: frozenset[str] | None, keep_ties: bool):
    if models is not None and not (row["model_0"] in models and row["model_1"] in models):
        return "filtered by model"
    if row["label_0"] is None or row["label_1"] is None:
        return "unlabeled"
    if not keep_ties and float(row["label_0"]) == float(row["label_1"]):
        return "ties"
    return None


def _pickapic_record(
    row: Mapping[str, Any], index: int, *, name: str, prefix: str, image_keys=("jpg_0", "jpg_1")
) -> PreferenceRecord:
    l0, l1 = float(row["label_0"]), float(row["label_1"])
    first = l0 >= l1  # a kept tie (keep_ties=True) counts image 0 as the winner
    w, l = image_keys if first else image_keys[::-1]
    meta = _metadata(row, {"caption", *image_keys})
    if l0 == l1:
        meta["tie"] = True
    return PreferenceRecord(
        prompt=str(row["caption"] or ""),
        winner=row[w],
        loser=row[l],
        id=f"{prefix}{index}",
        source=name,
        metadata=meta,
    )


def _select_pickapic(label_0, label_1, model_0, model_1, models, keep_ties):
    kept, dropped = [], {"ties": 0, "filtered by model": 0, "unlabeled": 0}
    for j, l0 in enumerate(label_0):
        row = {"label_0": l0, "label_1": label_1[j]}
        if models is not None:
            row["model_0"], row["model_1"] = model_0[j], model_1[j]
        reason = _pickapic_drop(row, models, keep_ties)
        if reason is None:
            kept.append(j)
        else:
            dropped[reason] += 1
    return kept, dropped


def pickapic(
    path_or_hub_id: Any,
    split: str = "train",
    *,
    streaming: bool = False,
    models: Iterable[str] | None = None,
    keep_ties: bool = False,
    load_kwargs: Mapping[str, Any] | None = None,
) -> PreferenceSource:
    """Pick-a-Pic v2 (or any data with its schema) as preference records.

    Columns used: ``caption``, ``jpg_0``, ``jpg_1`` (encoded images), ``label_0``, ``label_1``
    (1/0 for a preference, 0.5/0.5 for a tie) and, when ``models`` is given, ``model_0`` and
    ``model_1``; every other column (``ranking_id``, ``user_id``, ...) goes into the record's
    metadata. The winner is the image whose label is larger. Record ids are
    ``"pickapic:{split}:{row}"`` with ``row`` the index in the unfiltered split.

    ``path_or_hub_id`` is one of:

    - a local ``.parquet`` file;
    - a local folder: the first of ``data/{split}-*.parquet`` (the hub layout),
      ``data/{split}/*.parquet``, ``{split}-*.parquet``, ``{split}/*.parquet`` that matches,
      else every ``*.parquet`` in it (a folder holding one split);
    - a hub id with this schema, loaded with ``datasets.load_dataset(id, split=split,
      streaming=streaming, **load_kwargs)`` (the original ``yuvalkirstain/pickapic_v2`` was
      removed from the Hub; any mirror with the schema works);
    - a ``datasets.Dataset`` or ``IterableDataset`` object (``streaming`` then follows the
      object's kind: an ``IterableDataset`` streams).

    Args:
        split: split name (``train``, ``validation_unique``, ``test_unique``, ...).
        streaming: iterate without random access or up-front filtering; ``len()`` is then
            unknown and ties/filters are applied on the fly.
        models: keep only rows where *both* ``model_0`` and ``model_1`` are in this set (a
            pair between a kept model and another one is dropped).
        keep_ties: keep 0.5/0.5 rows (image 0 as "winner", ``metadata["tie"] = True``) instead
            of dropping them.
        load_kwargs: extra arguments for ``datasets.load_dataset`` (``revision``,
            ``cache_dir``, ...).

    Raises:
        SchemaError: a needed column is missing.
        EmptyDatasetError: no row survives (empty data, all ties, or the model filter).
    """
    models_set = None if models is None else frozenset(models)
    rows, name, streaming = _open_rows(path_or_hub_id, split, streaming, load_kwargs, "pickapic")
    required = ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    if models_set is not None:
        required += ["model_0", "model_1"]
    _check_columns(name, rows.columns, required, "Pick-a-Pic v2 schema expected.")
    make = functools.partial(_pickapic_record, name=name, prefix=f"pickapic:{split}:")
    if streaming:
        accept = functools.partial(_pickapic_drop, models=models_set, keep_ties=keep_ties)
        stream = _Stream(rows, name, accept, make)
        return PreferenceSource(name, iterate=stream.iterate, streaming=True)
    label_0, label_1 = rows.column("label_0"), rows.column("label_1")
    model_0 = model_1 = None
    if models_set is not None:
        model_0, model_1 = rows.column("model_0"), rows.column("model_1")
    kept, dropped = _select_pickapic(label_0, label_1, model_0, model_1, models_set, keep_ties)
    if not kept:
        message = _empty_message(name, len(label_0), dropped)
        if models_set is not None and dropped["filtered by model"]:
            found = sorted({*model_0, *model_1} - {None})  # type: ignore[arg-type]
            message += f"; models asked for: {sorted(models_set)}; models in the data: {found}"
        raise EmptyDatasetError(message)
    selected = _Selected(rows, kept, make)
    stats = {"rows": len(label_0), "kept": len(kept), **dropped}
    return PreferenceSource(
        name, get=selected.get, length=len(kept), iterate=selected.iterate, stats=stats
    )


# ============================================================================ webdataset
_IMAGE_EXTS = {s.lstrip(".") for s in IMAGE_SUFFIXES}


def _wds_split(member: str) -> tuple[str, str]:
    """webdataset's naming: key = path up to the first dot of the file name; rest = field."""
    directory, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), (ext if dot else "")


def _wds_image_field(ext: str) -> int | None:
    """``0.jpg`` → 0, ``1.png`` → 1; None for anything else."""
    head, _, tail = ext.partition(".")
    if head in ("0", "1") and tail.lower() in _IMAGE_EXTS:
        return int(head)
    return None


def _wds_shards(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    specs = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else paths_or_glob
    shards: list[Path] = []
    for spec in specs:
        spec = os.path.expanduser(os.fspath(spec))
        if Path(spec).is_dir():
            shards += sorted(p for p in Path(spec).iterdir() if ".tar" in p.name)
        elif globlib.has_magic(spec):
            shards += [Path(p) for p in sorted(globlib.glob(spec))]
        else:
            shards.append(Path(spec))
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"webdataset shards not found: {missing[:5]}")
    if not shards:
        raise FileNotFoundError(f"no webdataset shards match {paths_or_glob!r}")
    return shards


def _wds_samples(shard: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, {field: bytes}) for each sample of a shard, read sequentially (any compression)."""
    key, sample = None, {}
    with tarfile.open(shard, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, ext = _wds_split(member.name)
            if k != key:
                if key is not None:
                    yield key, sample
                key, sample = k, {}
            f = tar.extractfile(member)
            sample[ext] = f.read() if f is not None else b""
    if key is not None:
        yield key, sample


def _wds_index(shard: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Like :func:`_wds_samples` for an uncompressed shard, but images as (offset, size) so
    that they are read only when a record is used."""
    key, sample = None, {}
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, ext = _wds_split(member.name)
            if k != key:
                if key is not None:
                    yield key, sample
                key, sample = k, {}
            if ext == "json":
                f = tar.extractfile(member)
                sample[ext] = f.read() if f is not None else b""
            else:
                sample[ext] = (member.offset_data, member.size)
    if key is not None:
        yield key, sample


def _wds_row(sample: Mapping[str, Any]) -> dict[str, Any] | None:
    """The sample as a Pick-a-Pic row (json fields + jpg_0/jpg_1), or None if incomplete."""
    images = {}
    for ext, value in sample.items():
        which = _wds_image_field(ext)
        if which is not None:
            images[f"jpg_{which}"] = value
    if "json" not in sample or len(images) != 2:
        return None
    row = json.loads(sample["json"])
    if not isinstance(row, dict):
        return None
    return {**row, **images}


class _TarSlice:
    """Bytes of one tar member, read on demand (a picklable image source factory)."""

    def __init__(self, shard: str) -> None:
        self.shard = shard

    def read(self, offset: int, size: int) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(offset)
            return f.read(size)


def _wds_record(row: Mapping[str, Any], shard: Path, key: str, name: str) -> PreferenceRecord:
    record = _pickapic_record(row, 0, name=name, prefix="")
    return PreferenceRecord(
        prompt=record.prompt,
        winner=record.winner,
        loser=record.loser,
        id=f"wds:{shard.name.split('.')[0]}/{key}",
        source=name,
        metadata=record.metadata,
    )


def pickapic_webdataset(
    paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    models: Iterable[str] | None = None,
    keep_ties: bool = False,
    streaming: bool = False,
) -> PreferenceSource:
    """Pick-a-Pic stored as webdataset ``.tar`` shards.

    Each sample ``KEY`` (webdataset naming: the member's path up to the first dot of its file
    name) has three members, next to each other in the tar:

    - ``KEY.json``: ``{"caption": ..., "label_0": ..., "label_1": ..., "model_0": ...,
      "model_1": ..., ...}`` — the Pick-a-Pic columns other than the images;
    - ``KEY.0.jpg`` and ``KEY.1.jpg``: the two images (``.png``, ``.jpeg``, ``.webp`` also).

    Labels, ties and ``models`` work as in :func:`pickapic`. Ids are ``"wds:{shard}/{KEY}"``.
    Samples missing a member are skipped and counted in ``stats["incomplete"]``.

    Args:
        paths_or_glob: a glob (``"shards/pickapic-*.tar"``), a folder of shards, one path, or
            a list of paths.
        streaming: read the shards sequentially (works for compressed ``.tar.gz`` shards too).
            Otherwise (uncompressed shards only) the shards are indexed once — only tar headers
            and the small json members are read — and images are read by offset on demand.
    """
    shards = _wds_shards(paths_or_glob)
    models_set = None if models is None else frozenset(models)
    name = f"wds:{paths_or_glob if isinstance(paths_or_glob, (str, os.PathLike)) else shards[0]}"
    compressed = [str(s) for s in shards if not s.name.endswith(".tar")]
    if compressed and not streaming:
        raise ValueError(
            f"compressed shards cannot be indexed for random access: {compressed[:3]}; pass "
            "streaming=True or use uncompressed .tar shards"
        )
    # Schema check on the first sample of the first shard.
    key, sample = next(_wds_samples(shards[0]), (None, {}))
    if key is None:
        raise EmptyDatasetError(f"{name}: the first shard {shards[0]} holds no files")
    row = _wds_row(sample)
    required = ["caption", "label_0", "label_1"] + (["model_0", "model_1"] if models_set else [])
    found = [*sorted(sample)] if row is None else [*row]
    if row is None or any(c not in row for c in required):
        raise SchemaError(
            f"{name} (sample {key!r})",
            found if row is None else [c for c in row if not c.startswith("jpg_")],
            ["json", "0.jpg", "1.jpg"] if row is None else required,
            "Each sample needs KEY.json with caption/label_0/label_1 and images KEY.0.jpg, "
            "KEY.1.jpg.",
        )
    accept = functools.partial(_pickapic_drop, models=models_set, keep_ties=keep_ties)
    if streaming:
        stream = _WdsStream(shards, name, accept)
        return PreferenceSource(name, iterate=stream.iterate, streaming=True)
    entries, incomplete, rows = [], 0, 0
    dropped = {"ties": 0, "filtered by model": 0, "unlabeled": 0}
    for si, shard in enumerate(shards):
        for key, sample in _wds_index(shard):
            rows += 1
            row = _wds_row(sample)
            if row is None:
                incomplete += 1
                continue
            reason = accept(row)
            if reason is None:
                entries.append((si, key, row))
            else:
                dropped[reason] += 1
    if not entries:
        raise EmptyDatasetError(_empty_message(name, rows, {**dropped, "incomplete": incomplete}))
    indexed = _WdsRecords(entries, [str(s) for s in shards], name)
    stats = {"rows": rows, "kept": len(entries), "incomplete": incomplete, **dropped}
    return PreferenceSource(name, get=indexed.get, length=len(entries), stats=stats)


class _WdsRecords:
    def __init__(self, entries, shards: list[str], name: str) -> None:
        self.entries, self.shards, self.name = entries, shards, name

    def get(self, i: int) -> PreferenceRecord:
        si, key, row = self.entries[i]
        reader = _TarSlice(self.shards[si])
        row = {**row, "jpg_0": reader.read(*row["jpg_0"]), "jpg_1": reader.read(*row["jpg_1"])}
        return _wds_record(row, Path(self.shards[si]), key, self.name)


class _WdsStream:
    def __init__(self, shards: list[Path], name: str, accept: Callable) -> None:
        self.shards, self.name, self.accept = shards, name, accept

    def iterate(self) -> Iterator[PreferenceRecord]:
        kept, rows, dropped = 0, 0, {}
        for shard in self.shards:
            for key, sample in _wds_samples(shard):
                rows += 1
                row = _wds_row(sample)
                reason = "incomplete" if row is None else self.accept(row)
                if reason is None:
                    kept += 1
                    yield _wds_record(row, shard, key, self.name)
                else:
                    dropped[reason] = dropped.get(reason, 0) + 1
        if kept == 0:
            raise EmptyDatasetError(_empty_message(self.name, rows, dropped))


# ============================================================================ OIP
def _oip_record(row: Mapping[str, Any], index: int, *, name: str, prefix: str):
    return PreferenceRecord(
        prompt=str(row["prompt"] or ""),
        winner=row["chosen"],
        loser=row["rejected"],
        id=f"{prefix}{index}",
        source=name,
        metadata=_metadata(row, {"prompt", "chosen", "rejected"}),
    )


def open_image_preferences(
    path_or_hub_id: Any,
    split: str = "train",
    streaming: bool = False,
    *,
    load_kwargs: Mapping[str, Any] | None = None,
) -> PreferenceSource:
    """OpenImagePreferences (``data-is-better-together/open-image-preferences-v1-binarized``)
    or any data with columns ``prompt``, ``chosen``, ``rejected``.

    Images may be ``{"bytes": ..., "path": ...}`` dicts (the ``datasets`` Image feature, as the
    hub parquet stores them) or raw encoded bytes. ``path_or_hub_id`` is resolved exactly as in
    :func:`pickapic` (local parquet file or folder, hub id, ``datasets`` object). Every row is
    one record, id ``"oip:{split}:{row}"``; other columns go into the metadata.
    """
    rows, name, streaming = _open_rows(path_or_hub_id, split, streaming, load_kwargs, "oip")
    _check_columns(name, rows.columns, list(OIP_COLUMNS), "OpenImagePreferences schema expected.")
    make = functools.partial(_oip_record, name=name, prefix=f"oip:{split}:")
    if streaming:
        stream = _Stream(rows, name, _keep_all, make)
        return PreferenceSource(name, iterate=stream.iterate, streaming=True)
    if len(rows) == 0:
        raise EmptyDatasetError(f"{name}: the data has no rows")
    selected = _Selected(rows, range(len(rows)), make)
    return PreferenceSource(
        name,
        get=selected.get,
        length=len(rows),
        iterate=selected.iterate,
        stats={"rows": len(rows), "kept": len(rows)},
    )


def _keep_all(row: Mapping[str, Any]) -> None:
    return None


# ============================================================================ files on disk
class _PathRecords:
    """Records whose images are files: a list of (prompt, winner path, loser path, id, meta)."""

    def __init__(self, items: list[tuple[str, str, str, str, dict[str, Any]]], name: str):
        self.items, self.name = items, name

    def get(self, i: int) -> PreferenceRecord:
        prompt, w, l, rid, meta = self.items[i]
        return PreferenceRecord(prompt, w, l, rid, self.name, meta)


def _path_source(name: str, items: list, stats: Mapping[str, Any]) -> PreferenceSource:
    if not items:
        raise EmptyDatasetError(f"{name}: no records")
    _, w, l, rid, _ = items[0]
    for path in (w, l):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{name}: the first record ({rid}) names an image that does not exist: {path}. "
                "Relative paths are resolved against the annotation file's folder."
            )
    ids = [item[3] for item in items]
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise ValueError(f"{name}: duplicate record ids {dup[:5]}; ids must be unique")
    records = _PathRecords(items, name)
    return PreferenceSource(name, get=records.get, length=len(items), stats=stats)


def _ranks(item: Mapping[str, Any]) -> list[float] | None:
    if "rank" in item:
        return [float(r) for r in item["rank"]]
    if "human_preference" in item:
        # 1 marks the chosen image(s): higher preference = better = lower rank.
        return [-float(h) for h in item["human_preference"]]
    return None


def hpdv2(path: str | os.PathLike, split: str = "train") -> PreferenceSource:
    """HPDv2 (Human Preference Dataset v2) from its local layout: every ordered pair per prompt.

    ``path`` is the dataset folder holding ``{split}.json`` and the images (under
    ``{split}/``), or the JSON file itself. The JSON is a list of items with ``prompt``,
    ``image_path`` (a list of image paths) and a per-image judgement, one of:

    - ``rank``: the rank of ``image_path[k]``, lower = better (the test file);
    - ``human_preference``: 1 for the chosen image(s), 0 for the others (the train file),
      read as higher = better.

    Each item gives one record per ordered pair (better, worse); images with equal ranks form
    no pair. Image paths are resolved against ``<folder>/{split}/`` if the first image exists
    there, else against ``<folder>/``. Ids: ``"hpdv2:{split}:{item}:{better}>{worse}"`` (indices
    into ``image_path``).
    """
    path = Path(path).expanduser()
    annotations = path if path.is_file() else path / f"{split}.json"
    if not annotations.is_file():
        raise FileNotFoundError(f"HPDv2 annotations not found: {annotations}")
    root = annotations.parent
    name = f"hpdv2:{annotations}"
    data = json.loads(annotations.read_text(encoding="utf-8"))
    if isinstance(data, Mapping):  # tolerate {"data": [...]}-style wrappers
        data = next((v for v in data.values() if isinstance(v, list)), [])
    if not data:
        raise EmptyDatasetError(f"{name}: the annotation list is empty")
    first = data[0]
    if not isinstance(first, Mapping) or "prompt" not in first or "image_path" not in first:
        found = list(first) if isinstance(first, Mapping) else [type(first).__name__]
        raise SchemaError(name, found, ["prompt", "image_path", "rank | human_preference"])
    if _ranks(first) is None:
        raise SchemaError(name, list(first), ["prompt", "image_path", "rank | human_preference"])
    paths = list(first["image_path"])
    base = root / split if paths and (root / split / paths[0]).is_file() else root
    items, equal = [], 0
    for n, item in enumerate(data):
        paths, ranks = list(item["image_path"]), _ranks(item)
        if ranks is None or len(ranks) != len(paths):
            raise SchemaError(
                f"{name} (item {n})",
                list(item),
                ["prompt", "image_path", "rank | human_preference"],
                "rank/human_preference must list one value per image_path entry.",
            )
        for a in range(len(paths)):
            for b in range(len(paths)):
                if a == b:
                    continue
                if ranks[a] < ranks[b]:
                    items.append(
                        (
                            str(item["prompt"]),
                            str(base / paths[a]),
                            str(base / paths[b]),
                            f"hpdv2:{split}:{n}:{a}>{b}",
                            {"item": n},
                        )
                    )
                elif ranks[a] == ranks[b] and a < b:
                    equal += 1
    if not items:
        raise EmptyDatasetError(
            f"{name}: no pair with different ranks in {len(data)} items ({equal} equal pairs)"
        )
    return _path_source(name, items, {"items": len(data), "pairs": len(items), "equal": equal})


def _read_table_file(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a JSONL or CSV file."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    rows, columns = [], {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object per line")
            rows.append(row)
            columns.update(dict.fromkeys(row))
    return list(columns), rows


def manifest(path: str | os.PathLike) -> PreferenceSource:
    """A JSONL or CSV manifest of (prompt, winner, loser) image paths.

    Columns (JSONL keys): ``prompt``, ``winner``, ``loser`` — image paths, relative to the
    manifest's folder or absolute — and optionally ``id`` (default ``"{file stem}:{row}"``);
    other columns go into the metadata. Ids must be unique. The first record's images must
    exist; a later missing or broken image is skipped when it is loaded.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    name = f"manifest:{path}"
    columns, rows = _read_table_file(path)
    _check_columns(name, columns, ["prompt", "winner", "loser"], "Columns id (optional), ...")
    root = path.parent
    items = []
    for n, row in enumerate(rows):
        rid = row.get("id")
        rid = f"{path.stem}:{n}" if rid in (None, "") else str(rid)
        meta = {k: v for k, v in row.items() if k not in ("prompt", "winner", "loser", "id")}
        items.append(
            (
                str(row["prompt"] or ""),
                str(root / Path(row["winner"]).expanduser()),
                str(root / Path(row["loser"]).expanduser()),
                rid,
                meta,
            )
        )
    return _path_source(name, items, {"rows": len(rows)})


def folder(path: str | os.PathLike) -> PreferenceSource:
    """A folder laid out as::

        prompts.jsonl        one {"id": ..., "prompt": ...} per line (other keys → metadata)
        winner/<id>.png      the preferred image (.png, .jpg, .jpeg, .webp or .bmp)
        loser/<id>.png       the other image

    Every id must have both images; the missing ones are listed when the folder is opened.
    """
    path = Path(path).expanduser()
    prompts = path / "prompts.jsonl"
    name = f"folder:{path}"
    if not prompts.is_file():
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        raise SchemaError(
            name, found, ["prompts.jsonl", "winner/", "loser/"], "See pref_data.readers.folder."
        )
    columns, rows = _read_table_file(prompts)
    _check_columns(f"{prompts}", columns, ["id", "prompt"], "One JSON object per line.")
    images = {}
    for side in ("winner", "loser"):
        d = path / side
        files = d.iterdir() if d.is_dir() else []
        images[side] = {p.stem: p for p in files if p.suffix.lower() in IMAGE_SUFFIXES}
    items, missing = [], []
    for row in rows:
        rid = str(row["id"])
        w, l = images["winner"].get(rid), images["loser"].get(rid)
        if w is None or l is None:
            missing.append(rid)
            continue
        meta = {k: v for k, v in row.items() if k not in ("id", "prompt")}
        items.append((str(row["prompt"] or ""), str(w), str(l), rid, meta))
    if missing:
        raise FileNotFoundError(
            f"{name}: {len(missing)} ids lack winner/<id>.<ext> or loser/<id>.<ext>: {missing[:10]}"
        )
    return _path_source(name, items, {"rows": len(rows)})


# ============================================================================ dispatch
SPEC_FORMS = (
    "pickapic:PATH_OR_HUB_ID",
    "oip:PATH_OR_HUB_ID",
    "hpdv2:PATH",
    "wds:GLOB",
    "PATH.jsonl or PATH.csv (a manifest)",
    "FOLDER (prompts.jsonl + winner/ + loser/)",
)
_PREFIXED: dict[str, Callable[..., PreferenceSource]] = {
    "pickapic": pickapic,
    "oip": open_image_preferences,
    "hpdv2": hpdv2,
    "wds": pickapic_webdataset,
    "manifest": manifest,
    "folder": folder,
}


def open_source(spec: str, **kwargs: Any) -> PreferenceSource:
    """Open a source from a config string; keyword arguments go to the reader.

    Accepted forms: ``pickapic:PATH_OR_HUB_ID`` (:func:`pickapic`), ``oip:PATH_OR_HUB_ID``
    (:func:`open_image_preferences`), ``hpdv2:PATH`` (:func:`hpdv2`), ``wds:GLOB``
    (:func:`pickapic_webdataset`), a ``.jsonl``/``.csv`` path (:func:`manifest`), or a folder
    (:func:`folder`); ``manifest:PATH`` and ``folder:PATH`` are accepted too.
    """
    prefix, sep, rest = str(spec).partition(":")
    if sep and prefix in _PREFIXED and rest:
        return _PREFIXED[prefix](rest, **kwargs)
    path = Path(str(spec)).expanduser()
    if path.suffix.lower() in (".jsonl", ".csv"):
        return manifest(path, **kwargs)
    if path.is_dir():
        return folder(path, **kwargs)
    raise ValueError(
        f"cannot open data source {spec!r}; accepted forms: {'; '.join(SPEC_FORMS)}"
        + ("" if not path.suffix else f" (no such file or folder: {path})")
    )
