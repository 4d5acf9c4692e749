"""Per-sample regression errors, the quantity every diffusion preference loss is built from."""

from __future__ import annotations

from torch import Tensor

from pref_core._dtypes import compute_dtype


def per_sample_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over the non-batch dimensions of (prediction − target)², in float32, shape (B,).

    Diffusion-DPO's ``‖ε − ε_θ(x_t, t)‖²`` as implemented by its authors: a mean (not a sum)
    over C, H, W. Computing in float32 matters: in bf16 the difference of two nearly equal
    errors (policy vs reference) is mostly rounding noise.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    if prediction.ndim < 1:
        raise ValueError("per_sample_mse needs a batch dimension")
    dt = compute_dtype(prediction, target)
    diff = prediction.to(dt) - target.to(dt)
    if diff.ndim == 1:
        return diff.square()
    return diff.square().flatten(1).mean(dim=1)


REDUCTIONS = ("mean", "sum", "none")


def reduce_losses(losses: Tensor, reduction: str = "mean") -> Tensor:
    """Per-sample losses (B,) reduced by ``"mean"``, ``"sum"`` or ``"none"`` (returned as is)."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")
