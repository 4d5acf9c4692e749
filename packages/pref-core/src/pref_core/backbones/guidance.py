"""Guidance strategies: how a sampler turns denoiser calls into one guided prediction.

A strategy has two halves, matching the two things that vary between guidance rules:

- :meth:`GuidanceStrategy.prepare` encodes what it needs once per batch of prompts (the
  prompt's conditioning, a null or negative one, a proxy prompt, ...) with
  ``backbone.encode`` / ``backbone.null_condition`` and returns it as an opaque *state*;
- :meth:`GuidanceStrategy.__call__` runs at every sampling step: it gets the denoisers by name,
  the current latents ``x_t`` (B, C, H, W), the timesteps (B,) and that state, and returns one
  prediction shaped like ``x_t``.

The loop (:func:`pref_core.backbones.sampling.sample`) knows nothing else, so a rule that needs
two models (CHATS: a *preferred* and a *dispreferred* denoiser) is a new strategy plus a
``denoisers={"preferred": ..., "dispreferred": ...}`` argument — the loop is unchanged (see
``docs/sampling.md`` for that example written out).

Every weighted combination goes through the fused op :func:`pref_core.ops.combine_guidance`
(float32 accumulation, one pass).

Scale convention: pref writes guidance as in CHATS Eq. 8 and Ho & Salimans (2022),
``ε̃ = (1 + s)·ε(c) − s·ε(∅)``, so ``s = 0`` is exactly the conditional prediction. diffusers'
``guidance_scale`` w (Imagen's convention, ``ε(∅) + w·(ε(c) − ε(∅))``) is ``w = 1 + s``; use
:meth:`ClassifierFreeGuidance.from_diffusers_scale` to pass a diffusers value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from pref_core.conditioning import Conditioning
from pref_core.ops import combine_guidance
from pref_core.protocols import Denoiser

if TYPE_CHECKING:
    from pref_core.backbones.base import Backbone

__all__ = [
    "ClassifierFreeGuidance",
    "DistilledGuidance",
    "GuidanceStrategy",
    "NoGuidance",
    "TrueCFG",
    "null_for_guidance",
    "with_guidance_value",
]


@runtime_checkable
class GuidanceStrategy(Protocol):
    """A guidance rule, pluggable into :func:`~pref_core.backbones.sampling.sample`.

    Strategies may also define ``requires``: a tuple of the denoiser names they call (e.g.
    ``("policy",)`` or ``("preferred", "dispreferred")``); the sampler then checks the
    ``denoisers`` mapping up front and takes dtype and device from the first one named.
    """

    def prepare(
        self,
        backbone: Backbone,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
    ) -> Any:
        """Encode what the rule needs for a batch of B prompts (called once per batch)."""
        ...

    def __call__(
        self,
        denoisers: Mapping[str, Denoiser],
        x_t: Tensor,
        timesteps: Tensor,
        state: Any,
    ) -> Tensor:
        """One guided prediction (B, C, H, W) from x_t (B, C, H, W) and timesteps (B,)."""
        ...


# ---------------------------------------------------------------------------------- helpers
def null_for_guidance(
    backbone: Backbone, batch_size: int, negative_prompts: Sequence[str] | None = None
) -> Conditioning:
    """The conditioning that stands for ∅ in guidance: negative prompts when given, else the
    null condition the model's stock pipeline samples with.

    That null is the encoded empty prompt (``null_condition(B, "empty")``), except for encoders
    that set ``force_zeros_for_empty_prompt`` (SDXL base and refiner): their pipelines use
    all-zero prompt embeddings with the size ids kept (``StableDiffusionXLPipeline``,
    ``negative_prompt is None and force_zeros_for_empty_prompt``), which is
    ``null_condition(B, "zeros")``. An encoder's ``sampling_null_mode`` attribute, when it has
    one, says which of the two it wants.
    """
    if negative_prompts is not None:
        negative_prompts = list(negative_prompts)
        if len(negative_prompts) != batch_size:
            raise ValueError(
                f"got {len(negative_prompts)} negative prompts for {batch_size} prompts; pass "
                "one negative prompt per prompt (or None for the empty prompt)"
            )
        return backbone.encode(negative_prompts)
    mode = getattr(backbone.encoder, "sampling_null_mode", None)
    if mode is None:
        force_zeros = getattr(backbone.encoder, "force_zeros_for_empty_prompt", False)
        mode = "zeros" if force_zeros else "empty"
    return backbone.null_condition(batch_size, mode)


def with_guidance_value(cond: Conditioning, value: float) -> Conditioning:
    """``cond`` with its distilled-guidance id (the ``guidance`` (B,) entry) set to ``value``.

    FLUX.1-dev was distilled from CFG: the guidance strength is an *input* (an embedded id),
    not a combination of two predictions (``FluxPipeline``: ``guidance = full([B], scale)``).
    """
    if "guidance" not in cond.batched:
        raise KeyError(
            "this backbone's conditioning has no 'guidance' entry (entries: "
            f"{sorted(cond.keys())}), so it has no distilled guidance; use "
            "ClassifierFreeGuidance (SD 1.5/SDXL) or NoGuidance (FLUX.1-schnell) instead"
        )
    current = cond["guidance"]  # (B,)
    return cond.replace(guidance=torch.full_like(current, float(value)))


def _cfg_prediction(
    denoiser: Denoiser, x_t: Tensor, timesteps: Tensor, stacked_cond: Conditioning, scale: float
) -> Tensor:
    """(1 + s)·ε(c) − s·ε(∅) from one batched call on [∅; c] (diffusers' batch order)."""
    x_in = torch.cat([x_t, x_t])  # (2B, C, H, W)
    t_in = torch.cat([timesteps, timesteps])  # (2B,)
    pred_uncond, pred_cond = denoiser(x_in, t_in, stacked_cond).chunk(2)  # 2 × (B, C, H, W)
    return combine_guidance([pred_cond, pred_uncond], [1.0 + scale, -scale])


# ---------------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class NoGuidance:
    """The plain conditional prediction ε(c): one call, nothing combined.

    Args:
        denoiser: name of the denoiser to call in the ``denoisers`` mapping.
    """

    denoiser: str = "policy"

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.denoiser,)

    def prepare(
        self,
        backbone: Backbone,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
    ) -> Conditioning:
        return backbone.encode(prompts)

    def __call__(
        self,
        denoisers: Mapping[str, Denoiser],
        x_t: Tensor,
        timesteps: Tensor,
        state: Conditioning,
    ) -> Tensor:
        return denoisers[self.denoiser](x_t, timesteps, state)


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """Classifier-free guidance, ε̃ = (1 + s)·ε(c) − s·ε(∅) (CHATS Eq. 8; Ho & Salimans 2022).

    ``s = 0`` gives exactly the conditional prediction; diffusers' ``guidance_scale`` w is
    ``1 + s`` (:meth:`from_diffusers_scale`). The two branches run as one batched call on
    [∅; c], as diffusers' pipelines do. ∅ is the negative prompt when one is given, else the
    pipeline's null (see :func:`null_for_guidance`; SDXL's ``force_zeros_for_empty_prompt`` is
    respected).

    On a guidance-distilled FLUX model, ``guidance`` sets the distilled-guidance value of both
    branches: that is true CFG (:func:`TrueCFG`).

    Args:
        scale: s.
        denoiser: name of the denoiser to call.
        guidance: distilled-guidance value written into both branches, or ``None``.
    """

    scale: float
    denoiser: str = "policy"
    guidance: float | None = None

    @classmethod
    def from_diffusers_scale(cls, guidance_scale: float, denoiser: str = "policy"):
        """From diffusers' ``guidance_scale`` w (7.5 for SD 1.5): s = w − 1."""
        return cls(float(guidance_scale) - 1.0, denoiser)

    @property
    def diffusers_scale(self) -> float:
        """The equivalent diffusers ``guidance_scale`` w = 1 + s."""
        return 1.0 + self.scale

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.denoiser,)

    def prepare(
        self,
        backbone: Backbone,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
    ) -> Conditioning:
        """[∅; c] stacked along the batch: (2B, ...) conditioning."""
        cond = backbone.encode(prompts)
        null = null_for_guidance(backbone, len(cond), negative_prompts)
        if self.guidance is not None:
            null = with_guidance_value(null, self.guidance)
            cond = with_guidance_value(cond, self.guidance)
        return Conditioning.cat([null, cond])

    def __call__(
        self,
        denoisers: Mapping[str, Denoiser],
        x_t: Tensor,
        timesteps: Tensor,
        state: Conditioning,
    ) -> Tensor:
        return _cfg_prediction(denoisers[self.denoiser], x_t, timesteps, state, self.scale)


@dataclass(frozen=True)
class DistilledGuidance:
    """FLUX.1-dev's distilled guidance: one conditional call with the guidance id set.

    The model was distilled to take the CFG strength as an input (``FluxPipeline``'s
    ``guidance_scale``, default 3.5, passed as the transformer's ``guidance``); nothing is
    combined.

    Args:
        guidance: the value written into the conditioning's ``guidance`` entry.
        denoiser: name of the denoiser to call.
    """

    guidance: float = 3.5
    denoiser: str = "policy"

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.denoiser,)

    def prepare(
        self,
        backbone: Backbone,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
    ) -> Conditioning:
        if negative_prompts is not None:
            raise ValueError(
                "DistilledGuidance makes a single conditional call and cannot use negative "
                "prompts; use TrueCFG(scale, guidance=...) to guide away from them"
            )
        return with_guidance_value(backbone.encode(prompts), self.guidance)

    def __call__(
        self,
        denoisers: Mapping[str, Denoiser],
        x_t: Tensor,
        timesteps: Tensor,
        state: Conditioning,
    ) -> Tensor:
        return denoisers[self.denoiser](x_t, timesteps, state)


def TrueCFG(
    scale: float, guidance: float = 1.0, denoiser: str = "policy"
) -> ClassifierFreeGuidance:
    """True CFG on a guidance-distilled FLUX model: ε̃ = (1 + s)·v(c; g) − s·v(c⁻; g).

    Both branches go through the distilled model with its guidance input set to ``guidance``
    (``FluxPipeline`` with ``true_cfg_scale`` w = 1 + s and a ``negative_prompt``). c⁻ is the
    negative prompt, or the null of :func:`null_for_guidance` (the encoded empty prompt for
    FLUX) when none is given. The branches run as one batched call on [c⁻; c] (diffusers makes
    two calls; the result is the same). ``TrueCFG.from_diffusers_scale(w, guidance)`` takes
    diffusers' ``true_cfg_scale``.
    """
    return ClassifierFreeGuidance(float(scale), denoiser=denoiser, guidance=float(guidance))


def _true_cfg_from_diffusers_scale(
    true_cfg_scale: float, guidance: float = 1.0, denoiser: str = "policy"
) -> ClassifierFreeGuidance:
    """From ``FluxPipeline``'s ``true_cfg_scale`` w: s = w − 1."""
    return TrueCFG(float(true_cfg_scale) - 1.0, guidance, denoiser)


TrueCFG.from_diffusers_scale = _true_cfg_from_diffusers_scale
