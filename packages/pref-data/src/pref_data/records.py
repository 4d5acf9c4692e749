"""Preference records and the sources that yield them.

A :class:`PreferenceRecord` is one judged pair: a prompt, the preferred image (``winner``), the
other one (``loser``), a stable ``id`` and where it came from. Images stay *undecoded* in a record
— encoded bytes, a file path, or an image already in memory — so that listing, filtering and
indexing a large dataset costs nothing; :func:`decode_image` decodes one when it is needed.

A :class:`PreferenceSource` is what every reader returns: an iterable of records with a ``name``
and a ``streaming`` flag. A non-streaming source also has ``len()`` and random access
(``source[i]``), which map-style datasets need; a streaming one can only be iterated.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from PIL import Image, UnidentifiedImageError

from pref_data.errors import CorruptImageError, EmptyDatasetError

__all__ = ["ImageSource", "PreferenceRecord", "PreferenceSource", "decode_image"]

# Encoded bytes; a file path; a decoded PIL image; an (H, W, 3) / (H, W) uint8 array; or the
# Hugging Face ``Image`` feature's undecoded form {"bytes": ..., "path": ...}.
ImageSource: TypeAlias = bytes | str | os.PathLike | Image.Image | Any


@dataclass(frozen=True)
class PreferenceRecord:
    """One preference judgement: ``winner`` was preferred over ``loser`` for ``prompt``.

    Attributes:
        prompt: the text prompt both images were generated from.
        winner: the preferred image, as an :data:`ImageSource` (not decoded yet).
        loser: the other image.
        id: identifier unique within its source and stable across runs (``"pickapic:train:17"``:
            reader, split, row of the original file), used in skip reports and caches.
        source: the name of the source it came from.
        metadata: anything else the row carried (model names, user ids, labels), for inspection.
    """

    prompt: str
    winner: ImageSource
    loser: ImageSource
    id: str
    source: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


def decode_image(src: ImageSource) -> Image.Image:
    """Decode an image source fully into an RGB PIL image.

    The whole image is decoded (``Image.load()``), not only its header, so a truncated JPEG fails
    here rather than halfway through a training step. Alpha is dropped (``convert("RGB")``).
    PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False (its default) for
    truncation to be detected.

    Args:
        src: encoded bytes (``bytes``/``bytearray``/``memoryview``), a file path, a PIL image, an
            (H, W, 3) or (H, W) uint8 array, or a ``{"bytes": ..., "path": ...}`` dict (the Hugging
            Face ``Image`` feature undecoded; bytes win over path).

    Raises:
        CorruptImageError: the data is not a decodable image, is truncated, or the file is missing.
        TypeError: ``src`` is none of the kinds above.
    """
    if isinstance(src, Image.Image):
        return src if src.mode == "RGB" else src.convert("RGB")
    if isinstance(src, Mapping):
        data, path = src.get("bytes"), src.get("path")
        if data is None and path is None:
            raise CorruptImageError("image dict has neither 'bytes' nor 'path'")
        return decode_image(data if data is not None else path)
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise CorruptImageError("empty image bytes")
        return _open_fully(io.BytesIO(bytes(src)), "image bytes")
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise CorruptImageError(f"image file not found: {path}")
        with path.open("rb") as f:
            return _open_fully(f, str(path))
    if hasattr(src, "__array_interface__"):
        return _from_array(src)
    raise TypeError(
        "an image source is encoded bytes, a path, a PIL image, a uint8 array or a "
        f"{{'bytes', 'path'}} dict; got {type(src).__name__}"
    )


def _open_fully(fp: Any, what: str) -> Image.Image:
    try:
        with Image.open(fp) as image:
            image.load()  # decode every pixel: catches truncated files
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        # PIL signals bad data with all of these (UnidentifiedImageError is an OSError); its
        # message names the file object, which says nothing useful (nor the same twice).
        detail = "not a recognised image format" if isinstance(exc, UnidentifiedImageError) else exc
        raise CorruptImageError(f"cannot decode {what}: {detail}") from exc


def _from_array(array: Any) -> Image.Image:
    import numpy as np

    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise CorruptImageError(
            f"an image array must be (H, W, 3) or (H, W) uint8, got {array.shape} {array.dtype}"
        )
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise CorruptImageError(f"an image array needs 1, 3 or 4 channels last, got {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


class PreferenceSource:
    """An iterable of :class:`PreferenceRecord` with a name, built by a reader.

    A *materialised* source (``streaming=False``) knows its length and supports ``source[i]``
    (each record is read on demand, images still encoded); a *streaming* one supports iteration
    only and ``len()`` raises ``TypeError``.

    Args:
        name: what was opened (shown in errors and logs).
        get: ``i -> record`` for ``0 <= i < length``; required unless streaming.
        length: number of records; required unless streaming.
        iterate: optional ``() -> iterator of records``; defaults to ``get(i)`` for each ``i``.
            Readers pass a faster sequential path (e.g. a whole parquet row group at a time).
        streaming: True when only iteration is possible.
        stats: counts from opening the source (``rows``, ``ties_dropped``, ...), for logs.
    """

    def __init__(
        self,
        name: str,
        *,
        get: Callable[[int], PreferenceRecord] | None = None,
        length: int | None = None,
        iterate: Callable[[], Iterator[PreferenceRecord]] | None = None,
        streaming: bool = False,
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        if not streaming and (get is None or length is None):
            raise ValueError("a non-streaming source needs both get and length")
        if streaming and iterate is None:
            raise ValueError("a streaming source needs iterate")
        self.name = name
        self.streaming = streaming
        self.stats: dict[str, Any] = dict(stats or {})
        self._get = get
        self._length = length
        self._iterate = iterate

    @classmethod
    def from_records(cls, records: Sequence[PreferenceRecord], name: str = "records"):
        """A materialised source over records already in memory (tests, small synthetic sets)."""
        records = list(records)
        if not records:
            raise EmptyDatasetError(f"{name}: no records")
        return cls(name, get=records.__getitem__, length=len(records))

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError(f"{self.name} is a streaming source; its length is not known")
        return self._length

    def __getitem__(self, index: int) -> PreferenceRecord:
        if self._get is None or self._length is None:
            raise TypeError(f"{self.name} is a streaming source; it supports iteration only")
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"record {index} out of range for {self.name} ({self._length})")
        return self._get(index)

    def __iter__(self) -> Iterator[PreferenceRecord]:
        if self._iterate is not None:
            return self._iterate()
        return (self._get(i) for i in range(self._length))  # type: ignore[misc]

    def __repr__(self) -> str:
        size = "streaming" if self.streaming else f"{self._length} records"
        return f"PreferenceSource({self.name!r}, {size})"
