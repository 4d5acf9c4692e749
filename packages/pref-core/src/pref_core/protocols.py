"""The seams every pref package composes through.

Each protocol is small and structural (``typing.Protocol``): a class satisfies it by having the
methods, with no inheritance from pref. Model wrappers (SD 1.5, SDXL, FLUX.1), datasets and
methods meet only here, so any piece can be swapped without touching the others.

How one training step flows through them (see ``docs/architecture.md``)::

    PreferenceBatch ──► NoiseProcess ──► NoisedPair ──► Denoiser (policy, reference)
      (cond, x0_w, x0_l)   (t, ε shared)    (x_t, target)        │
                                                                  ▼
                       ObjectiveOutput ◄── PreferenceObjective ◄── PairPredictions
                       (loss, metrics)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pref_core.batch import PreferenceBatch
    from pref_core.conditioning import Conditioning
    from pref_core.pairs import NoisedPair, PairPredictions
    from pref_core.schedules import NoiseCoefficients


@runtime_checkable
class Denoiser(Protocol):
    """A network that predicts from a noised input, its timestep and a conditioning.

    ``x_t`` (B, ...) and ``timesteps`` (B,) — the values returned by
    :meth:`NoiseProcess.model_timesteps` — map to a prediction shaped like ``x_t`` of the kind
    the paired :class:`NoiseProcess` regresses (ε, v, x0 or flow velocity).
    """

    def __call__(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor: ...


@runtime_checkable
class ConditionEncoder(Protocol):
    """Turns prompts into a :class:`~pref_core.conditioning.Conditioning`.

    ``encode([""] * B)`` is the *sampling* null condition; ``Conditioning.zeros_like()`` is the
    *training* null some methods use. The two differ; code chooses one explicitly.
    """

    def encode(self, prompts: Sequence[str]) -> Conditioning: ...


@runtime_checkable
class LatentCodec(Protocol):
    """Maps images to the latent space the denoiser works in, and back.

    ``encode``: images (B, 3, H, W) in [−1, 1] → latents (B, C, H/f, W/f), already scaled (and
    shifted) the way the denoiser expects. ``decode`` inverts it. ``generator`` makes sampling
    from the encoder's posterior reproducible.
    """

    latent_channels: int
    downsample_factor: int

    def encode(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


@runtime_checkable
class NoiseProcess(Protocol):
    """A forward process: :class:`~pref_core.schedules.DDPMSchedule` or
    :class:`~pref_core.schedules.FlowMatchingSchedule`.

    ``prediction_type`` names the regression target (``epsilon``, ``v_prediction``, ``sample`` or
    ``flow``). ``coefficients(t)`` gives per-sample (a, b, c, d) with x_t = a·x0 + b·ε and
    target = c·x0 + d·ε.
    """

    prediction_type: str

    def sample_timesteps(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor: ...

    def model_timesteps(self, t: Tensor) -> Tensor: ...

    def coefficients(self, t: Tensor) -> NoiseCoefficients: ...


@dataclass(frozen=True)
class ObjectiveOutput:
    """What an objective returns.

    Attributes:
        loss: scalar to minimise (already reduced over the batch).
        metrics: detached scalars to log, by name (``implicit_accuracy``, ``reward_margin``, ...).
        per_sample: optional detached per-pair values (e.g. the DPO logits), (B,).
    """

    loss: Tensor
    metrics: Mapping[str, Tensor] = field(default_factory=dict)
    per_sample: Mapping[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class PreferenceObjective(Protocol):
    """A preference loss: predictions on a noised pair (plus the batch, for methods that need
    more than the pair, e.g. Diff-contrast's embeddings) → loss and metrics."""

    def __call__(
        self, predictions: PairPredictions, pair: NoisedPair, batch: PreferenceBatch
    ) -> ObjectiveOutput: ...
