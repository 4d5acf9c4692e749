"""Objectives: thin stateful wrappers that satisfy :class:`~pref_core.protocols.PreferenceObjective`.

The math lives in :mod:`pref_core.losses` and the fused per-sample errors in
:mod:`pref_core.ops`; an objective holds hyper-parameters and wires them together.
"""

from __future__ import annotations

import torch.nn.functional as F

from pref_core.batch import PreferenceBatch
from pref_core.losses.dpo import dpo_logits, dpo_scale, preference_metrics
from pref_core.pairs import NoisedPair, PairPredictions, pair_errors
from pref_core.protocols import ObjectiveOutput


class DiffusionDPO:
    """Diffusion-DPO (Wallace et al. 2024, Eq. 14), the baseline every pref method compares to.

    Args:
        beta: KL strength β. Paper default 5000 (SD 1.5 and SDXL, with the ½ convention); flow
            models are usually trained with 100–2000.
        halve_beta: use −(β/2)·(Δ_w − Δ_l) (paper, default) or −β·(Δ_w − Δ_l).
        kernel_backend: backend for the fused error kernel (see :mod:`pref_core.ops`).
    """

    def __init__(
        self, beta: float = 5000.0, *, halve_beta: bool = True, kernel_backend: str | None = None
    ) -> None:
        self.scale = dpo_scale(beta, halve_beta=halve_beta)
        self.beta = beta
        self.halve_beta = halve_beta
        self.kernel_backend = kernel_backend

    def __call__(
        self, predictions: PairPredictions, pair: NoisedPair, batch: PreferenceBatch | None = None
    ) -> ObjectiveOutput:
        errors = pair_errors(predictions, pair, backend=self.kernel_backend)
        logits = dpo_logits(
            errors.policy_w,
            errors.policy_l,
            errors.reference_w,
            errors.reference_l,
            beta=self.beta,
            halve_beta=self.halve_beta,
        )
        loss = -F.logsigmoid(logits).mean()
        metrics = preference_metrics(
            errors.policy_w.detach(),
            errors.policy_l.detach(),
            errors.reference_w,
            errors.reference_l,
            logits.detach(),
            self.scale,
        )
        return ObjectiveOutput(loss, metrics, {"logits": logits.detach()})

    def __repr__(self) -> str:
        return f"DiffusionDPO(beta={self.beta}, halve_beta={self.halve_beta})"
