"""The Diff-contrast objective (settings) and its data preparation (the pairs' embeddings)."""

from __future__ import annotations

from typing import Any

import torch

from pref_contrast.embeddings import MODALITIES
from pref_contrast.loss import PLACEMENTS, contrast_logits, contrast_loss, contrast_weights
from pref_core.batch import PreferenceBatch
from pref_core.losses.dpo import dpo_scale, preference_metrics
from pref_core.pairs import NoisedPair, PairPredictions, pair_errors
from pref_core.protocols import ObjectiveOutput
from pref_core.recipes import DataContext

__all__ = ["EMBEDDING_KEYS", "DiffContrast", "prepare_embeddings"]

# where the trainer (or a user's own loop) puts f(y_i^w, x_i) and f(y_i^l, x_i), (M, D) each
EMBEDDING_KEYS = ("contrast_w", "contrast_l")


class DiffContrast:
    """Diff-contrast (Diffusion-RPO), Eq. 9 with the multi-modal weights of Sec. 2.1.

    Args:
        beta: β of the step-wise implicit reward. App. D: 2000 for SD 1.5 human-preference
            alignment, 5000 for the rest.
        tau: τ, the temperature of the weights ω̃_ij = exp(−cos_distance/τ). Table 1: 0.01 for
            SD 1.5, 0.5 for SDXL; small τ focuses each winner on its most similar losers, large
            τ spreads it uniformly over the mini-batch.
        embedder: what f is: ``"toy"`` (the toy world's fixed embedder) or a CLIP model,
            ``"clip:<hub id or folder>"``; frozen, run once per sample before training.
        modality: ``"both"`` (f = [image; text]/√2: the cosine is the mean of the image and text
            cosines), ``"image"`` or ``"text"``.
        placement: ``"outside"`` (Eq. 9, the paper) or ``"inside"`` (the LLM RPO form, log σ of
            ω_ij Z_ij; an option for comparison only).
        halve_beta: the ½ of Eq. 9 (default) or β already halved.
        embedding_batch_size: images per embedder call when preparing the data.
        kernel_backend: backend of the fused error kernel (see :mod:`pref_core.ops`).

    The batch must carry the embeddings in ``batch.extras["contrast_w"]`` and
    ``["contrast_l"]``: the recipes' ``prepare_data`` (:func:`prepare_embeddings`) attaches them.
    """

    def __init__(
        self,
        beta: float = 2000.0,
        tau: float = 0.01,
        *,
        embedder: str = "toy",
        modality: str = "both",
        placement: str = "outside",
        halve_beta: bool = True,
        embedding_batch_size: int = 64,
        kernel_backend: str | None = None,
    ) -> None:
        self.scale = dpo_scale(beta, halve_beta=halve_beta)  # validates β
        if tau <= 0:
            raise ValueError(f"tau (τ) must be positive, got {tau}")
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; use one of {', '.join(PLACEMENTS)}")
        if not str(embedder).strip():
            raise ValueError("embedder is empty; use 'toy' or 'clip:<hub id or folder>'")
        self.beta = float(beta)
        self.tau = float(tau)
        self.embedder = str(embedder)
        self.modality = modality
        self.placement = placement
        self.halve_beta = halve_beta
        self.embedding_batch_size = embedding_batch_size
        self.kernel_backend = kernel_backend

    def weights(self, batch: PreferenceBatch) -> torch.Tensor:
        """ω (M, M) from the batch's embeddings."""
        missing = [k for k in EMBEDDING_KEYS if k not in batch.extras]
        if missing:
            raise ValueError(
                f"Diff-contrast needs each pair's embeddings in batch.extras {list(EMBEDDING_KEYS)} "
                f"(missing {missing}); train through a contrast-* recipe, whose prepare_data "
                "attaches them, or wrap your dataset in pref_contrast.EmbeddedPairs"
            )
        return contrast_weights(batch.extras["contrast_w"], batch.extras["contrast_l"], self.tau)

    def __call__(
        self, predictions: PairPredictions, pair: NoisedPair, batch: PreferenceBatch | None = None
    ) -> ObjectiveOutput:
        if batch is None:
            raise ValueError("Diff-contrast needs the batch (its extras hold the embeddings)")
        errors = pair_errors(predictions, pair, backend=self.kernel_backend)
        logits = contrast_logits(
            errors.policy_w,
            errors.policy_l,
            errors.reference_w,
            errors.reference_l,
            beta=self.beta,
            halve_beta=self.halve_beta,
        )
        weights = self.weights(batch).to(logits.device)
        per_winner = contrast_loss(logits, weights, placement=self.placement)
        diagonal = logits.diagonal()
        metrics = preference_metrics(
            errors.policy_w.detach(),
            errors.policy_l.detach(),
            errors.reference_w,
            errors.reference_l,
            diagonal.detach(),
            self.scale,
        )
        with torch.no_grad():
            metrics["weight_diagonal"] = weights.diagonal().mean()
            # how many losers each winner effectively attends to: exp(row entropy), 1 … M
            entropy = -(weights * weights.clamp_min(1e-30).log()).sum(dim=1)
            metrics["weight_perplexity"] = entropy.exp().mean()
        return ObjectiveOutput(
            per_winner.mean(),
            metrics,
            {"logits": diagonal.detach(), "contrast": per_winner.detach()},
        )

    def __repr__(self) -> str:
        return (
            f"DiffContrast(beta={self.beta}, tau={self.tau}, embedder={self.embedder!r}, "
            f"modality={self.modality!r}, placement={self.placement!r})"
        )


def prepare_embeddings(objective: DiffContrast, dataset: Any, ctx: DataContext) -> Any:
    """The recipes' ``prepare_data``: embed every pair once with the frozen embedder (cached in
    ``ctx.cache_dir``, keyed by the data and the embedder) and attach the chosen modality's
    f(y^w, x), f(y^l, x) to each item as ``extras["contrast_w"/"contrast_l"]``."""
    from pathlib import Path

    from pref_contrast.embeddings import (
        EmbeddedPairs,
        load_or_compute_pair_embeddings,
        open_embedder,
    )

    kwargs = {} if objective.embedder == "toy" else {"device": ctx.device}
    embedder = open_embedder(objective.embedder, **kwargs)
    ctx.log(f"Diff-contrast: embedding {len(ctx.pairs)} pairs with {embedder.identity}")
    embeddings = load_or_compute_pair_embeddings(
        ctx.pairs,
        embedder,
        Path(ctx.cache_dir) / "contrast-embeddings",
        key=ctx.key,
        batch_size=objective.embedding_batch_size,
        progress=ctx.progress,
    )
    del embedder  # frozen and done: free its memory before training
    return EmbeddedPairs(dataset, embeddings, objective.modality)
