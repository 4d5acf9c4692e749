"""DSPO's loss (Zhu et al. 2025, "DSPO: Direct Score Preference Optimization") on tensors.

Notation: ε_θ = ``policy_w`` (the policy's prediction on the noised winner), ε = ``target_w``
(the regression target: ε, v or the flow velocity), ε_ref = ``reference_w``; e_* are the
per-sample squared errors (means over the non-batch dimensions, the Diffusion-DPO convention).

- Eq. 11, the implicit reward with the time-dependent factor dropped as Diffusion-DPO does:
  r = −(s/2)·(e_θ − e_ref), so r_w − r_l is the Diffusion-DPO logit with β = s. The paper uses
  the KL weight λ for s; ``reward_scale`` overrides it.
- Eq. 13/14, per pair: ‖ε_θ − ε − λγ·(1 − σ(r_w − r_l))·(ε_θ − ε_ref)‖², the loser entering only
  through σ; the A(t) weighting is dropped (paper, after Eq. 13).
- Eq. 45 (App. C.3, DSPO-E, the energy-based classifier): ‖ε_θ − ε − γλ·(ε_θ − ε_ref)‖², no
  pairwise term, so no loser is needed.
- DSPO-ref (App. E.1, Table 6): the pretrained score in place of the data score in Eq. 10, i.e.
  ε_ref in place of ε: ‖ε_θ − ε_ref − λγ(1 − σ)(ε_θ − ε_ref)‖² = (1 − w)²‖ε_θ − ε_ref‖².
- ``sdxl-code``: the public code's SDXL branch, which drops the ε_θ − ε term: ‖w·(ε_θ − ε_ref)‖²
  with the same w as DSPO. A compatibility option only; it departs from Eq. 13.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pref_core.losses import per_sample_mse
from pref_core.losses.dpo import dpo_logits
from pref_core.ops import dspo_residual

__all__ = ["VARIANTS", "dspo_logits", "dspo_per_sample", "dspo_weight"]

VARIANTS = ("dspo", "dspo-e", "dspo-ref", "sdxl-code")
# the variants whose loss depends on the loser (through σ(r_w − r_l))
PAIRWISE = ("dspo", "dspo-ref", "sdxl-code")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown DSPO variant {variant!r}; use one of {', '.join(VARIANTS)}")


def dspo_logits(
    policy_err_w: Tensor,
    policy_err_l: Tensor,
    reference_err_w: Tensor,
    reference_err_l: Tensor,
    *,
    reward_scale: float,
) -> Tensor:
    """r_w − r_l from Eq. 11 with r = −(s/2)(e_θ − e_ref), (B,): the Diffusion-DPO logit."""
    return dpo_logits(
        policy_err_w, policy_err_l, reference_err_w, reference_err_l, beta=reward_scale
    )


def dspo_weight(logits: Tensor | None, *, lam: float, gamma: float, variant: str) -> Tensor | float:
    """The coefficient of (ε_θ − ε_ref): λγ(1 − σ(r_w − r_l)), or λγ for DSPO-E (Eq. 45)."""
    _check_variant(variant)
    if variant == "dspo-e":
        return lam * gamma
    if logits is None:
        raise ValueError(f"DSPO variant {variant!r} needs the pair's logits r_w − r_l")
    return lam * gamma * (1.0 - torch.sigmoid(logits))


def dspo_per_sample(
    policy_w: Tensor,
    target_w: Tensor,
    reference_w: Tensor,
    weight: Tensor | float,
    *,
    variant: str = "dspo",
    kernel_backend: str | None = None,
) -> Tensor:
    """Per-pair loss (B,) of the chosen variant (module docstring), float32.

    ``weight`` is :func:`dspo_weight`'s output: a (B,) tensor (it may carry gradient: the
    paper's loss differentiates through σ) or a number. ``dspo``, ``dspo-e`` and ``dspo-ref``
    run pref-core's fused :func:`~pref_core.ops.dspo_residual`.
    """
    _check_variant(variant)
    batch = policy_w.shape[0]
    if not isinstance(weight, Tensor):
        weight = torch.full((batch,), float(weight), device=policy_w.device)
    if variant == "sdxl-code":
        w = weight.reshape(-1, *([1] * (policy_w.ndim - 1)))
        # per_sample_mse computes in float32 (float64 for float64 inputs)
        return per_sample_mse(w * policy_w, w * reference_w)
    target = reference_w if variant == "dspo-ref" else target_w
    return dspo_residual(policy_w, target, reference_w, weight, backend=kernel_backend)
