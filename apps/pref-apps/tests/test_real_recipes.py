"""The real-model Diffusion-DPO recipes end to end through ``pref-train``, on tiny checkpoints.

Every run goes through the CLI entry (``pref_apps.train.main``) with the recipe's own defaults
and only sizes overridden: tiny SD 1.5 / SDXL / FLUX.1 pipelines saved in the hub layout
(``pref_core.backbones.tiny_sd`` / ``tiny_flux``), a four-pair Pick-a-Pic v2 parquet file,
32 px, two steps of batch 2, float32 on the CPU.

What is checked:

- the run exits 0 and writes two finite metric rows; at step 1 the policy equals the reference,
  so Δ_w = Δ_l = 0 and the Diffusion-DPO loss −log σ(−½β(Δ_w − Δ_l)) is exactly log 2;
- ``RUN/final`` loads with ``load_backbone`` and its denoiser differs from the base's;
- LoRA runs: ``RUN/lora/pytorch_lora_weights.safetensors`` loads into the stock diffusers
  pipeline with ``load_lora_weights`` and predicts what the merged ``RUN/final`` predicts;
- SDXL's micro-conditioning (``add_time_ids``) carries each pair's original size and crop;
- prompt dropout 1.0 trains on the empty prompt's encoding;
- ``data.cache=DIR`` builds the cache once and trains from it (a second run reuses it);
- ``pref-train validate`` accepts a good configuration and names each problem of a bad one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pytest.importorskip("pyarrow")


from pref_apps import trainer
from pref_apps.testing import (
    PICKAPIC_PAIRS,
    TINY_RESOLUTION,
    build_tiny_models,
    probe,
    run_metrics,
    tiny_run_args,
    write_pickapic_parquet,
)
from pref_apps.train import main

RESOLUTION = TINY_RESOLUTION
LORA_FILE = "pytorch_lora_weights.safetensors"

PAIRS = PICKAPIC_PAIRS

MODELS = {  # recipe → tiny model family
    "dpo-sd15": "sd15",
    "dpo-sd15-lora": "sd15",
    "dpo-sdxl": "sdxl",
    "dpo-sdxl-lora": "sdxl",
    "dpo-flux": "flux",
    "dpo-flux-lora": "flux",
}


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine torch's
    two spinning threads made this module ~6× slower (190 s instead of 30 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def pickapic_file(tmp_path_factory) -> Path:
    """A Pick-a-Pic v2 style parquet file: JPEG and PNG bytes, winners on both sides."""
    return write_pickapic_parquet(tmp_path_factory.mktemp("pickapic") / "train.parquet")


def _args(recipe: str, base: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_run_args(recipe, base, f"pickapic:{data}", run_dir, *extra)


class _Batches:
    """Records the batches the training step receives (``StepModule.forward``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list = []
        forward = trainer.StepModule.forward

        def spy(module, batch, generators, timestep_kwargs):
            self.seen.append(batch)
            return forward(module, batch, generators, timestep_kwargs)

        monkeypatch.setattr(trainer.StepModule, "forward", spy)


@pytest.fixture(scope="module")
def runs(tiny_models, pickapic_file, tmp_path_factory):
    """Each recipe's run, done once on first use: recipe → (exit status, run dir, batches)."""
    done: dict[str, tuple[int, Path, list]] = {}

    def run(recipe: str) -> tuple[int, Path, list]:
        if recipe not in done:
            run_dir = tmp_path_factory.mktemp("runs") / recipe
            with pytest.MonkeyPatch.context() as mp:
                batches = _Batches(mp)
                status = main(_args(recipe, tiny_models[MODELS[recipe]], pickapic_file, run_dir))
            done[recipe] = (status, run_dir, batches.seen)
        return done[recipe]

    return run


# ------------------------------------------------------------------------------ helpers
def _check_metrics(run_dir: Path) -> list[dict]:
    rows = run_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values()), row
    # Step 1: policy == reference, so Δ_w = Δ_l = 0 and the loss is −log σ(0) = log 2.
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    return rows


def _probe(backbone, seed: int = 0):
    """A fixed (x_t, t, cond) for comparing denoisers of one tiny family."""
    return probe(backbone, seed)


def _predict(denoiser, probe) -> torch.Tensor:
    with torch.no_grad():
        return denoiser(*probe)


# ------------------------------------------------------------------------------ the recipes
@pytest.mark.parametrize("recipe", list(MODELS))
def test_recipe_trains_and_exports(recipe, runs, tiny_models):
    from pref_core.backbones import load_backbone

    status, run_dir, batches = runs(recipe)
    assert status == 0
    assert len(batches) == 2
    _check_metrics(run_dir)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "report.md").is_file()

    base = load_backbone(str(tiny_models[MODELS[recipe]]))
    final = load_backbone(str(run_dir / "final"))
    assert final.kind == base.kind == MODELS[recipe]
    base_state, final_state = base.model.state_dict(), final.model.state_dict()
    assert base_state.keys() == final_state.keys()  # a plain model: LoRA merged, no peft keys
    changed = [k for k in base_state if not torch.equal(base_state[k], final_state[k])]
    assert changed, "the exported denoiser equals the base"

    probe = _probe(base)
    assert not torch.allclose(_predict(base.denoiser, probe), _predict(final.denoiser, probe))
    if recipe.endswith("-lora"):
        assert (run_dir / "lora" / LORA_FILE).is_file()
        # LoRA adapts the attention projections only: nothing else may change.
        assert all("attn" in k for k in changed), changed


@pytest.mark.parametrize("recipe", [r for r in MODELS if r.endswith("-lora")])
def test_lora_loads_into_the_stock_pipeline(recipe, runs, tiny_models):
    """``pipe.load_lora_weights(RUN/lora)`` reproduces the merged ``RUN/final`` denoiser."""
    from diffusers import DiffusionPipeline

    from pref_core.backbones import load_backbone

    status, run_dir, _ = runs(recipe)
    assert status == 0
    base_dir = tiny_models[MODELS[recipe]]
    pipe = DiffusionPipeline.from_pretrained(str(base_dir))
    pipe.load_lora_weights(str(run_dir / "lora"))
    assert pipe.get_list_adapters()  # the adapter landed on the denoiser

    final = load_backbone(str(run_dir / "final"))
    stock = type(final.denoiser)(getattr(pipe, final.denoiser_name))
    base = load_backbone(str(base_dir))
    probe = _probe(final)
    with_lora = _predict(stock, probe)
    torch.testing.assert_close(with_lora, _predict(final.denoiser, probe), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(with_lora, _predict(base.denoiser, probe))


def test_sdxl_micro_conditioning_carries_the_crops(runs):
    """add_time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w) per pair."""
    status, _, batches = runs("dpo-sdxl-lora")
    assert status == 0
    for batch in batches:
        ids = batch.cond["add_time_ids"]  # (B, 6)
        assert ids.shape == (2, 6)
        for prompt, row in zip(batch.extras["prompts"], ids.tolist(), strict=True):
            width, height = PAIRS[prompt]
            short = min(width, height)
            resized = (round(height * RESOLUTION / short), round(width * RESOLUTION / short))
            orig_h, orig_w, top, left, target_h, target_w = row
            assert (orig_h, orig_w) == (height, width)
            assert 0 <= top <= resized[0] - RESOLUTION and 0 <= left <= resized[1] - RESOLUTION
            assert (target_h, target_w) == (RESOLUTION, RESOLUTION)


# ------------------------------------------------------------------------------ data paths
def test_prompt_dropout_trains_on_the_empty_prompt(tiny_models, pickapic_file, tmp_path):
    from pref_core.backbones import load_backbone

    run_dir = tmp_path / "dropout"
    with pytest.MonkeyPatch.context() as mp:
        batches = _Batches(mp)
        status = main(
            _args(
                "dpo-sd15-lora",
                tiny_models["sd15"],
                pickapic_file,
                run_dir,
                "data.prompt_dropout=1.0",
            )
        )
    assert status == 0
    _check_metrics(run_dir)
    empty = load_backbone(str(tiny_models["sd15"])).encode(["", ""])["prompt_embeds"]
    assert len(batches.seen) == 2
    for batch in batches.seen:
        assert all(p in PAIRS for p in batch.extras["prompts"])  # the records keep their captions
        torch.testing.assert_close(batch.cond["prompt_embeds"], empty)


def test_latent_cache_is_built_once_then_reused(tiny_models, pickapic_file, tmp_path, monkeypatch):
    import pref_data

    builds = []
    build_cache = pref_data.build_cache

    def counting(*args, **kwargs):
        builds.append(kwargs["out_dir"])
        return build_cache(*args, **kwargs)

    monkeypatch.setattr(pref_data, "build_cache", counting)
    cache = tmp_path / "cache"
    args = ("dpo-sd15-lora", tiny_models["sd15"], pickapic_file)
    assert main(_args(*args, tmp_path / "first", f"data.cache={cache}")) == 0
    assert builds == [cache] and (cache / "manifest.json").is_file()
    manifest = (cache / "manifest.json").read_text()
    assert json.loads(manifest)["count"] == len(PAIRS)

    assert main(_args(*args, tmp_path / "second", f"data.cache={cache}")) == 0
    assert builds == [cache]  # not rebuilt
    assert (cache / "manifest.json").read_text() == manifest
    first, second = _check_metrics(tmp_path / "first"), _check_metrics(tmp_path / "second")
    assert first == second  # both trained on the same cached latents and prompts


def test_cached_sdxl_keeps_the_crops(tiny_models, pickapic_file, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        batches = _Batches(mp)
        status = main(
            _args(
                "dpo-sdxl-lora",
                tiny_models["sdxl"],
                pickapic_file,
                tmp_path / "run",
                f"data.cache={tmp_path / 'cache'}",
            )
        )
    assert status == 0
    for batch in batches.seen:
        original = [tuple(row[:2]) for row in batch.cond["add_time_ids"].tolist()]
        assert original == [PAIRS[p][::-1] for p in batch.extras["prompts"]]


# ------------------------------------------------------------------------------ validate
def test_no_is_a_choice_not_a_boolean():
    """YAML reads ``no`` as false; ``model.mixed_precision=no`` still means the choice "no"."""
    from pref_apps.config import build_config, parse_overrides
    from pref_apps.recipes import DPO_SDXL

    config = build_config(DPO_SDXL, [("cli", parse_overrides(["model.mixed_precision=no"]))])
    assert config.model.mixed_precision == "no"
    assert build_config(DPO_SDXL, []).model.mixed_precision == "bf16"


def test_validate_accepts_a_good_configuration(tiny_models, pickapic_file, capsys):
    status = main(
        [
            "validate",
            "--recipe",
            "dpo-sdxl-lora",
            f"model.base={tiny_models['sdxl']}",
            f"data.source=pickapic:{pickapic_file}",
            "model.mixed_precision=no",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "configuration of dpo-sdxl-lora is valid" in out


def test_validate_names_each_problem(tmp_path, capsys):
    not_a_pipeline = tmp_path / "not-a-pipeline"
    not_a_pipeline.mkdir()
    missing = tmp_path / "missing.parquet"
    status = main(
        [
            "validate",
            "--recipe",
            "dpo-flux-lora",
            f"model.base={not_a_pipeline}",
            f"data.source=pickapic:{missing}",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert "the configuration has problems" in err
    assert "model_index.json" in err and str(not_a_pipeline) in err
    assert "data.source" in err and "missing.parquet" in err
