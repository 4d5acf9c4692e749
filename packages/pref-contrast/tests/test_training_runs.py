"""Diff-contrast through the trainer on a toy backbone: an interrupted run resumes exactly (the
policy, its optimiser state, and the pair embeddings attached to every batch)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

pytest.importorskip("pref_apps")

from pref_apps import trainer
from pref_apps.config import build_config
from pref_apps.testing import run_metrics
from pref_contrast import DiffContrast
from pref_contrast.recipes import CONTRAST_TOY

FAST = {
    "model.base": "toy",
    "data.size": 24,
    "train.batch_size": 4,
    "train.steps": 6,
    "optim.lr": 1e-3,
    "objective.tau": 0.5,
    "log.sample_every": 0,
    "log.checkpoint_every": 3,
    "log.tensorboard": False,
    "log.progress": False,
    "eval.prompts": None,
}


class _Interrupt(Exception):
    pass


class _DiesAfterFour(DiffContrast):
    calls = 0

    def __call__(self, *args, **kwargs):
        type(self).calls += 1
        if type(self).calls > 4:
            raise _Interrupt
        return super().__call__(*args, **kwargs)


def _config(run_dir: Path, **extra):
    config = build_config(CONTRAST_TOY, [("test", {**FAST, **extra})])
    config.log.output_dir = str(run_dir)
    return config


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PREF_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_interrupted_contrast_run_resumes_exactly(tmp_path):
    full = tmp_path / "full"
    trainer.run_recipe(CONTRAST_TOY, _config(full), report=False)
    reference = run_metrics(full)
    assert [row["step"] for row in reference] == list(range(1, 7))
    assert all(row["weight_perplexity"] > 1.0 for row in reference)  # τ 0.5: real contrast

    killed = tmp_path / "killed"
    _DiesAfterFour.calls = 0
    dying = dataclasses.replace(CONTRAST_TOY, objective=_DiesAfterFour)
    with pytest.raises(_Interrupt):
        trainer.run_recipe(dying, _config(killed), report=False)
    assert trainer.latest_checkpoint(killed).name == "step_000003"
    trainer.run_recipe(CONTRAST_TOY, _config(killed, resume="latest"), report=False)
    resumed = run_metrics(killed)
    assert [row["step"] for row in resumed] == list(range(1, 7))
    for a, b in zip(reference, resumed):
        assert a == b, (a, b)
    weights = "final/unet/diffusion_pytorch_model.safetensors"
    assert (full / weights).read_bytes() == (killed / weights).read_bytes()
