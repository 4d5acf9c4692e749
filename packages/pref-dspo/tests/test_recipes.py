"""The DSPO recipes end to end through ``pref-train``, on tiny checkpoints and the toy base.

Every run goes through the CLI entry (``pref_apps.train.main``) with the recipe's own defaults
and only sizes overridden (tiny SD 1.5 / SDXL / FLUX.1 pipelines in the hub layout, a four-pair
Pick-a-Pic parquet file, 32 px, two steps of batch 2, float32 on the CPU). At step 1 the policy
equals the reference, so r_w − r_l = 0, the weight is λγ/2 and the residual is ε_θ − ε: the
loss equals the reference's mean error on the winners, which the run logs separately.
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

from pref_apps.testing import (
    build_tiny_models,
    probe,
    run_metrics,
    tiny_run_args,
    write_pickapic_parquet,
)
from pref_apps.train import main

MODELS = {
    "dspo-sd15": "sd15",
    "dspo-sd15-lora": "sd15",
    "dspo-sdxl": "sdxl",
    "dspo-sdxl-lora": "sdxl",
    "dspo-flux": "flux",
    "dspo-flux-lora": "flux",
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def pickapic_file(tmp_path_factory) -> Path:
    return write_pickapic_parquet(tmp_path_factory.mktemp("pickapic") / "train.parquet")


def test_recipes_are_registered():
    names = {ep.name for ep in importlib.metadata.entry_points(group="pref.recipes")}
    assert set(MODELS) | {"dspo-toy", "dspo-toy-flow", "dspo-e-toy", "dspo-ref-toy"} <= names


@pytest.mark.parametrize("recipe", list(MODELS))
def test_real_recipe_trains_and_exports(recipe, tiny_models, pickapic_file, tmp_path):
    run_dir = tmp_path / recipe
    base = tiny_models[MODELS[recipe]]
    args = tiny_run_args(recipe, base, f"pickapic:{pickapic_file}", run_dir)
    assert main(args) == 0
    rows = run_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values()), row
    first = rows[0]
    assert first["weight"] == pytest.approx(0.0005, rel=1e-6)  # λγ(1 − σ(0)), λ = 0.001
    assert first["reward_margin"] == 0.0
    assert first["loss"] == pytest.approx(first["reference_err_w"], rel=1e-5)
    import yaml  # with pref-apps

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["objective"]["lam"] == 0.001 and config["objective"]["variant"] == "dspo"

    from pref_core.backbones import load_backbone

    tuned, reference = load_backbone(str(run_dir / "final")), load_backbone(str(base))
    assert tuned.kind == reference.kind == MODELS[recipe]
    x_t, t, cond = probe(reference)
    with torch.no_grad():
        assert not torch.allclose(reference.denoiser(x_t, t, cond), tuned.denoiser(x_t, t, cond))


@pytest.mark.parametrize(
    ("recipe", "variant"),
    [("dspo-toy", "dspo"), ("dspo-e-toy", "dspo-e"), ("dspo-toy-flow", "dspo")],
)
def test_toy_recipes_run(recipe, variant, tmp_path):
    run_dir = tmp_path / recipe
    args = [
        "--recipe",
        recipe,
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
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    if variant == "dspo-e":  # constant weight λγ, no pairwise metrics
        assert rows[0]["weight"] == pytest.approx(0.001)
        assert "implicit_accuracy" not in rows[0]
    else:
        assert rows[0]["weight"] == pytest.approx(0.0005, rel=1e-6)
