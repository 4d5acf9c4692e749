"""Diff-contrast on the toy world: the paper's Table 1, Table 3 (τ) and App. C (batch size)
analogues, and the embedding modalities.

For each seed s it trains (``train.seed=s``, ``data.seed=s``) and evaluates against the base on
the same held-out toy prompts and sampling seeds (``eval.seed=1000·s``, 200 prompts, exact
oracle), exactly like ``benchmarks/toy_results.py`` (whose ``dpo-toy`` and ``sft-toy`` runs it
reuses). Variants:

- ``contrast``          contrast-toy: M = 16 pairs, τ = 0.01 (the paper's SD 1.5 value), f =
                        the toy embedder's image and text features ("both")
- ``tau-T``             τ = T, for T in 0.1, 1, 2, 5 (Table 3)
- ``m-M``               M = 2, 4, 8 pairs per contrast with the total batch kept at 16 by
                        gradient accumulation (App. C varies the batch size; keeping the total
                        batch fixed isolates the size of the contrast)
- ``image``, ``text``   f from one modality only
- ``dpo-toy``, ``sft-toy``  the baselines

    python benchmarks/contrast_toy.py                       # contrast + baselines, seeds 0 1 2
    python benchmarks/contrast_toy.py --only tau-0.1 tau-1 tau-2 tau-5 --seeds 0
    python benchmarks/contrast_toy.py --kind toy-flux --only contrast --seeds 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from toy_results import evaluated_run, print_attribute_table, summary

TAUS = (0.1, 1.0, 2.0, 5.0)
SIZES = (2, 4, 8)
VARIANTS = (
    "contrast",
    *(f"tau-{t:g}" for t in TAUS),
    *(f"m-{m}" for m in SIZES),
    "image",
    "text",
    "sft-toy",
    "dpo-toy",
)


def settings(variant: str) -> dict:
    """The settings a variant changes over contrast-toy's."""
    if variant.startswith("tau-"):
        return {"objective.tau": float(variant[4:])}
    if variant.startswith("m-"):
        m = int(variant[2:])
        return {"train.batch_size": m, "train.grad_accum": 16 // m}
    if variant in ("image", "text"):
        return {"objective.modality": variant}
    return {}


def _recipe(variant: str, kind: str):
    from pref_apps import recipes as apps_recipes
    from pref_contrast import recipes

    if variant == "sft-toy":
        return apps_recipes.SFT_TOY, {}
    if variant == "dpo-toy":
        return apps_recipes.DPO_TOY, {}
    contrast = recipes.CONTRAST_TOY if kind == "toy" else recipes.CONTRAST_TOY_FLOW
    return contrast, settings(variant)


def train(variant: str, kind: str, seed: int, out: Path) -> dict:
    recipe, extra = _recipe(variant, kind)
    return evaluated_run(recipe, extra, out, kind, variant, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", default="toy", choices=["toy", "toy-flux"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--only", nargs="+", choices=VARIANTS, default=["contrast", "sft-toy", "dpo-toy"]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/contrast-toy"))
    args = parser.parse_args(argv)

    results = {v: [train(v, args.kind, s, args.out) for s in args.seeds] for v in args.only}
    first = results[args.only[0]]
    base = [r["models"]["base"]["metrics"]["total"]["mean"] for r in first]
    print(
        f"| {args.kind} | settings | oracle score (± sd, {len(args.seeds)} seeds) "
        "| success | win rate vs base |"
    )
    print("| --- | --- | --- | --- | --- |")
    print(f"| base | — | {summary(base)} | — | — |")
    for variant, rows in results.items():
        scores = [r["models"]["tuned"]["metrics"]["total"]["mean"] for r in rows]
        success = [r["models"]["tuned"]["metrics"]["success"]["mean"] for r in rows]
        wins = [r["win_rate"]["rate"] for r in rows]
        changed = ", ".join(f"{k}={v}" for k, v in settings(variant).items()) or "recipe"
        print(
            f"| {variant} | {changed} | {summary(scores)} | {summary(success)} | {summary(wins)} |"
        )
    print()
    print_attribute_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
