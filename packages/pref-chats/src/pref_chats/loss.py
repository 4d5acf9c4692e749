"""The CHATS objective (Fu et al. 2025, Eq. 13 for diffusion, Eq. 14 for flow) on tensors.

With per-sample errors e = ‖target − prediction‖² (mean over the non-batch dimensions; the
target is ε for diffusion models, v for v-prediction and the flow velocity for flow models —
Eq. 13 and Eq. 14 differ only there):

    z = −T · [(e_θ⁺(x_w) − e_ref(x_w)) + (e_θ⁻(x_l) − e_ref(x_l))]
    L = −log σ(z)

θ⁺ (the preferred model) is scored on the winner and θ⁻ (the dispreferred model) on the
loser, each against the frozen reference on the same noised sample; both terms enter with
the same sign, so each model is rewarded for fitting *its* half of the pair better than the
reference does. T = 1000 in the paper and the reference code, with no ½.

Without a reference (the paper's Table 4 ablation "two models (w/o ref)") the reference
errors are zero: z = −T · (e_θ⁺(x_w) + e_θ⁻(x_l)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pref_core.losses import reduce_losses

__all__ = ["chats_logits", "chats_loss", "chats_metrics"]


def chats_logits(
    preferred_w: Tensor,
    dispreferred_l: Tensor,
    reference_w: Tensor | None,
    reference_l: Tensor | None,
    *,
    temperature: float = 1000.0,
) -> Tensor:
    """z = −T·[(e⁺_w − e_ref,w) + (e⁻_l − e_ref,l)], shape (B,).

    Args:
        preferred_w: e_θ⁺(x_w), the preferred model's error on the winners, (B,).
        dispreferred_l: e_θ⁻(x_l), the dispreferred model's error on the losers, (B,).
        reference_w, reference_l: the reference's errors on the same inputs, (B,); ``None``
            for the reference-free ablation (counted as zero).
        temperature: T.
    """
    if temperature <= 0:
        raise ValueError(f"temperature T must be positive, got {temperature}")
    delta_w = preferred_w if reference_w is None else preferred_w - reference_w
    delta_l = dispreferred_l if reference_l is None else dispreferred_l - reference_l
    return -temperature * (delta_w + delta_l)


def chats_loss(
    preferred_w: Tensor,
    dispreferred_l: Tensor,
    reference_w: Tensor | None,
    reference_l: Tensor | None,
    *,
    temperature: float = 1000.0,
    reduction: str = "mean",
) -> Tensor:
    """−log σ(z) with z from :func:`chats_logits`; ``reduction`` ``mean``/``sum``/``none``."""
    losses = -F.logsigmoid(
        chats_logits(preferred_w, dispreferred_l, reference_w, reference_l, temperature=temperature)
    )
    return reduce_losses(losses, reduction)


@torch.no_grad()
def chats_metrics(
    preferred_w: Tensor,
    dispreferred_l: Tensor,
    reference_w: Tensor | None,
    reference_l: Tensor | None,
    logits: Tensor,
) -> dict[str, Tensor]:
    """Detached scalars to log.

    - ``logit``: mean z; ``positive_fraction``: share of pairs with z > 0 (both models beat
      the reference on their halves, summed).
    - ``delta_w`` / ``delta_l``: mean e_θ⁺(x_w) − e_ref(x_w) and e_θ⁻(x_l) − e_ref(x_l); both
      go negative in a healthy run.
    - ``preferred_err_w``, ``dispreferred_err_l``, ``reference_err_w``, ``reference_err_l``.
    """
    zero = torch.zeros_like(preferred_w)
    ref_w = zero if reference_w is None else reference_w
    ref_l = zero if reference_l is None else reference_l
    return {
        "logit": logits.mean(),
        "positive_fraction": ((logits > 0).float() + 0.5 * (logits == 0).float()).mean(),
        "delta_w": (preferred_w - ref_w).mean(),
        "delta_l": (dispreferred_l - ref_l).mean(),
        "preferred_err_w": preferred_w.mean(),
        "dispreferred_err_l": dispreferred_l.mean(),
        "reference_err_w": ref_w.mean(),
        "reference_err_l": ref_l.mean(),
    }
