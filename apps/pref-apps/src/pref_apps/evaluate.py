"""pref-eval: score models or images with an evaluator registered by an installed pref package."""

from __future__ import annotations

from collections.abc import Sequence

from pref_apps import registry
from pref_apps.cli import Program, run

PROGRAM = Program(
    prog="pref-eval",
    noun="evaluator",
    plural="evaluators",
    group=registry.EVALUATORS,
    option="--evaluator",
    description="Evaluate preference alignment of generated images or checkpoints.",
)


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROGRAM, argv)


if __name__ == "__main__":
    raise SystemExit(main())
