"""pref-sample: generate images with a sampler registered by an installed pref package."""

from __future__ import annotations

from collections.abc import Sequence

from pref_apps import registry
from pref_apps.cli import Program, run

PROGRAM = Program(
    prog="pref-sample",
    noun="sampler",
    plural="samplers",
    group=registry.SAMPLERS,
    option="--sampler",
    description="Generate images from a (preference-aligned) text-to-image model.",
)


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROGRAM, argv)


if __name__ == "__main__":
    raise SystemExit(main())
