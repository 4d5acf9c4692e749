"""Diff-contrast's loss (Diffusion-RPO) on tensors: Eq. 9 and the weights of Sec. 2.1.

M pairs (y_i^w, y_i^l, x_i) of a mini-batch; e_* are per-sample squared errors (means over the
non-batch dimensions, the Diffusion-DPO convention), each computed once per sample: 2M denoiser
evaluations for the policy and 2M for the reference, not M².

- Δ_w,i = e_θ(y_i^w) − e_ref(y_i^w), Δ_l,j = e_θ(y_j^l) − e_ref(y_j^l).
- Z_ij = −(β/2)(Δ_w,i − Δ_l,j): winner i against loser j; the diagonal is Diffusion-DPO's logit.
- ω̃_ij = exp(−d(f_i^w, f_j^l)/τ) with d the cosine distance 1 − cos; ω_ij = ω̃_ij / Σ_j' ω̃_ij'
  (row-normalised, so Σ_j ω_ij = 1).
- Eq. 9: L = −(1/M) Σ_i Σ_j ω_ij log σ(Z_ij), the weights *outside* the log-sigmoid as the
  paper specifies (``placement="outside"``). The LLM ancestor RPO (Eq. 15 of the appendix)
  puts them inside: −(1/M²) Σ_ij log σ(ω_ij Z_ij) (``placement="inside"``, an option only).

With M = 1, ω = [[1]] and both forms are Diffusion-DPO exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pref_core.losses.dpo import dpo_scale

__all__ = ["PLACEMENTS", "contrast_logits", "contrast_loss", "contrast_weights"]

PLACEMENTS = ("outside", "inside")


def contrast_weights(features_w: Tensor, features_l: Tensor, tau: float) -> Tensor:
    """ω (M, M) float32: row i is the softmax over losers j of −d(f_i^w, f_j^l)/τ, which equals
    exp(−d/τ) row-normalised (Sec. 2.1) but cannot underflow to 0/0 at small τ (at τ = 0.01 a
    distance of 1 gives exp(−100)).

    ``features_w``/``features_l``: (M, D) embeddings f(y^w_i, x_i) and f(y^l_j, x_j); they need
    not be normalised. No gradient flows into them (the embedder is frozen).
    """
    if tau <= 0:
        raise ValueError(f"tau (τ) must be positive, got {tau}")
    if features_w.ndim != 2 or features_w.shape != features_l.shape:
        raise ValueError(
            f"winner {tuple(features_w.shape)} and loser {tuple(features_l.shape)} embeddings "
            "must both be (M, D), one row per pair of the mini-batch"
        )
    with torch.no_grad():
        fw = F.normalize(features_w.detach().float(), dim=1)
        fl = F.normalize(features_l.detach().float(), dim=1)
        distance = 1.0 - fw @ fl.T  # (M, M), in [0, 2]
        return torch.softmax(-distance / tau, dim=1)


def contrast_logits(
    policy_err_w: Tensor,
    policy_err_l: Tensor,
    reference_err_w: Tensor,
    reference_err_l: Tensor,
    *,
    beta: float,
    halve_beta: bool = True,
) -> Tensor:
    """Z (M, M) with Z_ij = −scale·(Δ_w,i − Δ_l,j), scale = β/2 (paper) or β; diag(Z) is the
    Diffusion-DPO logit of each pair."""
    scale = dpo_scale(beta, halve_beta=halve_beta)
    delta_w = policy_err_w - reference_err_w
    delta_l = policy_err_l - reference_err_l
    return -scale * (delta_w[:, None] - delta_l[None, :])


def contrast_loss(logits: Tensor, weights: Tensor, *, placement: str = "outside") -> Tensor:
    """Eq. 9 (``outside``): −(1/M) Σ_ij ω_ij log σ(Z_ij); RPO's ``inside``: −mean_ij log σ(ω_ij Z_ij).

    Returns the per-winner losses (M,) — row sums (outside) or row means (inside) — whose mean
    is the loss.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; use one of {', '.join(PLACEMENTS)}")
    if logits.shape != weights.shape or logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and weights {tuple(weights.shape)} must be (M, M)"
        )
    weights = weights.to(logits.dtype)
    if placement == "outside":
        return -(weights * F.logsigmoid(logits)).sum(dim=1)
    return -F.logsigmoid(weights * logits).mean(dim=1)
