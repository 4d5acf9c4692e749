"""pref-train: run a training recipe registered by an installed pref package."""

from __future__ import annotations

from collections.abc import Sequence

from pref_apps import registry
from pref_apps.cli import Program, run

PROGRAM = Program(
    prog="pref-train",
    noun="recipe",
    plural="recipes",
    group=registry.RECIPES,
    option="--recipe",
    description="Train a text-to-image model with a preference-alignment recipe.",
    planned=registry.PLANNED_RECIPES,
)


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROGRAM, argv)


if __name__ == "__main__":
    raise SystemExit(main())
