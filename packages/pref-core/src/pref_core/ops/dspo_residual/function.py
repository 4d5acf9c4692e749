"""Public entry point of the DSPO residual op."""

from __future__ import annotations

import torch

from pref_core.ops._backend import resolve_backend
from pref_core.ops._utils import check_same_shape, per_sample_coefficient
from pref_core.ops.dspo_residual.fallback import DSPOResidualFunction

__all__ = ["dspo_residual"]


def dspo_residual(
    pred: torch.Tensor,
    target: torch.Tensor,
    reference: torch.Tensor,
    weight: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """DSPO per-sample residual loss (Zhu et al. 2025, "DSPO: Direct Score Preference
    Optimization", Eq. 13), fused into one pass.

    ``out[b] = mean(((pred - target) - weight[b] * (pred - reference))^2)`` over the non-batch
    dims, computed in float32 (float64 for float64 inputs), shape ``(B,)`` float32.

    Args:
        pred: policy prediction ``eps_theta``, ``(B, ...)``.
        target: regression target (``eps``, or the v / flow-velocity target), ``(B, ...)``.
        reference: frozen reference prediction ``eps_ref``, ``(B, ...)``.
        weight: ``(B,)`` per-sample weight ``lambda * gamma * (1 - sigmoid(r_w - r_l))``; the
            caller folds ``lambda * gamma`` and the sigmoid in.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or ``None`` (``$PREF_CORE_KERNELS``).

    Backward, with ``r = (pred - target) - w * (pred - reference)``, upstream gradient ``g`` and
    ``D`` elements per sample: ``grad_pred = g * 2/D * (1 - w) * r``,
    ``grad_weight = -g * 2/D * sum(r * (pred - reference))`` (deterministic per-sample
    reduction), and ``grad_target = -g * 2/D * r`` / ``grad_reference = g * 2/D * w * r`` only
    when those tensors require grad. Only the inputs are saved.
    """
    batch, _ = check_same_shape(
        "dspo_residual", {"pred": pred, "target": target, "reference": reference}
    )
    weight = per_sample_coefficient(
        "dspo_residual", "weight", weight, batch, pred, allow_scalar=False
    )
    inputs = (pred, target, reference, weight)
    if resolve_backend(backend, *inputs) == "triton":
        from pref_core.ops.dspo_residual.triton_kernel import DSPOResidualTriton

        return DSPOResidualTriton.apply(*inputs)
    return DSPOResidualFunction.apply(*inputs)
