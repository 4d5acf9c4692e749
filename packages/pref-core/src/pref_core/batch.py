"""The preference batch: prompts' conditioning with a preferred and a dispreferred sample each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

from pref_core.conditioning import Conditioning


@dataclass(frozen=True)
class PreferenceBatch:
    """B ranked pairs sharing a prompt each.

    Attributes:
        cond: conditioning of the B prompts.
        winner: preferred samples x0^w (latents, usually), (B, ...).
        loser: dispreferred samples x0^l, same shape as ``winner``.
        extras: anything a method needs beyond the pair, keyed by name (prompt strings,
            CLIP image/text embeddings for Diff-contrast's weights, pair ids, ...). Values with a
            batch dimension are reordered with the batch; :meth:`swapped` leaves them alone
            unless their key ends in ``_w``/``_l``, which it exchanges.
    """

    cond: Conditioning
    winner: Tensor
    loser: Tensor
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.winner.shape != self.loser.shape:
            raise ValueError(
                f"winner {tuple(self.winner.shape)} and loser {tuple(self.loser.shape)} "
                "must have the same shape; resize or crop both images of a pair alike"
            )
        if self.winner.shape[0] != self.cond.batch_size:
            raise ValueError(
                f"{self.winner.shape[0]} pairs but conditioning for {self.cond.batch_size} "
                "prompts; build one conditioning row per pair"
            )

    def __len__(self) -> int:
        return self.winner.shape[0]

    def swapped(self) -> PreferenceBatch:
        """The same pairs with the preference reversed (winner ↔ loser)."""
        extras = dict(self.extras)
        for key in list(extras):
            if key.endswith("_w") and key[:-2] + "_l" in extras:
                partner = key[:-2] + "_l"
                extras[key], extras[partner] = self.extras[partner], self.extras[key]
        return replace(self, winner=self.loser, loser=self.winner, extras=extras)

    def to(self, *args: Any, **kwargs: Any) -> PreferenceBatch:
        """Move every tensor (conditioning, samples, tensor extras) like ``Tensor.to``."""
        extras = {
            k: v.to(*args, **kwargs) if isinstance(v, Tensor) else v for k, v in self.extras.items()
        }
        return PreferenceBatch(
            self.cond.to(*args, **kwargs),
            self.winner.to(*args, **kwargs),
            self.loser.to(*args, **kwargs),
            extras,
        )
