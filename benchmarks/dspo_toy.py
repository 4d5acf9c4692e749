"""DSPO on the toy world: the paper's Table 1 / 5 / 6 analogues, N seeds.

For each seed s it trains (``train.seed=s``, ``data.seed=s``) and evaluates against the base on
the same held-out toy prompts and sampling seeds (``eval.seed=1000·s``, 200 prompts, exact
oracle), exactly like ``benchmarks/toy_results.py`` (whose ``dpo-toy`` and ``sft-toy`` runs it
reuses):

- ``dspo``       dspo-toy (Eq. 13, λ = 0.001 as the paper, reward with the same λ)
- ``dspo-e``     dspo-e-toy (Eq. 45, Table 5's variant)
- ``dspo-ref``   dspo-ref-toy (Table 6's variant)
- ``dspo-r5000`` dspo-toy with the implicit reward at Diffusion-DPO's scale (reward_scale 5000)
                 and λ = 0.05, so that σ(r_w − r_l) responds to the pair (pref's option)
- ``lam-0.5``    λ = 0.5 with the reward at Diffusion-DPO's scale (5000): a preference term
                 500× the paper's, with σ responding to the pair
- ``e-lam-0.5``  DSPO-E at λ = 0.5 (the same term without σ)
- ``dpo-toy``, ``sft-toy``  the baselines

Prints the mean oracle score and the win rate over the base, overall and per oracle attribute
(colour, shape, position, size, background, quality: the toy analogue of the paper's reward
models).

    python benchmarks/dspo_toy.py                      # diffusion toy, seeds 0 1 2
    python benchmarks/dspo_toy.py --kind toy-flux      # the flow analogue (dspo-toy-flow)
    python benchmarks/dspo_toy.py --only dspo --seeds 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from toy_results import evaluated_run, print_attribute_table, summary

VARIANTS = (
    "dspo",
    "dspo-e",
    "dspo-ref",
    "dspo-r5000",
    "lam-0.5",
    "e-lam-0.5",
    "sft-toy",
    "dpo-toy",
)


def _recipe(variant: str, kind: str):
    from pref_apps import recipes as apps_recipes
    from pref_dspo import recipes

    dspo = recipes.DSPO_TOY if kind == "toy" else recipes.DSPO_TOY_FLOW
    table = {
        "dspo": (dspo, {}),
        "dspo-e": (dspo, {"objective.variant": "dspo-e"}),
        "dspo-ref": (dspo, {"objective.variant": "dspo-ref"}),
        "dspo-r5000": (dspo, {"objective.lam": 0.05, "objective.reward_scale": 5000.0}),
        "lam-0.5": (dspo, {"objective.lam": 0.5, "objective.reward_scale": 5000.0}),
        "e-lam-0.5": (dspo, {"objective.lam": 0.5, "objective.variant": "dspo-e"}),
        "sft-toy": (apps_recipes.SFT_TOY, {}),
        "dpo-toy": (apps_recipes.DPO_TOY, {}),
    }
    return table[variant]


def train(variant: str, kind: str, seed: int, out: Path) -> dict:
    recipe, extra = _recipe(variant, kind)
    return evaluated_run(recipe, extra, out, kind, variant, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", default="toy", choices=["toy", "toy-flux"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/dspo-toy"))
    args = parser.parse_args(argv)

    results = {v: [train(v, args.kind, s, args.out) for s in args.seeds] for v in args.only}
    first = results[args.only[0]]
    base = [r["models"]["base"]["metrics"]["total"]["mean"] for r in first]
    print(f"| {args.kind} | oracle score (± sd, {len(args.seeds)} seeds) | win rate vs base |")
    print("| --- | --- | --- |")
    print(f"| base | {summary(base)} | — |")
    for variant, rows in results.items():
        scores = [r["models"]["tuned"]["metrics"]["total"]["mean"] for r in rows]
        wins = [r["win_rate"]["rate"] for r in rows]
        print(f"| {variant} | {summary(scores)} | {summary(wins)} |")
    print()
    print_attribute_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
