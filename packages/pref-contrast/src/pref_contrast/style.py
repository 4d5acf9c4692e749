"""Style-alignment datasets (Diff-contrast Sec. 3): preference pairs whose preferred image is a
style edit of the rejected one, written in the Pick-a-Pic v2 schema.

For each pair of a source, one of its two images is picked at random as the *rejected* image,
an editor turns that same image into the target style, and the edit becomes the *preferred*
image: ``(y^w, y^l, x)`` = (styled image, original image, caption), as in the paper. A model
fine-tuned on such pairs should learn the style, which FID against the styled training images
measures (``pref-eval fid``, Sec. 4.3).

Editors (the :class:`StyleEditor` protocol):

- :class:`ToyStyle`: deterministic numpy transforms (:data:`TOY_STYLES`: ``sketch``,
  ``winter``, ``vangogh``) that need no weights, for the toy world and for tests;
- :class:`InstructPix2PixEditor`: diffusers' ``StableDiffusionInstructPix2PixPipeline`` (the
  paper's Van Gogh editor, Brooks et al. 2023) from a hub id or a local folder.

Output layout (read back unchanged by ``pref_data.open_source("pickapic:OUT")``)::

    OUT/data/train-00000-of-00001.parquet   caption, jpg_0, jpg_1, label_0, label_1, model_0,
                                            model_1, source_id, source_side
    OUT/style_manifest.json                 style, editor, source, count, seed, ... (written last)

Command line: ``pref-style-data --source toy:2000 --style winter --out data/winter`` (see
:func:`main` and ``docs/style-alignment.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from pref_contrast.__about__ import __version__

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "MANIFEST_NAME",
    "TOY_STYLES",
    "InstructPix2PixEditor",
    "OutputExistsError",
    "StyleEditor",
    "ToyStyle",
    "UnknownEditorError",
    "UnknownStyleError",
    "build_style_dataset",
    "main",
    "make_editor",
    "open_pairs",
    "sketch",
    "vangogh",
    "winter",
]

MANIFEST_NAME = "style_manifest.json"
MANIFEST_FORMAT = "pref-style-data/1"
SPLIT = "train"  # the split the dataset is written as
_TMP_NAME = ".tmp-style-build"
_STYLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


class UnknownStyleError(ValueError):
    """A style name the chosen editor has no transform or default instruction for."""


class UnknownEditorError(ValueError):
    """An editor spec that is neither ``toy`` nor ``instruct-pix2pix:MODEL``."""


class OutputExistsError(FileExistsError):
    """The output folder already holds a different dataset (replace it with ``overwrite``)."""


# ================================================================================ editors
@runtime_checkable
class StyleEditor(Protocol):
    """What :func:`build_style_dataset` needs from an editor.

    ``name`` is the style, written as ``"style:{name}"`` in the model column of the preferred
    image; ``edit`` returns one image per input, of the same size; ``describe`` is a JSON-able
    identity of the editor and its settings (the dataset manifest records it, and a rebuild
    into the same folder is refused when it differs).
    """

    name: str

    def edit(self, images: list[Image.Image], prompts: list[str]) -> list[Image.Image]: ...

    def describe(self) -> dict[str, Any]: ...


def _content_seed(seed: int, pixels: np.ndarray) -> np.random.SeedSequence:
    """A seed from ``seed`` and the image content: an edit's randomness depends on the image
    alone, never on the batch it arrives in or on how many images came before."""
    digest = hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=8).digest()
    return np.random.SeedSequence([int(seed), int.from_bytes(digest, "little")])


def _as_float(image: Image.Image) -> np.ndarray:
    """RGB PIL image → float32 (H, W, 3) in [0, 1]."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb, dtype=np.float32) / 255.0


def _to_image(pixels: np.ndarray) -> Image.Image:
    """float (H, W, 3) in [0, 1] → RGB PIL image (values outside are clipped)."""
    return Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8), "RGB")


def _sobel(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gx, gy) of a (H, W) image: Sobel kernels divided by 4, so a step edge of contrast c
    gives |g| = c on the two pixels beside it (edges replicated at the border)."""
    p = np.pad(luma, 1, mode="edge")
    gx = (
        p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:] - p[:-2, :-2] - 2 * p[1:-1, :-2] - p[2:, :-2]
    ) / 4
    gy = (
        p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:] - p[:-2, :-2] - 2 * p[:-2, 1:-1] - p[:-2, 2:]
    ) / 4
    return gx, gy


def sketch(image: Image.Image) -> Image.Image:
    """A grayscale pencil drawing of ``image`` on white paper. Deterministic, no randomness.

    With L the BT.601 luminance in [0, 1] and E the Sobel gradient magnitude of L (normalised so
    a step edge of contrast c gives E = c, i.e. lines about two pixels wide at any resolution):

    - lines: ``line = clip(1.5 E, 0, 1) ** 0.75`` (dark strokes along every edge);
    - shading: ``0.25 (1 − L)`` of graphite over dark regions, plus diagonal hatching (one
      line every ``max(3, min(H, W) // 64)`` pixels, along x + y) that darkens by
      ``0.25 (1 − L)`` where L < 0.5;
    - value = ``clip(0.96 − 0.9 line − shading − hatching, 0, 1)`` on every channel, so the
      output is exactly grey (R = G = B) and flat areas become paper white (0.96) or light grey.

    Same size as the input; works from a few pixels up.
    """
    x = _as_float(image)
    luma = x @ _LUMA
    gx, gy = _sobel(luma)
    line = np.clip(1.5 * np.hypot(gx, gy), 0.0, 1.0) ** 0.75
    h, w = luma.shape
    period = max(3, min(h, w) // 64)
    yy, xx = np.mgrid[0:h, 0:w]
    hatch = (((xx + yy) % period) == 0) & (luma < 0.5)
    value = 0.96 - 0.9 * line - 0.25 * (1.0 - luma) - 0.25 * (1.0 - luma) * hatch
    return _to_image(np.repeat(np.clip(value, 0.0, 1.0)[..., None], 3, axis=-1))


_ICE = np.array([0.82, 0.90, 1.0], dtype=np.float32)


def winter(image: Image.Image, seed: int = 0) -> Image.Image:
    """A cold, snowy version of ``image``. Deterministic given the image and ``seed``.

    With L the BT.601 luminance, per pixel in [0, 1]:

    1. desaturate: ``0.45 x + 0.55 L``;
    2. lift the shadows (a pale, overcast light): ``0.25 + 0.75 x``;
    3. cold tint: ``0.7 x + 0.3 ice`` with ice = (0.82, 0.90, 1.0), so blue > green > red;
    4. snow: 1.5 % of the pixels (drawn from a generator seeded by ``seed`` and the image's
       bytes) become flakes — discs of radius ``min(H, W) // 200`` pixels (single pixels at
       toy sizes) blended 90 % towards white.

    Every image but a pure white one ends up brighter, and every one bluer (mean B − R grows).
    Same size as the input.
    """
    x = _as_float(image)
    luma = x @ _LUMA
    x = 0.45 * x + 0.55 * luma[..., None]
    x = 0.25 + 0.75 * x
    x = 0.7 * x + 0.3 * _ICE
    h, w = luma.shape
    rng = np.random.default_rng(_content_seed(seed, np.asarray(image)))
    centres = rng.random((h, w)) < 0.015
    radius = min(h, w) // 200
    flakes = centres.astype(np.float32)
    if radius > 0:  # dilate the centres into discs
        padded = np.pad(flakes, radius)
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dx * dx + dy * dy <= radius * radius:
                    shifted = padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
                    flakes = np.maximum(flakes, shifted)
    alpha = 0.9 * flakes[..., None]
    return _to_image((1.0 - alpha) * x + alpha)


# Van Gogh's palette: cobalt and ultramarine skies (the darkest colour: night is blue, never
# black), chrome yellow and ochre light, orange, sap green and cream.
VANGOGH_PALETTE = (
    np.array(
        [
            (30, 62, 150),  # cobalt blue
            (22, 40, 105),  # ultramarine
            (110, 150, 210),  # sky blue
            (242, 200, 45),  # chrome yellow
            (200, 140, 45),  # ochre
            (225, 115, 35),  # warm orange
            (85, 125, 60),  # sap green
            (245, 235, 200),  # cream
        ],
        dtype=np.float32,
    )
    / 255.0
)
# Fixed vortices of the stroke field, in image-relative coordinates: (cx, cy, radius, spin).
_VORTICES = ((0.28, 0.30, 0.30, 1.0), (0.72, 0.58, 0.35, -1.0), (0.30, 0.82, 0.25, 1.0))


def _stroke_field(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit stroke directions (dx, dy), each (H, W): three fixed vortices over a gentle wave."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx + 0.5) / w, (yy + 0.5) / h
    fx = np.ones_like(u) * 0.35
    fy = 0.35 * np.sin(2 * np.pi * 2 * u)
    for cx, cy, r, spin in _VORTICES:
        ox, oy = u - cx, v - cy
        weight = np.exp(-(ox * ox + oy * oy) / (r * r)) / r
        fx += -spin * oy * weight * 4
        fy += spin * ox * weight * 4
    norm = np.hypot(fx, fy) + 1e-6
    return fx / norm, fy / norm


def vangogh(image: Image.Image) -> Image.Image:
    """``image`` painted in a Van Gogh-like manner. Deterministic, no randomness.

    1. swirl: each pixel is averaged with the pixels along a fixed stroke field (three
       vortices over a horizontal wave, :func:`_stroke_field`), ``n = max(2, round(0.035 ·
       min(H, W)))`` steps each way (nearest-pixel samples) — a line-integral-convolution
       smear that draws directional strokes;
    2. posterise: each smeared pixel is replaced by its nearest colour (RGB distance) of
       :data:`VANGOGH_PALETTE` (cobalt, ultramarine, sky blue, chrome yellow, ochre, orange, sap
       green, cream; no black: dark areas become ultramarine night), mixed 75 % palette / 25 %
       smeared colour;
    3. brush texture: ``+ 0.08 sin(2π s / P)`` on every channel, with s the coordinate across
       the strokes and P = ``max(3, min(H, W) / 48)`` pixels, so ridges run along the strokes.

    Same size as the input; works from a few pixels up.
    """
    x = _as_float(image)
    h, w, _ = x.shape
    dx, dy = _stroke_field(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    steps = max(2, round(0.035 * min(h, w)))
    smeared = np.zeros_like(x)
    for k in range(-steps, steps + 1):
        xi = np.clip(np.rint(xx + k * dx), 0, w - 1).astype(np.intp)
        yi = np.clip(np.rint(yy + k * dy), 0, h - 1).astype(np.intp)
        smeared += x[yi, xi]
    smeared /= 2 * steps + 1
    flat = smeared.reshape(-1, 3)
    distances = ((flat[:, None, :] - VANGOGH_PALETTE[None]) ** 2).sum(-1)  # (H·W, colours)
    posterised = VANGOGH_PALETTE[distances.argmin(1)].reshape(h, w, 3)
    painted = 0.75 * posterised + 0.25 * smeared
    across = -dy * xx + dx * yy
    period = max(3.0, min(h, w) / 48)
    texture = 0.08 * np.sin(2 * np.pi * across / period)
    return _to_image(painted + texture[..., None])


TOY_STYLES: dict[str, Callable[..., Image.Image]] = {
    "sketch": sketch,
    "winter": winter,
    "vangogh": vangogh,
}
_SEEDED_STYLES = frozenset({"winter"})


class ToyStyle:
    """One of the deterministic :data:`TOY_STYLES` as a :class:`StyleEditor`.

    Args:
        style: ``"sketch"``, ``"winter"`` or ``"vangogh"`` (see each function's docstring).
        seed: seeds the styles that draw noise (winter's snow), together with each image's bytes.
    """

    def __init__(self, style: str, *, seed: int = 0) -> None:
        if style not in TOY_STYLES:
            raise UnknownStyleError(
                f"unknown toy style {style!r}; the toy editor has {', '.join(TOY_STYLES)}. Other "
                "styles need an instruction editor: --editor instruct-pix2pix:MODEL --instruction "
                "'...'"
            )
        self.name = style
        self.seed = int(seed)
        self._transform = TOY_STYLES[style]

    def edit(self, images: list[Image.Image], prompts: list[str]) -> list[Image.Image]:
        if self.name in _SEEDED_STYLES:
            return [self._transform(image, seed=self.seed) for image in images]
        return [self._transform(image) for image in images]

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"editor": "toy", "style": self.name}
        if self.name in _SEEDED_STYLES:
            described["seed"] = self.seed
        return described

    def __repr__(self) -> str:
        return f"ToyStyle({self.name!r})"


# The instructions InstructPix2Pix gets when only a style name is given.
DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "vangogh": "turn it into a Van Gogh painting",
    "sketch": "turn it into a pencil sketch",
    "winter": "make it winter, with snow",
}


class InstructPix2PixEditor:
    """Style edits with diffusers' ``StableDiffusionInstructPix2PixPipeline`` (Brooks et al.
    2023; the paper's Van Gogh editor).

    The pipeline is loaded here (``from_pretrained`` on a hub id or a local folder), with the
    safety checker off: it replaces flagged images by black ones, which would enter the dataset
    as "preferred" images; filter the source prompts instead, as the paper did.

    Each image is resized so that its longer side is ``resolution`` (both sides rounded to a
    multiple the VAE and UNet accept), edited, and resized back to its own size (bicubic), so
    the preferred image has the rejected image's size. Images of a call that share a working
    size are batched, ``batch_size`` at a time. Each image's noise comes from its own CPU
    generator seeded by ``seed`` and the image's bytes, so an edit does not depend on the batch.

    Args:
        model: hub id (``timbrooks/instruct-pix2pix``) or local pipeline folder.
        instruction: the edit instruction; ``{prompt}`` in it is replaced by the image's caption.
        style: the style name written to the dataset (``"style:{style}"``).
        steps: denoising steps.
        guidance_scale: text guidance (diffusers' convention).
        image_guidance_scale: image guidance; larger keeps closer to the input.
        resolution: working size of the longer side (None: each image's own size).
        device: default ``"cuda"`` when available, else ``"cpu"``.
        dtype: default float16 on CUDA, float32 elsewhere.
        seed: base seed of the per-image generators.
        batch_size: images per pipeline call.
        local_files_only: do not contact the Hub (a local folder never does).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        instruction: str,
        *,
        style: str = "custom",
        steps: int = 20,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        resolution: int | None = 512,
        device: str | None = None,
        dtype: Any = None,
        seed: int = 0,
        batch_size: int = 4,
        local_files_only: bool = False,
    ) -> None:
        import diffusers
        import torch
        from diffusers import StableDiffusionInstructPix2PixPipeline
        from packaging.version import Version

        if not instruction.strip():
            raise ValueError("the InstructPix2Pix instruction is empty")
        if steps < 1 or batch_size < 1:
            raise ValueError(f"steps and batch_size must be at least 1, got {steps}, {batch_size}")
        if resolution is not None and resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {resolution}")
        self.name = style
        self.model = os.fspath(model)
        self.instruction = instruction
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.image_guidance_scale = float(image_guidance_scale)
        self.resolution = resolution
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        # diffusers renamed torch_dtype to dtype (torch_dtype is deprecated, not yet removed).
        dtype_key = "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"
        self.pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            self.model,
            **{dtype_key: self.dtype},
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=local_files_only,
        ).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        unet_levels = len(self.pipe.unet.config.block_out_channels) - 1
        self._multiple = self.pipe.vae_scale_factor * 2**unet_levels

    def _working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        w, h = size
        scale = 1.0 if self.resolution is None else self.resolution / max(w, h)
        m = self._multiple
        return max(m, round(w * scale / m) * m), max(m, round(h * scale / m) * m)

    def _instruction(self, prompt: str) -> str:
        return self.instruction.replace("{prompt}", prompt)

    def edit(self, images: list[Image.Image], prompts: list[str]) -> list[Image.Image]:
        import torch

        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images and {len(prompts)} prompts")
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(rgb):
            groups.setdefault(self._working_size(image.size), []).append(i)
        out: list[Image.Image | None] = [None] * len(rgb)
        for size, members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                inputs = [rgb[i].resize(size, Image.Resampling.BICUBIC) for i in chunk]
                generators = [
                    torch.Generator().manual_seed(
                        int(_content_seed(self.seed, np.asarray(rgb[i])).generate_state(1)[0])
                    )
                    for i in chunk
                ]
                result = self.pipe(
                    prompt=[self._instruction(prompts[i]) for i in chunk],
                    image=inputs,
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance_scale,
                    image_guidance_scale=self.image_guidance_scale,
                    generator=generators,
                    output_type="pil",
                )
                for i, edited in zip(chunk, result.images, strict=True):
                    out[i] = edited.convert("RGB").resize(rgb[i].size, Image.Resampling.BICUBIC)
        return [image for image in out if image is not None]

    def describe(self) -> dict[str, Any]:
        return {
            "editor": "instruct-pix2pix",
            "model": self.model,
            "style": self.name,
            "instruction": self.instruction,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "image_guidance_scale": self.image_guidance_scale,
            "resolution": self.resolution,
            "seed": self.seed,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def __repr__(self) -> str:
        return f"InstructPix2PixEditor({self.model!r}, {self.instruction!r}, style={self.name!r})"


EDITOR_FORMS = ("toy", "instruct-pix2pix:HUB_ID_OR_FOLDER")


def make_editor(
    style: str,
    editor: str = "toy",
    *,
    instruction: str | None = None,
    seed: int = 0,
    **pix2pix: Any,
) -> StyleEditor:
    """The editor an ``--editor`` spec names, for ``style``.

    Args:
        style: the style name (lower case, digits, ``-``, ``_``).
        editor: ``"toy"`` (:class:`ToyStyle`: ``style`` must be one of :data:`TOY_STYLES`) or
            ``"instruct-pix2pix:MODEL"`` (:class:`InstructPix2PixEditor`; the instruction
            defaults to :data:`DEFAULT_INSTRUCTIONS` ``[style]``).
        instruction: the edit instruction (instruction editors only).
        seed: the editor's seed.
        **pix2pix: other :class:`InstructPix2PixEditor` arguments.

    Raises:
        UnknownStyleError: a style the editor has no transform or default instruction for.
        UnknownEditorError: an editor spec of neither form.
    """
    if not _STYLE_NAME.match(style):
        raise UnknownStyleError(
            f"style name {style!r} is not valid: use lower-case letters, digits, '-' and '_' "
            f"(e.g. {', '.join(TOY_STYLES)})"
        )
    kind, colon, model = editor.partition(":")
    if editor == "toy":
        if instruction is not None:
            raise ValueError("--instruction is for instruction editors (instruct-pix2pix:MODEL)")
        return ToyStyle(style, seed=seed)
    if kind == "instruct-pix2pix" and colon and model:
        if instruction is None:
            if style not in DEFAULT_INSTRUCTIONS:
                raise UnknownStyleError(
                    f"no default instruction for style {style!r} (defaults exist for "
                    f"{', '.join(DEFAULT_INSTRUCTIONS)}); pass --instruction 'TEXT', e.g. "
                    f"--instruction 'turn it into a {style} painting'"
                )
            instruction = DEFAULT_INSTRUCTIONS[style]
        return InstructPix2PixEditor(model, instruction, style=style, seed=seed, **pix2pix)
    raise UnknownEditorError(
        f"unknown editor {editor!r}; use one of: {'; '.join(EDITOR_FORMS)} (e.g. "
        "instruct-pix2pix:timbrooks/instruct-pix2pix)"
    )


# ================================================================================ sources
@dataclass(frozen=True)
class _Pair:
    """A source pair, normalised: images still encoded (bytes, paths, arrays, ...)."""

    prompt: str
    winner: Any
    loser: Any
    id: str
    winner_model: str
    loser_model: str


_TOY_SPEC = re.compile(r"^toy:(?P<n>[^:]*)(?::(?P<res>[^:]*))?$")
_SPLIT_READERS = ("pickapic", "oip", "hpdv2")


def _pair_models(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(winner model, loser model) from Pick-a-Pic metadata; ``"original"`` when unknown."""
    m0, m1 = metadata.get("model_0"), metadata.get("model_1")
    l0, l1 = metadata.get("label_0"), metadata.get("label_1")
    if m0 is None or m1 is None or l0 is None or l1 is None:
        return "original", "original"
    return (str(m0), str(m1)) if float(l0) >= float(l1) else (str(m1), str(m0))


def _toy_pairs(spec: str, seed: int) -> tuple[Iterator[_Pair], str, int]:
    from pref_data import toy

    match = _TOY_SPEC.match(spec)
    n, res = (match["n"], match["res"]) if match else ("", None)
    if not (n.isdigit() and (res is None or res.isdigit())):
        raise ValueError(f"{spec!r}: a toy source is toy:N or toy:N:RESOLUTION, e.g. toy:2000:32")
    if int(n) < 1:
        raise ValueError(f"{spec} has no pairs: use toy:N with N ≥ 1")
    resolution = int(res) if res is not None else toy.ToyWorldConfig().resolution
    pairs = toy.PreferencePairs(
        int(n), seed=seed, flip_rate=0.0, config=toy.ToyWorldConfig(resolution=resolution)
    )

    def items() -> Iterator[_Pair]:
        for i in range(len(pairs)):
            item = pairs[i]
            yield _Pair(
                prompt=str(item["prompt"]),
                winner=toy.from_tensor(item["winner"]),
                loser=toy.from_tensor(item["loser"]),
                id=str(item["id"]),
                winner_model="toy",
                loser_model="toy",
            )

    return items(), f"toy:{n}:{resolution}", len(pairs)


def open_pairs(
    source: Any, *, split: str = "train", seed: int = 0
) -> tuple[Iterator[_Pair], str, int | None]:
    """(pairs, name, length or None) of a source.

    Args:
        source: ``"toy:N"`` / ``"toy:N:RESOLUTION"`` (the toy world's
            :class:`~pref_data.toy.PreferencePairs`, world seed ``seed``); any other string goes
            to :func:`pref_data.open_source` (with ``split`` for Pick-a-Pic, OIP and HPDv2); or a
            :class:`~pref_data.PreferenceSource` / iterable of
            :class:`~pref_data.PreferenceRecord`.
        split: the split of the readers that have splits.
        seed: the toy world's seed.
    """
    if isinstance(source, str | os.PathLike) and os.fspath(source).startswith("toy:"):
        return _toy_pairs(os.fspath(source), seed)
    if isinstance(source, str | os.PathLike):
        import pref_data

        spec = os.fspath(source)
        has_split = spec.partition(":")[0] in _SPLIT_READERS
        opened = pref_data.open_source(spec, **({"split": split} if has_split else {}))
        name = spec
    else:
        opened, name = source, str(getattr(source, "name", type(source).__name__))
    length = None if getattr(opened, "streaming", False) else _length(opened)

    def items() -> Iterator[_Pair]:
        for record in opened:
            w_model, l_model = _pair_models(record.metadata)
            yield _Pair(record.prompt, record.winner, record.loser, record.id, w_model, l_model)

    return items(), name, length


def _length(source: Any) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


# ================================================================================ writing
def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _original_bytes(src: Any, decoded: Image.Image, image_format: str) -> bytes:
    """The source image's own encoded bytes when it has them, else ``decoded`` encoded."""
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src)
    if isinstance(src, Mapping) and src.get("bytes") is not None:
        return bytes(src["bytes"])
    if isinstance(src, str | os.PathLike) or (
        isinstance(src, Mapping) and src.get("path") is not None
    ):
        return Path(src["path"] if isinstance(src, Mapping) else src).read_bytes()
    return _encode(decoded, image_format)


_SCHEMA_COLUMNS = (
    ("caption", "string"),
    ("jpg_0", "binary"),
    ("jpg_1", "binary"),
    ("label_0", "float64"),
    ("label_1", "float64"),
    ("model_0", "string"),
    ("model_1", "string"),
    ("source_id", "string"),
    ("source_side", "string"),
)


class _ShardWriter:
    """Rows into parquet shards of ``shard_size`` rows in ``folder`` (row groups of 64)."""

    def __init__(self, folder: Path, shard_size: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.pq = pa, pq
        self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in _SCHEMA_COLUMNS])
        self.folder, self.shard_size = folder, shard_size
        self.files: list[Path] = []
        self._writer: Any = None
        self._in_shard = 0
        self.rows = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        while rows:
            if self._writer is None:
                path = self.folder / f"shard-{len(self.files):05d}.parquet"
                self._writer = self.pq.ParquetWriter(str(path), self.schema)
                self.files.append(path)
                self._in_shard = 0
            take = rows[: self.shard_size - self._in_shard]
            rows = rows[len(take) :]
            table = self.pa.Table.from_pylist(take, schema=self.schema)
            self._writer.write_table(table, row_group_size=64)
            self._in_shard += len(take)
            self.rows += len(take)
            if self._in_shard >= self.shard_size:
                self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _identity(
    style: str, editor: Mapping[str, Any], source: str, seed: int, limit: int | None, fmt: str
):
    """What makes two builds the same dataset (compared before a folder is reused)."""
    return {
        "style": style,
        "editor": dict(editor),
        "source": source,
        "seed": seed,
        "limit": limit,
        "image_format": fmt,
    }


def _existing(out: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """(manifest or None, dataset files found) of an output folder."""
    manifest_path = out / MANIFEST_NAME
    manifest = None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            manifest = {}
    found = sorted(
        str(p.relative_to(out)) for p in out.rglob("*.parquet") if _TMP_NAME not in p.parts
    )
    return manifest, found


def _prepare_output(out: Path, identity: dict[str, Any], overwrite: bool) -> bool:
    """Check ``out`` before any work; True when it already holds exactly this dataset."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; pass a folder for the dataset")
    if not out.exists():
        return False
    manifest, found = _existing(out)
    if manifest is None and not found:
        return False  # an empty folder, or one with unrelated files (a README): fine
    if manifest is not None and found:
        same = {key: manifest.get(key) for key in identity} == identity
        if same and not overwrite:
            return True
    if not overwrite:
        if manifest and found:
            what = (
                f"style {manifest.get('style')!r} from {manifest.get('source')!r} "
                f"(editor {manifest.get('editor', {}).get('editor')!r}, seed "
                f"{manifest.get('seed')}, limit {manifest.get('limit')})"
            )
        elif manifest is not None and not found:
            what = f"a {MANIFEST_NAME} without its parquet files"
        elif manifest is not None:
            what = f"an unreadable {MANIFEST_NAME}"
        else:
            what = f"parquet files without a {MANIFEST_NAME}: {', '.join(found[:3])}"
        raise OutputExistsError(
            f"{out} already holds a different dataset ({what}); choose another --out, or pass "
            "--overwrite (overwrite=True) to replace it"
        )
    shutil.rmtree(out / "data", ignore_errors=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    return False


def build_style_dataset(
    source: Any,
    out_dir: str | os.PathLike[str],
    editor: StyleEditor,
    *,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    split: str = "train",
    image_format: str = "png",
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Build a style-alignment dataset (Diff-contrast Sec. 3) in the Pick-a-Pic v2 schema.

    For pair ``i`` of ``source`` a generator seeded by ``(seed, i)`` picks the rejected image
    (the pair's winner or loser, each with probability ½) and the column (0 or 1) that gets the
    styled image; ``editor`` styles the rejected image, and the row holds ``caption``, the styled
    image (label 1.0, model ``"style:{editor.name}"``) and the rejected image (label 0.0, its
    original model name, or ``"toy"`` / ``"original"``), plus ``source_id`` and
    ``source_side`` ("winner"/"loser": where the rejected image came from). The rejected image
    keeps its original encoded bytes when the source has them; styled images are PNG (or JPEG,
    quality 95). Pairs whose picked image cannot be decoded are skipped, counted in the
    manifest and reported at the end; they never stop the build.

    Output: ``out_dir/data/train-{i:05d}-of-{n:05d}.parquet`` (the hub layout, split "train") and
    ``out_dir/style_manifest.json``, written last. Shards are built in
    ``out_dir/.tmp-style-build`` and moved in place at the end, so an interrupted build leaves
    no partial dataset. A folder that already holds this same dataset (same manifest) is
    returned as is.

    Args:
        source: see :func:`open_pairs` (``"toy:N[:RES]"``, a pref-data spec, or records).
        out_dir: the dataset folder.
        editor: a :class:`StyleEditor` (:class:`ToyStyle`, :class:`InstructPix2PixEditor`).
        limit: write at most this many pairs (default: the whole source).
        seed: seed of the picks (and of the toy world).
        batch_size: images per ``editor.edit`` call.
        split: the input split of readers that have splits.
        image_format: ``"png"`` (lossless; the default) or ``"jpeg"`` for the styled images.
        shard_size: rows per parquet file.
        overwrite: replace a different dataset already in ``out_dir``.
        progress: show a tqdm bar.
        log: where the summary goes (None: nowhere).

    Returns:
        ``out_dir``, ready for ``pref_data.open_source(f"pickapic:{out_dir}")``.

    Raises:
        OutputExistsError: ``out_dir`` holds a different dataset and ``overwrite`` is False.
        pref_data.EmptyDatasetError: the source has no pairs, or none could be decoded.
    """
    from pref_data import CorruptImageError, EmptyDatasetError, decode_image

    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be ≥ 1, got {batch_size}, {shard_size}")
    out = Path(out_dir)
    pairs, source_name, length = open_pairs(source, split=split, seed=seed)
    identity = _identity(editor.name, editor.describe(), source_name, seed, limit, image_format)
    if _prepare_output(out, identity, overwrite):
        if log is not None:
            log(f"{out} already holds this dataset ({MANIFEST_NAME} matches); nothing to do")
        return out

    tmp = out / _TMP_NAME
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = _ShardWriter(tmp, shard_size)
    skipped: list[str] = []
    skip_reasons: list[str] = []
    total = min(x for x in (limit, length) if x is not None) if (limit or length) else None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, disable=not progress, desc=f"style:{editor.name}", unit="pair")
    pending: list[tuple[_Pair, Any, Image.Image, bool, int]] = []

    def flush() -> None:
        if not pending:
            return
        images = [image for _, _, image, _, _ in pending]
        styled = editor.edit(images, [pair.prompt for pair, *_ in pending])
        if len(styled) != len(images):
            raise RuntimeError(f"{editor!r} returned {len(styled)} images for {len(images)}")
        rows = []
        for (pair, src, image, from_winner, column), edited in zip(pending, styled, strict=True):
            if edited.size != image.size:
                raise RuntimeError(
                    f"{editor!r} changed an image's size from {image.size} to {edited.size}"
                )
            original_model = pair.winner_model if from_winner else pair.loser_model
            cells = {
                column: (_encode(edited.convert("RGB"), image_format), f"style:{editor.name}"),
                1 - column: (_original_bytes(src, image, image_format), original_model),
            }
            rows.append(
                {
                    "caption": pair.prompt,
                    **{f"jpg_{c}": cells[c][0] for c in (0, 1)},
                    **{f"label_{c}": 1.0 if c == column else 0.0 for c in (0, 1)},
                    **{f"model_{c}": cells[c][1] for c in (0, 1)},
                    "source_id": pair.id,
                    "source_side": "winner" if from_winner else "loser",
                }
            )
        writer.write(rows)
        bar.update(len(rows))
        pending.clear()

    try:
        for index, pair in enumerate(pairs):
            if limit is not None and writer.rows + len(pending) >= limit:
                break
            rng = np.random.default_rng([seed, index])
            from_winner = bool(rng.random() < 0.5)
            column = int(rng.integers(2))
            src = pair.winner if from_winner else pair.loser
            try:
                image = decode_image(src)
            except CorruptImageError as exc:
                skipped.append(pair.id)
                skip_reasons.append(str(exc))
                bar.set_postfix(skipped=len(skipped))
                continue
            pending.append((pair, src, image, from_winner, column))
            if len(pending) >= batch_size:
                flush()
        flush()
    finally:
        writer.close()
        bar.close()
    if writer.rows == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = (
            f"all {len(skipped)} picked images were undecodable (first: {skip_reasons[0]})"
            if skipped
            else "it yielded no pairs"
        )
        raise EmptyDatasetError(f"{source_name}: nothing to write, {detail}")

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = []
    for k, shard in enumerate(writer.files):
        target = data / f"{SPLIT}-{k:05d}-of-{len(writer.files):05d}.parquet"
        os.replace(shard, target)
        files.append(str(target.relative_to(out)))
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = {
        "format": MANIFEST_FORMAT,
        **identity,
        "count": writer.rows,
        "skipped": len(skipped),
        "skipped_ids": skipped[:100],
        "split": SPLIT,
        "input_split": split,
        "files": files,
        "pref_contrast": __version__,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if log is not None:
        message = (
            f"wrote {writer.rows} style:{editor.name} pairs to {out} (read with pickapic:{out})"
        )
        if skipped:
            shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            message += (
                f"; skipped {len(skipped)} pairs whose picked image could not be decoded: {shown} "
                f"(all ids in {MANIFEST_NAME} up to 100)"
            )
        log(message)
    return out


# ================================================================================ command line
PROG = "pref-style-data"
USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build a style-alignment dataset (Diff-contrast Sec. 3): for each pair of "
        "the source, pick one image at random as rejected, style it with an editor, and write "
        "(styled = preferred, original = rejected, caption) in the Pick-a-Pic v2 parquet schema.",
        epilog=(
            "Examples:\n"
            f"  {PROG} --source toy:2000 --style winter --out data/winter\n"
            f"  {PROG} --source pickapic:PATH_OR_HUB_ID --style vangogh \\\n"
            "      --editor instruct-pix2pix:timbrooks/instruct-pix2pix --limit 10000 --out "
            "data/vangogh\n\n"
            f"Toy styles: {', '.join(TOY_STYLES)}. Default instructions (instruct-pix2pix): "
            + "; ".join(f"{k}: {v!r}" for k, v in DEFAULT_INSTRUCTIONS.items())
            + ".\nRead the result with data.source=pickapic:OUT (pref-train) or "
            "pref_data.open_source('pickapic:OUT')."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--source",
        required=True,
        metavar="SPEC",
        help="toy:N[:RESOLUTION] (the toy world) or a pref-data spec (pickapic:PATH_OR_ID, "
        "oip:..., hpdv2:PATH, wds:GLOB, a manifest or a folder)",
    )
    parser.add_argument("--style", required=True, help=f"style name (toy: {', '.join(TOY_STYLES)})")
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument(
        "--editor",
        default="toy",
        metavar="SPEC",
        help="toy (default: deterministic transforms) or instruct-pix2pix:HUB_ID_OR_FOLDER",
    )
    parser.add_argument(
        "--instruction", help="edit instruction ({prompt} is replaced by the caption)"
    )
    parser.add_argument("--limit", type=int, metavar="N", help="write at most N pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the picks and the editor")
    parser.add_argument("--split", default="train", help="input split (default train)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per editor call")
    parser.add_argument("--steps", type=int, default=20, help="instruct-pix2pix: steps")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="instruct-pix2pix")
    parser.add_argument("--image-guidance-scale", type=float, default=1.5, help="instruct-pix2pix")
    parser.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="instruct-pix2pix: working size of the longer side (0: each image's own size)",
    )
    parser.add_argument("--device", help="instruct-pix2pix: cuda, cpu, ...")
    parser.add_argument("--dtype", help="instruct-pix2pix: float16, bfloat16, float32")
    parser.add_argument(
        "--format",
        dest="image_format",
        choices=("png", "jpeg"),
        default="png",
        help="styled images",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per parquet file")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``pref-style-data``: run on ``argv`` (``sys.argv[1:]`` by default); return the status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        pix2pix = {}
        if args.editor.startswith("instruct-pix2pix:"):
            pix2pix = {
                "steps": args.steps,
                "guidance_scale": args.guidance_scale,
                "image_guidance_scale": args.image_guidance_scale,
                "resolution": args.resolution or None,
                "device": args.device,
                "dtype": args.dtype,
                "batch_size": args.batch_size,
            }
        editor = make_editor(
            args.style, args.editor, instruction=args.instruction, seed=args.seed, **pix2pix
        )
        build_style_dataset(
            args.source,
            args.out,
            editor,
            limit=args.limit,
            seed=args.seed,
            batch_size=args.batch_size,
            split=args.split,
            image_format=args.image_format,
            shard_size=args.shard_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, OSError, ImportError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
