"""The precision rule shared by every numeric routine in pref-core."""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when any input is float64.

    Low-precision data (bf16/fp16) is accumulated in float32: differences of nearly equal
    errors, which preference losses are made of, are rounding noise in bf16. float64 is kept so
    that reference tests and ``torch.autograd.gradcheck`` can run at double precision.
    """
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32
