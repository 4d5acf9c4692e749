"""Errors a preference source raises, each saying what was found and what to do about it.

All are ``ValueError`` subclasses, so code that guards against bad input in general still catches
them. They are raised as early as possible: a source checks its schema (and the first record's
files) when it is opened, before any model is loaded; only images that turn out to be undecodable
later, one at a time, are skipped instead (see :class:`pref_data.dataset.Skipped`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CacheKeyError", "CorruptImageError", "EmptyDatasetError", "SchemaError"]


class SchemaError(ValueError):
    """A source lacks columns (or fields, or files) that its reader needs.

    Args:
        source: what was opened (a path, a hub id, a spec).
        found: the columns present, in their order.
        expected: the columns the reader needs.
        hint: an optional last sentence (what the reader expected the data to be).
    """

    def __init__(
        self, source: str, found: Sequence[str], expected: Sequence[str], hint: str = ""
    ) -> None:
        self.source = str(source)
        self.found = list(found)
        self.expected = list(expected)
        self.missing = [c for c in self.expected if c not in set(self.found)]
        message = (
            f"{self.source}: missing columns {self.missing}; "
            f"found {self.found}; expected {self.expected}"
        )
        super().__init__(f"{message}. {hint}" if hint else message)

    def __reduce__(self):  # picklable across DataLoader workers despite the custom __init__
        return (type(self), (self.source, self.found, self.expected))


class EmptyDatasetError(ValueError):
    """A source yields no record at all: empty files, or every row was dropped (ties, filters)."""


class CorruptImageError(ValueError):
    """Image data that cannot be decoded in full: not an image, truncated, or a missing file."""


class CacheKeyError(ValueError):
    """A latent cache was built for a different model, data or transform than requested."""
