"""Image-text embeddings of preference pairs for Diff-contrast's contrastive weights.

Diff-contrast (Section 2.1, "Multi-Modal Embedding Distance Weights") weighs the pair of winner
``i`` and loser ``j`` of a batch by

    ω̃_ij = exp(−cos_distance(f(y_i^w, x_i), f(y_j^l, x_j)) / τ),

where ``f(y, x)`` is a joint image-text embedding of image ``y`` with prompt ``x`` (CLIP in the
paper). This module is the embedding side only: it computes ``f`` for every pair of a dataset
once (a frozen encoder, never on a backward path), caches the result, and attaches it to the
dataset's items as ``extras`` for the loss to read.

- :class:`PairEmbedder` is the seam: ``embed(images, prompts)`` → L2-normalised image and text
  features. :class:`ClipEmbedder` wraps a ``transformers`` ``CLIPModel``; :class:`ToyEmbedder`
  is a weight-free stand-in for the toy world; :func:`open_embedder` picks one from a spec.
- :func:`combine` turns (image, text) features into ``f(y, x)`` for a modality: ``"image"``,
  ``"text"`` or ``"both"`` (concatenated, so cosines average).
- :func:`compute_pair_embeddings` / :func:`load_or_compute_pair_embeddings` embed a pair dataset
  (with a safetensors cache); :class:`EmbeddedPairs` puts row ``i`` into item ``i``'s extras.

Images follow pref's convention: float ``(N, 3, H, W)`` with values in [−1, 1], i.e.
``uint8 / 127.5 − 1`` (``pref_data.toy.to_tensor`` and ``pref_data.transforms.to_tensor`` both
produce exactly this; −1 is black, 1 is white).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from pref_core.clip_images import ClipPreprocessing, read_preprocessor_config

__all__ = [
    "MODALITIES",
    "ClipEmbedder",
    "ClipPreprocessing",
    "EmbeddedPairs",
    "PairEmbedder",
    "PairEmbeddings",
    "ToyEmbedder",
    "combine",
    "compute_pair_embeddings",
    "load_or_compute_pair_embeddings",
    "open_embedder",
]

MODALITIES: tuple[str, ...] = ("both", "image", "text")

CACHE_FORMAT = "pref-contrast/pair-embeddings"
CACHE_VERSION = 1
CACHE_TENSORS = "embeddings.safetensors"
CACHE_MANIFEST = "embeddings.json"


# ============================================================================ the seam
@runtime_checkable
class PairEmbedder(Protocol):
    """Embeds images and prompts into a joint space, for Diff-contrast's ``f(y, x)``.

    Attributes:
        identity: a stable string naming the embedder and its weights (``"toy-v1"``,
            ``"clip:<id or path>@<revision>/<dtype>"``); it enters cache keys, so two
            embedders with the same identity must give the same features.
    """

    identity: str

    def embed(self, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Embed N images and their N prompts.

        Args:
            images: (N, 3, H, W) float in [−1, 1] (pref's image convention).
            prompts: N strings.

        Returns:
            ``(image_features (N, Di), text_features (N, Dt))``: float32 on the CPU, each row
            L2-normalised, never requiring grad.
        """
        ...


def _l2(features: Tensor) -> Tensor:
    """Rows to unit L2 norm in float32 on the CPU (an all-zero row stays zero)."""
    return F.normalize(features.detach().to("cpu", torch.float32), dim=-1)


def _check_batch(images: Tensor, prompts: Sequence[str]) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        raise ValueError(
            f"expected a sequence of {images.shape[0]} prompts, one per image, got "
            f"{'a single string' if isinstance(prompts, str) else len(prompts)}"
        )


# ============================================================================ CLIP
def _pooled(output: Any) -> Tensor:
    """CLIP's projected features: a tensor (transformers 4) or ``.pooler_output`` of the
    ``BaseModelOutputWithPooling`` that ``get_*_features`` return in transformers 5."""
    return output if isinstance(output, Tensor) else output.pooler_output


_SNAPSHOT = re.compile(r"snapshots/([0-9a-f]{40})/")


def _clip_identity(source: str, revision: str | None, dtype: torch.dtype) -> str:
    """``clip:<name>@<revision>/<dtype>``.

    A hub id names the commit its files were resolved to (the Hub cache's ``snapshots/<sha>``),
    else the revision asked for (``main`` by default). A local folder is named by its absolute
    path and a fingerprint of its ``config.json``, ``preprocessor_config.json`` and the names,
    sizes and modification times of its weight files: re-saving a model there changes the
    identity (a copy does too, which only costs a recomputation).
    """
    name = str(dtype).removeprefix("torch.")
    folder = Path(source)
    if folder.is_dir():
        digest = hashlib.sha256()
        for path in sorted(folder.iterdir()):
            if path.name in ("config.json", "preprocessor_config.json"):
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
            elif path.suffix in (".safetensors", ".bin"):
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        # (a revision means nothing for a local folder: from_pretrained ignores it)
        return f"clip:{folder.resolve()}@local-{digest.hexdigest()[:16]}/{name}"
    from transformers.utils import cached_file

    resolved = cached_file(source, "config.json", revision=revision)
    match = _SNAPSHOT.search(Path(resolved).as_posix()) if resolved else None
    rev = match.group(1) if match else (revision or "main")
    return f"clip:{source}@{rev}/{name}"


class ClipEmbedder:
    """A frozen ``transformers`` ``CLIPModel``: L2-normalised projected image and text features.

    The model is loaded from a hub id or a local folder (``save_pretrained`` layout with its
    tokenizer), put in eval mode with every parameter frozen, and only ever run under
    ``torch.no_grad()``. Prompts are truncated to the text model's maximum length; images are
    preprocessed in torch by :class:`~pref_core.clip_images.ClipPreprocessing` from the
    folder's ``preprocessor_config.json`` (OpenAI CLIP's 224 px / mean / std when it has none),
    so no image processor class (nor torchvision) is needed.

    Args:
        source: hub id (``"openai/clip-vit-large-patch14"``) or local folder.
        revision: hub revision (branch, tag or commit); pin it for reproducible caches.
        device: where the model runs (default CUDA when available, else CPU).
        dtype: model dtype (default float32); preprocessing is always float32 and features are
            returned as float32.
        batch_size: images or prompts per forward pass.
    """

    def __init__(
        self,
        source: str,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 64,
    ) -> None:
        from transformers import AutoTokenizer, CLIPModel

        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.source = str(source)
        self.revision = revision
        self.device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.dtype = dtype or torch.float32
        self.batch_size = int(batch_size)
        try:
            model = CLIPModel.from_pretrained(self.source, revision=revision)
            self.tokenizer = AutoTokenizer.from_pretrained(self.source, revision=revision)
        except OSError as exc:  # transformers' "not found" (folder, hub id, offline cache)
            raise ValueError(
                f"cannot load the CLIP model {self.source!r}: {exc}\n"
                "Give a hub id (e.g. openai/clip-vit-large-patch14, downloaded once and cached) "
                "or a folder holding a CLIPModel's config.json, weights and tokenizer files."
            ) from exc
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.max_length = min(
            int(self.tokenizer.model_max_length),
            int(self.model.config.text_config.max_position_embeddings),
        )
        self.preprocessing = ClipPreprocessing.from_config(
            read_preprocessor_config(self.source, revision)
        )
        expected = int(self.model.config.vision_config.image_size)
        crop = self.preprocessing.crop_size
        if crop is not None and crop != (expected, expected):
            raise ValueError(
                f"{self.source}: the preprocessor crops to {crop} but the vision model takes "
                f"{expected}×{expected} images; fix preprocessor_config.json"
            )
        self.identity = _clip_identity(self.source, revision, self.dtype)

    def __repr__(self) -> str:
        return f"ClipEmbedder({self.identity!r}, device={str(self.device)!r})"

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) in [−1, 1] → (N, Di) float32 CPU, rows L2-normalised."""
        out = []
        for chunk in images.split(self.batch_size):
            pixels = self.preprocessing(chunk.to(self.device))
            features = self.model.get_image_features(pixel_values=pixels.to(self.dtype))
            out.append(_l2(_pooled(features)))
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """N prompts → (N, Dt) float32 CPU, rows L2-normalised (truncated to the max length)."""
        out = []
        prompts = [str(p) for p in prompts]
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(
                prompts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            features = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
            out.append(_l2(_pooled(features)))
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)

    def embed(self, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """See :meth:`PairEmbedder.embed`."""
        _check_batch(images, prompts)
        return self.image_features(images), self.text_features(prompts)


# ============================================================================ toy world
def _toy_text_slots() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(attribute, its words) in feature order, read off the toy grammar's vocabulary."""
    from pref_data.toy import grammar

    values = {
        "colour": tuple(grammar.PALETTE),
        "shape": grammar.SHAPES,
        "size": grammar.SIZES,
        "position": grammar.POSITIONS,
        "background": tuple(grammar.BACKGROUNDS),
    }
    return tuple(
        (name, tuple(dict.fromkeys(word for value in vals for word in value.split())))
        for name, vals in values.items()
    )


class ToyEmbedder:
    """A fixed, weight-free embedder for pref's toy world (``pref_data.toy``); identity
    ``"toy-v1"`` (change it whenever the definition below changes).

    Text features (Dt = 20 with the toy grammar): the prompt is parsed with
    ``pref_data.toy.parse_prompt``; for each attribute, in the order colour, shape, size,
    position, background, a block with one slot per word that attribute's values use (colours
    6, shapes 4, sizes 2, position words top/left/right/bottom/center 5, backgrounds 3, read
    from the grammar's vocabulary) holds the bag of the prompt's words for it, L2-normalised
    within the block ("top left" → 1/√2 on ``top`` and ``left``); a prompt that names no
    background has an all-zero background block. The concatenation is L2-normalised. So two
    prompts that both leave the background unspecified have cosine = the mean over the 4
    attributes of the block cosines (1 same value, 0 different, ½ for positions sharing one
    word such as top left / top right). Prompts that are not toy-world prompts raise
    ``ValueError``.

    Image features (Di = 192): the image is average-pooled to 8×8 per RGB channel
    (``adaptive_avg_pool2d``: exact 4×4 blocks at the toy 32 px), flattened channel-major
    (C, 8, 8) → 192, minus the mean of those 192 values, L2-normalised. Cosines of these are
    Pearson correlations of the pooled images, invariant to brightness shifts and contrast
    scaling. A uniform image (e.g. a ``missing`` render) gives the all-zero vector (cosine 0
    with everything).
    """

    identity = "toy-v1"
    POOL = 8

    def __init__(self) -> None:
        self.text_slots = _toy_text_slots()
        self._index = {}
        offset = 0
        for name, words in self.text_slots:
            self._index[name] = {word: offset + k for k, word in enumerate(words)}
            offset += len(words)
        self.text_dim = offset
        self.image_dim = 3 * self.POOL * self.POOL

    def __repr__(self) -> str:
        return "ToyEmbedder()"

    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """N toy prompts → (N, 20) float32, rows L2-normalised (see the class docstring)."""
        from pref_data.toy import parse_prompt

        out = torch.zeros(len(prompts), self.text_dim)
        for row, text in enumerate(prompts):
            attributes = parse_prompt(str(text)).attributes
            for name, _ in self.text_slots:
                value = attributes[name]
                if value is None:  # an unspecified background
                    continue
                words = value.split()
                for word in words:
                    out[row, self._index[name][word]] += 1.0 / math.sqrt(len(words))
        return _l2(out)

    def image_features(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) → (N, 192) float32, rows L2-normalised (see the class docstring)."""
        pooled = F.adaptive_avg_pool2d(images.detach().to("cpu", torch.float32), self.POOL)
        flat = pooled.flatten(1)  # (N, 3·8·8), channel-major
        return _l2(flat - flat.mean(dim=1, keepdim=True))

    def embed(self, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """See :meth:`PairEmbedder.embed`."""
        _check_batch(images, prompts)
        return self.image_features(images), self.text_features(prompts)


def open_embedder(spec: str, **kwargs: Any) -> PairEmbedder:
    """An embedder from a spec: ``"toy"`` → :class:`ToyEmbedder`; ``"clip:SOURCE"`` or a bare
    hub id / local path → :class:`ClipEmbedder` ``(SOURCE, **kwargs)``."""
    spec = str(spec).strip()
    if spec == "toy":
        if kwargs:
            raise TypeError(f"the toy embedder takes no options, got {sorted(kwargs)}")
        return ToyEmbedder()
    source = spec.removeprefix("clip:")
    if not source:
        raise ValueError(
            f"empty embedder spec {spec!r}; use 'toy', 'clip:<hub id or folder>' or a bare "
            "hub id or folder"
        )
    return ClipEmbedder(source, **kwargs)


# ============================================================================ f(y, x)
def combine(image_features: Tensor, text_features: Tensor, modality: str) -> Tensor:
    """Diff-contrast's embedding ``f(y, x)`` for a modality, from (image, text) features.

    ``"image"`` → the image features (N, Di); ``"text"`` → the text features (N, Dt);
    ``"both"`` → ``concat(image, text) / √2`` (N, Di + Dt). For L2-normalised rows (what a
    :class:`PairEmbedder` returns) the ``"both"`` rows are unit vectors too, and the dot product
    of two of them is ``(cos_image + cos_text) / 2``: the cosine similarity of two ``"both"``
    embeddings is the mean of their image and text cosine similarities. (A zero row, e.g. the
    toy embedder's uniform image, breaks this: that part then contributes nothing.)

    Raises:
        ValueError: for an unknown modality, naming the choices.
    """
    if modality == "image":
        return image_features
    if modality == "text":
        return text_features
    if modality == "both":
        if image_features.shape[:-1] != text_features.shape[:-1]:
            raise ValueError(
                f"image features {tuple(image_features.shape)} and text features "
                f"{tuple(text_features.shape)} have different leading shapes"
            )
        return torch.cat([image_features, text_features], dim=-1) / math.sqrt(2.0)
    raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")


# ============================================================================ per-pair embeddings
@dataclass
class PairEmbeddings:
    """Embeddings of every pair of a dataset, row ``i`` for item ``i``.

    Rows of items that could not be loaded (``pref_data.Skipped``) are NaN; :attr:`valid`
    says which rows are real.

    Attributes:
        image_w: winners' image features, (N, Di).
        image_l: losers' image features, (N, Di).
        text: the pair's prompt features (winner and loser share the prompt), (N, Dt).
        identity: the embedder's identity.
    """

    image_w: Tensor
    image_l: Tensor
    text: Tensor
    identity: str

    def __post_init__(self) -> None:
        if self.image_w.shape != self.image_l.shape or self.image_w.ndim != 2:
            raise ValueError(
                f"image_w {tuple(self.image_w.shape)} and image_l {tuple(self.image_l.shape)} "
                "must be two (N, Di) matrices"
            )
        if self.text.ndim != 2 or self.text.shape[0] != self.image_w.shape[0]:
            raise ValueError(
                f"text {tuple(self.text.shape)} must be (N, Dt) with N = {self.image_w.shape[0]}"
            )

    def __len__(self) -> int:
        return self.image_w.shape[0]

    @property
    def valid(self) -> Tensor:
        """(N,) bool: rows whose item was loaded (no NaN)."""
        finite = [t.isfinite().all(dim=1) for t in (self.image_w, self.image_l, self.text)]
        return finite[0] & finite[1] & finite[2]

    def side(self, modality: str = "both") -> tuple[Tensor, Tensor]:
        """``(f_w, f_l)``, each (N, D): ``f(y_i^w, x_i)`` and ``f(y_i^l, x_i)`` of
        :func:`combine` for ``modality``."""
        return (
            combine(self.image_w, self.text, modality),
            combine(self.image_l, self.text, modality),
        )


def compute_pair_embeddings(
    pairs: Any, embedder: PairEmbedder, *, batch_size: int = 64, progress: bool = True
) -> PairEmbeddings:
    """Embed every pair of a map-style dataset.

    Items are dicts with ``"prompt"`` and ``"winner"``/``"loser"`` image tensors (3, H, W) in
    [−1, 1] (``pref_data.toy.PreferencePairs``, ``pref_data.PairDataset``). Items are read in
    the main process, ``batch_size`` at a time; each batch is one ``embedder.embed`` call on
    the winners then the losers (2B images, the prompts twice). Items that are not mappings
    (``pref_data.Skipped`` for undecodable images) get NaN rows; their number is reported on
    stderr and :attr:`PairEmbeddings.valid` marks them — the caller decides what to do.

    Raises:
        ValueError: when no item at all could be loaded (the feature sizes are then unknown).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    from tqdm.auto import tqdm

    n = len(pairs)
    image_w = image_l = text = None
    skipped = 0
    with tqdm(total=n, disable=not progress, desc="embedding pairs", unit="pair") as bar:
        for start in range(0, n, batch_size):
            indices = range(start, min(start + batch_size, n))
            items = [(i, pairs[i]) for i in indices]
            good = [(i, item) for i, item in items if isinstance(item, Mapping)]
            skipped += len(items) - len(good)
            if good:
                rows = torch.tensor([i for i, _ in good])
                b = len(good)
                images = torch.cat(
                    [
                        torch.stack([item["winner"] for _, item in good]),
                        torch.stack([item["loser"] for _, item in good]),
                    ]
                )  # (2B, 3, H, W)
                prompts = [str(item["prompt"]) for _, item in good]
                img, txt = embedder.embed(images, prompts + prompts)
                if img.ndim != 2 or txt.ndim != 2 or not img.shape[0] == txt.shape[0] == 2 * b:
                    raise ValueError(
                        f"{embedder.identity}: embed() of {2 * b} images returned "
                        f"{tuple(img.shape)} and {tuple(txt.shape)}; expected (2B, Di), (2B, Dt)"
                    )
                img, txt = img.to("cpu", torch.float32), txt.to("cpu", torch.float32)
                if image_w is None:
                    image_w = torch.full((n, img.shape[1]), math.nan)
                    image_l = torch.full((n, img.shape[1]), math.nan)
                    text = torch.full((n, txt.shape[1]), math.nan)
                image_w[rows], image_l[rows], text[rows] = img[:b], img[b:], txt[:b]
            bar.update(len(items))
    if image_w is None:
        raise ValueError(f"none of the {n} pairs could be loaded; nothing to embed")
    if skipped:
        print(
            f"embedding pairs: {skipped} of {n} items could not be loaded (skipped); "
            "their embedding rows are NaN",
            file=sys.stderr,
        )
    return PairEmbeddings(image_w, image_l, text, embedder.identity)


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    raise TypeError(
        f"a cache key holds strings, numbers, booleans, None, lists, dicts and paths; "
        f"got a {type(value).__name__}"
    )


def _canonical_key(key: Mapping[str, Any]) -> dict[str, Any]:
    """The key as it reads back from JSON (tuples → lists, paths and dtypes → strings)."""
    return json.loads(json.dumps(dict(key), default=_json_default, sort_keys=True))


def _key_hash(key: Mapping[str, Any]) -> str:
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_cache(cache_dir: Path, key: dict[str, Any]) -> tuple[PairEmbeddings | None, str]:
    """The cached embeddings if they were made for ``key``, else ``(None, why not)``."""
    from safetensors import safe_open

    manifest_path, tensors_path = cache_dir / CACHE_MANIFEST, cache_dir / CACHE_TENSORS
    if not manifest_path.is_file() and not tensors_path.is_file():
        return None, ""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        with safe_open(str(tensors_path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in ("image_w", "image_l", "text")}
    except Exception as error:  # missing file, bad JSON, bad header, missing tensor, ...
        return None, f"the cache is unreadable ({type(error).__name__}: {error})"
    stored = manifest.get("key")
    if stored != key:
        stored = stored if isinstance(stored, Mapping) else {}
        diffs = [
            f"{k}: {stored.get(k, '<absent>')!r} (cache) vs {key.get(k, '<absent>')!r} (now)"
            for k in sorted(set(stored) | set(key))
            if stored.get(k, "<absent>") != key.get(k, "<absent>")
        ]
        return None, "it was computed for a different key (" + "; ".join(diffs) + ")"
    if metadata.get("key_hash") != manifest.get("key_hash"):
        return None, f"{CACHE_TENSORS} does not belong to {CACHE_MANIFEST} (interrupted write?)"
    try:
        embeddings = PairEmbeddings(identity=key["embedder"], **tensors)
    except ValueError as error:
        return None, f"the cache is inconsistent ({error})"
    if len(embeddings) != key["pairs"]:
        return None, f"the cache holds {len(embeddings)} rows for {key['pairs']} pairs"
    return embeddings, ""


def load_or_compute_pair_embeddings(
    pairs: Any,
    embedder: PairEmbedder,
    cache_dir: str | os.PathLike[str],
    *,
    key: Mapping[str, Any],
    batch_size: int = 64,
    progress: bool = True,
) -> PairEmbeddings:
    """:func:`compute_pair_embeddings`, cached in ``cache_dir``.

    The cache is ``embeddings.safetensors`` (``image_w``, ``image_l``, ``text``; NaN rows
    included) and ``embeddings.json`` (format, version, the full key and its SHA-256). The
    full key is ``{"format", "version", "embedder": embedder.identity, "pairs": len(pairs),
    "key": key}``, where ``key`` is the caller's description of the data (source, split,
    transform, seed, ...: whatever changes the pairs' images or prompts). A cache whose full key
    equals this one exactly is reused; any other cache (different key, unreadable, from an
    interrupted write) is reported on stderr and recomputed in place. Each file is written to a
    temporary file and renamed into place; the tensors file carries the key hash, so a
    manifest and tensors from different writes are never used together.
    """
    from safetensors.torch import save_file

    cache_dir = Path(cache_dir)
    full_key = _canonical_key(
        {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "embedder": embedder.identity,
            "pairs": len(pairs),
            "key": dict(key),
        }
    )
    cached, why = _read_cache(cache_dir, full_key)
    if cached is not None:
        print(f"{cache_dir}: reusing {len(cached)} pair embeddings", file=sys.stderr)
        return cached
    if why:
        print(f"{cache_dir}: not reusing the pair embeddings: {why}; recomputing", file=sys.stderr)
    embeddings = compute_pair_embeddings(pairs, embedder, batch_size=batch_size, progress=progress)
    key_hash = _key_hash(full_key)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        "image_w": embeddings.image_w.contiguous(),
        "image_l": embeddings.image_l.contiguous(),
        "text": embeddings.text.contiguous(),
    }
    _atomic_write(
        cache_dir / CACHE_TENSORS,
        lambda tmp: save_file(tensors, str(tmp), metadata={"key_hash": key_hash}),
    )
    manifest = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "key": full_key,
        "key_hash": key_hash,
        "pairs": len(embeddings),
        "invalid": int((~embeddings.valid).sum()),
    }
    _atomic_write(
        cache_dir / CACHE_MANIFEST,
        lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8"),
    )
    return embeddings


# ============================================================================ dataset wrapper
class EmbeddedPairs(Dataset):
    """Wraps an index-aligned pair dataset: item ``i`` gets ``item["extras"] = {"contrast_w":
    f_w[i], "contrast_l": f_l[i]}``, the :func:`combine`-d embeddings (D,) for ``modality``
    (other extras the item already has are kept).

    Non-mapping items (``pref_data.Skipped``) pass through unchanged. :meth:`set_epoch` is
    forwarded to the wrapped dataset. Note that the embeddings are those of the images as they
    were when computed: with random crops and flips (``PairDataset`` after ``set_epoch``),
    an item's image embedding is of another crop of the same picture.

    Raises:
        ValueError: when ``len(embeddings) != len(dataset)`` or ``modality`` is unknown.
    """

    def __init__(self, dataset: Any, embeddings: PairEmbeddings, modality: str = "both") -> None:
        if len(embeddings) != len(dataset):
            raise ValueError(
                f"the embeddings have {len(embeddings)} rows but the dataset has {len(dataset)} "
                "items; embed this dataset (or clear its embedding cache)"
            )
        self.dataset = dataset
        self.embeddings = embeddings
        self.modality = modality
        self.f_w, self.f_l = embeddings.side(modality)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            return item
        out = dict(item)
        extras = dict(out.get("extras") or {})
        extras.update(contrast_w=self.f_w[index], contrast_l=self.f_l[index])
        out["extras"] = extras
        return out
