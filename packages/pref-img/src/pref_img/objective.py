"""IMG's Iteratively Updated Preference Objective (Guo et al. 2025, Eq. 4–7; supplementary
Eq. 8, 17–19) on tensors, and the rule that updates its reference.

Notation: the aligner f_θ maps c = (h, c_I^l) to image-prompt tokens; c_w = c_I^w and
c_l = c_I^l are the winner's and the loser's tokens, f_ref is the reference aligner and
d(a, b) = ‖a − b‖².

- Eq. 4 / Eq. 8: L_base = d(c_w, f_θ(c)).
- Eq. 6 / Eq. 17: L_pref = ℓ(−z) with ℓ(x) = log(1 + e^(−x)) and

      z = 2(d(c_w, f_θ) − d(c_w, f_ref)) − (d(c_l, f_θ) − d(c_l, f_ref)) − d(f_ref, f_θ).

  With Gaussian p_θ, p_ref of equal constant variance centred on f_θ(c), f_ref(c),
  log p_θ(x)/p_ref(x) = −(d(x, f_θ) − d(x, f_ref)) up to the variance scale (set to 1, as the
  paper does with η = μ = 1), so Eq. 16's argument 2r_w − r_l − r_ref is exactly −z (the SPIN
  term's x_ref = f_ref(c) has d(x_ref, f_ref) = 0). ℓ(−z) = log(1 + e^z) = softplus(z), which
  is how it is computed (stable for any z).
- Eq. 7 / Eq. 19: L = L_base + λ L_pref (paper: λ = 1), averaged over the batch.
- Eq. 18: f_θ is copied into f_ref when d(c_w, f_θ) < d(c_w, f_ref) for k consecutive
  iterations (paper: k = 10); f_ref starts from its *own* random initialisation
  (:class:`ReferenceUpdate`, :func:`copy_into`).

**‖·‖² is a mean, not a sum (a decision: the paper does not say).** d(a, b) averages the squared
differences over the tokens and features of each sample. A sum is S·D times larger (16·2048 =
32,768 for SDXL's IP-Adapter-Plus, 4·4096 = 16,384 for FLUX's XLabs adapter): with a sum, λ
would weigh the logistic term differently on each backbone, and z would be in the thousands so
that ℓ saturates (zero gradient once z ≪ 0, a pure linear term once z ≫ 0). The mean keeps z in
the range where the logistic loss shapes the gradient and keeps λ = 1 comparable across
backbones, the way Diffusion-DPO's errors average over C, H, W. ``reduction="sum"`` gives the
literal sum for users who want it.

All distances are computed in float32 (float64 when an input is float64): preference terms are
differences of nearly equal distances, which are rounding noise in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pref_core.protocols import ObjectiveOutput

__all__ = [
    "DISTANCE_REDUCTIONS",
    "ReferenceUpdate",
    "base_loss",
    "copy_into",
    "feature_distance",
    "img_loss",
    "preference_loss",
    "preference_margin",
]

DISTANCE_REDUCTIONS = ("mean", "sum")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def feature_distance(a: Tensor, b: Tensor, reduction: str = "mean") -> Tensor:
    """d(a, b) = ‖a − b‖² per sample, shape (B,).

    Args:
        a, b: (B, ...) features of the same shape, e.g. image-prompt tokens (B, S1, D1).
        reduction: ``"mean"`` (default; see the module docstring) or ``"sum"`` over every
            non-batch element.

    Returns:
        (B,) in float32, or float64 when an input is float64.
    """
    if reduction not in DISTANCE_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {DISTANCE_REDUCTIONS}")
    if a.shape != b.shape:
        raise ValueError(f"features {tuple(a.shape)} and {tuple(b.shape)} differ in shape")
    if a.ndim < 1:
        raise ValueError("feature_distance needs a batch dimension: (B, ...)")
    dt = _compute_dtype(a, b)
    sq = (a.to(dt) - b.to(dt)).square().reshape(a.shape[0], -1)  # (B, N)
    return sq.mean(dim=1) if reduction == "mean" else sq.sum(dim=1)


def base_loss(pred: Tensor, winner: Tensor, *, reduction: str = "mean") -> Tensor:
    """Eq. 4 per sample: d(c_w, f_θ(c)), (B,).

    Args:
        pred: f_θ(c), (B, S1, D1).
        winner: c_w, (B, S1, D1).
        reduction: of the distance (:func:`feature_distance`).
    """
    return feature_distance(winner, pred, reduction)


def _check_four(pred: Tensor, ref_pred: Tensor, winner: Tensor, loser: Tensor) -> None:
    shapes = {
        "pred": tuple(pred.shape),
        "ref_pred": tuple(ref_pred.shape),
        "winner": tuple(winner.shape),
        "loser": tuple(loser.shape),
    }
    if len(set(shapes.values())) != 1:
        raise ValueError(f"pred, ref_pred, winner and loser must share one shape, got {shapes}")


def preference_margin(
    pred: Tensor, ref_pred: Tensor, winner: Tensor, loser: Tensor, *, reduction: str = "mean"
) -> Tensor:
    """The logit z of Eq. 6 per sample, (B,):

    z = 2(d(c_w, f_θ) − d(c_w, f_ref)) − (d(c_l, f_θ) − d(c_l, f_ref)) − d(f_ref, f_θ).

    Negative z is good: f_θ is closer to the winner than f_ref is, farther from the loser, and
    away from the reference's own prediction (SPIN).

    Args:
        pred: f_θ(c), (B, S1, D1).
        ref_pred: f_ref(c), (B, S1, D1).
        winner: c_w, (B, S1, D1).
        loser: c_l, (B, S1, D1).
        reduction: of every distance (:func:`feature_distance`).
    """
    _check_four(pred, ref_pred, winner, loser)
    d_w = feature_distance(winner, pred, reduction)
    d_w_ref = feature_distance(winner, ref_pred, reduction)
    d_l = feature_distance(loser, pred, reduction)
    d_l_ref = feature_distance(loser, ref_pred, reduction)
    d_ref = feature_distance(ref_pred, pred, reduction)
    return 2.0 * (d_w - d_w_ref) - (d_l - d_l_ref) - d_ref


def preference_loss(
    pred: Tensor, ref_pred: Tensor, winner: Tensor, loser: Tensor, *, reduction: str = "mean"
) -> Tensor:
    """Eq. 6 per sample: ℓ(−z) = log(1 + e^z) = softplus(z), (B,). Shapes as in
    :func:`preference_margin`."""
    return F.softplus(preference_margin(pred, ref_pred, winner, loser, reduction=reduction))


def img_loss(
    pred: Tensor,
    ref_pred: Tensor,
    winner: Tensor,
    loser: Tensor,
    *,
    lam: float = 1.0,
    reduction: str = "mean",
) -> ObjectiveOutput:
    """Eq. 7: L = mean over the batch of [L_base + λ L_pref].

    Args:
        pred: f_θ(c), (B, S1, D1), carrying the gradient.
        ref_pred: f_ref(c), (B, S1, D1); must not require grad (compute it under
            ``torch.no_grad()``): the reference is a target, never trained through this loss.
        winner: c_w, (B, S1, D1).
        loser: c_l, (B, S1, D1).
        lam: λ (paper: 1; its ablation found λ > 1 unstable).
        reduction: of every distance over tokens and features, ``"mean"`` or ``"sum"``; the
            batch is always averaged.

    Returns:
        :class:`~pref_core.protocols.ObjectiveOutput` with ``loss`` and detached ``metrics``:
        ``loss``, ``base``, ``pref`` (batch means), ``margin`` (mean z), ``dist_winner``
        (d(c_w, f_θ)), ``dist_winner_ref`` (d(c_w, f_ref)), ``dist_loser`` (d(c_l, f_θ)),
        ``closer_than_ref`` (share of the batch with d(c_w, f_θ) < d(c_w, f_ref): Eq. 18's
        test per sample); ``per_sample``: ``base``, ``pref``, ``margin`` (B,), detached. Feed
        ``dist_winner`` and ``dist_winner_ref`` to :meth:`ReferenceUpdate.observe`.
    """
    if ref_pred.requires_grad:
        raise ValueError(
            "ref_pred requires grad: the reference f_ref is a fixed target in Eq. 6; compute it "
            "under torch.no_grad() (or pass ref_pred.detach()) and keep its parameters frozen"
        )
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam (λ of Eq. 7) must be a finite number ≥ 0, got {lam}")
    _check_four(pred, ref_pred, winner, loser)
    d_w = feature_distance(winner, pred, reduction)
    d_w_ref = feature_distance(winner, ref_pred, reduction)
    d_l = feature_distance(loser, pred, reduction)
    d_l_ref = feature_distance(loser, ref_pred, reduction)
    d_ref = feature_distance(ref_pred, pred, reduction)
    z = 2.0 * (d_w - d_w_ref) - (d_l - d_l_ref) - d_ref  # (B,) Eq. 6's logit
    base = d_w  # Eq. 4
    pref = F.softplus(z)  # ℓ(−z), Eq. 6
    loss = (base + lam * pref).mean()  # Eq. 7
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "base": base.mean().detach(),
            "pref": pref.mean().detach(),
            "margin": z.mean().detach(),
            "dist_winner": d_w.mean().detach(),
            "dist_winner_ref": d_w_ref.mean().detach(),
            "dist_loser": d_l.mean().detach(),
            "closer_than_ref": (d_w < d_w_ref).to(d_w.dtype).mean(),
        }
    per_sample = {"base": base.detach(), "pref": pref.detach(), "margin": z.detach()}
    return ObjectiveOutput(loss=loss, metrics=metrics, per_sample=per_sample)


def _scalar(value: float | Tensor, name: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be one number (the batch-mean distance), got a tensor of shape "
                f"{tuple(value.shape)}; pass its mean over the global batch"
            )
        return float(value.detach().item())
    return float(value)


class ReferenceUpdate:
    """When to copy f_θ into f_ref (supplementary Eq. 18, k = 10).

    f_ref starts from its own random initialisation (not a copy of f_θ); f_θ is copied into
    f_ref when f_θ(c) is closer to c_w than f_ref(c) for k consecutive iterations.

    Call :meth:`observe` once per optimiser step with that step's *batch-mean* distances
    d(c_w, f_θ) and d(c_w, f_ref) (``img_loss(...).metrics["dist_winner"]`` and
    ``["dist_winner_ref"]``), averaged over the whole global batch: under data parallelism or
    gradient accumulation, all-reduce / average them first so that every rank sees the same
    numbers and takes the same decision. "Closer" is the strict ``<`` of Eq. 18; a NaN is not
    closer.

    Args:
        k: consecutive closer steps before a copy (paper: 10).

    Attributes:
        streak: closer steps in a row so far (reset by a non-closer step and by a copy).
        updates: copies so far.
    """

    def __init__(self, k: int = 10) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = k
        self.streak = 0
        self.updates = 0

    def observe(self, dist_policy: float | Tensor, dist_reference: float | Tensor) -> bool:
        """Record one step; True when f_θ should be copied into f_ref now.

        Args:
            dist_policy: batch-mean d(c_w, f_θ(c)) of this step.
            dist_reference: batch-mean d(c_w, f_ref(c)) of this step.
        """
        closer = _scalar(dist_policy, "dist_policy") < _scalar(dist_reference, "dist_reference")
        if not closer:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < self.k:
            return False
        self.streak = 0
        self.updates += 1
        return True

    def state_dict(self) -> dict[str, int]:
        """``{"k", "streak", "updates"}``, for an exact resume."""
        return {"k": self.k, "streak": self.streak, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; ``k`` must equal this object's."""
        missing = [n for n in ("k", "streak", "updates") if n not in state]
        if missing:
            raise ValueError(f"ReferenceUpdate state lacks {missing}; got keys {sorted(state)}")
        if int(state["k"]) != self.k:
            raise ValueError(
                f"the saved reference-update rule used k={state['k']}, this one k={self.k}; "
                "resume with the same k (or start a new run)"
            )
        streak, updates = int(state["streak"]), int(state["updates"])
        if not 0 <= streak < self.k or updates < 0:
            raise ValueError(f"invalid ReferenceUpdate state: streak={streak}, updates={updates}")
        self.streak, self.updates = streak, updates

    def __repr__(self) -> str:
        return f"ReferenceUpdate(k={self.k}, streak={self.streak}, updates={self.updates})"


@torch.no_grad()
def copy_into(reference: nn.Module, policy: nn.Module) -> None:
    """Load ``policy``'s weights into ``reference`` in place (no autograd, no aliasing).

    The reference keeps its own device, dtype and ``requires_grad`` flags; the two modules must
    have the same parameter names and shapes (``load_state_dict`` strict).
    """
    if reference is policy:
        raise ValueError("reference and policy are the same module; f_ref must be a separate copy")
    reference.load_state_dict(policy.state_dict(), strict=True)
