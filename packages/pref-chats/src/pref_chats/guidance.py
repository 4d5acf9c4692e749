"""The CHATS samplers as pref guidance strategies (Fu et al. 2025, Sec. 4.2).

Both plug into :func:`pref_core.backbones.sampling.sample` with
``denoisers={"preferred": θ⁺, "dispreferred": θ⁻}``:

- :class:`ProxyPromptGuidance` (Eq. 17, the paper's default): the dispreferred model sees a
  *proxy prompt* ĉ = −α·c + (1 + α)·∅, built once per batch on every embedding of the
  conditioning (token embeddings and pooled embeddings; ids such as SDXL's size ids are kept):

      ε̃ = (1 + s)·ε⁺(c) − s·ε⁻(ĉ)                              two predictions per step

- :class:`ThreeTermGuidance` (Eq. 16, the exact rule of Eq. 15):

      ε̃ = (1 + s)·ε⁺(c) + s·α·ε⁻(c) − s·(1 + α)·ε⁻(∅)          three predictions per step

s = 5 and α = 0.5 are the paper's defaults. α = 0 makes both rules two-model classifier-free
guidance, (1 + s)·ε⁺(c) − s·ε⁻(∅). For flow models ε is the predicted velocity; the rules are
unchanged.

The calls of one step go through :func:`pref_core.backbones.joint.run_jointly`: two LoRA
adapters on one network run as one mixed-adapter forward, the dispreferred model's two inputs
of the three-term rule as one batched call, and separate full networks on a GPU on two CUDA
streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from pref_core.backbones.guidance import null_for_guidance, with_guidance_value
from pref_core.backbones.joint import run_jointly
from pref_core.conditioning import Conditioning
from pref_core.ops import combine_guidance
from pref_core.protocols import Denoiser

__all__ = ["NULL_CHOICES", "ProxyPromptGuidance", "ThreeTermGuidance", "chats_guidance"]

# How ∅ is made at sampling time.
NULL_CHOICES = ("empty", "zeros", "pipeline")


def _null(backbone: Any, batch_size: int, mode: str, negative_prompts) -> Conditioning:
    """∅: negative prompts when given; else the encoded empty prompt ("empty", the CHATS
    sampler's), the zeroed embeddings ("zeros"), or the stock pipeline's null ("pipeline":
    "empty", or "zeros" for SDXL's force_zeros_for_empty_prompt)."""
    if negative_prompts is not None or mode == "pipeline":
        return null_for_guidance(backbone, batch_size, negative_prompts)
    if mode not in NULL_CHOICES:
        raise ValueError(f"unknown null {mode!r}; use one of {NULL_CHOICES}")
    return backbone.null_condition(batch_size, mode)


@dataclass(frozen=True)
class _ChatsRule:
    """What both CHATS rules share: s, α, how ∅ is made, FLUX's guidance input, the names.

    Args:
        scale: s (paper: 5).
        alpha: α (paper: 0.5); 0 is two-model CFG.
        null: how ∅ is made: ``"empty"`` (encode(""), the CHATS sampler's; default),
            ``"zeros"`` or ``"pipeline"`` (the stock pipeline's null, see
            :func:`pref_core.backbones.guidance.null_for_guidance`). Negative prompts, when
            given to ``sample``, replace ∅.
        guidance: FLUX.1-dev's distilled-guidance value for both models' inputs, or ``None``.
        preferred, dispreferred: names of the two denoisers in ``denoisers``.
    """

    scale: float = 5.0
    alpha: float = 0.5
    null: str = "empty"
    guidance: float | None = None
    preferred: str = "preferred"
    dispreferred: str = "dispreferred"

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ValueError(f"the guidance scale s must be >= 0, got {self.scale}")
        if self.null not in NULL_CHOICES:
            raise ValueError(f"unknown null {self.null!r}; use one of {NULL_CHOICES}")

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.preferred, self.dispreferred)

    def _cond_and_null(
        self, backbone: Any, prompts: Sequence[str], negative_prompts: Sequence[str] | None
    ) -> tuple[Conditioning, Conditioning]:
        cond = backbone.encode(prompts)
        null = _null(backbone, len(cond), self.null, negative_prompts)
        if self.guidance is not None:
            cond = with_guidance_value(cond, self.guidance)
            null = with_guidance_value(null, self.guidance)
        return cond, null


@dataclass(frozen=True)
class ProxyPromptGuidance(_ChatsRule):
    """CHATS Eq. 17: ε̃ = (1 + s)·ε⁺(c) − s·ε⁻(ĉ), ĉ = −α·c + (1 + α)·∅.

    Settings: see ``_ChatsRule`` (``scale``, ``alpha``, ``null``, ``guidance``, ``preferred``,
    ``dispreferred``).
    """

    def prepare(
        self, backbone: Any, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None
    ) -> tuple[Conditioning, Conditioning]:
        """(c, ĉ) for B prompts."""
        cond, null = self._cond_and_null(backbone, prompts, negative_prompts)
        proxy = Conditioning.linear_combination([cond, null], [-self.alpha, 1.0 + self.alpha])
        return cond, proxy

    def __call__(
        self,
        denoisers: Mapping[str, Denoiser],
        x_t: Tensor,
        timesteps: Tensor,
        state: tuple[Conditioning, Conditioning],
    ) -> Tensor:
        cond, proxy = state
        preferred, dispreferred = run_jointly(
            [
                (denoisers[self.preferred], x_t, timesteps, cond),
                (denoisers[self.dispreferred], x_t, timesteps, proxy),
            ]
        )
        return combine_guidance([preferred, dispreferred], [1.0 + self.scale, -self.scale])


@dataclass(frozen=True)
class ThreeTermGuidance(_ChatsRule):
    """CHATS Eq. 16: ε̃ = (1 + s)·ε⁺(c) + s·α·ε⁻(c) − s·(1 + α)·ε⁻(∅).

    The exact form of Eq. 15, p̃ ∝ p⁺(z|c)^{1+s} · p⁻(z|c)^{αs} · p⁻(z)^{−(1+α)s}; one more
    prediction per step than :class:`ProxyPromptGuidance`, whose settings it shares.
    """

    def prepare(
        self, backbone: Any, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None
    ) -> tuple[Conditioning, Conditioning]:
        """(c, ∅) for B prompts."""
        return self._cond_and_null(backbone, prompts, negative_prompts)

    def __call__(
        self,
        denoisers: Mapping[str, Denoiser],
        x_t: Tensor,
        timesteps: Tensor,
        state: tuple[Conditioning, Conditioning],
    ) -> Tensor:
        cond, null = state
        dispreferred = denoisers[self.dispreferred]
        pos_c, neg_c, neg_u = run_jointly(
            [
                (denoisers[self.preferred], x_t, timesteps, cond),
                (dispreferred, x_t, timesteps, cond),
                (dispreferred, x_t, timesteps, null),
            ]
        )
        s, a = self.scale, self.alpha
        return combine_guidance([pos_c, neg_c, neg_u], [1.0 + s, s * a, -s * (1.0 + a)])


RULES = {"proxy": ProxyPromptGuidance, "three-term": ThreeTermGuidance}


def chats_guidance(rule: str = "proxy", **settings: Any):
    """The CHATS sampler by name: ``"proxy"`` (Eq. 17) or ``"three-term"`` (Eq. 16)."""
    try:
        cls = RULES[rule]
    except KeyError:
        raise ValueError(f"unknown CHATS sampler {rule!r}; use one of {sorted(RULES)}") from None
    return cls(**settings)
