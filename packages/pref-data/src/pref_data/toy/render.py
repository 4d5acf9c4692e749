"""Render toy prompts to small RGB images, optionally with one deliberate defect.

Shapes are drawn from signed distance functions (SDFs, in pixels) with the coverage
``clip(0.5 - sdf, 0, 1)`` at each pixel centre: exact box-filter anti-aliasing along straight
edges and very close to it elsewhere, at the cost of one vectorised expression per image (no
supersampling needed). The oracle evaluates the same SDFs to build its shape templates.

Natural jitter within an attribute (so a generative model learns a distribution): the object
centre moves up to ±1.25 px (at 32 px; scaled with the resolution) around its anchor, the extent
varies by ±10 %, and each colour channel shifts by up to ±12 levels.
"""

from __future__ import annotations

import functools
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

DEFECTS: tuple[str, ...] = (
    "wrong_colour",
    "wrong_shape",
    "wrong_position",
    "wrong_size",
    "wrong_background",
    "blur",
    "noise",
    "missing",
)

JITTER_PX = 1.25  # at 32 px, scaled with the resolution
SIZE_JITTER = 0.10
SHADE_JITTER = 12.0  # levels of 255, per channel
BLUR_SIGMA_PX = (1.3, 2.0)  # at 32 px
NOISE_STD = (0.10, 0.20)  # in [0, 1] units

# Area of each shape at extent 1 (the oracle turns a measured area back into an extent).
TRIANGLE_HEIGHT = 0.8  # isosceles, pointing up, base = extent, height = 0.8 * extent
CROSS_ARM = 1 / 3  # arm width as a share of the extent
UNIT_AREAS: dict[str, float] = {
    "circle": math.pi / 4,
    "square": 1.0,
    "triangle": TRIANGLE_HEIGHT / 2,
    "cross": 2 * CROSS_ARM - CROSS_ARM**2,
}


def shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, extent: np.ndarray | float) -> np.ndarray:
    """Signed distance (negative inside) from offsets ``(dx, dy)`` to a shape centred at 0.

    The centre is the shape's area centroid (this matters for the triangle), ``extent`` the width
    of its bounding box; all in pixels and broadcast together.
    """
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - extent / 2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - extent / 2
    if shape == "triangle":
        h = TRIANGLE_HEIGHT * extent
        half = extent / 2
        base = dy - h / 3
        side = (np.abs(dx) * h - (dy + 2 * h / 3) * half) / np.sqrt(h * h + half * half)
        return np.maximum(base, side)
    if shape == "cross":
        half, arm = extent / 2, CROSS_ARM * extent / 2
        ax, ay = np.abs(dx), np.abs(dy)
        return np.minimum(np.maximum(ax - half, ay - arm), np.maximum(ax - arm, ay - half))
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def coverage(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of each pixel from its centre's signed distance."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def pixel_centres(resolution: int) -> np.ndarray:
    """Pixel-centre coordinates ``0.5, 1.5, ...`` (read-only, shared)."""
    centres = np.arange(resolution, dtype=np.float32) + 0.5
    centres.setflags(write=False)
    return centres


@functools.lru_cache(maxsize=32)
def _blur_matrix(resolution: int, sigma_hundredths: int) -> np.ndarray:
    # (R, R) Gaussian blur with clamped edges; applied as M @ img @ M.T per channel.
    sigma = sigma_hundredths / 100
    radius = math.ceil(3 * sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    matrix = np.zeros((resolution, resolution), dtype=np.float32)
    for i in range(resolution):
        for k, w in zip(range(-radius, radius + 1), taps):
            matrix[i, min(max(i + k, 0), resolution - 1)] += w
    return matrix


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur a float ``(H, W, 3)`` square image with a Gaussian of ``sigma`` px (clamped edges)."""
    m = _blur_matrix(image.shape[0], round(sigma * 100))
    rows = np.tensordot(m, image, axes=(1, 0))  # (H, W, 3), blurred along H
    return np.einsum("lk,ikc->ilc", m, rows)


def applicable_defects(prompt: ToyPrompt) -> tuple[str, ...]:
    """The defects ``prompt`` can have (``wrong_background`` needs a named background)."""
    if prompt.background is None:
        return tuple(d for d in DEFECTS if d != "wrong_background")
    return DEFECTS


def _other(rng: np.random.Generator, values: Sequence[str], current: str) -> str:
    choices = [v for v in values if v != current]
    return choices[int(rng.integers(len(choices)))]


def _as_prompt(prompt: ToyPrompt | str) -> ToyPrompt:
    return parse_prompt(prompt) if isinstance(prompt, str) else prompt


def render(
    prompt: ToyPrompt | str,
    rng: np.random.Generator,
    *,
    resolution: int = 32,
    defect: str | None = None,
) -> np.ndarray:
    """Draw ``prompt`` with natural jitter, optionally with exactly one ``defect``.

    The jitter is drawn from ``rng`` first and in a fixed order, defect parameters after it, so two
    generators in the same state give the same object with and without a defect (the edit
    triplets rely on this).

    Args:
        prompt: a :class:`ToyPrompt` or its text.
        rng: source of the jitter and defect parameters.
        resolution: image side in pixels; geometry scales with it.
        defect: one of :data:`DEFECTS` or ``None``. ``wrong_*`` swaps that attribute for another
            value, ``blur`` applies a Gaussian blur (σ 1.3–2 px at 32 px), ``noise`` adds Gaussian
            pixel noise (std 0.1–0.2 of the range), ``missing`` draws no object.

    Returns:
        ``(H, W, 3)`` uint8 image.
    """
    prompt = _as_prompt(prompt)
    px = resolution / 32
    jitter = rng.uniform(-JITTER_PX, JITTER_PX, size=2) * px
    scale = 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    shade = rng.uniform(-SHADE_JITTER, SHADE_JITTER, size=3)

    colour, shape, position, size = prompt.colour, prompt.shape, prompt.position, prompt.size
    background = prompt.background_colour
    if defect is not None and defect not in applicable_defects(prompt):
        if defect in DEFECTS:
            raise ValueError(f"defect {defect!r} needs a prompt that names its background")
        raise ValueError(f"unknown defect {defect!r}; choose one of {', '.join(DEFECTS)}")
    if defect == "wrong_colour":
        colour = _other(rng, tuple(PALETTE), colour)
    elif defect == "wrong_shape":
        shape = _other(rng, SHAPES, shape)
    elif defect == "wrong_position":
        position = _other(rng, POSITIONS, position)
    elif defect == "wrong_size":
        size = _other(rng, SIZES, size)
    elif defect == "wrong_background":
        background = _other(rng, tuple(BACKGROUNDS), background)

    bg = np.asarray(BACKGROUNDS[background], dtype=np.float32)
    image = np.broadcast_to(bg, (resolution, resolution, 3)).copy()  # (H, W, 3), 0..255
    if defect != "missing":
        centres = pixel_centres(resolution)
        ax, ay = ANCHORS[position]
        dx = centres[None, :] - (ax * resolution + jitter[0])  # (1, W)
        dy = centres[:, None] - (ay * resolution + jitter[1])  # (H, 1)
        extent = EXTENTS[size] * resolution * scale
        alpha = coverage(shape_sdf(shape, dx, dy, extent))[..., None]  # (H, W, 1)
        fg = np.clip(np.asarray(PALETTE[colour], dtype=np.float32) + shade, 0, 255)
        image = image * (1 - alpha) + fg * alpha

    if defect == "blur":
        image = gaussian_blur(image, rng.uniform(*BLUR_SIGMA_PX) * px)
    elif defect == "noise":
        image = image + rng.normal(0.0, 255 * rng.uniform(*NOISE_STD), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_batch(
    prompts: Sequence[ToyPrompt | str],
    rng: np.random.Generator,
    *,
    resolution: int = 32,
    defects: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Render several prompts in order from one generator: ``(B, H, W, 3)`` uint8.

    Equal to stacking :func:`render` calls made one after another with ``rng``.
    """
    if defects is None:
        defects = [None] * len(prompts)
    if len(defects) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(defects)} defects")
    out = np.empty((len(prompts), resolution, resolution, 3), dtype=np.uint8)
    for i, (prompt, defect) in enumerate(zip(prompts, defects)):
        out[i] = render(prompt, rng, resolution=resolution, defect=defect)
    return out


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` or ``(B, H, W, 3)`` → float32 ``(3, H, W)`` or ``(B, 3, H, W)`` in [-1, 1]."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 (H, W, 3) or (B, H, W, 3), got {array.dtype} {array.shape}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float().div_(127.5).sub_(1.0)
    return tensor.movedim(-1, -3).contiguous()


def from_tensor(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float ``(3, H, W)`` or ``(B, 3, H, W)`` in [-1, 1] (values outside are clipped) → uint8
    ``(H, W, 3)`` or ``(B, H, W, 3)``."""
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(tensor, dtype=np.float32)
    if array.ndim not in (3, 4) or array.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W), got {array.shape}")
    array = np.moveaxis(array, -3, -1)
    return np.clip(np.rint((array + 1.0) * 127.5), 0, 255).astype(np.uint8)
