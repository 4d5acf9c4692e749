"""The toy world: a CPU-sized synthetic text-to-image benchmark with an exact oracle reward.

A prompt names one object and its attributes, e.g. ``"a large red circle at the top left on a
white background"`` (colour, shape, position, size and an optional background; every word is in
the toy tokenizer vocabulary of ``pref_core.backbones.toy``). :func:`render` draws a prompt as a
small RGB image (32×32 by default) with natural jitter, optionally with one deliberate defect
(wrong colour/shape/position/size/background, blur, noise, missing object). The oracle
(:func:`score`, :func:`score_batch`) reads the attributes back from pixels, plus a continuous
quality (sharpness × cleanliness), and is robust enough to judge images sampled from tiny pixel
diffusion models, so it can tell whether preference alignment improved them.

Datasets (all deterministic per ``(seed, index)``): :class:`PretrainingSet` (base-model training
data with a share of defective images), :class:`PreferencePairs` (clean vs defective, oracle
labelled, with label flips) and :class:`EditTriplets` (defective image, fixing instruction,
target). Only numpy, torch and PIL are needed.
"""

from pref_data.toy.datasets import (
    DEFAULT_DEFECT_WEIGHTS,
    EditTriplets,
    PreferencePairs,
    PretrainingSet,
    edit_instruction,
)
from pref_data.toy.grammar import (
    ANCHORS,
    BACKGROUNDS,
    EXTENTS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    ToyPrompt,
    ToyWorldConfig,
    evaluation_prompts,
    parse_prompt,
    prompt_at,
    sample_prompts,
)
from pref_data.toy.oracle import OracleScore, measure, score, score_batch
from pref_data.toy.render import (
    DEFECTS,
    applicable_defects,
    from_tensor,
    render,
    render_batch,
    to_tensor,
)

__all__ = [
    "ANCHORS",
    "BACKGROUNDS",
    "DEFAULT_DEFECT_WEIGHTS",
    "DEFECTS",
    "EXTENTS",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "EditTriplets",
    "OracleScore",
    "PreferencePairs",
    "PretrainingSet",
    "ToyPrompt",
    "ToyWorldConfig",
    "applicable_defects",
    "edit_instruction",
    "evaluation_prompts",
    "from_tensor",
    "measure",
    "parse_prompt",
    "prompt_at",
    "render",
    "render_batch",
    "sample_prompts",
    "score",
    "score_batch",
    "to_tensor",
]
