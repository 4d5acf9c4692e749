"""CHATS: Combining Human-Aligned optimization and Test-time Sampling (Fu et al. 2025).

Two models trained jointly — a preferred model θ⁺ on the winners and a dispreferred model θ⁻
on the losers (and, with probability ``p_uncond``, on the null prompt) — against a frozen
reference (Eq. 13/14), then sampled together with the proxy-prompt rule (Eq. 17) or the exact
three-term rule (Eq. 16). See ``docs/methods/chats.md``.

- :mod:`pref_chats.loss`: Eq. 13/14 on per-sample errors.
- :mod:`pref_chats.objective`: :class:`CHATS` (settings) and :func:`chats_step` (the training
  step).
- :mod:`pref_chats.guidance`: :class:`ProxyPromptGuidance`, :class:`ThreeTermGuidance`.
- :mod:`pref_chats.pair`: :func:`load_pair`, :func:`save_pair`, :func:`save_lora_pair`.
- :mod:`pref_chats.recipes`: ``chats-toy``, ``chats-toy-flow``, ``chats-sd15``, ``chats-sdxl``,
  ``chats-flux`` (and ``-lora``).

Importing this package loads pref-core's backbones (diffusers, transformers): the samplers
are guidance strategies of pref-core's sampling loop. peft loads when a pair is saved or loaded.
"""

from pref_chats.__about__ import __version__
from pref_chats.guidance import ProxyPromptGuidance, ThreeTermGuidance, chats_guidance
from pref_chats.loss import chats_logits, chats_loss
from pref_chats.objective import CHATS, chats_step

__all__ = [
    "CHATS",
    "ProxyPromptGuidance",
    "ThreeTermGuidance",
    "__version__",
    "chats_guidance",
    "chats_logits",
    "chats_loss",
    "chats_step",
    "load_pair",
    "save_pair",
]


def __getattr__(name: str):
    if name in ("load_pair", "save_pair", "save_lora_pair"):
        from pref_chats import pair

        return getattr(pair, name)
    raise AttributeError(f"module 'pref_chats' has no attribute {name!r}")
