"""fp32 PyTorch reference for :func:`pref_core.ops.paired_errors`.

Plain differentiable torch ops, written the way the losses are usually written by hand. This is
the ground truth the fused implementations are tested against; it is not meant to be fast.
"""

from __future__ import annotations

import torch

__all__ = ["mse_per_sample_reference", "paired_errors_reference"]


def mse_per_sample_reference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean((pred - target)^2)`` over the non-batch dims, in float32. ``(B, ...)`` -> ``(B,)``."""
    acc = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    err = (pred.to(acc) - target.to(acc)) ** 2  # (B, ...)
    return err.reshape(err.shape[0], -1).mean(dim=1)  # (B,)


def paired_errors_reference(
    policy_w: torch.Tensor,
    policy_l: torch.Tensor,
    reference_w: torch.Tensor,
    reference_l: torch.Tensor,
    target_w: torch.Tensor,
    target_l: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four per-sample errors of Diffusion-DPO (Wallace et al. 2024, Eq. 14):
    ``||eps_w - eps_theta(x_w)||^2``, ``||eps_l - eps_theta(x_l)||^2`` and the same two for the
    frozen reference model, each as a mean over the non-batch dims. All ``(B,)`` float32.
    """
    return (
        mse_per_sample_reference(policy_w, target_w),
        mse_per_sample_reference(policy_l, target_l),
        mse_per_sample_reference(reference_w, target_w),
        mse_per_sample_reference(reference_l, target_l),
    )
