"""CHATS through the trainer on the toy backbone: an interrupted run resumes exactly (both
policies, their optimiser state and the prompt-drop draws), in full and LoRA mode."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("pref_apps")
pytest.importorskip("peft")

from pref_apps import trainer
from pref_apps.config import build_config
from pref_apps.testing import run_metrics
from pref_chats import CHATS
from pref_chats.recipes import CHATS_TOY

FAST = {
    "model.base": "toy",
    "data.size": 24,
    "train.batch_size": 2,
    "train.steps": 6,
    "optim.lr": 1e-3,
    "log.sample_prompts": ["a small red circle at the center"],
    "log.sample_steps": 2,
    "log.sample_every": 3,
    "log.checkpoint_every": 3,
    "log.tensorboard": False,
    "log.progress": False,
    "eval.prompts": None,
}


class _Interrupt(Exception):
    pass


class _DiesAfterFour(CHATS):
    calls = 0

    def __call__(self, *args, **kwargs):
        type(self).calls += 1
        if type(self).calls > 4:
            raise _Interrupt
        return super().__call__(*args, **kwargs)


def _config(run_dir: Path, **extra):
    config = build_config(CHATS_TOY, [("test", {**FAST, **extra})])
    config.log.output_dir = str(run_dir)
    return config


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_interrupted_chats_run_resumes_exactly(tmp_path, mode):
    extra = {"model.mode": mode, "model.lora_rank": 4}
    full = tmp_path / "full"
    trainer.run_recipe(CHATS_TOY, _config(full, **extra), report=False)
    reference = run_metrics(full)
    assert [row["step"] for row in reference] == list(range(1, 7))
    assert any(row["uncond_fraction"] > 0 for row in reference)  # θ⁻ saw the null

    killed = tmp_path / "killed"
    _DiesAfterFour.calls = 0
    dying = dataclasses.replace(CHATS_TOY, objective=_DiesAfterFour)
    with pytest.raises(_Interrupt):
        trainer.run_recipe(dying, _config(killed, **extra), report=False)
    assert trainer.latest_checkpoint(killed).name == "step_000003"
    trainer.run_recipe(CHATS_TOY, _config(killed, **extra, resume="latest"), report=False)
    resumed = run_metrics(killed)
    assert [row["step"] for row in resumed] == list(range(1, 7))
    for a, b in zip(reference, resumed):
        assert a == b, (a, b)
    for name in ("unet", "dispreferred/unet"):
        weights = f"final/{name}/diffusion_pytorch_model.safetensors"
        assert (full / weights).read_bytes() == (killed / weights).read_bytes()
    manifest = json.loads((killed / "final" / "pref_model.json").read_text())
    assert manifest["method"] == "chats"
    assert (killed / "samples" / "step_000003.png").is_file()  # grids from the pair
    if mode == "lora":
        assert (killed / "lora" / "pref_model.json").is_file()
