"""Shared pieces of the preference losses: per-sample errors, the Diffusion-DPO objective and
the metrics every method logs. Plain functions on tensors."""

from pref_core.losses.dpo import (
    diffusion_dpo_loss,
    dpo_logits,
    dpo_scale,
    implicit_accuracy,
    preference_metrics,
)
from pref_core.losses.errors import per_sample_mse, reduce_losses

__all__ = [
    "diffusion_dpo_loss",
    "dpo_logits",
    "dpo_scale",
    "implicit_accuracy",
    "per_sample_mse",
    "preference_metrics",
    "reduce_losses",
]
