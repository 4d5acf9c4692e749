"""The Diffusion-DPO objective (Wallace et al., CVPR 2024) as plain functions on tensors.

With per-sample errors e = ‖target − prediction‖² (means over the non-batch dimensions),
Δ_w = e_θ(x_w) − e_ref(x_w) and Δ_l = e_θ(x_l) − e_ref(x_l):

    L = −log σ(z),   z = −(β/2) · (Δ_w − Δ_l)        (Diffusion-DPO Eq. 14)

The ½ is the paper's convention (β = 5000 for SD 1.5/SDXL). Some code folds it into β
(diffusers' LoRA example uses β = 2500 with no ½): ``halve_beta=False`` selects that
convention, so both sets of published hyper-parameters can be used as written. The same
formula applies unchanged to ε-, v- and flow-velocity targets: only e changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pref_core.losses.errors import reduce_losses


def dpo_scale(beta: float, *, halve_beta: bool = True) -> float:
    """The factor multiplying −(Δ_w − Δ_l): β/2 (paper) or β (β already halved)."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return beta / 2 if halve_beta else beta


def dpo_logits(
    policy_w: Tensor,
    policy_l: Tensor,
    reference_w: Tensor,
    reference_l: Tensor,
    *,
    beta: float,
    halve_beta: bool = True,
) -> Tensor:
    """z = −scale · ((e_θ,w − e_ref,w) − (e_θ,l − e_ref,l)), shape (B,).

    z is the implicit reward margin r_w − r_l with r = −scale · (e_θ − e_ref); z > 0 means the
    policy already prefers the winner more than the reference does.
    """
    scale = dpo_scale(beta, halve_beta=halve_beta)
    return -scale * ((policy_w - reference_w) - (policy_l - reference_l))


def diffusion_dpo_loss(
    policy_w: Tensor,
    policy_l: Tensor,
    reference_w: Tensor,
    reference_l: Tensor,
    *,
    beta: float,
    halve_beta: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """−log σ(z) with z from :func:`dpo_logits`; ``reduction`` is ``mean``, ``sum`` or ``none``.

    Arguments are the four per-sample errors, (B,) each (see
    :func:`pref_core.ops.paired_errors`).
    """
    z = dpo_logits(policy_w, policy_l, reference_w, reference_l, beta=beta, halve_beta=halve_beta)
    return reduce_losses(-F.logsigmoid(z), reduction)


@torch.no_grad()
def implicit_accuracy(logits: Tensor) -> Tensor:
    """Fraction of pairs with z > 0, ties (z = 0) counted as ½, so that reversing every
    preference maps accuracy a to exactly 1 − a."""
    hits = (logits > 0).float() + 0.5 * (logits == 0).float()
    return hits.mean()


@torch.no_grad()
def preference_metrics(
    policy_w: Tensor,
    policy_l: Tensor,
    reference_w: Tensor,
    reference_l: Tensor,
    logits: Tensor,
    scale: float,
) -> dict[str, Tensor]:
    """The metrics every pair method logs, as detached scalars.

    - ``implicit_accuracy``: see :func:`implicit_accuracy`.
    - ``reward_margin``: mean z = r_w − r_l.
    - ``reward_w`` / ``reward_l``: mean implicit rewards r = −scale · (e_θ − e_ref).
    - ``delta_w`` / ``delta_l``: mean policy-minus-reference error on winners / losers; a
      healthy run drives delta_w below delta_l.
    - ``policy_err_w`` / ``policy_err_l`` / ``reference_err_w`` / ``reference_err_l``.
    """
    delta_w = policy_w - reference_w
    delta_l = policy_l - reference_l
    return {
        "implicit_accuracy": implicit_accuracy(logits),
        "reward_margin": logits.mean(),
        "reward_w": (-scale * delta_w).mean(),
        "reward_l": (-scale * delta_l).mean(),
        "delta_w": delta_w.mean(),
        "delta_l": delta_l.mean(),
        "policy_err_w": policy_w.mean(),
        "policy_err_l": policy_l.mean(),
        "reference_err_w": reference_w.mean(),
        "reference_err_l": reference_l.mean(),
    }
