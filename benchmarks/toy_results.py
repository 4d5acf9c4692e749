"""The toy-world results table: base, SFT and Diffusion-DPO, diffusion and flow toy bases, N seeds.

For each base kind and seed s, trains the ``sft-toy`` and ``dpo-toy`` recipes with
``train.seed=s`` and ``data.seed=s`` and evaluates each against the base on the same held-out
toy prompts and sampling seeds (``eval.seed=1000·s``) with the exact toy oracle. Prints a markdown
table: mean oracle score (± standard deviation over seeds) for base / SFT / DPO, success rate, and
the win rate of each tuned model over the base with its 95% interval (per seed and pooled).

    python benchmarks/toy_results.py                         # both kinds, seeds 0 1 2
    python benchmarks/toy_results.py --kinds toy --seeds 0   # one run pair
    python benchmarks/toy_results.py --out runs/toy-results  # where the runs go

Takes about 3–4 minutes per trained model on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def train_and_evaluate(recipe, run_dir: Path, kind: str, seed: int, extra: dict) -> Path:
    """Train ``recipe`` from the toy base of ``kind`` with train/data seed ``seed`` and evaluate
    it against the base on sampling seeds 1000·seed, unless ``run_dir`` already has its
    evaluation; ``extra`` settings go over the benchmark's."""
    from pref_apps.config import build_config
    from pref_apps.trainer import run_recipe

    if not (run_dir / "eval" / "eval.json").exists():
        settings = {
            "model.base": f"toy-pretrained:{kind}",
            "train.seed": seed,
            "data.seed": seed,
            "eval.seed": 1000 * seed,
            "log.progress": False,
            "log.output_dir": str(run_dir),
            **extra,
        }
        config = build_config(recipe, [("benchmark", settings)])
        started = time.perf_counter()
        run_recipe(recipe, config, run_dir=run_dir)
        print(f"{run_dir.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return run_dir


def evaluated_run(recipe, extra: dict, out: Path, kind: str, variant: str, seed: int) -> dict:
    """A method script's run of ``variant`` (trained and evaluated once, then reused) and its
    ``eval.json``; the ``dpo-toy`` and ``sft-toy`` baselines are this script's own runs."""
    if variant in ("dpo-toy", "sft-toy"):
        run_dir = out.parent / "toy-results" / f"{kind}-{variant}-seed{seed}"
    else:
        run_dir = out / f"{kind}-{variant}-seed{seed}"
    train_and_evaluate(recipe, run_dir, kind, seed, extra)
    return json.loads((run_dir / "eval" / "eval.json").read_text())


def run(recipe_name: str, kind: str, seed: int, out: Path, extra: list[str]) -> dict:
    from pref_apps import recipes
    from pref_apps.config import parse_overrides

    recipe = {"sft-toy": recipes.SFT_TOY, "dpo-toy": recipes.DPO_TOY}[recipe_name]
    run_dir = out / f"{kind}-{recipe_name}-seed{seed}"
    train_and_evaluate(recipe, run_dir, kind, seed, parse_overrides(extra))
    return json.loads((run_dir / "eval" / "eval.json").read_text())


ATTRIBUTES = ("colour", "shape", "position", "size", "background", "quality")


def attribute_win_rate(result: dict, attribute: str) -> float | None:
    """Share of prompts where the tuned model's attribute score beats the base's (ties ½),
    over the prompts where the attribute applies (background is only scored when asked for)."""
    wins = n = 0.0
    for row in result["per_prompt"]:
        a, b = row["scores"]["tuned"][attribute], row["scores"]["base"][attribute]
        if a is None or b is None:
            continue
        n += 1
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / n if n else None


def print_attribute_table(results: dict[str, list[dict]]) -> None:
    """Markdown table: each model's win rate over the base per oracle attribute, mean over its
    runs (``results``: model → the runs' ``eval.json`` contents)."""
    print("Win rate vs base per oracle attribute (mean over seeds; ties count ½):")
    print()
    print("| model | " + " | ".join(ATTRIBUTES) + " |")
    print("| --- |" + " --- |" * len(ATTRIBUTES))
    for model, rows in results.items():
        cells = []
        for attribute in ATTRIBUTES:
            values = [w for r in rows if (w := attribute_win_rate(r, attribute)) is not None]
            cells.append(f"{sum(values) / len(values):.1%}" if values else "—")
        print(f"| {model} | " + " | ".join(cells) + " |")


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kinds", nargs="+", default=["toy", "toy-flux"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/toy-results"))
    parser.add_argument("settings", nargs="*", help="extra KEY=VALUE settings for every run")
    args = parser.parse_args(argv)

    rows = []
    for kind in args.kinds:
        results = {
            m: [run(m, kind, s, args.out, args.settings) for s in args.seeds]
            for m in ("sft-toy", "dpo-toy")
        }
        base_scores = [r["models"]["base"]["metrics"]["total"]["mean"] for r in results["dpo-toy"]]
        base_success = [
            r["models"]["base"]["metrics"]["success"]["mean"] for r in results["dpo-toy"]
        ]
        rows.append((kind, "base", base_scores, base_success, None))
        for method in ("sft-toy", "dpo-toy"):
            scores = [r["models"]["tuned"]["metrics"]["total"]["mean"] for r in results[method]]
            success = [r["models"]["tuned"]["metrics"]["success"]["mean"] for r in results[method]]
            wins = [r["win_rate"] for r in results[method]]
            rows.append((kind, method, scores, success, wins))

    print(
        f"| base | model | oracle score (mean ± sd over {len(args.seeds)} seeds) | success rate | win rate vs base [95% CI] per seed |"
    )
    print("| --- | --- | --- | --- | --- |")
    for kind, name, scores, success, wins in rows:
        win_text = (
            "—"
            if wins is None
            else "; ".join(f"{w['rate']:.1%} [{w['low']:.1%}, {w['high']:.1%}]" for w in wins)
        )
        print(f"| {kind} | {name} | {summary(scores)} | {summary(success)} | {win_text} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
