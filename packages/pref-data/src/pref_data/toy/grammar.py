"""The toy world's prompt grammar: attributes, palettes, prompt text and seeded prompt sampling.

A prompt names one object: ``a <size> <colour> <shape> at the <position>``, optionally followed by
``on a <background> background`` (black when unspecified). Every word is in the toy tokenizer's
vocabulary (``pref_core/backbones/toy_configs/vocabulary.txt``).

Geometry lives here too (anchors, extents as fractions of the resolution) because the renderer and
the oracle must agree on it exactly.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

# Exact RGB values (0..255). Object colours are pairwise far apart and far from every background,
# also along the ray from each background (the oracle classifies colours along that ray, which
# makes it insensitive to anti-aliasing and blur mixing the object with the background).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 210, 220),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
DEFAULT_BACKGROUND = "black"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")

# Object centre for each position as (x, y) fractions of the resolution (y grows downwards).
# At 32 px the corner anchors sit 9.6 px from both edges: a large shape (extent 14 px, +10 %) with
# its centre jittered by 1.25 px still fits inside the image.
ANCHORS: dict[str, tuple[float, float]] = {
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}
# Nominal object extent (width of the bounding box) as a fraction of the resolution: 14 and 8 px at 32.
EXTENTS: dict[str, float] = {"small": 8 / 32, "large": 14 / 32}


@dataclasses.dataclass(frozen=True)
class ToyPrompt:
    """One toy-world prompt: a single object on a plain background.

    Attributes:
        colour: a key of :data:`PALETTE`.
        shape: one of :data:`SHAPES`.
        position: one of :data:`POSITIONS`.
        size: one of :data:`SIZES`.
        background: a key of :data:`BACKGROUNDS`, or ``None`` when the prompt names none (the
            image background is then black and the oracle does not score it).
    """

    colour: str
    shape: str
    position: str
    size: str
    background: str | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("colour", self.colour, tuple(PALETTE)),
            ("shape", self.shape, SHAPES),
            ("position", self.position, POSITIONS),
            ("size", self.size, SIZES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.background is not None and self.background not in BACKGROUNDS:
            raise ValueError(
                f"unknown background {self.background!r}; choose one of {', '.join(BACKGROUNDS)}"
            )

    @property
    def text(self) -> str:
        """E.g. ``"a large red circle at the top left on a white background"``."""
        text = f"a {self.size} {self.colour} {self.shape} at the {self.position}"
        if self.background is not None:
            text += f" on a {self.background} background"
        return text

    @property
    def category(self) -> str:
        """A short label for per-category reporting: the shape name."""
        return self.shape

    @property
    def background_colour(self) -> str:
        """The background actually drawn: the named one, else :data:`DEFAULT_BACKGROUND`."""
        return DEFAULT_BACKGROUND if self.background is None else self.background

    @property
    def attributes(self) -> dict[str, str | None]:
        """The attribute values by name (``background`` is ``None`` when unspecified)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: str | None) -> ToyPrompt:
        """A copy with some attributes changed."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return self.text


_PROMPT_RE = re.compile(
    r"a (?P<size>\w+) (?P<colour>\w+) (?P<shape>\w+) at the (?P<position>\w+(?: \w+)?)"
    r"(?: on a (?P<background>\w+) background)?"
)


def parse_prompt(text: str) -> ToyPrompt:
    """Parse the text of a :class:`ToyPrompt` back (case and extra whitespace are ignored).

    Raises:
        ValueError: naming ``text`` when it is not a toy-world prompt.
    """
    normal = " ".join(text.lower().split()).rstrip(".").rstrip()
    match = _PROMPT_RE.fullmatch(normal)
    if match is None:
        raise ValueError(
            f"cannot parse {text!r} as a toy-world prompt; expected "
            "'a <size> <colour> <shape> at the <position> [on a <background> background]'"
        )
    try:
        return ToyPrompt(**match.groupdict())
    except ValueError as error:
        raise ValueError(f"cannot parse {text!r} as a toy-world prompt: {error}") from None


@dataclasses.dataclass(frozen=True)
class ToyWorldConfig:
    """Which attribute values prompts draw from, the image resolution, and how often a prompt names
    its background. Values must be among the module's known ones (:data:`PALETTE`, :data:`SHAPES`,
    :data:`POSITIONS`, :data:`SIZES`, :data:`BACKGROUNDS`); a subset makes a smaller world."""

    colours: tuple[str, ...] = tuple(PALETTE)
    shapes: tuple[str, ...] = SHAPES
    positions: tuple[str, ...] = POSITIONS
    sizes: tuple[str, ...] = SIZES
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    resolution: int = 32
    background_prob: float = 0.25
    """Share of prompts that name their background explicitly (drawn uniformly from ``backgrounds``)."""

    def __post_init__(self) -> None:
        for name, values, known in (
            ("colours", self.colours, tuple(PALETTE)),
            ("shapes", self.shapes, SHAPES),
            ("positions", self.positions, POSITIONS),
            ("sizes", self.sizes, SIZES),
            ("backgrounds", self.backgrounds, tuple(BACKGROUNDS)),
        ):
            if not values:
                raise ValueError(f"ToyWorldConfig.{name} is empty")
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ValueError(
                    f"ToyWorldConfig.{name} has unknown values {unknown}; known: {', '.join(known)}"
                )
        if not 0.0 <= self.background_prob <= 1.0:
            raise ValueError(f"background_prob must be in [0, 1], got {self.background_prob}")
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16, got {self.resolution}")


# Third entry of every per-item seed: keeps training and evaluation prompt streams disjoint even
# under the same user seed, and apart from the datasets' render/choice streams.
TRAIN_PROMPT_STREAM = 0
EVAL_PROMPT_STREAM = 1


def _pick(rng: np.random.Generator, values: Sequence[str]) -> str:
    return values[int(rng.integers(len(values)))]


def prompt_from_rng(rng: np.random.Generator, config: ToyWorldConfig | None = None) -> ToyPrompt:
    """Draw one prompt: every attribute uniformly, a background with ``config.background_prob``."""
    config = config or ToyWorldConfig()
    colour = _pick(rng, config.colours)
    shape = _pick(rng, config.shapes)
    position = _pick(rng, config.positions)
    size = _pick(rng, config.sizes)
    named = rng.random() < config.background_prob
    background = _pick(rng, config.backgrounds) if named else None
    return ToyPrompt(colour, shape, position, size, background)


def prompt_at(
    seed: int,
    index: int,
    config: ToyWorldConfig | None = None,
    *,
    stream: int = TRAIN_PROMPT_STREAM,
) -> ToyPrompt:
    """The ``index``-th prompt of the seeded stream; independent of every other index."""
    return prompt_from_rng(np.random.default_rng([seed, index, stream]), config)


def sample_prompts(n: int, seed: int, config: ToyWorldConfig | None = None) -> list[ToyPrompt]:
    """``n`` training prompts; prompt ``i`` depends only on ``(seed, i)`` (see :func:`prompt_at`)."""
    return [prompt_at(seed, i, config) for i in range(n)]


def evaluation_prompts(
    n: int = 200, seed: int = 0, config: ToyWorldConfig | None = None
) -> list[ToyPrompt]:
    """A fixed held-out prompt set, drawn from a different seed stream than :func:`sample_prompts`.

    The toy world has few distinct prompts (960 with the default config), so held-out means
    independently drawn, not disjoint from training prompts.
    """
    return [prompt_at(seed, i, config, stream=EVAL_PROMPT_STREAM) for i in range(n)]


def all_words() -> set[str]:
    """Every word a prompt can contain (for checking against a tokenizer vocabulary)."""
    words = {"a", "at", "the", "on", "background"}
    for values in (PALETTE, SHAPES, SIZES, BACKGROUNDS, POSITIONS):
        for value in values:
            words.update(value.split())
    return words
