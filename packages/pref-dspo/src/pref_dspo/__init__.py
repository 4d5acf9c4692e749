"""DSPO: Direct Score Preference Optimization for diffusion model alignment (Zhu et al. 2025).

Fine-tunes the model's score toward the human-preferred score — the data score plus γ times
the gradient of a Bradley–Terry preference probability built from the Diffusion-DPO implicit
reward — with the pretraining loss's form (Eq. 13/14). See ``docs/methods/dspo.md``.

- :mod:`pref_dspo.loss`: Eq. 11, 13 and 45 on tensors (:func:`dspo_per_sample`,
  :func:`dspo_weight`, :func:`dspo_logits`).
- :mod:`pref_dspo.objective`: :class:`DSPO` (settings, variants ``dspo``, ``dspo-e``,
  ``dspo-ref``, ``sdxl-code``) and :func:`dspo_step`.
- :mod:`pref_dspo.recipes`: ``dspo-toy``, ``dspo-toy-flow``, ``dspo-e-toy``, ``dspo-ref-toy``,
  ``dspo-sd15``, ``dspo-sdxl``, ``dspo-flux`` (and ``-lora``).

Needs pref-core only (torch); the trainer (pref-apps) runs the recipes.
"""

from pref_dspo.__about__ import __version__
from pref_dspo.loss import VARIANTS, dspo_logits, dspo_per_sample, dspo_weight
from pref_dspo.objective import DSPO, dspo_step

__all__ = [
    "DSPO",
    "VARIANTS",
    "__version__",
    "dspo_logits",
    "dspo_per_sample",
    "dspo_step",
    "dspo_weight",
]
