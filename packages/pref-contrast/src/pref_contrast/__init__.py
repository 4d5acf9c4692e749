"""Diff-contrast (Diffusion-RPO): diffusion preference alignment via relative text-image contrast.

Every winner of a mini-batch is contrasted with every loser (Eq. 9), each comparison weighted by
how close the two image-prompt pairs are in a CLIP embedding (Sec. 2.1); the diagonal is
Diffusion-DPO. Also the paper's style-alignment task (Sec. 3): a dataset builder that styles the
rejected image to make the preferred one. See ``docs/methods/contrast.md``.

- :mod:`pref_contrast.loss`: :func:`contrast_weights`, :func:`contrast_logits`,
  :func:`contrast_loss` (Eq. 9 on tensors).
- :mod:`pref_contrast.objective`: :class:`DiffContrast` (settings) and
  :func:`prepare_embeddings` (the recipes' data preparation).
- :mod:`pref_contrast.embeddings`: the frozen embedders f (CLIP, the toy world's), cached
  per-pair embeddings, :class:`EmbeddedPairs`.
- :mod:`pref_contrast.style`: the style-alignment dataset builder (``pref-style-data``).
- :mod:`pref_contrast.recipes`: ``contrast-toy``, ``contrast-toy-flow``, ``contrast-sd15``,
  ``contrast-sdxl``, ``contrast-flux`` (and ``-lora``).
"""

from pref_contrast.__about__ import __version__
from pref_contrast.embeddings import (
    ClipEmbedder,
    EmbeddedPairs,
    ToyEmbedder,
    compute_pair_embeddings,
    load_or_compute_pair_embeddings,
    open_embedder,
)
from pref_contrast.loss import contrast_logits, contrast_loss, contrast_weights
from pref_contrast.objective import DiffContrast, prepare_embeddings

__all__ = [
    "ClipEmbedder",
    "DiffContrast",
    "EmbeddedPairs",
    "ToyEmbedder",
    "__version__",
    "compute_pair_embeddings",
    "contrast_logits",
    "contrast_loss",
    "contrast_weights",
    "load_or_compute_pair_embeddings",
    "open_embedder",
    "prepare_embeddings",
]
