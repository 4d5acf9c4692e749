"""The training loop: exact resume, NaN stop, data order, run directory, export, config errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from pref_apps import recipes, trainer
from pref_apps.config import ConfigError, build_config
from pref_apps.testing import run_metrics
from pref_core.objectives import DiffusionDPO
from pref_core.recipes import Recipe

FAST = {
    "model.base": "toy",
    "data.size": 24,
    "train.batch_size": 2,
    "train.steps": 6,
    "optim.lr": 1e-3,
    "optim.schedule": "cosine",
    "optim.warmup_steps": 2,
    "log.sample_prompts": ["a small red circle at the center"],
    "log.sample_steps": 2,
    "log.tensorboard": False,
    "log.progress": False,
    "eval.prompts": None,
    "objective.beta": 50.0,
}


def _config(recipe: Recipe, run_dir: Path, **extra):
    settings = {**FAST, **extra}
    if recipe.objective is None:
        settings = {k: v for k, v in settings.items() if not k.startswith("objective.")}
    config = build_config(recipe, [("test", settings)])
    config.log.output_dir = str(run_dir)
    return config


class _Interrupt(Exception):
    pass


def _interrupting(after_calls: int):
    """A Diffusion-DPO objective that raises on its (after_calls + 1)-th call (a killed run)."""

    class Objective(DiffusionDPO):
        calls = 0

        def __call__(self, *args, **kwargs):
            type(self).calls += 1
            if type(self).calls > after_calls:
                raise _Interrupt
            return super().__call__(*args, **kwargs)

    return Objective


def test_resume_continues_exactly(tmp_path):
    full = tmp_path / "full"
    trainer.run_recipe(
        recipes.DPO_TOY, _config(recipes.DPO_TOY, full, **{"log.checkpoint_every": 3}), report=False
    )
    reference = run_metrics(full)
    assert [row["step"] for row in reference] == list(range(1, 7))

    killed = tmp_path / "killed"
    interrupted = dataclasses.replace(recipes.DPO_TOY, objective=_interrupting(after_calls=4))
    with pytest.raises(_Interrupt):
        trainer.run_recipe(
            interrupted, _config(interrupted, killed, **{"log.checkpoint_every": 3}), report=False
        )
    assert [row["step"] for row in run_metrics(killed)] == [1, 2, 3, 4]
    assert trainer.latest_checkpoint(killed).name == "step_000003"

    config = _config(recipes.DPO_TOY, killed, **{"log.checkpoint_every": 3, "resume": "latest"})
    trainer.run_recipe(recipes.DPO_TOY, config, report=False)
    resumed = run_metrics(killed)
    assert [row["step"] for row in resumed] == list(range(1, 7))
    for a, b in zip(reference, resumed):
        assert a == b, (a, b)  # bit-identical on CPU: same data, noise, optimiser and LR state
    full_weights = (full / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    resumed_weights = (
        killed / "final" / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
    assert full_weights == resumed_weights


def test_nan_loss_stops_with_a_diagnostic_and_keeps_the_last_checkpoint(tmp_path):
    class NaNAtThirdStep(DiffusionDPO):
        calls = 0

        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            type(self).calls += 1
            if type(self).calls == 3:
                return dataclasses.replace(out, loss=out.loss * math.nan)
            return out

    recipe = dataclasses.replace(recipes.DPO_TOY, objective=NaNAtThirdStep)
    run = tmp_path / "run"
    with pytest.raises(trainer.TrainingDiverged) as info:
        trainer.run_recipe(
            recipe, _config(recipe, run, **{"log.checkpoint_every": 2}), report=False
        )
    message = str(info.value)
    assert "step 3" in message and "nan" in message
    assert "batch ids:" in message and "step_000002" in message
    ckpt = trainer.latest_checkpoint(run)
    assert ckpt.name == "step_000002"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    diverged = json.loads((run / "diverged.json").read_text())
    assert diverged["step"] == 3 and len(diverged["ids"]) == 2
    assert [row["step"] for row in run_metrics(run)] == [1, 2]
    assert not (run / "final").exists()


def test_run_directory_and_export(tmp_path):
    from pref_core.backbones import load_backbone

    run = tmp_path / "run"
    trainer.run_recipe(
        recipes.DPO_TOY, _config(recipes.DPO_TOY, run, **{"train.steps": 2}), report=False
    )
    assert (run / "config.yaml").exists()
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_000000.png",
        "step_000002.png",
    ]
    rows = run_metrics(run)
    assert {"loss", "implicit_accuracy", "lr", "grad_norm"} <= set(rows[0])
    # Diffusion-DPO at step 1: policy == reference, so the loss is exactly log 2.
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    # The exported model is the trained policy: it differs from the (seed-0) initial toy model.
    tuned = load_backbone(str(run / "final"))
    base = load_backbone("toy", seed=0)
    diffs = [
        (a - b).abs().max().item()
        for a, b in zip(tuned.model.parameters(), base.model.parameters())
    ]
    assert max(diffs) > 0
    assert len(trainer.list_checkpoints(run)) == 1


def test_data_order_is_a_pure_function_of_seed_and_step():
    order = trainer.DataOrder(size=10, seed=3, global_batch=4, accum=2)
    seen = [i for step in range(5) for micro in range(2) for i in order.indices(step, micro)]
    # 40 draws = 4 epochs, each a permutation of range(10).
    for epoch in range(4):
        assert sorted(seen[10 * epoch : 10 * (epoch + 1)]) == list(range(10))
    again = trainer.DataOrder(size=10, seed=3, global_batch=4, accum=2)
    assert again.indices(3, 1) == order.indices(3, 1)
    assert trainer.DataOrder(size=10, seed=4, global_batch=4, accum=2).indices(
        0, 0
    ) != order.indices(0, 0)


def test_lr_schedules_by_hand():
    warm = trainer.lr_lambda("constant", 4, 10)
    assert [warm(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear = trainer.lr_lambda("linear", 0, 10)
    assert linear(5) == pytest.approx(0.5)
    cosine = trainer.lr_lambda("cosine", 2, 12)
    assert (
        cosine(2) == pytest.approx(1.0)
        and cosine(7) == pytest.approx(0.5)
        and cosine(12) == pytest.approx(0.0)
    )


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match=r"optim.lr expects a float, got 'fast'"):
        build_config(recipes.DPO_TOY, [("cli", {"optim.lr": "fast"})])
    with pytest.raises(ConfigError, match=r"Did you mean 'steps'"):
        build_config(recipes.DPO_TOY, [("cli", {"train.stepz": 3})])
    with pytest.raises(ConfigError, match=r"takes: beta, halve_beta, kernel_backend"):
        build_config(recipes.DPO_TOY, [("cli", {"objective.temperature": 3})])
    with pytest.raises(ConfigError, match=r"train.batch_size must be at least 1"):
        build_config(recipes.DPO_TOY, [("cli", {"train.batch_size": 0})])
    with pytest.raises(ConfigError, match=r"unknown section 'optimizer'"):
        build_config(recipes.DPO_TOY, [("cli", {"optimizer.lr": 1})])


def test_resume_refuses_a_different_global_batch(tmp_path):
    run = tmp_path / "run"
    trainer.run_recipe(
        recipes.DPO_TOY, _config(recipes.DPO_TOY, run, **{"train.steps": 1}), report=False
    )
    config = _config(
        recipes.DPO_TOY, run, **{"train.steps": 2, "train.batch_size": 3, "resume": "latest"}
    )
    with pytest.raises(trainer.ResumeError, match="global batch of 2"):
        trainer.run_recipe(recipes.DPO_TOY, config, report=False)


def test_toy_pretrained_base_is_trained_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PREF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        recipes,
        "TOY_PRETRAIN",
        dataclasses.replace(
            recipes.TOY_PRETRAIN,
            defaults={
                **recipes.TOY_PRETRAIN.defaults,
                "train.steps": 2,
                "train.batch_size": 2,
                "data.size": 8,
                "log.sample_steps": 2,
            },
        ),
    )
    logs: list[str] = []
    first = trainer.resolve_base("toy-pretrained:toy", progress=False, log=logs.append)
    assert Path(first, "model_index.json").exists() and len(logs) == 1
    second = trainer.resolve_base("toy-pretrained:toy", progress=False, log=logs.append)
    assert second == first and len(logs) == 1
    with pytest.raises(ValueError, match="'toy' and 'toy-flux'"):
        trainer.resolve_base("toy-pretrained:sdxl")


def test_per_process_seeds_do_not_depend_on_the_split():
    a = trainer.sample_generators(0, 5, [0, 1, 2, 3])
    b = trainer.sample_generators(0, 5, [2, 3])
    assert torch.equal(torch.randn(3, generator=a[2]), torch.randn(3, generator=b[0]))


def _interrupting_step(after_calls: int):
    from pref_core.recipes import denoising_step

    calls = []

    def step(ctx, batch):
        calls.append(1)
        if len(calls) > after_calls:
            raise _Interrupt
        return denoising_step(ctx, batch)

    return step


@pytest.mark.parametrize("kind", ["toy", "toy-flux"])
def test_pretraining_trains_the_text_encoder_and_resumes_exactly(tmp_path, kind):
    from pref_core.backbones import load_backbone

    settings = {
        "model.base": kind,
        "train.steps": 4,
        "data.size": 16,
        "log.checkpoint_every": 2,
        "data.prompt_dropout": 0.5,
    }
    pretrain = recipes.TOY_PRETRAIN
    full = tmp_path / "full"
    trainer.run_recipe(pretrain, _config(pretrain, full, **settings), report=False)
    trained = load_backbone(str(full / "final"))
    fresh = load_backbone(kind, seed=0)
    moved = [
        (a - b).abs().max().item()
        for a, b in zip(trained.encoder.parameters(), fresh.encoder.parameters())
    ]
    # Every text-encoder tensor trained (the toy base is from scratch).
    assert min(moved) > 0

    killed = tmp_path / "killed"
    interrupted = dataclasses.replace(pretrain, step=_interrupting_step(3))
    with pytest.raises(_Interrupt):
        trainer.run_recipe(interrupted, _config(interrupted, killed, **settings), report=False)
    trainer.run_recipe(
        pretrain, _config(pretrain, killed, **settings, resume="latest"), report=False
    )
    assert run_metrics(killed) == run_metrics(full)
    for path in sorted((full / "final").rglob("*.safetensors")):
        twin = killed / "final" / path.relative_to(full / "final")
        assert path.read_bytes() == twin.read_bytes(), path.name


def test_text_encoder_training_is_refused_outside_toy_pretraining(tmp_path):
    config = _config(recipes.DPO_TOY, tmp_path / "run", **{"model.train_text_encoder": True})
    with pytest.raises(ValueError, match="train_text_encoder is for training toy bases"):
        trainer.run_recipe(recipes.DPO_TOY, config, report=False)


def test_toy_pair_images_holds_both_images_of_every_pair():
    """data.source=toy-pair-images (CHATS Table 4's "single model, full data"): item 2i is pair
    i's winner, 2i + 1 its loser, each with the pair's prompt."""
    from pref_data import toy

    config = build_config(
        recipes.SFT_TOY, [("test", {"data.source": "toy-pair-images", "data.size": 6})]
    )
    data = trainer.build_data(config, recipes.SFT_TOY, _ToyBackbone(), main=True)
    pairs = toy.PreferencePairs(6, seed=config.data.seed, flip_rate=config.data.flip_rate)
    assert data.kind == "images" and len(data.dataset) == 12
    for i in range(6):
        winner, loser = data.dataset[2 * i], data.dataset[2 * i + 1]
        assert winner["prompt"] == loser["prompt"] == pairs[i]["prompt"]
        assert torch.equal(torch.as_tensor(winner["image"]), torch.as_tensor(pairs[i]["winner"]))
        assert torch.equal(torch.as_tensor(loser["image"]), torch.as_tensor(pairs[i]["loser"]))


class _ToyBackbone:
    sample_size = (32, 32)


def test_a_finished_run_can_be_the_base(tmp_path):
    """Two-stage training (SFT, then a preference method): model.base=RUN means RUN/final."""
    from pref_apps.models import ModelSpecError
    from pref_apps.trainer import resolve_base

    run = tmp_path / "sft-run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model_index.json").write_text("{}")
    (run / "config.yaml").write_text("recipe: sft-toy\n")
    assert resolve_base(str(run)) == str(run / "final")
    assert resolve_base(str(run / "final")) == str(run / "final")  # a pipeline folder: itself
    assert resolve_base("some/hub-id") == "some/hub-id"

    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints" / "step_000003").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("recipe: sft-toy\n")
    with pytest.raises(ModelSpecError, match="step_000003"):
        resolve_base(str(unfinished))
