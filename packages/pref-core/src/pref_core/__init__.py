"""pref-core: diffusion/flow math, preference-loss primitives, fused kernels and the protocols
that every pref package composes through.

Importing this package needs only torch and einops. diffusers, transformers, peft, accelerate and
triton are optional and imported lazily by the modules that use them.

Layers (each importable on its own):

- :mod:`pref_core.schedules` — noise processes (DDPM family, rectified flow), pure math.
- :mod:`pref_core.losses` — per-sample errors, the Diffusion-DPO objective, shared metrics.
- :mod:`pref_core.ops` — fused kernels (Triton) with exact PyTorch fallbacks.
- :mod:`pref_core.protocols`, :mod:`pref_core.conditioning`, :mod:`pref_core.batch`,
  :mod:`pref_core.pairs` — the seams and the containers that flow through them.
- :mod:`pref_core.objectives` — objectives satisfying the protocol (Diffusion-DPO).
- :mod:`pref_core.testing` — tiny components and conformance mixins for tests.
- :mod:`pref_core.clip_images` — CLIP's image preprocessing in torch, from a model's
  ``preprocessor_config.json`` (shared by the CLIP embedders above pref-core).
"""

from pref_core.__about__ import __version__
from pref_core.batch import PreferenceBatch
from pref_core.conditioning import Conditioning
from pref_core.objectives import DiffusionDPO
from pref_core.pairs import NoisedPair, PairPredictions, noise_pair, predict_pair
from pref_core.protocols import (
    ConditionEncoder,
    Denoiser,
    LatentCodec,
    NoiseProcess,
    ObjectiveOutput,
    PreferenceObjective,
)
from pref_core.schedules import DDPMSchedule, FlowMatchingSchedule, schedule_from_config

__all__ = [
    "ConditionEncoder",
    "Conditioning",
    "DDPMSchedule",
    "Denoiser",
    "DiffusionDPO",
    "FlowMatchingSchedule",
    "LatentCodec",
    "NoiseProcess",
    "NoisedPair",
    "ObjectiveOutput",
    "PairPredictions",
    "PreferenceBatch",
    "PreferenceObjective",
    "__version__",
    "noise_pair",
    "predict_pair",
    "schedule_from_config",
]
