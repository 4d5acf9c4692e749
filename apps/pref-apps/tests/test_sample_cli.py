"""pref-sample on saved toy pipelines and run directories; bad input exits 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pref_apps import sample
from pref_apps.models import ModelSpecError, load_for_sampling, resolve_spec


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pref_core.backbones.toy import build_toy, save_toy

    return save_toy(build_toy("toy-flux", seed=3), tmp_path_factory.mktemp("toy") / "pipe")


def _run(*argv: str) -> int:
    return sample.main([*argv, "--no-progress"])


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_samples_each_prompt_and_a_grid(pipeline_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    status = _run(
        str(pipeline_dir),
        "--prompt",
        "a small red circle at the center",
        "--prompt",
        "a large blue square at the top left",
        "--prompt",
        "a green triangle",
        "--steps",
        "2",
        "--seed",
        "5",
        "--out",
        str(out),
    )
    assert status == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "0000-seed5.png",
        "0001-seed6.png",
        "0002-seed7.png",
        "grid.png",
        "samples.jsonl",
    ]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [5, 6, 7]
    assert records[1]["prompt"] == "a large blue square at the top left"
    assert _pixels(out / "0000-seed5.png").shape == (32, 32, 3)
    assert _pixels(out / "grid.png").shape == (64, 64, 3)  # ⌈√3⌉ = 2 per row
    assert "wrote 3 images" in capsys.readouterr().out


def test_same_seed_same_image_in_any_batch(pipeline_dir: Path, tmp_path: Path):
    prompt = "a small red circle at the center"
    assert _run(str(pipeline_dir), "--prompt", prompt, "--steps", "2", "--seeds", "9",
                "--out", str(tmp_path / "a")) == 0  # fmt: skip
    assert _run(str(pipeline_dir), "--prompt", "a green triangle", "--prompt", prompt,
                "--steps", "2", "--seeds", "1", "9", "--batch-size", "2",
                "--out", str(tmp_path / "b")) == 0  # fmt: skip
    first = _pixels(tmp_path / "a" / "0000-seed9.png").astype(int)
    second = _pixels(tmp_path / "b" / "0001-seed9.png").astype(int)
    assert np.abs(first - second).max() <= 1  # batched network rounding at most one level


def test_prompts_file_and_run_directory(pipeline_dir: Path, tmp_path: Path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pipeline_dir, run / "final")
    (run / "config.yaml").write_text("model:\n  base: toy-flux\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    assert _run(str(run), "--prompts-file", str(prompts), "--steps", "1", "--out", str(out)) == 0
    assert (out / "0001-seed1.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "1", "2"], "--seeds got 2 seeds for 1 prompts"),
        (["--scheduler", "ddim"], "flow-euler"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--dtype", "int8"], "unknown dtype"),
    ],
)
def test_bad_options_exit_2(pipeline_dir: Path, tmp_path: Path, capsys, extra, message):
    status = _run(str(pipeline_dir), "--prompt", "a red circle", "--out", str(tmp_path), *extra)
    assert status == 2
    assert message in capsys.readouterr().err


def test_unfinished_run_lists_checkpoints(tmp_path: Path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000100").mkdir(parents=True)
    (run / "checkpoints" / "step_000200").mkdir()
    (run / "metrics.jsonl").write_text("")
    assert _run(str(run), "--prompt", "a red circle") == 2
    err = capsys.readouterr().err
    assert "has not finished" in err
    assert "step_000100, step_000200" in err


def test_folder_without_a_model(tmp_path: Path, capsys):
    (tmp_path / "stuff").mkdir()
    assert _run(str(tmp_path / "stuff"), "--prompt", "x") == 2
    assert "neither a training run" in capsys.readouterr().err


def test_missing_prompt_file_and_missing_prompts(pipeline_dir: Path, tmp_path: Path, capsys):
    assert _run(str(pipeline_dir), "--prompts-file", str(tmp_path / "none.txt")) == 2
    assert "no prompt file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _run(str(pipeline_dir))
    assert exc.value.code == 2


def test_resolve_spec(pipeline_dir: Path, tmp_path: Path):
    assert resolve_spec("toy") == "toy"
    assert resolve_spec("org/some-model") == "org/some-model"
    assert resolve_spec(pipeline_dir) == str(pipeline_dir)
    with pytest.raises(ModelSpecError, match="not a model spec"):
        resolve_spec("frobnicate:3")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelSpecError, match="is a file"):
        resolve_spec(tmp_path / "file.txt")
    backbone = load_for_sampling(pipeline_dir, device="cpu")
    assert backbone.kind == "toy-flux"
