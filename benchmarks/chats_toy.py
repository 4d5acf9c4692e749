"""CHATS on the toy world: the paper's Table 1, Table 4 and Fig. 3 analogues, N seeds.

For each seed s it trains (with ``train.seed=s``, ``data.seed=s``) and evaluates against the base
on the same held-out toy prompts and sampling seeds (``eval.seed=1000·s``, 200 prompts, exact
oracle), exactly like ``benchmarks/toy_results.py`` (whose ``dpo-toy`` runs it reuses):

- ``chats``         chats-toy at Diffusion-DPO's toy lr 2e-5 (training null "empty"), sampled
                    with α ∈ {0, 0.25, 0.5, 0.7, 1}; the ablations below use the same lr
- ``chats-tuned``   chats-toy with the recipe's default (tuned) learning rate
- ``chats-zeros``   chats-toy with the reference code's training null (zeros)
- ``chats-noref``   chats-toy without the reference (Table 4 "two models (w/o ref)"), α = 0
- ``sft-pairs``     one model, plain denoising loss on winners and losers (Table 4 row 1)
- ``sft-toy``       one model on the winners only (Table 4 row 2)
- ``dpo-toy``       Diffusion-DPO (Table 1)

Every model samples with s = 2 (diffusers' w = 3, the toy recipes' evaluation setting); CHATS
is also measured at the paper's s = 5 (α = 0.5). Prints markdown tables.

    python benchmarks/chats_toy.py                       # diffusion toy, seeds 0 1 2
    python benchmarks/chats_toy.py --kind toy-flux       # the flow toy (chats-toy-flow)
    python benchmarks/chats_toy.py --only chats --seeds 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# the run protocol and summary of benchmarks/toy_results.py (this script's folder is on sys.path
# when it runs as `python benchmarks/chats_toy.py`)
from toy_results import summary, train_and_evaluate

ALPHAS = (0.0, 0.25, 0.5, 0.7, 1.0)
VARIANTS = (
    "chats",
    "chats-tuned",
    "chats-zeros",
    "chats-noref",
    "sft-pairs",
    "sft-toy",
    "dpo-toy",
)


def _recipe(variant: str, kind: str):
    from pref_apps import recipes as apps_recipes
    from pref_chats import recipes as chats_recipes

    chats = chats_recipes.CHATS_TOY if kind == "toy" else chats_recipes.CHATS_TOY_FLOW
    # The ablations train with Diffusion-DPO's toy learning rate (2e-5), so that every
    # variant and DPO take the same steps; "chats-tuned" is the recipe's default.
    same = {"optim.lr": 2e-5}
    table = {
        "chats": (chats, same),
        "chats-zeros": (chats, {**same, "objective.null": "zeros"}),
        "chats-noref": (chats, {**same, "objective.reference": False}),
        "chats-tuned": (chats, {}),
        "sft-pairs": (apps_recipes.SFT_TOY, {"data.source": "toy-pair-images"}),
        "sft-toy": (apps_recipes.SFT_TOY, {}),
        "dpo-toy": (apps_recipes.DPO_TOY, {}),
    }
    return table[variant]


def _run_dir(out: Path, kind: str, variant: str, seed: int) -> Path:
    if variant in ("dpo-toy", "sft-toy"):  # the same runs as benchmarks/toy_results.py
        return out.parent / "toy-results" / f"{kind}-{variant}-seed{seed}"
    return out / f"{kind}-{variant}-seed{seed}"


def train(variant: str, kind: str, seed: int, out: Path) -> Path:
    recipe, extra = _recipe(variant, kind)
    return train_and_evaluate(recipe, _run_dir(out, kind, variant, seed), kind, seed, extra)


def evaluate_guided(run_dir: Path, seed: int, label: str, **changes) -> dict:
    """Score a trained pair with its sampler's fields changed (alpha, scale), cached as JSON."""
    path = run_dir / "eval-extra" / f"{label}.json"
    if path.exists():
        return json.loads(path.read_text())
    saved = json.loads((run_dir / "final" / "pref_model.json").read_text())["sampler"]
    if all(saved.get(k) == v for k, v in changes.items()):  # the run's own evaluation
        data = json.loads((run_dir / "eval" / "eval.json").read_text())
        data["models"] = {"model": data["models"]["tuned"]}
        for row in data["per_prompt"]:
            row["scores"] = {"model": row["scores"]["tuned"]}
        return data
    import yaml

    from pref_apps.config import build_config
    from pref_apps.evaluation import evaluate_single, load_prompts
    from pref_apps.models import load_for_sampling
    from pref_apps.scorers import load_scorer

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    e = config["eval"]
    model = load_for_sampling(str(run_dir)).with_guidance(**changes)
    result = evaluate_single(
        model,
        load_prompts(e["prompts"]),
        load_scorer(e["scorer"]),
        num_inference_steps=e["steps"],
        scheduler=e["scheduler"],
        batch_size=e["batch_size"],
        seeds=1000 * seed,
        progress=False,
    )
    data = result.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    del build_config
    return data


def _score(data: dict, label: str) -> float:
    return data["models"][label]["metrics"]["total"]["mean"]


def _per_prompt(data: dict, label: str) -> list[float]:
    return [row["scores"][label]["total"] for row in data["per_prompt"]]


def _win_vs_base(data: dict, label: str, run_eval: dict) -> str:
    """Win rate of ``label`` in ``data`` over the base of the run's own evaluation (same
    prompts, same seeds)."""
    from pref_apps.stats import win_rate_ci

    assert data["settings"]["seeds"] == run_eval["settings"]["seeds"]
    w = win_rate_ci(_per_prompt(data, label), _per_prompt(run_eval, "base"))
    return f"{w.rate:.1%} [{w.low:.1%}, {w.high:.1%}]"


def _win(data: dict) -> str:
    w = data["win_rate"]
    return f"{w['rate']:.1%} [{w['low']:.1%}, {w['high']:.1%}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", default="toy", choices=["toy", "toy-flux"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/chats-toy"))
    parser.add_argument("--no-sweep", action="store_true", help="skip the alpha sweep")
    args = parser.parse_args(argv)

    runs = {v: [train(v, args.kind, s, args.out) for s in args.seeds] for v in args.only}
    evals = {
        v: [json.loads((r / "eval" / "eval.json").read_text()) for r in rs]
        for v, rs in runs.items()
    }
    first = next(iter(evals.values()))
    base = [_score(d, "base") for d in first]
    print(f"\n### {args.kind}: oracle score (mean ± sd over seeds {args.seeds}), s = 2\n")
    print("| model | oracle score | win rate vs base per seed [95% CI] |")
    print("| --- | --- | --- |")
    print(f"| base (CFG) | {summary(base)} | — |")
    for v, ds in evals.items():
        wins = "; ".join(_win(d) for d in ds)
        print(f"| {v} | {summary([_score(d, 'tuned') for d in ds])} | {wins} |")

    def extra(variant: str, label: str, **changes) -> None:
        rows = [
            (evaluate_guided(r, s, label, **changes), e)
            for s, r, e in zip(args.seeds, runs[variant], evals[variant])
        ]
        scores = [_score(d, "model") for d, _ in rows]
        wins = "; ".join(_win_vs_base(d, "model", e) for d, e in rows)
        setting = ", ".join(f"{k} = {v}" for k, v in changes.items())
        print(f"| {variant} | {setting} | {summary(scores)} | {wins} |")

    if ("chats" in runs and not args.no_sweep) or "chats-noref" in runs:
        print("\n### re-sampled pairs (the same trained models, other sampler settings)\n")
        print("| model | sampler | oracle score | win rate vs base per seed [95% CI] |")
        print("| --- | --- | --- | --- |")
    if "chats" in runs and not args.no_sweep:
        for alpha in ALPHAS:
            extra("chats", f"alpha{alpha}", alpha=alpha)
        extra("chats", "scale5", scale=5.0)
    if "chats-noref" in runs:
        extra("chats-noref", "alpha0.0", alpha=0.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
