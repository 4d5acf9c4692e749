"""The exact oracle reward of the toy world, computed from pixels.

The oracle reads an image the way the renderer wrote it, and is built to stay right on imperfect
generated images (soft edges, slight noise, shade errors):

1. Smooth lightly (3×3 binomial) to damp pixel noise. Area and centroid of a soft mask do not
   change under a normalised linear filter, and the shape templates go through the same filter.
2. Background = per-channel median of the border pixels; nearest of :data:`BACKGROUNDS`.
3. Object colour = contrast-weighted mean of the pixels far from the background. A soft object
   mask (alpha) is the projection of each pixel onto the background→object colour segment,
   soft-thresholded at 0.2–0.8 (symmetric about ½, so anti-aliased edges keep their area).
   Too little alpha mass means a missing object: every object attribute scores 0.
4. Colour = the palette colour whose background→colour ray passes closest to the object colour:
   anti-aliasing and blur mix object and background along exactly that ray, so small or blurred
   objects keep their colour.
5. Shape = the template with the highest soft IoU, each template drawn at the measured centroid
   with the extent that gives it the measured area, and blurred as much as the image's edges
   look blurred (so a soft generated image is compared with soft templates). Size = that extent against the geometric mean
   of the small and large extents. Position = anchor nearest to the centroid.
6. Quality = sharpness × cleanliness, both continuous in [0, 1]. Sharpness: the steepest 2-px
   steps of the object mask (1 for a crisp edge at any sub-pixel offset, ≈0.6 or less after a
   Gaussian blur of σ ≥ 1.2 px), through a smoothstep. Cleanliness: pixel noise σ estimated
   robustly as the median absolute response of a Laplacian-difference kernel (Immerkær 1996, with a
   median instead of a mean so edges do not count), mapped by ``1 / (1 + (σ/0.04)^4)``.

Images are uint8 ``(H, W, 3)``/``(B, H, W, 3)`` arrays or tensors, or float ``(3, H, W)``/
``(B, 3, H, W)`` arrays or tensors in [-1, 1] (the model convention; see
:func:`pref_data.toy.render.to_tensor`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from pref_data.toy.grammar import (
    ANCHORS,
    BACKGROUNDS,
    EXTENTS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    ToyPrompt,
    parse_prompt,
)
from pref_data.toy.render import UNIT_AREAS, coverage, pixel_centres, shape_sdf

_PALETTE_NAMES = tuple(PALETTE)
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_PALETTE = np.asarray([PALETTE[c] for c in _PALETTE_NAMES], dtype=np.float32) / 255  # (K, 3)
_BACKGROUND = np.asarray([BACKGROUNDS[b] for b in _BACKGROUND_NAMES], dtype=np.float32) / 255
_ANCHORS = np.asarray([ANCHORS[p] for p in POSITIONS], dtype=np.float32)  # (P, 2) fractions (x, y)
_SIZE_SPLIT = float(np.sqrt(EXTENTS["small"] * EXTENTS["large"]))  # fraction of the resolution

_FOREGROUND_DISTANCE = 0.15  # RGB distance (in [0, 1] units) from the background to count a pixel
_ALPHA_LO, _ALPHA_HI = 0.2, 0.8
_MIN_AREA_PX = 6.0  # at 32 px; the smallest clean object (a small triangle) covers ~20 px
_SHARP_LO, _SHARP_HI = 0.55, 0.9
_NOISE_SCALE = 0.04
_TOP_K_EDGES = 8
# Sharpness of a step edge blurred by a Gaussian of σ px is erf(1 / (σ√2)) (2-px steps); inverted
# by table lookup to blur the shape templates as much as the image looks blurred.
_BLUR_SIGMAS = np.linspace(3.0, 0.05, 300)
_BLUR_SHARPNESS = np.asarray([math.erf(1 / (sig * math.sqrt(2))) for sig in _BLUR_SIGMAS])
_NO_BLUR_ABOVE = 0.97


@dataclasses.dataclass(frozen=True)
class OracleScore:
    """The oracle's verdict on one image.

    Attributes:
        colour, shape, position, size: 1.0 when the image shows the prompt's value, else 0.0.
        background: likewise, or ``None`` when the prompt names no background (not counted).
        quality: continuous sharpness × cleanliness in [0, 1].
        total: mean of the counted attributes (quality included).
        success: every counted discrete attribute correct and ``quality >= 0.5``.
        detected: what the oracle saw (attribute values, ``None`` for object attributes when no
            object was found) plus the raw ``sharpness`` and ``noise`` measurements.
    """

    colour: float
    shape: float
    position: float
    size: float
    background: float | None
    quality: float
    total: float
    success: bool
    detected: dict[str, str | float | None]


def _as_unit_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    # -> (B, H, W, 3) float32 in [0, 1]
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        images = images.numpy() if images.dtype == torch.uint8 else images.float().numpy()
    array = np.asarray(images)
    if array.dtype == np.uint8:
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (H, W, 3) or (B, H, W, 3), got {array.shape}")
        return array.astype(np.float32) / 255
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images must be uint8 HWC or float CHW in [-1, 1], got {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(f"float images must be (3, H, W) or (B, 3, H, W), got {array.shape}")
    array = np.moveaxis(array.astype(np.float32), 1, -1)
    return np.clip((array + 1.0) / 2.0, 0.0, 1.0)


def _smooth(x: np.ndarray) -> np.ndarray:
    # 3×3 binomial filter over axes 1 and 2 with clamped edges; x: (B, H, W, ...).
    p = np.concatenate([x[:, :1], x, x[:, -1:]], axis=1)
    x = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    p = np.concatenate([x[:, :, :1], x, x[:, :, -1:]], axis=2)
    return 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]


def _soft_threshold(alpha: np.ndarray) -> np.ndarray:
    return np.clip((alpha - _ALPHA_LO) / (_ALPHA_HI - _ALPHA_LO), 0.0, 1.0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _noise_sigma(x: np.ndarray) -> np.ndarray:
    # Immerkær's kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] annihilates planes; Gaussian noise of std σ
    # gives a response of std 6σ whose median absolute value is 0.6745 · 6σ.
    r = (
        x[:, :-2, :-2]
        - 2 * x[:, :-2, 1:-1]
        + x[:, :-2, 2:]
        - 2 * x[:, 1:-1, :-2]
        + 4 * x[:, 1:-1, 1:-1]
        - 2 * x[:, 1:-1, 2:]
        + x[:, 2:, :-2]
        - 2 * x[:, 2:, 1:-1]
        + x[:, 2:, 2:]
    )
    return np.median(np.abs(r).reshape(len(x), -1), axis=1) / (0.6745 * 6)


def measure(images: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """What the oracle sees in each image, independent of any prompt.

    Returns:
        ``present`` (B,) bool; ``colour``, ``shape``, ``position``, ``size``, ``background`` (B,)
        int indices into :data:`PALETTE`, :data:`SHAPES`, :data:`POSITIONS`, :data:`SIZES`,
        :data:`BACKGROUNDS`; ``area``, ``extent`` (px), ``centroid`` (B, 2) as (x, y) px,
        ``shape_iou`` (B, len(SHAPES)), ``sharpness``, ``noise`` (σ in [0, 1] units) and
        ``quality`` (B,) floats.
    """
    x = _as_unit_images(images)  # (B, H, W, 3)
    b, h, w, _ = x.shape
    if h != w:
        raise ValueError(f"toy images are square, got {h}x{w}")
    s = _smooth(x)
    border = np.concatenate([s[:, 0], s[:, -1], s[:, 1:-1, 0], s[:, 1:-1, -1]], axis=1)
    bg = np.median(border, axis=1)  # (B, 3)
    background = np.argmin(((bg[:, None] - _BACKGROUND[None]) ** 2).sum(-1), axis=1)

    diff = s - bg[:, None, None]  # (B, H, W, 3)
    dist = np.sqrt((diff * diff).sum(-1))  # (B, H, W)
    weight = np.where(dist > _FOREGROUND_DISTANCE, dist**4, 0.0).reshape(b, -1)
    wsum = weight.sum(1)
    fg = (weight[..., None] * s.reshape(b, -1, 3)).sum(1) / np.maximum(wsum, 1e-12)[:, None]
    contrast = fg - bg  # (B, 3)
    c2 = np.maximum((contrast * contrast).sum(-1), 1e-12)

    alpha = _soft_threshold(np.einsum("bhwc,bc->bhw", diff, contrast) / c2[:, None, None])
    px = h / 32
    area = alpha.sum((1, 2))
    present = (wsum > 0) & (area >= _MIN_AREA_PX * px * px)
    centres = pixel_centres(h)
    safe_area = np.maximum(area, 1e-6)
    cx = (alpha.sum(1) * centres).sum(1) / safe_area
    cy = (alpha.sum(2) * centres).sum(1) / safe_area

    # Colour: distance from the object colour to each background→palette segment.
    rays = _PALETTE[None] - bg[:, None]  # (B, K, 3)
    t = np.einsum("bc,bkc->bk", contrast, rays) / (rays * rays).sum(-1)
    t = np.clip(t, 0.0, 1.25)
    colour = np.argmin(((contrast[:, None] - t[..., None] * rays) ** 2).sum(-1), axis=1)

    # Sharpness on the unsmoothed image, in units of the object's contrast.
    a = np.einsum("bhwc,bc->bhw", x - bg[:, None, None], contrast) / c2[:, None, None]
    steps = np.concatenate(
        [
            np.abs(a[:, :, 2:] - a[:, :, :-2]).reshape(b, -1),
            np.abs(a[:, 2:] - a[:, :-2]).reshape(b, -1),
        ],
        axis=1,
    )
    top = -np.partition(-steps, _TOP_K_EDGES - 1, axis=1)[:, :_TOP_K_EDGES]
    sharpness = np.where(present, top.mean(1), 1.0)

    # Shape: soft IoU with each template at the measured centroid and area-matched extent.
    dx = centres[None, None, :] - cx[:, None, None]  # (B, 1, W)
    dy = centres[None, :, None] - cy[:, None, None]  # (B, H, 1)
    templates, extents = [], []
    for shape in SHAPES:
        extent = np.sqrt(np.maximum(area, 1e-3) / UNIT_AREAS[shape])
        templates.append(coverage(shape_sdf(shape, dx, dy, extent[:, None, None])))
        extents.append(extent)
    templates = _smooth(np.stack(templates, -1))  # (B, H, W, S)
    sigma = np.interp(np.minimum(sharpness, 1.0), _BLUR_SHARPNESS, _BLUR_SIGMAS)
    blurred = sharpness < _NO_BLUR_ABOVE
    if blurred.any():
        offsets = centres[:, None] - centres[None, :]  # (H, H)
        g = np.exp(-0.5 * (offsets[None] / sigma[blurred, None, None]) ** 2)
        g /= g.sum(-1, keepdims=True)  # (B', H, H)
        t = np.moveaxis(templates[blurred], -1, 1)  # (B', S, H, W)
        t = g[:, None] @ t @ np.swapaxes(g, -1, -2)[:, None]
        templates[blurred] = np.moveaxis(t, 1, -1)
    templates = _soft_threshold(templates)
    inter = np.minimum(templates, alpha[..., None]).sum((1, 2))
    union = np.maximum(templates, alpha[..., None]).sum((1, 2))
    shape_iou = inter / np.maximum(union, 1e-6)  # (B, S)
    shape = np.argmax(shape_iou, axis=1)
    extent = np.stack(extents, 1)[np.arange(b), shape]
    size = np.where(extent > _SIZE_SPLIT * h, SIZES.index("large"), SIZES.index("small"))
    anchor = _ANCHORS[None] * h  # (1, P, 2)
    centroid = np.stack([cx, cy], 1)
    position = np.argmin(((centroid[:, None] - anchor) ** 2).sum(-1), axis=1)

    noise = _noise_sigma(x)
    quality = _smoothstep((sharpness - _SHARP_LO) / (_SHARP_HI - _SHARP_LO)) / (
        1 + (noise / _NOISE_SCALE) ** 4
    )
    return {
        "present": present,
        "colour": colour,
        "shape": shape,
        "position": position,
        "size": size,
        "background": background,
        "area": area,
        "extent": extent,
        "centroid": centroid,
        "shape_iou": shape_iou,
        "sharpness": sharpness,
        "noise": noise,
        "quality": quality,
    }


def _as_prompts(prompts: Sequence[ToyPrompt | str] | ToyPrompt | str) -> list[ToyPrompt]:
    if isinstance(prompts, (ToyPrompt, str)):
        prompts = [prompts]
    return [parse_prompt(p) if isinstance(p, str) else p for p in prompts]


def score_batch(
    images: np.ndarray | torch.Tensor, prompts: Sequence[ToyPrompt | str]
) -> dict[str, np.ndarray]:
    """Score a batch of images against their prompts.

    Args:
        images: uint8 ``(B, H, W, 3)`` or float ``(B, 3, H, W)`` in [-1, 1] (array or tensor).
        prompts: ``B`` prompts (:class:`ToyPrompt` or text).

    Returns:
        numpy arrays of shape (B,): float32 ``colour``, ``shape``, ``position``, ``size`` (0/1),
        ``background`` (0/1, NaN where the prompt names none), ``quality``, ``total``; bool
        ``success``, ``has_background`` and ``present``; and the detected values as str arrays
        ``detected_colour``, ``detected_shape``, ``detected_position``, ``detected_size`` (""
        when no object was found) and ``detected_background``.
    """
    return _score(measure(images), _as_prompts(prompts))


def _score(m: dict[str, np.ndarray], prompts: list[ToyPrompt]) -> dict[str, np.ndarray]:
    if len(prompts) != len(m["present"]):
        raise ValueError(f"got {len(m['present'])} images but {len(prompts)} prompts")
    present = m["present"]
    out: dict[str, np.ndarray] = {}
    for name, values in (
        ("colour", _PALETTE_NAMES),
        ("shape", SHAPES),
        ("position", POSITIONS),
        ("size", SIZES),
    ):
        wanted = np.asarray([values.index(getattr(p, name)) for p in prompts])
        out[name] = (present & (m[name] == wanted)).astype(np.float32)
        out[f"detected_{name}"] = np.where(present, np.asarray(values)[m[name]], "")
    has_bg = np.asarray([p.background is not None for p in prompts])
    wanted_bg = np.asarray([_BACKGROUND_NAMES.index(p.background_colour) for p in prompts])
    out["background"] = np.where(has_bg, m["background"] == wanted_bg, np.nan).astype(np.float32)
    out["detected_background"] = np.asarray(_BACKGROUND_NAMES)[m["background"]]
    out["quality"] = m["quality"].astype(np.float32)

    discrete = np.stack([out[k] for k in ("colour", "shape", "position", "size")], 1)
    bg_score = np.nan_to_num(out["background"])
    counted = 5 + has_bg
    out["total"] = ((discrete.sum(1) + bg_score + out["quality"]) / counted).astype(np.float32)
    all_right = (discrete == 1).all(1) & (~has_bg | (bg_score == 1))
    out["success"] = all_right & (out["quality"] >= 0.5)
    out["has_background"] = has_bg
    out["present"] = present
    return out


def score(image: np.ndarray | torch.Tensor, prompt: ToyPrompt | str) -> OracleScore:
    """Score one image (uint8 ``(H, W, 3)`` or float ``(3, H, W)`` in [-1, 1]) against a prompt."""
    array = image.detach().cpu() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"score takes one image; use score_batch for {tuple(array.shape)}")
    m = measure(array)
    s = _score(m, _as_prompts(prompt))
    named = bool(s["has_background"][0])
    detected: dict[str, str | float | None] = {
        k: (str(s[f"detected_{k}"][0]) or None) for k in ("colour", "shape", "position", "size")
    }
    detected["background"] = str(s["detected_background"][0])
    detected["sharpness"] = float(m["sharpness"][0])
    detected["noise"] = float(m["noise"][0])
    return OracleScore(
        colour=float(s["colour"][0]),
        shape=float(s["shape"][0]),
        position=float(s["position"][0]),
        size=float(s["size"][0]),
        background=float(s["background"][0]) if named else None,
        quality=float(s["quality"][0]),
        total=float(s["total"][0]),
        success=bool(s["success"][0]),
        detected=detected,
    )
