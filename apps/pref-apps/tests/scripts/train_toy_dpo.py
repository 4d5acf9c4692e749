"""Train the dpo-toy recipe briefly; run directly or under `accelerate launch` (test_distributed)."""

import sys

from pref_apps import recipes
from pref_apps.config import build_config
from pref_apps.trainer import run_recipe


def main(run_dir: str, batch_size: int, accum: int) -> None:
    settings = {
        "model.base": "toy",
        "data.size": 16,
        "train.batch_size": batch_size,
        "train.grad_accum": accum,
        "train.steps": 3,
        "optim.lr": 1e-3,
        "objective.beta": 50.0,
        "log.sample_prompts": ["a small red circle at the center"],
        "log.sample_steps": 2,
        "log.tensorboard": False,
        "log.progress": False,
        "eval.prompts": None,
    }
    config = build_config(recipes.DPO_TOY, [("test", settings)])
    run_recipe(recipes.DPO_TOY, config, run_dir=run_dir, report=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
