"""IMG on the toy world: re-generation against the initial image, the paper's ablations, N seeds.

The chain, as a user runs it:

1. ``toy-ip-adapter`` — an IP-Adapter for the toy base (the role of the published adapters);
2. ``img-mllm-toy``   — the misalignment detector (a small LLaVA trained on toy edit
   triplets), with its agreement with the true instruction on held-out triplets;
3. ``img-toy``        — the Implicit Aligner (Eq. 7, λ = 1, k = 10) for each seed s
   (``train.seed = data.seed = s``), evaluated against the base on 200 held-out toy prompts
   with sampling seeds 1000·s: the base's image *is* the initial image, so the win rate is IMG's
   re-generation against the initial generation on the same seeds (exact toy oracle).

Steps 1–2 train once (seed 0) and are shared by every aligner, as published components are.
Variants (each for every seed):

- ``img``           λ = 1, k = 10, one round (the paper's setting)
- ``img-2rounds``   the same aligners, two rounds (Fig. 7 analogue: re-generate the re-generation)
- ``no-aligner``    the same runs with the aligner applied 0 times: re-generation from the initial
                    image's *own* tokens — the control that separates alignment from the effect of
                    re-generating with an image prompt at all
- ``lam-0``/``lam-0.5``/``lam-2``  λ of Eq. 7 (λ = 0 is L_base alone)
- ``no-ref-update`` k = 0: f_ref stays at its initialisation (the identity map)

    python benchmarks/img_toy.py                          # everything, seeds 0 1 2
    python benchmarks/img_toy.py --only img --seeds 0     # one run
    python benchmarks/img_toy.py --out runs/img-toy-bench

Prints markdown tables (oracle score of initial and IMG images, win rate with its 95% interval
per seed and pooled, per-attribute win rates).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from toy_results import print_attribute_table, summary

VARIANTS = {
    "img": {},
    "lam-0": {"objective.lam": 0.0},
    "lam-0.5": {"objective.lam": 0.5},
    "lam-2": {"objective.lam": 2.0},
    "no-ref-update": {"objective.reference_update_k": 0},
}
# Other inference settings of the ``img`` runs: variant → settings of the loaded IMGModel.
SETTING_VARIANTS = {"img-2rounds": {"rounds": 2}, "no-aligner": {"aligner_repeats": 0}}


def _run(recipe, run_dir: Path, settings: dict) -> Path:
    """Train (and evaluate, when the recipe does) unless ``run_dir`` has finished."""
    from pref_apps.config import build_config
    from pref_apps.trainer import run_recipe

    if (run_dir / "final").is_dir() and (
        not recipe.defaults.get("eval.prompts") or (run_dir / "eval" / "eval.json").exists()
    ):
        return run_dir
    config = build_config(
        recipe,
        [("benchmark", {"log.progress": False, "log.output_dir": str(run_dir), **settings})],
    )
    started = time.perf_counter()
    run_recipe(recipe, config, run_dir=run_dir)
    print(f"{run_dir.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return run_dir


def _settings_eval(run_dir: Path, variant: str, settings: dict) -> dict:
    """Evaluate a trained IMG run with other inference ``settings`` against the base, on the
    same prompts and seeds as its own evaluation."""
    out = run_dir / f"eval-{variant}"
    if (out / "eval.json").exists():
        return json.loads((out / "eval.json").read_text())
    from pref_apps.evaluation import compare, load_prompts
    from pref_apps.models import load_for_sampling
    from pref_apps.scorers import load_scorer

    saved = json.loads((run_dir / "eval" / "eval.json").read_text())["settings"]
    base_source = json.loads((run_dir / "final" / "pref_model.json").read_text())["base"]
    result = compare(
        load_for_sampling(base_source),
        load_for_sampling(str(run_dir), **settings),
        load_prompts(saved["prompts"]),
        load_scorer(saved["scorer"]),
        num_inference_steps=saved["num_inference_steps"],
        guidance_scale=saved["guidance_scale"],
        scheduler=saved["scheduler"],
        batch_size=saved["batch_size"],
        seeds=saved["seeds"],
        progress=False,
    )
    result.save(out)
    return json.loads((out / "eval.json").read_text())


def _pooled(results: list[dict]) -> str:
    from pref_apps.stats import win_rate_ci

    tuned = [row["scores"]["tuned"]["total"] for r in results for row in r["per_prompt"]]
    base = [row["scores"]["base"]["total"] for r in results for row in r["per_prompt"]]
    ci = win_rate_ci(tuned, base)
    return f"{ci.rate:.1%} [{ci.low:.1%}, {ci.high:.1%}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/img-toy-bench"))
    parser.add_argument("--only", nargs="+", default=[*VARIANTS, *SETTING_VARIANTS])
    args = parser.parse_args(argv)

    from pref_img import recipes

    out = args.out
    ip_run = _run(recipes.TOY_IP_ADAPTER, out / "toy-ip-adapter", {})
    detector_run = _run(recipes.IMG_MLLM_TOY, out / "img-mllm-toy", {})
    agreement = json.loads((detector_run / "eval" / "detector.json").read_text())
    print(
        "detector agreement on held-out toy triplets: "
        + ", ".join(f"{k} {v:.3f}" if k != "n" else f"n {v}" for k, v in agreement.items())
    )
    results: dict[str, list[dict]] = {}
    for variant in args.only:
        if variant in SETTING_VARIANTS:
            continue
        results[variant] = []
        for seed in args.seeds:
            run_dir = _run(
                recipes.IMG_TOY,
                out / f"{variant}-seed{seed}",
                {
                    "objective.ip_adapter": str(ip_run),
                    "objective.detector": str(detector_run),
                    "train.seed": seed,
                    "data.seed": seed,
                    "eval.seed": 1000 * seed,
                    **VARIANTS[variant],
                },
            )
            results[variant].append(json.loads((run_dir / "eval" / "eval.json").read_text()))
    for variant, settings in SETTING_VARIANTS.items():
        if variant in args.only:
            results[variant] = [
                _settings_eval(out / f"img-seed{seed}", variant, settings) for seed in args.seeds
            ]

    print()
    print(
        f"| variant | initial (base) score | IMG score (mean ± sd over {len(args.seeds)} seeds) "
        "| win rate vs initial [95% CI] per seed | pooled |"
    )
    print("| --- | --- | --- | --- | --- |")
    for variant, rows in results.items():
        base = [r["models"]["base"]["metrics"]["total"]["mean"] for r in rows]
        tuned = [r["models"]["tuned"]["metrics"]["total"]["mean"] for r in rows]
        per_seed = "; ".join(
            f"{r['win_rate']['rate']:.1%} [{r['win_rate']['low']:.1%}, {r['win_rate']['high']:.1%}]"
            for r in rows
        )
        print(f"| {variant} | {summary(base)} | {summary(tuned)} | {per_seed} | {_pooled(rows)} |")
    if "img" in results and "no-aligner" in results:
        tuned = [row["scores"]["tuned"]["total"] for r in results["img"] for row in r["per_prompt"]]
        control = [
            row["scores"]["tuned"]["total"]
            for r in results["no-aligner"]
            for row in r["per_prompt"]
        ]
        from pref_apps.stats import win_rate_ci

        ci = win_rate_ci(tuned, control)
        print()
        print(
            "IMG (aligned tokens) vs re-generation from the initial image's own tokens, same "
            f"prompts and seeds, pooled over seeds: {ci.rate:.1%} [{ci.low:.1%}, {ci.high:.1%}] "
            f"({ci.wins} wins, {ci.ties} ties, {ci.losses} losses)"
        )
    print()
    print_attribute_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
