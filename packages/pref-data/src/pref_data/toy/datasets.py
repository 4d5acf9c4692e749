"""Map-style torch datasets of the toy world: pretraining images, preference pairs, edit triplets.

Every item depends only on ``(seed, index)``: each draws from its own generators
``np.random.default_rng([seed, index, stream])`` (stream 0: the prompt, shared with
:func:`~pref_data.toy.grammar.sample_prompts`; 2: discrete choices; 3 and up: renders). Item ``i``
is therefore the same whatever the dataset length and whichever items were read before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from pref_data.toy.grammar import ToyPrompt, ToyWorldConfig, prompt_at
from pref_data.toy.oracle import score_batch
from pref_data.toy.render import DEFECTS, applicable_defects, render, to_tensor

_CHOICE_STREAM = 2
_RENDER_STREAM = 3
_SECOND_RENDER_STREAM = 4

DEFAULT_DEFECT_WEIGHTS: dict[str, float] = {
    "wrong_colour": 1.0,
    "wrong_shape": 1.0,
    "wrong_position": 1.0,
    "wrong_size": 1.0,
    "wrong_background": 0.5,
    "blur": 1.0,
    "noise": 1.0,
    "missing": 0.5,
}


def _defect_weights(defects: Mapping[str, float] | Sequence[str] | None) -> dict[str, float]:
    if defects is None:
        return dict(DEFAULT_DEFECT_WEIGHTS)
    weights = dict(defects) if isinstance(defects, Mapping) else dict.fromkeys(defects, 1.0)
    unknown = [d for d in weights if d not in DEFECTS]
    if unknown:
        raise ValueError(f"unknown defects {unknown}; choose from {', '.join(DEFECTS)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"defect weights must be non-negative, got {weights}")
    if sum(w for d, w in weights.items() if d != "wrong_background") <= 0:
        # Prompts without a background could not get any defect.
        raise ValueError(
            "give a positive weight to at least one defect other than wrong_background"
        )
    return weights


def _choose_defect(rng: np.random.Generator, prompt: ToyPrompt, weights: dict[str, float]) -> str:
    names = [d for d in applicable_defects(prompt) if weights.get(d, 0.0) > 0]
    p = np.asarray([weights[d] for d in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


class _ToyDataset(Dataset):
    def __init__(self, n: int, seed: int, config: ToyWorldConfig | None) -> None:
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        self.n = n
        self.seed = seed
        self.config = config or ToyWorldConfig()
        self._prompts: list[ToyPrompt] | None = None

    def __len__(self) -> int:
        return self.n

    def _check(self, index: int) -> int:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {self.n}")
        return index % self.n if self.n else index

    def prompt(self, index: int) -> ToyPrompt:
        """The prompt of item ``index``, without rendering anything."""
        return prompt_at(self.seed, self._check(index), self.config)

    @property
    def prompts(self) -> list[ToyPrompt]:
        """All prompts in order (computed once, cheap: no rendering)."""
        if self._prompts is None:
            self._prompts = [prompt_at(self.seed, i, self.config) for i in range(self.n)]
        return self._prompts

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, stream])

    def _render(
        self, prompt: ToyPrompt, rng: np.random.Generator, defect: str | None
    ) -> np.ndarray:
        return render(prompt, rng, resolution=self.config.resolution, defect=defect)


class PretrainingSet(_ToyDataset):
    """Base-model training data: renders of random prompts, a share of them deliberately defective
    so the pretrained base model is imperfect and alignment has something to fix.

    Items: ``{"prompt": str, "image": float32 (3, H, W) in [-1, 1], "defect": str ("" if clean),
    "category": str}``.

    Args:
        n: number of items.
        seed: seed of the whole set.
        defect_rate: probability that an item has a defect.
        defects: weights of the defects (a mapping, or names for equal weights); renormalised per
            item over the applicable ones (``wrong_background`` only when the prompt names one).
            Default :data:`DEFAULT_DEFECT_WEIGHTS`.
        config: the toy world (default :class:`ToyWorldConfig`).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        defect_rate: float = 0.3,
        defects: Mapping[str, float] | Sequence[str] | None = None,
        config: ToyWorldConfig | None = None,
    ) -> None:
        super().__init__(n, seed, config)
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
        self.defect_rate = defect_rate
        self.defect_weights = _defect_weights(defects)

    def defect(self, index: int) -> str:
        """The defect of item ``index`` ("" if clean), without rendering."""
        index = self._check(index)
        rng = self._rng(index, _CHOICE_STREAM)
        if rng.random() >= self.defect_rate:
            return ""
        return _choose_defect(rng, self.prompt(index), self.defect_weights)

    def __getitem__(self, index: int) -> dict[str, object]:
        index = self._check(index)
        prompt = self.prompt(index)
        defect = self.defect(index)
        image = self._render(prompt, self._rng(index, _RENDER_STREAM), defect or None)
        return {
            "prompt": prompt.text,
            "image": to_tensor(image),
            "defect": defect,
            "category": prompt.category,
        }


class PreferencePairs(_ToyDataset):
    """Oracle-labelled preference pairs with label noise.

    For each prompt: one clean render and one render with a random defect. The winner is the image
    with the higher oracle total (the clean one on a tie); with probability ``flip_rate`` the
    labels are swapped, as noisy human raters would, and ``flipped`` is True.

    Items: ``{"prompt": str, "winner", "loser": float32 (3, H, W) in [-1, 1], "id": str,
    "flipped": bool, "category": str, "defect": str}`` where ``defect`` is the defect of the
    defective image of the pair.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        flip_rate: float = 0.1,
        config: ToyWorldConfig | None = None,
        defects: Mapping[str, float] | Sequence[str] | None = None,
    ) -> None:
        super().__init__(n, seed, config)
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"flip_rate must be in [0, 1], got {flip_rate}")
        self.flip_rate = flip_rate
        self.defect_weights = _defect_weights(defects)

    def choices(self, index: int) -> tuple[str, bool]:
        """``(defect, flipped)`` of pair ``index``, without rendering."""
        index = self._check(index)
        rng = self._rng(index, _CHOICE_STREAM)
        defect = _choose_defect(rng, self.prompt(index), self.defect_weights)
        return defect, bool(rng.random() < self.flip_rate)

    def __getitem__(self, index: int) -> dict[str, object]:
        index = self._check(index)
        prompt = self.prompt(index)
        defect, flipped = self.choices(index)
        clean = self._render(prompt, self._rng(index, _RENDER_STREAM), None)
        bad = self._render(prompt, self._rng(index, _SECOND_RENDER_STREAM), defect)
        totals = score_batch(np.stack([clean, bad]), [prompt, prompt])["total"]
        winner, loser = (clean, bad) if totals[0] >= totals[1] else (bad, clean)
        if flipped:
            winner, loser = loser, winner
        return {
            "prompt": prompt.text,
            "winner": to_tensor(winner),
            "loser": to_tensor(loser),
            "id": f"toy-{self.seed}-{index}",
            "flipped": flipped,
            "category": prompt.category,
            "defect": defect,
        }


def edit_instruction(prompt: ToyPrompt, defect: str) -> str:
    """The instruction that turns a ``defect`` render of ``prompt`` into a clean one."""
    if defect == "wrong_colour":
        return f"make it {prompt.colour}"
    if defect == "wrong_shape":
        return f"make it a {prompt.shape}"
    if defect == "wrong_position":
        return f"move it to the {prompt.position}"
    if defect == "wrong_size":
        return f"make it {prompt.size}"
    if defect == "wrong_background":
        return f"make the background {prompt.background_colour}"
    if defect == "blur":
        return "make it sharp"
    if defect == "noise":
        return "remove the noise"
    if defect == "missing":
        return f"add a {prompt.size} {prompt.colour} {prompt.shape} at the {prompt.position}"
    raise ValueError(f"unknown defect {defect!r}; choose one of {', '.join(DEFECTS)}")


class EditTriplets(_ToyDataset):
    """Instruction-editing triplets: a defective render, the instruction fixing it, the target.

    The target is the clean render with the same jitter (same object centre offset, extent and
    shade), so the edit changes only what the instruction says.

    Items: ``{"prompt": str (the intended prompt), "defective", "target": float32 (3, H, W) in
    [-1, 1], "defect": str, "instruction": str, "category": str}``.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        config: ToyWorldConfig | None = None,
        defects: Mapping[str, float] | Sequence[str] | None = None,
    ) -> None:
        super().__init__(n, seed, config)
        self.defect_weights = _defect_weights(defects)

    def defect(self, index: int) -> str:
        """The defect of triplet ``index``, without rendering."""
        index = self._check(index)
        return _choose_defect(
            self._rng(index, _CHOICE_STREAM), self.prompt(index), self.defect_weights
        )

    def __getitem__(self, index: int) -> dict[str, object]:
        index = self._check(index)
        prompt = self.prompt(index)
        defect = self.defect(index)
        # Same generator state for both: the jitter is drawn first, defect parameters after.
        defective = self._render(prompt, self._rng(index, _RENDER_STREAM), defect)
        target = self._render(prompt, self._rng(index, _RENDER_STREAM), None)
        return {
            "prompt": prompt.text,
            "defective": to_tensor(defective),
            "defect": defect,
            "instruction": edit_instruction(prompt, defect),
            "target": to_tensor(target),
            "category": prompt.category,
        }
