"""Input validation and launch geometry shared by the fused ops.

Plain torch; importing this module never imports triton.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

from pref_core._dtypes import compute_dtype

__all__ = [
    "as_rows",
    "check_no_grad",
    "check_same_shape",
    "compute_dtype",
    "elementwise_geometry",
    "per_sample_coefficient",
    "per_sample_sum",
    "per_sample_view",
    "reduction_geometry",
]

# Elements one Triton program touches per tile: 1024 fp32 values per operand is 8 per thread
# with 4 warps, enough for 128-bit vector loads without spilling on the 6-operand kernels.
MAX_BLOCK = 1024
# Reductions split each sample into segments so that small batches still fill the GPU. The
# target is a constant (not derived from the SM count) so the summation order, and with it the
# exact result, depends only on the shape.
TARGET_PROGRAMS = 1024


def check_same_shape(op: str, tensors: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """Check that the named tensors are floating point, share one shape ``(B, ...)`` and one
    device, and are not empty. Returns ``(B, D)`` with ``D`` the number of elements per sample.
    """
    items = list(tensors.items())
    first_name, first = items[0]
    names = ", ".join(tensors)
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
        if t.ndim < 1:
            raise ValueError(f"{op}: {name} must have a batch dimension, got a 0-d tensor")
        if t.shape != first.shape:
            raise ValueError(
                f"{op}: {name} has shape {tuple(t.shape)} but {first_name} has shape "
                f"{tuple(first.shape)}; {names} must all have the same shape (B, ...)"
            )
        if t.device != first.device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but {first_name} is on {first.device}; "
                f"{names} must be on the same device"
            )
    if first.numel() == 0:
        raise ValueError(
            f"{op}: got empty tensors of shape {tuple(first.shape)}; need a batch of at least "
            "one sample with at least one element each"
        )
    return first.shape[0], math.prod(first.shape[1:])


def check_no_grad(op: str, tensors: Mapping[str, torch.Tensor | None], why: str) -> None:
    """Raise ``ValueError`` if any of the named tensors requires grad."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise ValueError(f"{op}: {name} requires grad, but {why}")


def per_sample_coefficient(
    op: str,
    name: str,
    value: torch.Tensor | float,
    batch: int,
    like: torch.Tensor,
    *,
    allow_scalar: bool,
    scalar_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Validate a per-sample coefficient: a floating tensor of shape ``(B,)`` on ``like``'s
    device (or, with ``allow_scalar``, a Python number / 0-d tensor broadcast to ``(B,)``).

    Returns it unchanged (shape ``(B,)``) or broadcast to ``(B,)``; the caller casts. Python
    numbers become ``scalar_dtype`` tensors.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not allow_scalar:
            raise TypeError(f"{op}: {name} must be a tensor of shape ({batch},)")
        return torch.full((batch,), float(value), dtype=scalar_dtype, device=like.device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {value.dtype}")
    if value.device != like.device:
        raise ValueError(
            f"{op}: {name} is on {value.device} but the inputs are on {like.device}; "
            f"move it with .to({str(like.device)!r})"
        )
    if value.ndim == 0 and allow_scalar:
        return value.expand(batch)
    if value.shape != (batch,):
        expected = f"({batch},)" + (" or a scalar" if allow_scalar else "")
        raise ValueError(
            f"{op}: {name} must have shape {expected} (one value per sample), "
            f"got {tuple(value.shape)}"
        )
    return value


def per_sample_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a ``(B,)`` vector so it broadcasts against a ``(B, ...)`` tensor of ``ndim`` dims."""
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


def per_sample_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first. ``(B, ...)`` -> ``(B,)``."""
    # sum(dim=()) would reduce over *all* dims, so a (B,) input is already per-sample.
    if x.ndim == 1:
        return x
    return x.sum(dim=tuple(range(1, x.ndim)))


def as_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """View ``x`` (B, ...) as B rows of D contiguous elements; returns ``(tensor, row_stride)``.

    Only the non-batch dims need to be contiguous: batch slices (``x[::2]``, ``chunk``) and
    broadcast batches (stride 0) are read in place. Anything else is copied to contiguous memory.
    """
    expected = 1
    for size, stride in zip(reversed(x.shape[1:]), reversed(x.stride()[1:])):
        if size != 1 and stride != expected:
            x = x.contiguous()
            return x, math.prod(x.shape[1:])
        expected *= size
    return x, (x.stride(0) if x.shape[0] > 1 else expected)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_size(d: int) -> int:
    """Tile width: the next power of two of ``d``, clamped to [16, MAX_BLOCK]."""
    return min(MAX_BLOCK, max(16, _next_power_of_2(d)))


def elementwise_geometry(batch: int, d: int) -> tuple[int, int]:
    """``(BLOCK, tiles_per_sample)`` for a grid of ``batch * tiles_per_sample`` programs."""
    block = block_size(d)
    return block, -(-d // block)


def reduction_geometry(batch: int, d: int) -> tuple[int, int, int]:
    """``(BLOCK, segments, tiles_per_segment)`` for per-sample reductions.

    Each of the ``batch * segments`` programs sums ``tiles_per_segment`` tiles of one sample into
    one partial; the ``(B, segments)`` partials are then summed by torch. No atomics, so the result
    is bitwise reproducible for a given shape.
    """
    block = block_size(d)
    tiles = -(-d // block)
    wanted = max(1, -(-TARGET_PROGRAMS // batch))
    tiles_per_segment = -(-tiles // min(tiles, wanted))
    segments = -(-tiles // tiles_per_segment)
    return block, segments, tiles_per_segment
