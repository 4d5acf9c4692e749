"""``pref-train --recipe img-flux`` and ``img-sdxl`` end to end on tiny models, as a user runs them.

Every component is built from config and saved in its real layout, then loaded back through the
real loaders: a tiny FLUX.1 / SDXL pipeline (hub layout), a tiny CLIP vision encoder
(``save_pretrained``), a tiny XLabs FLUX IP-Adapter / IP-Adapter-Plus file (the published key
layouts, converted by diffusers), a tiny LLaVA-1.5 (``LlavaForConditionalGeneration`` +
processor) and a four-pair Pick-a-Pic v2 parquet file. The run trains the aligner for two steps,
checkpoints, exports ``RUN/final`` (aligner + ``pref_model.json``), and ``pref-sample`` then
re-generates from it.

What is checked beyond "it runs":

- at step 1 the aligner is the identity (zero output layer) and so is the reference (its own
  initialisation, also with a zero output layer): f_θ(c) = f_ref(c) = c_l, so the margin z of
  Eq. 6 is 0, L_pref = log 2 and the logged loss is d(c_w, c_l) + log 2 exactly;
- ``pref-sample`` on the run writes images equal to ``IMGModel.run``'s re-generation on the
  same seeds, and with ``ip_scale=0`` re-generation equals the initial image (the IP branch adds
  0 · attention);
- the exported model reloads through ``pref_apps.models.load_for_sampling`` (the
  ``pref.samplers`` entry point) with the saved settings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pref_apps")
pytest.importorskip("pyarrow")

from pref_apps.testing import run_metrics, write_pickapic_parquet
from pref_apps.train import main as train_main
from pref_img.tiny_ip import (
    build_tiny_clip_vision,
    build_tiny_flux_ip_adapter,
    build_tiny_sdxl_ip_adapter_plus,
)
from pref_img.tiny_mllm import build_tiny_llava

PROMPTS = ["a photo of a cat", "a bowl of fruit"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    from pref_core.backbones.tiny_flux import build_tiny_flux
    from pref_core.backbones.tiny_sd import build_tiny_sdxl

    root = tmp_path_factory.mktemp("img-parts")
    flux = build_tiny_flux(root / "flux", seed=0)
    sdxl = build_tiny_sdxl(root / "sdxl", seed=0)
    encoder = build_tiny_clip_vision(root / "clip-vision", image_size=32, seed=0)
    return {
        "flux": flux,
        "sdxl": sdxl,
        "encoder": encoder,
        "flux_ip": build_tiny_flux_ip_adapter(
            root / "flux-ip", transformer=flux, image_encoder_path=encoder, seed=0
        ),
        "sdxl_ip": build_tiny_sdxl_ip_adapter_plus(
            root / "sdxl-ip", unet=sdxl, image_encoder_path=encoder, seed=0
        ),
        "llava": build_tiny_llava(root / "llava", image_size=32, seed=0),
        "data": write_pickapic_parquet(root / "pickapic.parquet"),
    }


def _train(
    recipe: str, base: Path, ip: Path, parts: dict[str, Path], run: Path, *extra: str
) -> int:
    return train_main(
        [
            *extra,
            "--recipe",
            recipe,
            f"model.base={base}",
            "model.dtype=float32",
            f"objective.ip_adapter={ip}",
            f"objective.image_encoder={parts['encoder']}",
            "objective.image_encoder_subfolder=null",
            f"objective.detector={parts['llava']}",
            "objective.num_heads=4",
            f"data.source=pickapic:{parts['data']}",
            "data.resolution=32",
            "train.steps=2",
            "train.batch_size=2",
            "log.checkpoint_every=1",
            "log.sample_steps=2",
            "log.sample_prompts=[a photo of a cat]",
            "log.tensorboard=false",
            "log.progress=false",
            f"log.output_dir={run}",
        ]
    )


@pytest.mark.parametrize(
    ("recipe", "family"), [("img-flux", "flux"), ("img-sdxl", "sdxl")], ids=["flux", "sdxl"]
)
def test_recipe_trains_exports_and_regenerates(recipe, family, parts, tmp_path):
    from pref_apps.models import load_for_sampling
    from pref_apps.sample import main as sample_main

    run = tmp_path / "run"
    # SDXL: the UNet comes from another checkpoint, as SDXL-DPO's would (here the same one)
    extra = (
        (f"objective.denoiser={parts['sdxl']}", "objective.denoiser_subfolder=unet")
        if family == "sdxl"
        else ()
    )
    assert _train(recipe, parts[family], parts[f"{family}_ip"], parts, run, *extra) == 0

    rows = run_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    first = rows[0]
    assert first["margin"] == 0.0  # f_θ = f_ref = identity at step 1
    assert first["pref"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["loss"] == pytest.approx(first["dist_winner"] + math.log(2), rel=1e-5)
    assert first["dist_winner_ref"] == pytest.approx(first["dist_winner"], rel=1e-6)
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert (run / "checkpoints" / "step_000002" / "module-aligner.safetensors").is_file()
    assert (run / "samples" / "step_000002.png").is_file()

    manifest = json.loads((run / "final" / "pref_model.json").read_text())
    assert manifest["method"] == "img"
    assert manifest["settings"] == {"rounds": 1, "aligner_repeats": 3, "ip_scale": 0.2}
    if family == "sdxl":
        assert manifest["denoiser"] == str(parts["sdxl"].resolve())
        assert manifest["denoiser_subfolder"] == "unet"

    model = load_for_sampling(str(run), device="cpu")
    assert model.method == "img" and model.settings.ip_scale == 0.2
    # the aligner moved away from the identity in two steps
    assert model.aligner.out.weight.abs().sum() > 0

    out = tmp_path / "samples"
    status = sample_main(
        [
            *(str(run), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "2"),
            *("--seed", "5", "--out", str(out), "--no-progress", "--device", "cpu"),
        ]
    )
    assert status == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [5, 6]

    result = model.run(PROMPTS, seeds=[5, 6], num_inference_steps=2)
    from PIL import Image

    written = torch.stack(
        [torch.from_numpy(np.array(Image.open(out / r["file"]))).permute(2, 0, 1) for r in records]
    ).float()
    expected = (result.final * 255).round()
    assert (written - expected).abs().max() <= 1  # PNG rounding
    # two rounds: the first is the one-round result, the second re-generates from it
    two = model.with_settings(rounds=2).run(PROMPTS, seeds=[5, 6], num_inference_steps=2)
    assert len(two.rounds) == 2
    torch.testing.assert_close(two.rounds[0], result.final, rtol=0, atol=0)
    assert not torch.equal(two.rounds[1], two.rounds[0])
    # repeats 0: the initial image's own tokens, the MLLM not consulted
    own = model.with_settings(aligner_repeats=0)
    x = result.initial * 2 - 1
    torch.testing.assert_close(own.align(result.initial, PROMPTS), model.image_prompt.encode(x))
    with pytest.raises(TypeError, match="no settings"):
        model.with_settings(strength=2)
    # pref-eval: the base (the run's model.base) against IMG on the same prompts and seeds
    from pref_apps.evaluate import main as eval_main

    evaluated = tmp_path / "eval"
    status = eval_main(
        [
            *("--tuned", str(run), "--prompts", "toy:2", "--steps", "2"),
            *("--out", str(evaluated), "--no-progress"),
        ]
    )
    assert status == 0
    report = json.loads((evaluated / "eval.json").read_text())
    assert report["win_rate"]["n"] == 2 and set(report["models"]) == {"base", "tuned"}
    # IP scale 0: the re-generation is the initial image (same seeds)
    unscaled = model.with_settings(ip_scale=0.0).run(PROMPTS, seeds=[5, 6], num_inference_steps=2)
    torch.testing.assert_close(unscaled.final, unscaled.initial, rtol=0, atol=1e-6)
    torch.testing.assert_close(unscaled.initial, result.initial, rtol=0, atol=0)


def test_img_toy_needs_its_chain_first(tmp_path, capsys):
    """``img-toy`` names the recipe that makes a missing component, and exits 2."""
    status = train_main(
        [
            "--recipe",
            "img-toy",
            f"objective.ip_adapter={tmp_path / 'nope'}",
            "train.steps=1",
            f"log.output_dir={tmp_path / 'run'}",
            "log.progress=false",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "objective.ip_adapter" in err and "pref-train --recipe toy-ip-adapter" in err


def _instructpix2pix_parquet(path: Path, n: int = 4) -> Path:
    """A tiny InstructPix2Pix-format parquet file (images as the datasets Image struct)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
        images.append({"bytes": buffer.getvalue(), "path": f"{i}.png"})
    table = pa.table(
        {
            "original_prompt": [f"a photo {i}" for i in range(n)],
            "original_image": images,
            "edit_prompt": ["make it red", "add a dog", "make it night", "remove the hat"][:n],
            "edited_prompt": [f"a red photo {i}" for i in range(n)],
            "edited_image": images,
        }
    )
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("recipe", ["img-mllm-llava", "img-mllm-qwen"])
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_detector_recipes_train_and_export(recipe, mode, tmp_path):
    """The detector recipes on a tiny LLaVA / Qwen2.5-VL and InstructPix2Pix-format data: two
    steps, the answer-token loss logged, ``RUN/final`` loads back through ``load_detector``."""
    from pref_img.detector import load_detector
    from pref_img.tiny_mllm import build_tiny_qwen2_5_vl

    model = (
        build_tiny_llava(tmp_path / "mllm", image_size=32)
        if recipe == "img-mllm-llava"
        else build_tiny_qwen2_5_vl(tmp_path / "mllm")
    )
    data = _instructpix2pix_parquet(tmp_path / "ip2p.parquet")
    run = tmp_path / "run"
    status = train_main(
        [
            *("--recipe", recipe, f"model.base={model}", f"model.mode={mode}"),
            *("model.dtype=float32", "model.gradient_checkpointing=false", "model.lora_rank=4"),
            *(f"data.source={data}", "data.resolution=32", "train.steps=2"),
            *("train.batch_size=2", "train.grad_accum=1", "optim.warmup_steps=0"),
            *("log.tensorboard=false", "log.progress=false", f"log.output_dir={run}"),
        ]
    )
    assert status == 0
    rows = run_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["answer_tokens"] > 0 for r in rows)
    detector = load_detector(run / "final")
    features, mask = detector.guidance_features(torch.zeros(1, 3, 32, 32), ["a red photo"])
    assert features.shape[-1] == detector.hidden_size and mask.sum() > 0


def test_toy_chain_runs_end_to_end(tmp_path, monkeypatch):
    """toy-ip-adapter → img-mllm-toy → img-toy, each shortened, then the evaluation against
    the base: the CPU path a user runs first."""
    monkeypatch.setenv("PREF_CACHE", str(tmp_path / "cache"))
    common = ("train.steps=2", "log.progress=false", "log.tensorboard=false")
    ip_run, detector_run, img_run = tmp_path / "ip", tmp_path / "mllm", tmp_path / "img"
    assert (
        train_main(
            [
                *("--recipe", "toy-ip-adapter", "data.size=8", "train.batch_size=4"),
                *("objective.eval_size=4", "eval.steps=2", "log.sample_steps=2"),
                *common,
                f"log.output_dir={ip_run}",
            ]
        )
        == 0
    )
    recon = json.loads((ip_run / "eval" / "ip_adapter.json").read_text())
    assert recon["n"] == 4 and 0 <= recon["from_tokens_total"] <= 1
    assert (
        train_main(
            [
                *("--recipe", "img-mllm-toy", "data.size=8", "train.batch_size=4"),
                *("objective.eval_size=4", "objective.max_new_tokens=4"),
                *common,
                f"log.output_dir={detector_run}",
            ]
        )
        == 0
    )
    agreement = json.loads((detector_run / "eval" / "detector.json").read_text())
    assert agreement["n"] == 4
    assert (
        train_main(
            [
                *("--recipe", "img-toy", f"objective.ip_adapter={ip_run}"),
                *(f"objective.detector={detector_run}", "data.size=8", "train.batch_size=4"),
                *("eval.prompts=toy:4", "eval.steps=2", "log.sample_steps=2"),
                *common,
                f"log.output_dir={img_run}",
            ]
        )
        == 0
    )
    result = json.loads((img_run / "eval" / "eval.json").read_text())
    assert result["win_rate"]["n"] == 4
    assert (img_run / "report.md").is_file()
