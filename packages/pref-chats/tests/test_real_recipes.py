"""The real-model CHATS recipes end to end through ``pref-train``, on tiny checkpoints.

Every run goes through the CLI entry (``pref_apps.train.main``) with the recipe's own defaults
and only sizes overridden: tiny SD 1.5 / SDXL / FLUX.1 pipelines saved in the hub layout
(``pref_core.backbones.tiny_sd`` / ``tiny_flux``), a four-pair OpenImagePreferences parquet
file, 32 px, two steps of batch 2, float32 on the CPU.

What is checked:

- the run exits 0 and writes two finite metric rows; at step 1 both policies equal the
  reference, so Δ_w = Δ_l = 0 and the CHATS loss −log σ(−T(Δ_w + Δ_l)) is exactly log 2;
- ``RUN/final/pref_model.json`` names method "chats" and the recipe's sampler (s = 5,
  α = 0.5); ``RUN/final`` loads with ``load_for_sampling`` as a ``GuidedModel`` whose
  "preferred" and "dispreferred" denoisers differ from each other and from the base;
- LoRA runs: ``RUN/lora`` holds the manifest and both adapters in diffusers' format, and
  loads (two adapters on one base) into a pair that predicts what the merged ``RUN/final``
  pair predicts, denoiser by denoiser;
- ``pref-sample RUN`` samples the pair and writes ``grid.png``;
- the trainer writes its final sample grid (``samples/step_000002.png``; existence only);
- SDXL (full and LoRA) with ``objective.p_uncond=1.0``: the dispreferred model is trained on
  the empty prompt's embeddings (``objective.null=zeros``: zeroed embeddings) with each pair's
  own size ids (``add_time_ids``) kept, while the preferred model keeps the prompts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("pref_apps")
pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


from pref_apps.testing import (  # noqa: E402
    TINY_RESOLUTION,
    build_tiny_models,
    encoded_image,
    probe,
    run_metrics,
    tiny_run_args,
)
from pref_apps.train import main  # noqa: E402

RESOLUTION = TINY_RESOLUTION
LORA_FILE = "pytorch_lora_weights.safetensors"
POLICIES = ("preferred", "dispreferred")

# Four pairs; (width, height) differs per prompt so SDXL's original_size says which pair it is.
PAIRS = {
    "a photo of a cat sitting on a red chair": (48, 40),
    "a dog running in the green park": (40, 56),
    "a bowl of fresh fruit on a wooden table": (64, 48),
    "a small house by the lake at sunset": (36, 36),
}

MODELS = {  # recipe → tiny model family
    "chats-sd15": "sd15",
    "chats-sd15-lora": "sd15",
    "chats-sdxl": "sdxl",
    "chats-sdxl-lora": "sdxl",
    "chats-flux": "flux",
    "chats-flux-lora": "flux",
}
LORA_RECIPES = [r for r in MODELS if r.endswith("-lora")]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads (and a busy machine loses a lot)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def _image(size: tuple[int, int], seed: int) -> dict:
    """A random PNG as the ``datasets`` Image feature stores it: {"bytes", "path"}."""
    return {"bytes": encoded_image(size, seed, "PNG"), "path": None}


@pytest.fixture(scope="session")
def oip_file(tmp_path_factory) -> Path:
    """An OpenImagePreferences-style parquet file: prompt, chosen, rejected (image structs)."""
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "prompt": list(PAIRS),
            "chosen": [_image(size, 2 * i) for i, size in enumerate(PAIRS.values())],
            "rejected": [_image(size, 2 * i + 1) for i, size in enumerate(PAIRS.values())],
        },
        schema=pa.schema([("prompt", pa.string()), ("chosen", image), ("rejected", image)]),
    )
    path = tmp_path_factory.mktemp("oip") / "train.parquet"
    pq.write_table(table, path)
    return path


def _args(recipe: str, base: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_run_args(recipe, base, f"oip:{data}", run_dir, *extra)


@pytest.fixture(scope="module")
def runs(tiny_models, oip_file, tmp_path_factory):
    """Each recipe's run, done once on first use: recipe → (exit status, run dir)."""
    done: dict[str, tuple[int, Path]] = {}

    def run(recipe: str) -> tuple[int, Path]:
        if recipe not in done:
            run_dir = tmp_path_factory.mktemp("runs") / recipe
            status = main(_args(recipe, tiny_models[MODELS[recipe]], oip_file, run_dir))
            done[recipe] = (status, run_dir)
        return done[recipe]

    return run


@pytest.fixture(scope="module")
def bases(tiny_models):
    """The tiny base models as backbones, loaded once: family → Backbone."""
    from pref_core.backbones import load_backbone

    return {family: load_backbone(str(path)) for family, path in tiny_models.items()}


# ------------------------------------------------------------------------------ helpers
def _check_metrics(run_dir: Path) -> list[dict]:
    rows = run_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values()), row
    # Step 1: both policies == the reference on the same inputs, so Δ_w = Δ_l = 0 and the
    # loss is −log σ(0) = log 2. "= 0" up to float32 rounding: full-copy runs call θ± on B
    # samples and the reference on 2B, and CPU kernels round differently per batch size (the
    # tiny SDXL UNet's outputs move by ~1e-6, its errors ≈ 1.08 by one ulp, 6e-8); T = 1000
    # scales that to logits of ~1e-4, whose effect on −log σ(z) ≈ log 2 − z/2 is allowed for.
    # (Step 2's Δs, after one update, are ~1e-6.)
    first = rows[0]
    assert first["delta_w"] == pytest.approx(0.0, abs=3e-7)  # a few ulps of errors in [1, 2)
    assert first["delta_l"] == pytest.approx(0.0, abs=3e-7)
    assert abs(first["logit"]) <= 1e-3  # |−T(Δ_w + Δ_l)| ≤ 1000 · 6e-7
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6 + abs(first["logit"]) / 2)
    return rows


def _probe(backbone, seed: int = 0):
    """A fixed (x_t, t, cond) for comparing denoisers of one tiny family."""
    return probe(backbone, seed)


def _predict(denoiser, probe) -> torch.Tensor:
    with torch.no_grad():
        return denoiser(*probe)


def _load_pair(folder: Path):
    from pref_apps.models import load_for_sampling
    from pref_core.backbones.guided import GuidedModel

    model = load_for_sampling(str(folder), dtype=torch.float32, device="cpu")
    assert isinstance(model, GuidedModel)
    assert model.method == "chats"
    assert set(model.denoisers) == set(POLICIES)
    return model


# ------------------------------------------------------------------------------ the recipes
@pytest.mark.parametrize("recipe", list(MODELS))
def test_recipe_trains_and_exports_a_pair(recipe, runs, bases):
    status, run_dir = runs(recipe)
    assert status == 0
    _check_metrics(run_dir)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "report.md").is_file()
    assert (run_dir / "samples" / "step_000002.png").is_file()  # via the recipe's sampling hook

    manifest = json.loads((run_dir / "final" / "pref_model.json").read_text())
    assert manifest["method"] == "chats"
    assert manifest["sampler"]["rule"] == "proxy"
    assert manifest["sampler"]["scale"] == 5.0 and manifest["sampler"]["alpha"] == 0.5
    assert manifest["training"]["temperature"] == 1000.0
    assert manifest["training"]["p_uncond"] == 0.5

    pair = _load_pair(run_dir / "final")
    base = bases[MODELS[recipe]]
    assert pair.kind == base.kind == MODELS[recipe]
    probe = _probe(base)
    reference = _predict(base.denoiser, probe)
    preferred = _predict(pair.denoisers["preferred"], probe)
    dispreferred = _predict(pair.denoisers["dispreferred"], probe)
    # Both trained two steps, on different halves of the pairs: neither is the base, and they
    # are not the same network.
    assert not torch.allclose(preferred, reference)
    assert not torch.allclose(dispreferred, reference)
    assert not torch.allclose(preferred, dispreferred)


@pytest.mark.parametrize("recipe", LORA_RECIPES)
def test_lora_pair_matches_the_merged_pair(recipe, runs, bases, tiny_models):
    """``RUN/lora`` (two adapters on one base) predicts what the merged ``RUN/final`` does."""
    status, run_dir = runs(recipe)
    assert status == 0
    lora = run_dir / "lora"
    manifest = json.loads((lora / "pref_model.json").read_text())
    assert manifest["method"] == "chats"
    assert manifest["base"] == str(tiny_models[MODELS[recipe]])
    assert manifest["lora"]["rank"] == 64  # the recipes' rank
    for name in POLICIES:
        assert (lora / name / LORA_FILE).is_file()

    adapters, merged = _load_pair(lora), _load_pair(run_dir / "final")
    probe = _probe(bases[MODELS[recipe]])
    for name in POLICIES:
        torch.testing.assert_close(
            _predict(adapters.denoisers[name], probe),
            _predict(merged.denoisers[name], probe),
            atol=1e-5,
            rtol=1e-4,
        )


@pytest.mark.parametrize("recipe", list(MODELS))
def test_pref_sample_draws_from_the_pair(recipe, runs, tmp_path, capsys):
    """``pref-sample RUN`` loads ``RUN/final`` as a pair and samples with its saved rule."""
    from pref_apps.sample import main as sample_main

    status, run_dir = runs(recipe)
    assert status == 0
    out = tmp_path / "samples"
    argv = [str(run_dir), "--prompt", "a photo of a cat", "--steps", "2", "--out", str(out)]
    assert sample_main([*argv, "--no-progress", "--device", "cpu"]) == 0
    assert (out / "grid.png").is_file()
    assert len((out / "samples.jsonl").read_text().splitlines()) == 1
    # the pair's own sampler (Eq. 17 with the recipe's s and α), not the base's CFG
    assert "ProxyPromptGuidance(scale=5.0, alpha=0.5" in capsys.readouterr().out


# ------------------------------------------------------------------------------ the null
class _Calls:
    """Records the training step's two policy calls: which policy, with which conditioning."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import pref_chats.objective as objective

        self.names: list[tuple] = []
        self.preferred: list = []
        self.dispreferred: list = []
        run_jointly = objective.run_jointly

        def spy(calls, **kwargs):
            (policy_w, _, _, cond_w), (policy_l, _, _, cond_l) = calls
            self.names.append((policy_w.name, policy_l.name))
            self.preferred.append(cond_w)
            self.dispreferred.append(cond_l)
            return run_jointly(calls, **kwargs)

        monkeypatch.setattr(objective, "run_jointly", spy)


@pytest.mark.parametrize("recipe", ["chats-sdxl", "chats-sdxl-lora"])
@pytest.mark.parametrize("null", ["empty", "zeros"])
def test_sdxl_dispreferred_learns_the_null(null, recipe, tiny_models, oip_file, bases, tmp_path):
    """p_uncond 1: every loser reaches θ⁻ with the null's embeddings and its pair's size ids
    (and the reference sees the same: Δ_l = 0 at step 1, checked by ``_check_metrics``)."""
    run_dir = tmp_path / "run"
    extra = ("objective.p_uncond=1.0", f"objective.null={null}")
    with pytest.MonkeyPatch.context() as mp:
        calls = _Calls(mp)
        status = main(_args(recipe, tiny_models["sdxl"], oip_file, run_dir, *extra))
    assert status == 0
    rows = _check_metrics(run_dir)
    assert [row["uncond_fraction"] for row in rows] == [1.0, 1.0]
    assert calls.names == [POLICIES, POLICIES]  # one step each: (θ⁺, θ⁻)

    with torch.no_grad():
        empty = bases["sdxl"].null_condition(1, "empty")
    for cond_w, cond_l in zip(calls.preferred, calls.dispreferred, strict=True):
        assert len(cond_l) == 2
        for key in ("prompt_embeds", "pooled_prompt_embeds"):
            expected = empty[key] if null == "empty" else torch.zeros_like(empty[key])
            torch.testing.assert_close(cond_l[key], expected.expand_as(cond_l[key]))
            # θ⁺ keeps the prompts
            assert not torch.allclose(cond_w[key], expected.expand_as(cond_w[key]))
        # The size ids are the pair's own: (orig_h, orig_w) of each pair, distinct per pair.
        ids = cond_l["add_time_ids"]
        torch.testing.assert_close(ids, cond_w["add_time_ids"])
        originals = {tuple(row[:2]) for row in ids.tolist()}
        assert originals <= {(float(h), float(w)) for w, h in PAIRS.values()}
        assert len(originals) == 2
