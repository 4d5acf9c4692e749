"""Fréchet distances between image sets (FID, Heusel et al. 2017) with pluggable features.

Diff-contrast measures style alignment (Sec. 4.1 / 4.3) as the FID between the preferred
(styled) images of the training set and images the fine-tuned model generates from the same
training prompts. :func:`fid_of_model` does exactly that; ``pref-eval fid`` is its command line.

FID = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½), the Fréchet distance between Gaussians
fitted to two sets of image features. Which features decide what the number means; an
extractor (:class:`FeatureExtractor`) is chosen by a spec (:func:`open_extractor`):

- ``toy``: :class:`ToyFeatures`, a fixed hand-made descriptor (colour histogram, 8×8 layout,
  tone and edge statistics) for the toy world; needs no weights.
- ``clip:PATH_OR_HUB_ID``: :class:`ClipFeatures`, CLIP image embeddings (transformers).
- ``inception:PATH``: :class:`InceptionFeatures`, the TorchScript Inception-v3 of the
  standard FID implementations (``inception-2015-12-05.pt``) from a local file. pref never
  downloads it.

Features are float64; distances are computed in float64 with numpy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pref_core.clip_images import ClipPreprocessing, read_preprocessor_config

__all__ = [
    "EXTRACTOR_FORMS",
    "ClipFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "Reference",
    "ToyFeatures",
    "compute_features",
    "fid",
    "fid_of_model",
    "frechet_distance",
    "main",
    "open_extractor",
    "reference_features",
    "statistics",
]

EXTRACTOR_FORMS = ("toy", "clip:PATH_OR_HUB_ID", "inception:PATH")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


# ================================================================================ the distance
def statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(μ (D,), Σ (D, D)) of features (N, D), in float64; Σ is the unbiased covariance (N − 1).

    Raises:
        ValueError: fewer than two samples, or not a 2-D array.
    """
    x = features.detach().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features)
    x = x.astype(np.float64, copy=False)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigendecomposition;
    eigenvalues below 0, from rounding, are clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Heusel et al. 2017, Eq. 6), float64.

    d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^½, where tr (Σ₁ Σ₂)^½ is computed as
    tr (Σ₁^½ Σ₂ Σ₁^½)^½: the two matrices are similar, and the second is symmetric positive
    semi-definite, so an eigendecomposition gives its root exactly, without the complex
    round-off a general ``sqrtm`` of Σ₁ Σ₂ produces (and without scipy). The result is
    clipped at 0.
    """
    m1, m2 = (np.asarray(_numpy(m), dtype=np.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(_numpy(s), dtype=np.float64)) for s in (sigma1, sigma2))
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {m1.shape}, sigma1 {s1.shape}, mu2 {m2.shape}, "
            f"sigma2 {s2.shape}"
        )
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = m1 - m2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_root
    return float(max(value, 0.0))


def _numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else x


# ================================================================================ extractors
@runtime_checkable
class FeatureExtractor(Protocol):
    """Image features for a Fréchet distance.

    ``features(images)`` takes (N, 3, H, W) float images in [0, 1] (any H, W: an extractor
    resizes as it needs) and returns (N, D) float64 on the CPU; ``name`` is the spec it was
    opened with; ``describe()`` is a JSON-able account of its settings, for results files.
    """

    name: str

    def features(self, images: Tensor) -> Tensor: ...

    def describe(self) -> dict[str, Any]: ...


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected images (N, 3, H, W) in [0, 1], got {shape}")
    return images


class ToyFeatures:
    """A fixed descriptor for the toy world: 292 numbers per image, no weights.

    The image is resized to 32×32 (bilinear, antialiased) and clipped to [0, 1]; then, in
    float64 and concatenated in this order:

    1. colour (64): the joint RGB histogram with 4 bins per channel (bin ⌊4v⌋, v = 1 in the
       last), as fractions of the pixels;
    2. layout (192): the 8×8 average-pooled image (3 × 8 × 8), divided by 8 so that the block's
       squared norm is the image's mean squared value per channel summed over channels (on the
       scale of the other blocks);
    3. tone (10): per-channel mean and standard deviation, luminance (BT.601) mean and
       standard deviation, saturation (max − min over channels) mean and standard deviation;
    4. edges (26): the gradient magnitude of the luminance (central differences, edges
       replicated) averaged over a 4×4 grid of 8×8 cells (16), its histogram over 8
       orientations in [0, π) weighted by magnitude and divided by the pixel count (8), the mean
       absolute 4-neighbour Laplacian (1), and the share of pixels whose magnitude exceeds 0.1
       (1).

    Why it fits style alignment: a sketch removes colour (the histogram collapses onto the grey
    diagonal, saturation goes to 0) and draws lines (edge block); winter lifts and tints
    everything pale blue (histogram, tone) and adds snow speckles (Laplacian); the Van Gogh
    transform repaints with a fixed palette and a periodic brush texture (histogram, Laplacian,
    orientations). Re-rendering the same content moves shapes by a pixel or so, which the 4×4
    pooling of the layout and edge cells mostly absorbs, and keeps colours and tone: such sets
    are close.
    """

    name = "toy"
    resolution = 32
    dim = 64 + 192 + 10 + 26

    def features(self, images: Tensor) -> Tensor:
        x = _check_images(images).detach().to("cpu", torch.float64).clamp(0, 1)
        r = self.resolution
        if tuple(x.shape[-2:]) != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp(0, 1)
        n, pixels = x.shape[0], r * r
        bins = (x * 4).floor().clamp(max=3).long()  # (N, 3, r, r)
        index = (bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2]).flatten(1)  # (N, r²)
        colour = F.one_hot(index, 64).sum(1).to(torch.float64) / pixels  # (N, 64)
        layout = F.avg_pool2d(x, r // 8).flatten(1) / 8  # (N, 192)

        luma = (x * x.new_tensor(_LUMA)[:, None, None]).sum(1)  # (N, r, r)
        saturation = x.amax(1) - x.amin(1)
        tone = torch.cat(
            [
                x.mean((2, 3)),
                x.std((2, 3)),
                torch.stack([luma.mean((1, 2)), luma.std((1, 2))], 1),
                torch.stack([saturation.mean((1, 2)), saturation.std((1, 2))], 1),
            ],
            1,
        )  # (N, 10)

        p = F.pad(luma[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]  # (N, r+2, r+2)
        gx = (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) / 2
        gy = (p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) / 2
        magnitude = torch.hypot(gx, gy)  # (N, r, r)
        cells = F.avg_pool2d(magnitude[:, None], r // 4).flatten(1)  # (N, 16)
        angle = torch.remainder(torch.atan2(gy, gx), math.pi)
        orientation_bin = (angle / math.pi * 8).floor().clamp(max=7).long().flatten(1)
        orientations = torch.zeros(n, 8, dtype=torch.float64).scatter_add_(
            1, orientation_bin, magnitude.flatten(1)
        )
        laplacian = (
            4 * p[:, 1:-1, 1:-1]
            - p[:, :-2, 1:-1]
            - p[:, 2:, 1:-1]
            - p[:, 1:-1, :-2]
            - p[:, 1:-1, 2:]
        )
        edges = torch.cat(
            [
                cells,
                orientations / pixels,
                laplacian.abs().mean((1, 2))[:, None],
                (magnitude > 0.1).to(torch.float64).mean((1, 2))[:, None],
            ],
            1,
        )  # (N, 26)
        return torch.cat([colour, layout, tone, edges], 1)

    def describe(self) -> dict[str, Any]:
        return {"extractor": "toy", "dim": self.dim, "resolution": self.resolution}


def _transformers_dtype_key() -> str:
    """transformers ≥ 4.56 names the weights dtype ``dtype`` (``torch_dtype`` is deprecated)."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class ClipFeatures:
    """CLIP image embeddings (``image_embeds``: the projected pooled output) of
    ``transformers.CLIPVisionModelWithProjection``, loaded from a local folder or a hub id of a
    vision-only or a full CLIP checkpoint (e.g. ``openai/clip-vit-large-patch14``).

    Preprocessing runs in torch (no torchvision, no PIL): pref-core's
    :class:`~pref_core.clip_images.ClipPreprocessing` of the folder's
    ``preprocessor_config.json`` (resize the shortest side, center crop, normalise). Without
    that file, or where it leaves ``size``/``crop_size`` out: the vision config's
    ``image_size`` for both, and OpenAI CLIP's mean and std. (The stock ``CLIPImageProcessor``
    resizes a uint8 PIL image; the float path here differs from it by rounding only.)
    Embeddings are not normalised.

    Args:
        model: hub id or local folder.
        device: default ``"cuda"`` when available, else ``"cpu"``.
        dtype: weights dtype (default float32); features are returned as float64.
    """

    def __init__(
        self, model: str | os.PathLike[str], *, device: str | None = None, dtype: Any = None
    ) -> None:
        from transformers import AutoConfig, CLIPVisionModelWithProjection

        self.model_id = os.fspath(model)
        self.name = f"clip:{self.model_id}"
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or torch.float32
        config = AutoConfig.from_pretrained(self.model_id)
        if config.model_type == "clip":
            # A full CLIP checkpoint: its projection width is the top-level projection_dim,
            # which the nested vision config does not necessarily repeat.
            config = config.vision_config
            config.projection_dim = AutoConfig.from_pretrained(self.model_id).projection_dim
        self.model = CLIPVisionModelWithProjection.from_pretrained(
            self.model_id, config=config, **{_transformers_dtype_key(): self.dtype}
        )
        self.model.eval().to(self.device)
        config = read_preprocessor_config(self.model_id)
        self.preprocessor = "preprocessor_config.json" if config is not None else "openai-default"
        self.preprocessing = ClipPreprocessing.from_config(
            config, default_size=int(self.model.config.image_size)
        )

    def preprocess(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] → the model's (N, 3, crop_h, crop_w) pixel values (float32,
        on the images' device)."""
        x = _check_images(images).detach().float()
        return self.preprocessing(2 * x - 1)  # ClipPreprocessing takes pref's [−1, 1]

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        pixels = self.preprocess(_check_images(images).to(self.device)).to(dtype=self.dtype)
        return self.model(pixel_values=pixels).image_embeds.to("cpu", torch.float64)

    def describe(self) -> dict[str, Any]:
        p = self.preprocessing
        return {
            "extractor": "clip",
            "model": self.model_id,
            "dim": int(self.model.config.projection_dim),
            "preprocessor": self.preprocessor,
            "size": list(p.size) if isinstance(p.size, tuple) else p.size,
            "crop": list(p.crop_size) if p.crop_size is not None else None,
            "resample": p.interpolation,
        }


INCEPTION_FILE = "inception-2015-12-05.pt"


class InceptionFeatures:
    """The 2048-d pool features of the TorchScript Inception-v3 used by the standard FID
    implementations (NVlabs' StyleGAN2-ADA/StyleGAN3 metrics, clean-fid):
    ``inception-2015-12-05.pt``, a port of TensorFlow FID's graph.

    pref never downloads it: pass the path of a local copy. The network is called as those
    implementations call it: ``model(x, return_features=True)`` with ``x`` (N, 3, H, W)
    float32 in [0, 255] — here the [0, 1] images times 255, rounded to integer levels as
    uint8 images would be — and it resizes to 299×299 itself. Any TorchScript module with that
    calling convention works.

    Args:
        path: the ``.pt`` file.
        device: default ``"cuda"`` when available, else ``"cpu"``.
    """

    def __init__(self, path: str | os.PathLike[str], *, device: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.name = f"inception:{path}"
        if not self.path.is_file():
            raise FileNotFoundError(
                f"no Inception network at {self.path}; pref never downloads it: get "
                f"{INCEPTION_FILE} (the TorchScript FID network of NVlabs' stylegan2-ada-pytorch "
                "and clean-fid) yourself and pass its path as inception:PATH"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = torch.jit.load(str(self.path), map_location=self.device).eval()

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        x = (_check_images(images).detach().float().clamp(0, 1) * 255).round()
        out = self.model(x.to(self.device), return_features=True)
        return out.reshape(out.shape[0], -1).to("cpu", torch.float64)

    def describe(self) -> dict[str, Any]:
        return {"extractor": "inception", "path": str(self.path)}


def open_extractor(spec: str | FeatureExtractor, *, device: str | None = None) -> FeatureExtractor:
    """The extractor a spec names: ``toy``, ``clip:PATH_OR_HUB_ID`` or ``inception:PATH``
    (an extractor object is returned as is).

    Raises:
        ValueError: an unknown spec, naming the accepted forms.
        FileNotFoundError: ``inception:PATH`` with no file at PATH.
    """
    if not isinstance(spec, str):
        return spec
    kind, colon, rest = spec.partition(":")
    if spec == "toy":
        return ToyFeatures()
    if kind == "clip" and colon and rest:
        return ClipFeatures(rest, device=device)
    if kind == "inception" and colon and rest:
        return InceptionFeatures(rest, device=device)
    raise ValueError(
        f"unknown feature extractor {spec!r}; use one of: {', '.join(EXTRACTOR_FORMS)} "
        "(clip and inception weights are read from local paths or hub ids, never downloaded by pref)"
    )


# ================================================================================ image sets
ImageSet = Tensor | Sequence[Any]


def _to_tensor(image: Any) -> Tensor:
    """A PIL image or a (3, H, W) tensor in [0, 1] → (3, H, W) float32 in [0, 1]."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor, got {tuple(image.shape)}")
        return image.detach().to("cpu", torch.float32)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _feature_batches(images: list[Tensor], extractor: FeatureExtractor) -> Tensor:
    """Features of images that may differ in size: same-size runs are stacked, order kept."""
    out: list[Tensor] = []
    start = 0
    while start < len(images):
        stop = start + 1
        while stop < len(images) and images[stop].shape == images[start].shape:
            stop += 1
        out.append(extractor.features(torch.stack(images[start:stop])))
        start = stop
    return torch.cat(out)


def compute_features(
    images: ImageSet, extractor: FeatureExtractor, *, batch_size: int = 64
) -> np.ndarray:
    """(N, D) float64 features of an image set: a (N, 3, H, W) tensor in [0, 1], or a sequence
    of PIL images / (3, H, W) tensors (sizes may differ), ``batch_size`` at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if isinstance(batch, Tensor):
            chunks.append(extractor.features(_check_images(batch)))
        else:
            chunks.append(_feature_batches([_to_tensor(im) for im in batch], extractor))
    if not chunks:
        raise ValueError("the image set is empty")
    return torch.cat(chunks).to(torch.float64).numpy()


def fid(
    images_a: ImageSet,
    images_b: ImageSet,
    extractor: FeatureExtractor | str = "toy",
    *,
    batch_size: int = 64,
) -> float:
    """FID between two image sets (each at least 2 images) under ``extractor``."""
    extractor = open_extractor(extractor)
    a = compute_features(images_a, extractor, batch_size=batch_size)
    b = compute_features(images_b, extractor, batch_size=batch_size)
    return frechet_distance(*statistics(a), *statistics(b))


# ================================================================================ reference sets
@dataclass
class Reference:
    """The preferred images of a preference dataset, as features.

    Attributes:
        source: the dataset spec.
        prompts: the caption of each kept pair, in dataset order.
        features: (N, D) float64, one row per prompt.
        skipped: ids of pairs whose preferred image could not be decoded.
    """

    source: str
    prompts: list[str]
    features: np.ndarray
    skipped: list[str] = field(default_factory=list)


def _open_reference(spec: str, split: str) -> Any:
    import pref_data

    path = Path(spec).expanduser()
    if path.is_dir() and (
        (path / "style_manifest.json").is_file() or any(path.glob("data/*.parquet"))
    ):
        spec = f"pickapic:{spec}"  # a folder written by pref-style-data
    has_split = spec.partition(":")[0] in ("pickapic", "oip", "hpdv2")
    return pref_data.open_source(spec, **({"split": split} if has_split else {}))


def reference_features(
    spec: str,
    extractor: FeatureExtractor,
    *,
    limit: int | None = None,
    split: str = "train",
    batch_size: int = 32,
    progress: bool = False,
) -> Reference:
    """Features of the preferred images (record winners) of a dataset, with their prompts.

    Args:
        spec: a pref-data source spec (``pickapic:DIR`` for a ``pref-style-data`` dataset, or
            that folder itself; any other preference source works too).
        extractor: the features.
        limit: the first ``limit`` decodable pairs.
        split: for readers with splits.
        batch_size: images per extractor call.
        progress: show a tqdm bar.

    Undecodable images are skipped and their ids listed in :attr:`Reference.skipped`.
    """
    from tqdm.auto import tqdm

    from pref_data import CorruptImageError, decode_image

    source = _open_reference(spec, split)
    prompts: list[str] = []
    chunks: list[np.ndarray] = []
    skipped: list[str] = []
    pending: list[Any] = []
    total = limit
    if total is None and not getattr(source, "streaming", False):
        total = len(source)
    with tqdm(total=total, disable=not progress, desc="reference", unit="img") as bar:
        for record in source:
            if limit is not None and len(prompts) >= limit:
                break
            try:
                image = decode_image(record.winner)
            except CorruptImageError:
                skipped.append(record.id)
                continue
            prompts.append(record.prompt)
            pending.append(image)
            if len(pending) >= batch_size:
                chunks.append(compute_features(pending, extractor, batch_size=batch_size))
                bar.update(len(pending))
                pending = []
        if pending:
            chunks.append(compute_features(pending, extractor, batch_size=batch_size))
            bar.update(len(pending))
    if not prompts:
        raise ValueError(f"{spec}: no decodable preferred image ({len(skipped)} skipped)")
    return Reference(str(spec), prompts, np.concatenate(chunks), skipped)


# ================================================================================ model FID
GRID_SIZE = 16


def fid_of_model(
    model: str | os.PathLike[str] | Any,
    reference: str,
    *,
    extractor: FeatureExtractor | str = "toy",
    limit: int | None = None,
    steps: int = 30,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 8,
    scheduler: str = "auto",
    height: int | None = None,
    width: int | None = None,
    split: str = "train",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Style-alignment FID (Diff-contrast Sec. 4.3): generate one image per training prompt
    of ``reference`` with ``model`` and compare with the reference's preferred images.

    Args:
        model: what :func:`pref_apps.models.load_for_sampling` loads (a run directory, a
            pipeline folder, a hub id, a toy kind) or a loaded backbone / guided model.
        reference: the dataset spec (see :func:`reference_features`).
        extractor: a spec (``toy``, ``clip:...``, ``inception:PATH``) or an extractor.
        limit: use the first ``limit`` pairs (default: all).
        steps, guidance_scale, scheduler, height, width: sampling settings
            (:func:`pref_core.backbones.sampling.sample`; ``guidance_scale`` in diffusers'
            convention, default the model's; ``scheduler="auto"``: DDIM for models shipping
            DDPM, else their own).
        seed: prompt i is sampled with seed ``seed + i``.
        batch_size: images per sampling batch.
        split, device, dtype: data split; where and in which dtype the model runs.
        progress: show progress bars.
        out: when given, write ``out/fid.json`` and ``out/generated_grid.png`` (the first 16).

    Returns:
        ``{"fid", "features", "model", "reference", "num_images", "reference_skipped",
        "seed", "num_inference_steps", "guidance_scale", "guidance", "scheduler", "height",
        "width", "extractor"}``.
    """
    from tqdm.auto import tqdm

    from pref_apps.evaluation import sampling_plan
    from pref_apps.models import load_for_sampling
    from pref_core.backbones.sampling import make_grid, sample

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be at least 1, got {steps}, {batch_size}")
    if limit is not None and limit < 2:
        raise ValueError(f"FID needs at least 2 images per set; --limit {limit} is too small")
    extractor = open_extractor(extractor, device=device)
    ref = reference_features(reference, extractor, limit=limit, split=split, progress=progress)
    if len(ref.prompts) < 2:
        raise ValueError(f"{reference}: FID needs at least 2 reference images, got 1")
    loaded = (
        load_for_sampling(model, dtype=dtype, device=device)
        if isinstance(model, str | os.PathLike)
        else model
    )
    backbone, denoisers, guidance = sampling_plan(loaded, None, guidance_scale)
    chunks: list[np.ndarray] = []
    grid: list[Tensor] = []
    prompts = ref.prompts
    with tqdm(total=len(prompts), disable=not progress, desc="generating", unit="img") as bar:
        for start in range(0, len(prompts), batch_size):
            texts = prompts[start : start + batch_size]
            images = sample(
                backbone,
                texts,
                guidance=guidance,
                scheduler=scheduler,
                num_inference_steps=steps,
                height=height,
                width=width,
                seeds=list(range(seed + start, seed + start + len(texts))),
                batch_size=batch_size,
                denoisers=denoisers,
                progress=False,
            ).images  # (B, 3, H, W) in [0, 1]
            chunks.append(compute_features(images, extractor, batch_size=batch_size))
            if start < GRID_SIZE:
                grid.append(images[: GRID_SIZE - start])
            bar.update(len(texts))
    generated = np.concatenate(chunks)
    value = frechet_distance(*statistics(ref.features), *statistics(generated))
    shape = tuple(grid[0].shape[-2:])
    result = {
        "fid": value,
        "features": extractor.name,
        "extractor": extractor.describe(),
        "model": str(model) if isinstance(model, str | os.PathLike) else type(model).__name__,
        "reference": str(reference),
        "num_images": len(prompts),
        "reference_skipped": len(ref.skipped),
        "seed": seed,
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "guidance": repr(guidance),
        "scheduler": scheduler,
        "height": shape[0],
        "width": shape[1],
    }
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fid.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        make_grid(torch.cat(grid)).save(folder / "generated_grid.png")
    return result


# ================================================================================ pref-eval fid
PROG = "pref-eval fid"
USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Style-alignment FID (Diff-contrast Sec. 4.3): generate one image per "
        "training prompt of a reference dataset with a model, and report the Fréchet distance "
        "between those images and the dataset's preferred (styled) images.",
        epilog=(
            "Features: toy (no weights; the toy world), clip:PATH_OR_HUB_ID (CLIP image "
            "embeddings), inception:PATH (a local inception-2015-12-05.pt TorchScript file; "
            "never downloaded).\nExample: pref-eval fid --model runs/contrast-winter --reference "
            "pickapic:data/winter --features toy --limit 500"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="run directory, pipeline folder, hub id or toy kind",
    )
    parser.add_argument(
        "--reference",
        required=True,
        metavar="DATASET",
        help="the training data: pickapic:DIR (a pref-style-data folder) or any pref-data spec",
    )
    parser.add_argument("--features", default="toy", help="toy (default), clip:..., inception:...")
    parser.add_argument("--limit", type=int, metavar="N", help="use the first N pairs")
    parser.add_argument("--steps", type=int, default=30, metavar="S", help="sampling steps")
    parser.add_argument(
        "--guidance-scale", type=float, metavar="W", help="diffusers' w (default: the model's)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="prompt i uses K + i")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="images per batch")
    parser.add_argument("--scheduler", default="auto", help="auto, default, ddim, euler, ...")
    parser.add_argument("--height", type=int, help="image height (default: the model's)")
    parser.add_argument("--width", type=int, help="image width (default: the model's)")
    parser.add_argument("--split", default="train", help="reference split (default train)")
    parser.add_argument("--out", metavar="DIR", help="write DIR/fid.json and a grid")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--dtype", help="float32 (default), bfloat16 or float16")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    """``pref-eval fid ...``: print the result as JSON (and write it with ``--out``)."""
    from pref_apps.models import ModelSpecError, parse_dtype

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        result = fid_of_model(
            args.model,
            args.reference,
            extractor=args.features,
            limit=args.limit,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            seed=args.seed,
            batch_size=args.batch_size,
            scheduler=args.scheduler,
            height=args.height,
            width=args.width,
            split=args.split,
            device=args.device,
            dtype=parse_dtype(args.dtype),
            progress=not args.no_progress,
            out=args.out,
        )
    except (ModelSpecError, ValueError, OSError, ImportError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    print(json.dumps(result, indent=2))
    if args.out:  # stdout stays pure JSON
        print(f"wrote {Path(args.out) / 'fid.json'}", file=sys.stderr)
    return 0
