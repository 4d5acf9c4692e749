"""The trainer's ``task="module"`` path: a recipe whose program trains its own modules.

The program here is a least-squares fit y = W x of a fixed linear map from 64 noiseless items,
with a "reference" copied from the model every 3 steps (a stand-in for IMG's reference update):
small enough to check exact resume, accumulation and the hooks without any diffusion model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pref_apps import trainer
from pref_apps.config import ConfigError, build_config
from pref_apps.testing import run_metrics
from pref_core.protocols import ObjectiveOutput
from pref_core.recipes import Recipe

TRUE_W = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])  # (2, 3)


class _Regression:
    """A TrainingProgram: fit ``TRUE_W`` from items {"x": (3,), "y": (2,)}."""

    def __init__(self, copy_every: int = 3, bad_item: int | None = None, fail_after: int = 0):
        self.copy_every = copy_every
        self.bad_item = bad_item
        self.fail_after = fail_after
        self.calls = 0

    def setup(self, ctx):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(64, 3, generator=g)
        self.items = [{"x": x[i], "y": TRUE_W @ x[i], "id": f"item-{i}"} for i in range(64)]
        if self.bad_item is not None:
            self.items[self.bad_item] = "undecodable"
        self.model = nn.Linear(3, 2, bias=False)
        self.reference = copy.deepcopy(self.model).requires_grad_(False)
        self.copies = 0
        self.out_of_sync = 0

    def dataset(self):
        return self.items

    def modules(self):
        return {"model": self.model}

    def step(self, items, generators):
        self.calls += 1
        if self.fail_after and self.calls > self.fail_after:
            raise KeyboardInterrupt
        x = torch.stack([it["x"] for it in items])
        y = torch.stack([it["y"] for it in items])
        noise = torch.stack([torch.randn(2, generator=g) for g in generators]) * 1e-3
        errors = ((self.model(x) - y - noise) ** 2).mean(dim=1)
        ref = ((self.reference(x) - y) ** 2).mean()
        return ObjectiveOutput(
            loss=errors.mean(), metrics={"ref_mse": ref}, per_sample={"mse": errors.detach()}
        )

    def after_update(self, metrics):
        self.out_of_sync += 1
        if self.out_of_sync == self.copy_every:
            self.reference.load_state_dict(self.model.state_dict())
            self.copies += 1
            self.out_of_sync = 0
        return {"copies": float(self.copies)}

    def state_dict(self):
        return {
            "reference": self.reference.state_dict(),
            "copies": self.copies,
            "out_of_sync": self.out_of_sync,
        }

    def load_state_dict(self, state):
        self.reference.load_state_dict(state["reference"])
        self.copies = state["copies"]
        self.out_of_sync = state["out_of_sync"]

    def write_samples(self, path, step):
        return None

    def export(self, out_dir: Path):
        torch.save(self.model.state_dict(), out_dir / "model.pt")

    def describe(self):
        return "a linear regression on 64 items"


def _recipe(**program_kwargs) -> Recipe:
    def factory(copy_every: int = 3) -> _Regression:
        return _Regression(copy_every=copy_every, **program_kwargs)

    return Recipe(
        name="test-module",
        description="least squares",
        task="module",
        program=factory,
        defaults={"optim.lr": 0.1, "train.steps": 40, "train.batch_size": 4},
    )


def _config(recipe, run_dir, **overrides):
    values = {
        "log.output_dir": str(run_dir),
        "log.progress": False,
        "log.tensorboard": False,
        "log.sample_every": 0,
        **overrides,
    }
    return build_config(recipe, [("test", values)])


def test_module_recipe_trains_and_exports(tmp_path):
    recipe = _recipe()
    run = tmp_path / "run"
    trainer.run_recipe(recipe, _config(recipe, run), report=False)
    rows = run_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 41))
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.2 * first
    # the hook ran after every update: a copy after every third step
    assert [r["copies"] for r in rows] == [float(step // 3) for step in range(1, 41)]
    weights = torch.load(run / "final" / "model.pt")
    assert set(weights) == {"weight"}
    assert (run / "checkpoints").is_dir()


def test_module_recipe_program_settings_are_objective_keys(tmp_path):
    recipe = _recipe()
    config = _config(recipe, tmp_path, **{"objective.copy_every": 2})
    assert config.objective == {"copy_every": 2}
    with pytest.raises(ConfigError, match="copy_every"):
        _config(recipe, tmp_path, **{"objective.copy_evry": 2})


def test_module_recipe_needs_a_program_and_no_objective():
    with pytest.raises(ValueError, match="program"):
        Recipe(name="x", description="", task="module")
    with pytest.raises(ValueError, match="program"):
        Recipe(name="x", description="", task="denoising", program=_Regression)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    recipe = _recipe()
    one = tmp_path / "one"
    two = tmp_path / "two"
    trainer.run_recipe(recipe, _config(recipe, one, **{"train.batch_size": 8}), report=False)
    trainer.run_recipe(
        recipe,
        _config(recipe, two, **{"train.batch_size": 4, "train.grad_accum": 2}),
        report=False,
    )
    a = torch.load(one / "final" / "model.pt")["weight"]
    b = torch.load(two / "final" / "model.pt")["weight"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resume_continues_exactly_including_program_state(tmp_path):
    recipe = _recipe()
    full = tmp_path / "full"
    trainer.run_recipe(recipe, _config(recipe, full, **{"log.checkpoint_every": 20}), report=False)

    killed = tmp_path / "killed"
    interrupted = _recipe(fail_after=25)
    with pytest.raises(KeyboardInterrupt):
        trainer.run_recipe(
            interrupted, _config(interrupted, killed, **{"log.checkpoint_every": 20}), report=False
        )
    assert trainer.latest_checkpoint(killed).name == "step_000020"
    state = json.loads((trainer.latest_checkpoint(killed) / "state.json").read_text())
    assert state["step"] == 20
    config = _config(recipe, killed, **{"log.checkpoint_every": 20, "resume": "latest"})
    trainer.run_recipe(recipe, config, report=False)
    assert run_metrics(killed) == run_metrics(full)  # copies counter and reference included
    torch.testing.assert_close(
        torch.load(killed / "final" / "model.pt")["weight"],
        torch.load(full / "final" / "model.pt")["weight"],
        rtol=0,
        atol=0,
    )


def test_undecodable_items_are_skipped_and_listed(tmp_path):
    recipe = dataclasses.replace(_recipe(bad_item=5), name="test-module")
    run = tmp_path / "run"
    trainer.run_recipe(recipe, _config(recipe, run), report=False)
    assert "5" in json.loads((run / "skipped.json").read_text())
