"""The Diff-contrast recipes end to end through ``pref-train``, on tiny checkpoints.

Each run goes through the CLI entry with the recipe's defaults and only sizes overridden (tiny
SD 1.5 / SDXL / FLUX.1 pipelines and a tiny CLIP saved in the hub layout, a four-pair Pick-a-Pic
parquet file, 32 px, two steps of M = 2 pairs). At step 1 the policy equals the reference, so
every Z_ij is 0 and the loss is −Σ_j ω_ij log σ(0) = log 2 whatever the weights.
"""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("pref_apps")
pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("pyarrow")

from pref_apps import trainer
from pref_apps.testing import build_tiny_models, run_metrics, tiny_run_args, write_pickapic_parquet
from pref_apps.train import main
from pref_core.backbones.tiny_sd import build_tiny_clip

MODELS = {
    "contrast-sd15": "sd15",
    "contrast-sd15-lora": "sd15",
    "contrast-sdxl": "sdxl",
    "contrast-sdxl-lora": "sdxl",
    "contrast-flux": "flux",
    "contrast-flux-lora": "flux",
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREF_CACHE", str(tmp_path / "pref-cache"))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def pickapic_file(tmp_path_factory) -> Path:
    return write_pickapic_parquet(tmp_path_factory.mktemp("pickapic") / "train.parquet")


def _spy_batches(monkeypatch) -> list:
    seen: list = []
    forward = trainer.StepModule.forward

    def spy(module, batch, generators, timestep_kwargs):
        seen.append(batch)
        return forward(module, batch, generators, timestep_kwargs)

    monkeypatch.setattr(trainer.StepModule, "forward", spy)
    return seen


def test_recipes_are_registered():
    names = {ep.name for ep in importlib.metadata.entry_points(group="pref.recipes")}
    assert set(MODELS) | {"contrast-toy", "contrast-toy-flow"} <= names


@pytest.mark.parametrize("recipe", list(MODELS))
def test_real_recipe_trains_with_clip_weights(
    recipe, tiny_models, tiny_clip, pickapic_file, tmp_path, monkeypatch
):
    batches = _spy_batches(monkeypatch)
    run_dir = tmp_path / recipe
    args = tiny_run_args(
        recipe,
        tiny_models[MODELS[recipe]],
        f"pickapic:{pickapic_file}",
        run_dir,
        f"objective.embedder=clip:{tiny_clip}",
    )
    assert main(args) == 0
    rows = run_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values()), row
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert 0.0 < rows[0]["weight_diagonal"] <= 1.0
    # every batch carried the two pairs' embeddings: unit rows of [image; text]/√2 → norm 1
    for batch in batches:
        fw, fl = batch.extras["contrast_w"], batch.extras["contrast_l"]
        assert fw.shape == fl.shape and fw.shape[0] == 2
        torch.testing.assert_close(fw.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
        assert not torch.equal(fw, fl)  # winner and loser images differ


def test_embeddings_are_computed_once_and_reused(
    tiny_models, tiny_clip, pickapic_file, tmp_path, capfd
):
    def run(name: str, *extra: str) -> None:
        args = tiny_run_args(
            "contrast-sd15-lora",
            tiny_models["sd15"],
            f"pickapic:{pickapic_file}",
            tmp_path / name,
            f"objective.embedder=clip:{tiny_clip}",
            *extra,
        )
        assert main(args) == 0

    run("first")
    assert "reusing" not in capfd.readouterr().err
    run("second")
    assert "reusing 4 pair embeddings" in capfd.readouterr().err
    # with a latent cache the embeddings live beside it
    cache = tmp_path / "latents"
    run("cached", f"data.cache={cache}")
    assert (cache / "derived" / "contrast-embeddings" / "embeddings.safetensors").is_file()


def test_modality_changes_the_weights_not_the_cache(
    tiny_models, tiny_clip, pickapic_file, tmp_path
):
    diagonals = {}
    for modality in ("image", "text", "both"):
        run_dir = tmp_path / modality
        args = tiny_run_args(
            "contrast-sd15",
            tiny_models["sd15"],
            f"pickapic:{pickapic_file}",
            run_dir,
            f"objective.embedder=clip:{tiny_clip}",
            f"objective.modality={modality}",
            "objective.tau=0.05",
        )
        assert main(args) == 0
        diagonals[modality] = run_metrics(run_dir)[0]["weight_diagonal"]
    # the pairs of a batch have different prompts: text weights favour the own pair's loser
    assert diagonals["text"] > diagonals["image"]
    assert len(set(diagonals.values())) == 3


def test_toy_recipe_runs(tmp_path):
    run_dir = tmp_path / "contrast-toy"
    args = [
        "--recipe",
        "contrast-toy",
        "train.steps=2",
        "train.batch_size=4",
        "data.size=16",
        "eval.prompts=null",
        "log.sample_every=0",
        "log.tensorboard=false",
        "log.progress=false",
        f"log.output_dir={run_dir}",
    ]
    assert main(args) == 0
    rows = run_metrics(run_dir)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    # τ = 0.01: each winner's weight sits on (nearly) one loser, its own or a closer one
    assert rows[0]["weight_perplexity"] < 1.5
    assert 0.0 < rows[0]["weight_diagonal"] <= 1.0


def test_missing_clip_model_is_a_clear_error(tmp_path, capsys):
    args = [
        "--recipe",
        "contrast-toy",
        f"objective.embedder=clip:{tmp_path / 'no-such-clip'}",
        "train.steps=1",
        "data.size=8",
        "eval.prompts=null",
        "log.progress=false",
        f"log.output_dir={tmp_path / 'run'}",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "preparing the training data failed: cannot load the CLIP model" in err
    assert "no-such-clip" in err and "config.json" in err
