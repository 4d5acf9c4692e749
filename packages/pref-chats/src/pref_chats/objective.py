"""The CHATS objective object and its training step.

:class:`CHATS` holds the method's settings — the loss's T, how the dispreferred model learns the
unconditional distribution (``p_uncond`` and the null used for it), whether a reference is
used, and the sampler defaults written into the exported model — and computes Eq. 13/14 from
the four predictions. :func:`chats_step` is the recipe's training step: one shared (t, ε) per
pair, θ⁺ on the winner with the prompt, θ⁻ on the loser with the prompt or (probability
``p_uncond``) the null, the reference on exactly those two inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from pref_chats.guidance import NULL_CHOICES, RULES, chats_guidance
from pref_chats.loss import chats_logits, chats_metrics
from pref_core.backbones.joint import run_jointly
from pref_core.batch import PreferenceBatch
from pref_core.conditioning import Conditioning
from pref_core.losses import per_sample_mse
from pref_core.pairs import NoisedPair, PairPredictions, noise_pair, pair_errors
from pref_core.protocols import ObjectiveOutput
from pref_core.recipes import StepContext

__all__ = ["CHATS", "POLICIES", "TRAINING_NULLS", "chats_step", "training_null"]

POLICIES = ("preferred", "dispreferred")
TRAINING_NULLS = ("empty", "zeros")


class CHATS:
    """CHATS (Fu et al. 2025): the loss settings and the sampler defaults of one run.

    Args:
        temperature: T of Eq. 13/14 (paper and code: 1000).
        p_uncond: probability that a pair's loser is shown to θ⁻ (and the reference) with the
            null conditioning instead of its prompt (code: 0.5), so that θ⁻ also models the
            unconditional distribution the sampler needs.
        null: the training null: ``"empty"`` (encode(""), the null the sampler and the
            pretrained base's prompt dropout use; pref's default) or ``"zeros"`` (zeroed
            embeddings with ids kept, the reference training code's).
        reference: use the frozen reference (``False``: the paper's "two models (w/o ref)"
            ablation, reference errors counted as zero).
        guidance_scale: s of the sampler saved with the model (paper: 5).
        alpha: α of the sampler (paper: 0.5).
        sampler: ``"proxy"`` (Eq. 17) or ``"three-term"`` (Eq. 16).
        sample_null: ∅ of the sampler (see :class:`~pref_chats.guidance.ProxyPromptGuidance`).
        kernel_backend: backend of the fused error kernel.
    """

    def __init__(
        self,
        temperature: float = 1000.0,
        *,
        p_uncond: float = 0.5,
        null: str = "empty",
        reference: bool = True,
        guidance_scale: float = 5.0,
        alpha: float = 0.5,
        sampler: str = "proxy",
        sample_null: str = "empty",
        kernel_backend: str | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature T must be positive, got {temperature}")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        if null not in TRAINING_NULLS:
            raise ValueError(f"unknown training null {null!r}; use one of {TRAINING_NULLS}")
        if sampler not in RULES:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {sorted(RULES)}")
        if sample_null not in NULL_CHOICES:
            raise ValueError(f"unknown sample_null {sample_null!r}; use one of {NULL_CHOICES}")
        self.temperature = float(temperature)
        self.p_uncond = float(p_uncond)
        self.null = null
        self.reference = bool(reference)
        self.guidance_scale = float(guidance_scale)
        self.alpha = float(alpha)
        self.sampler = sampler
        self.sample_null = sample_null
        self.kernel_backend = kernel_backend
        self.guidance()  # validate the sampler settings now, not at the end of training

    def guidance(self, **overrides: Any):
        """The sampler these settings describe (``overrides`` change its fields)."""
        settings = {"scale": self.guidance_scale, "alpha": self.alpha, "null": self.sample_null}
        settings.update(overrides)
        return chats_guidance(self.sampler, **settings)

    def sampler_settings(self) -> dict[str, Any]:
        return {
            "rule": self.sampler,
            "scale": self.guidance_scale,
            "alpha": self.alpha,
            "null": self.sample_null,
        }

    def __call__(
        self,
        predictions: PairPredictions,
        pair: NoisedPair,
        batch: PreferenceBatch | None = None,
    ) -> ObjectiveOutput:
        """Eq. 13/14 from θ⁺'s prediction on the winner (``policy_w``), θ⁻'s on the loser
        (``policy_l``) and the reference's on both (ignored when ``reference`` is off)."""
        if self.reference:
            errors = pair_errors(predictions, pair, backend=self.kernel_backend)
            pre_w, dis_l = errors.policy_w, errors.policy_l
            ref_w, ref_l = errors.reference_w, errors.reference_l
        else:
            pre_w = per_sample_mse(predictions.policy_w, pair.target_w)
            dis_l = per_sample_mse(predictions.policy_l, pair.target_l)
            ref_w = ref_l = None
        logits = chats_logits(pre_w, dis_l, ref_w, ref_l, temperature=self.temperature)
        loss = -torch.nn.functional.logsigmoid(logits).mean()
        metrics = chats_metrics(pre_w.detach(), dis_l.detach(), ref_w, ref_l, logits.detach())
        return ObjectiveOutput(loss, metrics, {"logits": logits.detach()})

    def __repr__(self) -> str:
        return (
            f"CHATS(temperature={self.temperature}, p_uncond={self.p_uncond}, null={self.null!r}, "
            f"reference={self.reference}, sampler={self.sampler!r}, "
            f"guidance_scale={self.guidance_scale}, alpha={self.alpha})"
        )


def training_null(ctx: StepContext, cond: Conditioning, mode: str) -> Conditioning:
    """The null conditioning for a batch whose prompts are ``cond``.

    ``"zeros"``: ``cond`` with every embedding zeroed and its ids (SDXL's size ids, masks)
    kept — the reference code's null. ``"empty"``: the encoded empty prompt, with the batch's
    float ids (SDXL's size ids) copied in, so a dropped sample differs from a kept one only in
    its text.
    """
    if mode == "zeros":
        return cond.zeros_like()
    if ctx.null_condition is None:
        raise ValueError("the training null 'empty' needs ctx.null_condition (the backbone's)")
    null = ctx.null_condition(1, "empty").to(cond.device).repeat(len(cond))
    float_ids = {
        k: cond[k]
        for k in cond.ids
        if k in null.batched and cond[k].is_floating_point() and k in cond.batched
    }
    return null.replace(**float_ids) if float_ids else null


def chats_step(ctx: StepContext, batch: PreferenceBatch) -> ObjectiveOutput:
    """One CHATS micro-batch (the recipe's training step).

    For pair i, generator i draws t and ε (shared by winner and loser, as in the reference
    code), then whether the loser's prompt is dropped (probability ``p_uncond``; the reference
    code draws once per micro-batch of one pair per GPU, i.e. per pair). θ⁺ sees (x_w, c),
    θ⁻ sees (x_l, c or ∅), the reference sees both exactly as the policies did. The two policy
    calls go through :func:`~pref_core.backbones.joint.run_jointly`: one mixed-adapter
    forward when the policies are LoRA adapters on one network.
    """
    objective = ctx.objective
    if not isinstance(objective, CHATS):
        raise TypeError(f"chats_step needs a CHATS objective, got {type(objective).__name__}")
    missing = [name for name in POLICIES if name not in ctx.policies]
    if missing:
        raise KeyError(f"CHATS trains policies {POLICIES}; missing {missing}")
    generators = list(ctx.generators)
    pair = noise_pair(
        ctx.process, batch.winner, batch.loser, generator=generators, **ctx.timestep_kwargs
    )
    cond_w = batch.cond
    cond_l = batch.cond
    if objective.p_uncond > 0:
        drop = torch.stack([torch.rand((), generator=g, device=g.device) for g in generators])
        drop = (drop < objective.p_uncond).to(batch.cond.device)
        if bool(drop.any()):
            cond_l = batch.cond.where(drop, training_null(ctx, batch.cond, objective.null))
    preferred_w, dispreferred_l = run_jointly(
        [
            (ctx.policies["preferred"], pair.x_t_w, pair.model_t, cond_w),
            (ctx.policies["dispreferred"], pair.x_t_l, pair.model_t_loser, cond_l),
        ]
    )
    if objective.reference:
        with torch.no_grad():
            x_t, model_t = pair.stacked()
            reference_w, reference_l = ctx.reference(
                x_t, model_t, Conditioning.cat([cond_w, cond_l])
            ).chunk(2)
    else:
        reference_w = reference_l = None
    predictions = PairPredictions(preferred_w, dispreferred_l, reference_w, reference_l)
    out = objective(predictions, pair, batch)
    metrics = dict(out.metrics)
    if objective.p_uncond > 0:
        metrics["uncond_fraction"] = drop.float().mean()
    return ObjectiveOutput(out.loss, metrics, out.per_sample)
