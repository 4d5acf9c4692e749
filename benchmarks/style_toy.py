"""Style alignment on the toy world: the analogue of Diff-contrast's Table 2 (FID, lower is better).

Builds a styled toy dataset (``pref-style-data``: 2048 toy pairs, one image of each restyled by
a deterministic toy style and labelled preferred), then fine-tunes the toy diffusion base on it:

- one stage: ``sft`` (sft-toy), ``dpo`` (dpo-toy), ``contrast`` (contrast-toy), from the base;
- two stages: ``sft+sft``, ``sft+dpo``, ``sft+contrast``: the second recipe starts from the
  ``sft`` run's export (``model.base=RUN/final``), as in the paper (Rafailov et al.'s SFT first).

Every stage trains 150 steps of 16 pairs with the recipe's toy settings (no oracle evaluation:
the toy prompts are graded by FID here). FID compares the model's images of the first 500
training prompts (DDIM 20 steps, diffusers' w = 3, seed i for prompt i) with those prompts'
styled images, on the toy feature extractor (``pref_apps.fid.ToyFeatures``); ``base`` is the
untuned toy base. Prints a markdown table.

    python benchmarks/style_toy.py                     # winter
    python benchmarks/style_toy.py --style sketch
    python benchmarks/style_toy.py --only sft+contrast --tau 1   # Diff-contrast at τ = 1

``--tau T`` trains the contrast stages with ``objective.tau=T`` (runs named ``...-tauT``): the
style column of the paper's τ ablation (Table 3).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RUNS = ("sft", "dpo", "contrast", "sft+sft", "sft+dpo", "sft+contrast")
PAIRS = 2048
FID_PROMPTS = 500


def build_data(style: str, out: Path, seed: int) -> Path:
    from pref_contrast.style import build_style_dataset, make_editor

    data = out / f"data-{style}-seed{seed}"
    if not (data / "style_manifest.json").exists():
        build_style_dataset(f"toy:{PAIRS}", data, make_editor(style), seed=seed, progress=False)
    return data


def train(
    name: str, data: Path, out: Path, seed: int, extra: dict, tau: float | None = None
) -> Path:
    from pref_apps import recipes as apps_recipes
    from pref_apps.config import build_config
    from pref_apps.trainer import run_recipe
    from pref_contrast import recipes as contrast_recipes

    stage = name.split("+")[-1]
    if stage != "contrast":
        tau = None
    run_dir = out / (f"{name}-seed{seed}" + (f"-tau{tau:g}" if tau is not None else ""))
    if (run_dir / "final").exists():
        return run_dir
    recipe = {
        "sft": apps_recipes.SFT_TOY,
        "dpo": apps_recipes.DPO_TOY,
        "contrast": contrast_recipes.CONTRAST_TOY,
    }[stage]
    base = "toy-pretrained:toy"
    if "+" in name:
        base = str(train(name.split("+")[0], data, out, seed, extra) / "final")
    settings = {
        "model.base": base,
        "data.source": f"pickapic:{data}",
        # toy prompts name positions: no flips; the toy images are already at resolution
        "data.flip_prob": 0.0,
        "data.crop": "center",
        "train.seed": seed,
        "data.seed": seed,
        "eval.prompts": None,
        "log.progress": False,
        "log.output_dir": str(run_dir),
        **extra,
        **({"objective.tau": tau} if tau is not None else {}),
    }
    config = build_config(recipe, [("benchmark", settings)])
    started = time.perf_counter()
    run_recipe(recipe, config, run_dir=run_dir)
    print(f"{run_dir.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return run_dir


def fid_of(model: str, data: Path, label: str, out: Path) -> float:
    from pref_apps.fid import fid_of_model

    path = out / "fid" / f"{label}.json"
    if not path.exists():
        result = fid_of_model(
            model,
            f"pickapic:{data}",
            extractor="toy",
            limit=FID_PROMPTS,
            steps=20,
            guidance_scale=3.0,
            seed=0,
            batch_size=50,
            progress=False,
            out=out / "fid" / label,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    return json.loads(path.read_text())["fid"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--style", default="winter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--out", type=Path, default=Path("runs/style-toy"))
    parser.add_argument("--tau", type=float, default=None, help="τ of the contrast stages")
    parser.add_argument("settings", nargs="*", help="extra KEY=VALUE settings for every stage")
    args = parser.parse_args(argv)
    from pref_apps.config import parse_overrides

    out = args.out / args.style
    extra = parse_overrides(args.settings)
    data = build_data(args.style, out, args.seed)
    rows = [("base", fid_of("toy-pretrained:toy", data, "base", out))]
    for name in args.only:
        run_dir = train(name, data, out, args.seed, extra, args.tau)
        rows.append((name, fid_of(str(run_dir), data, run_dir.name, out)))
    print(f"| {args.style} (toy, seed {args.seed}) | FID to the styled training images |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
