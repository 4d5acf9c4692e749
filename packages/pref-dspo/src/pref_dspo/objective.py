"""The DSPO objective (settings) and its training step."""

from __future__ import annotations

import torch

from pref_core.batch import PreferenceBatch
from pref_core.losses.dpo import dpo_scale, preference_metrics
from pref_core.pairs import NoisedPair, PairPredictions, noise_pair, pair_errors, predict_pair
from pref_core.protocols import ObjectiveOutput
from pref_core.recipes import StepContext
from pref_dspo.loss import PAIRWISE, VARIANTS, dspo_logits, dspo_per_sample, dspo_weight

__all__ = ["DSPO", "dspo_step"]


class DSPO:
    """Direct Score Preference Optimization (Zhu et al. 2025), Eq. 13/14 and its variants.

    Args:
        lam: λ, the KL weight of the RLHF objective (Eq. 5). It scales the implicit reward of
            Eq. 11 and, times γ, the preference term of Eq. 13. The public code's single β is
            λ with γ = 1 (SD 1.5: 0.001, searched over {0.001, 0.01, 0.05}).
        gamma: γ, the weight of the preference condition in the target score (Eq. 10); the paper
            fixes γ = 1.
        reward_scale: s in r = −(s/2)(e_θ − e_ref) (Eq. 11 without its time factor, as
            Diffusion-DPO drops it). ``None`` (default) uses λ, as the paper's Eq. 11 does; with
            λ = 0.001, σ(r_w − r_l) stays ≈ ½. Setting it to a Diffusion-DPO β (e.g. 5000)
            makes σ respond to the pair (pref's option).
        variant: ``"dspo"`` (Eq. 13, default), ``"dspo-e"`` (Eq. 45, energy-based: no pairwise
            term, the loser is not even run), ``"dspo-ref"`` (Table 6: the pretrained score in
            place of the data score) or ``"sdxl-code"`` (the public code's SDXL branch, which
            drops the ε_θ − ε term; compatibility only).
        detach_weight: stop the gradient through σ(r_w − r_l). The paper's loss is
            differentiated as written (default ``False``).
        kernel_backend: backend of the fused kernels (see :mod:`pref_core.ops`).

    Works for any target: ε (the paper), v-prediction, or the flow velocity (pref's extension,
    docs/methods/dspo.md).
    """

    def __init__(
        self,
        lam: float = 0.001,
        *,
        gamma: float = 1.0,
        reward_scale: float | None = None,
        variant: str = "dspo",
        detach_weight: bool = False,
        kernel_backend: str | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown DSPO variant {variant!r}; use one of {', '.join(VARIANTS)}")
        if lam <= 0:
            raise ValueError(f"lam (λ) must be positive, got {lam}")
        if gamma <= 0:
            raise ValueError(f"gamma (γ) must be positive, got {gamma}; the paper uses 1")
        self.lam = float(lam)
        self.gamma = float(gamma)
        self.reward_scale = float(lam if reward_scale is None else reward_scale)
        dpo_scale(self.reward_scale)  # validates: positive
        self.variant = variant
        self.detach_weight = detach_weight
        self.kernel_backend = kernel_backend

    @property
    def needs_loser(self) -> bool:
        """Whether the loss depends on the loser (all variants but DSPO-E)."""
        return self.variant in PAIRWISE

    def __call__(
        self, predictions: PairPredictions, pair: NoisedPair, batch: PreferenceBatch | None = None
    ) -> ObjectiveOutput:
        metrics: dict[str, torch.Tensor] = {}
        per_sample: dict[str, torch.Tensor] = {}
        logits = None
        if self.needs_loser:
            errors = pair_errors(predictions, pair, backend=self.kernel_backend)
            logits = dspo_logits(
                errors.policy_w,
                errors.policy_l,
                errors.reference_w,
                errors.reference_l,
                reward_scale=self.reward_scale,
            )
            if self.detach_weight:
                logits = logits.detach()
            metrics.update(
                preference_metrics(
                    errors.policy_w.detach(),
                    errors.policy_l.detach(),
                    errors.reference_w,
                    errors.reference_l,
                    logits.detach(),
                    dpo_scale(self.reward_scale),
                )
            )
            per_sample["logits"] = logits.detach()
        weight = dspo_weight(logits, lam=self.lam, gamma=self.gamma, variant=self.variant)
        losses = dspo_per_sample(
            predictions.policy_w,
            pair.target_w,
            predictions.reference_w,
            weight,
            variant=self.variant,
            kernel_backend=self.kernel_backend,
        )
        with torch.no_grad():
            w = weight.detach() if isinstance(weight, torch.Tensor) else torch.tensor(weight)
            metrics["weight"] = w.float().mean()
            if not self.needs_loser:
                err_w = ((predictions.policy_w.float() - pair.target_w.float()) ** 2).flatten(1)
                ref_w = ((predictions.reference_w.float() - pair.target_w.float()) ** 2).flatten(1)
                metrics["policy_err_w"] = err_w.mean()
                metrics["reference_err_w"] = ref_w.mean()
                metrics["delta_w"] = (err_w.mean(1) - ref_w.mean(1)).mean()
        per_sample["dspo"] = losses.detach()
        return ObjectiveOutput(losses.mean(), metrics, per_sample)

    def __repr__(self) -> str:
        return (
            f"DSPO(lam={self.lam}, gamma={self.gamma}, reward_scale={self.reward_scale}, "
            f"variant={self.variant!r}, detach_weight={self.detach_weight})"
        )


def dspo_step(ctx: StepContext, batch: PreferenceBatch) -> ObjectiveOutput:
    """One DSPO step: :func:`~pref_core.recipes.preference_step`, except that DSPO-E (no
    pairwise term) runs policy and reference on the winners only — half the forward passes.

    Pair i's timestep and noise come from ``ctx.generators[i]`` either way, so DSPO-E sees the
    same winners' x_t as the pairwise variants.
    """
    objective = ctx.objective
    if not isinstance(objective, DSPO):
        raise TypeError(f"dspo_step needs a DSPO objective, got {type(objective).__name__}")
    pair = noise_pair(
        ctx.process,
        batch.winner,
        batch.loser,
        generator=list(ctx.generators),
        **ctx.timestep_kwargs,
    )
    policy = ctx.policies["policy"]
    if objective.needs_loser:
        predictions = predict_pair(policy, ctx.reference, pair, batch.cond)
    else:
        policy_w = policy(pair.x_t_w, pair.model_t, batch.cond)
        with torch.no_grad():
            reference_w = ctx.reference(pair.x_t_w, pair.model_t, batch.cond)
        predictions = PairPredictions(policy_w, None, reference_w, None)  # type: ignore[arg-type]
    return objective(predictions, pair, batch)
