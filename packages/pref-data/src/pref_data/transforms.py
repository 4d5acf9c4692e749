"""Paired image transforms: the winner and the loser get the *same* crop and flip.

A preference pair compares two images of one prompt; cropping them differently would teach the
model about the crop, not the preference. :class:`PairTransform` therefore draws one crop offset
and one flip decision per pair, from a ``torch.Generator`` the caller seeds, so an item's
augmentation is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["CropParams", "PairTransform", "to_tensor"]


@dataclass(frozen=True)
class CropParams:
    """Where a pair was cut from.

    Attributes:
        original_size: (height, width) of the winner before any resizing — SDXL's
            ``original_size`` micro-condition.
        resized_size: (height, width) after resizing the shorter side to the resolution.
        top_left: (top, left) of the crop in the resized image — SDXL's
            ``crops_coords_top_left`` (of the unflipped crop).
        flipped: whether both images were mirrored left-right.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    top_left: tuple[int, int]
    flipped: bool


def to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image → float32 (3, H, W) in [−1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class PairTransform:
    """Resize, crop and flip a (winner, loser) pair identically; return tensors in [−1, 1].

    Steps: (1) if the loser's size differs from the winner's, the loser is resized to the
    winner's size (bilinear), so one crop box fits both; (2) both are resized so that the
    shorter side is ``resolution`` (bilinear, antialiased, as the Diffusion-DPO scripts do);
    (3) one ``resolution``² crop is cut from both — at a uniformly random offset
    (``crop="random"``) or centred (``"center"``); (4) both are mirrored left-right with
    probability ``flip_prob``, one decision for the pair.

    Randomness comes only from the ``generator`` passed in: for ``"random"`` crops two integers
    are drawn (top, then left), then one uniform number for the flip (always drawn, so the
    generator advances the same way whatever ``flip_prob`` is).

    Args:
        resolution: side of the square output.
        crop: ``"random"`` or ``"center"``.
        flip_prob: probability of a horizontal flip, in [0, 1].
    """

    def __init__(
        self,
        resolution: int,
        *,
        crop: Literal["random", "center"] = "random",
        flip_prob: float = 0.5,
    ) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if crop not in ("random", "center"):
            raise ValueError(f"crop must be 'random' or 'center', got {crop!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.resolution = int(resolution)
        self.crop = crop
        self.flip_prob = float(flip_prob)

    def config(self) -> dict[str, object]:
        """The parameters, for cache keys and logs."""
        return {"resolution": self.resolution, "crop": self.crop, "flip_prob": self.flip_prob}

    def __repr__(self) -> str:
        return f"PairTransform({self.resolution}, crop={self.crop!r}, flip_prob={self.flip_prob})"

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) after scaling (height, width) ``size`` so its shorter side fits."""
        h, w = size
        r = self.resolution
        if h <= w:
            return r, max(r, round(w * r / h))
        return max(r, round(h * r / w)), r

    def sample_params(self, size: tuple[int, int], generator: torch.Generator) -> CropParams:
        """Draw the crop and flip for an image pair whose winner is (height, width) ``size``."""
        rh, rw = self.resized_size(size)
        r = self.resolution
        if self.crop == "random":
            top = int(torch.randint(0, rh - r + 1, (1,), generator=generator))
            left = int(torch.randint(0, rw - r + 1, (1,), generator=generator))
        else:
            top, left = round((rh - r) / 2), round((rw - r) / 2)
        flipped = bool(torch.rand((), generator=generator) < self.flip_prob)
        return CropParams(tuple(size), (rh, rw), (top, left), flipped)

    def apply(self, image: Image.Image, params: CropParams) -> Tensor:
        """Apply drawn parameters to one image of the pair's (original) size."""
        rh, rw = params.resized_size
        image = image.convert("RGB")
        if image.size != (rw, rh):
            image = image.resize((rw, rh), Image.BILINEAR)
        top, left = params.top_left
        r = self.resolution
        image = image.crop((left, top, left + r, top + r))
        if params.flipped:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(image)

    def __call__(
        self, winner: Image.Image, loser: Image.Image, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """(winner, loser) PIL images → two float32 (3, R, R) tensors in [−1, 1]."""
        return self.transform_with_params(winner, loser, generator)[:2]

    def transform_with_params(
        self, winner: Image.Image, loser: Image.Image, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, CropParams]:
        """Like calling the transform, also returning the drawn :class:`CropParams`."""
        if loser.size != winner.size:
            loser = loser.convert("RGB").resize(winner.size, Image.BILINEAR)
        width, height = winner.size
        params = self.sample_params((height, width), generator)
        return self.apply(winner, params), self.apply(loser, params), params
