"""write_report on fabricated run directories: plots exist, links resolve, missing pieces are fine."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from pref_apps.evaluation import EvalResult, PromptSet
from pref_apps.report import moving_average, read_metrics, write_report

LINK = re.compile(r"\]\(([^)]+)\)")


def _links(markdown: str) -> list[str]:
    return LINK.findall(markdown)


def _write_grid(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 32), colour).save(path)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run-dpo-toy"
    run.mkdir()
    (run / "config.yaml").write_text(
        "recipe: dpo-toy\nmodel:\n  base: toy\n  mode: full\noptim:\n  lr: 0.0001\n"
        "objective:\n  beta: 5000\n",
        encoding="utf-8",
    )
    lines = []
    for step in range(1, 41):
        record = {
            "step": step,
            "loss": 0.69 * math.exp(-step / 20),
            "lr": 1e-4,
            "implicit_accuracy": min(1.0, 0.5 + step / 80),
            "reward_margin": step / 10,
            "grad_norm": 1.0 / step,
            "note": "text is not plotted",
        }
        lines.append(json.dumps(record))
    lines.append('{"step": 41, "loss": 0.1')  # truncated by a killed run
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_grid(run / "samples" / "step_000000.png", (200, 0, 0))
    _write_grid(run / "samples" / "step_000020.png", (0, 200, 0))
    _write_grid(run / "samples" / "step_000040.png", (0, 0, 200))
    return run


def _fabricated_eval(directory: Path) -> None:
    result = EvalResult(
        prompts=PromptSet(("a", "b", "c", "d"), ("x", "x", "y", "y"), "test"),
        seeds=[0, 1, 2, 3],
        scores={
            "base": {"total": torch.tensor([0.1, 0.5, 0.5, 0.9], dtype=torch.float64)},
            "tuned": {"total": torch.tensor([0.2, 0.5, 0.4, 1.0], dtype=torch.float64)},
        },
        models={"base": {"name": "toy"}, "tuned": {"name": "run/final"}},
        settings={"scorer": "fake", "num_prompts": 4, "seeds": [0, 1, 2, 3]},
        grids={"base": torch.zeros(4, 3, 8, 8), "tuned": torch.ones(4, 3, 8, 8)},
    )
    result.save(directory)


def test_report_with_everything(run_dir: Path):
    _fabricated_eval(run_dir / "eval")
    path = write_report(run_dir, title="DPO on the toy world")
    assert path == run_dir / "report.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# DPO on the toy world\n")

    plots = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert plots == {
        "loss.png",
        "lr.png",
        "implicit_accuracy.png",
        "reward_margin.png",
        "grad_norm.png",
    }
    links = _links(text)
    for link in links:
        assert (run_dir / link).is_file(), link
    assert "plots/loss.png" in links
    # loss first, then the preferred order, then the rest
    assert links.index("plots/loss.png") < links.index("plots/implicit_accuracy.png")
    # before/after grids: the first and the last
    assert "samples/step_000000.png" in links and "samples/step_000040.png" in links
    assert "before training" in text
    # evaluation tables and grids
    assert "Win rate of tuned over base: 0.625" in text
    assert "| x | 2 |" in text
    assert "eval/base_grid.png" in links and "eval/tuned_grid.png" in links
    # config summary and metric summary
    assert "| `model.base` | toy |" in text
    assert "| `objective.beta` | 5000 |" in text
    assert "40 logged steps, last step 40; 1 unreadable line(s) skipped." in text
    assert re.search(r"\| loss \| 0\.6\d+ \| 0\.09\d+ \|", text)


def test_report_without_eval_or_samples(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 0.7}) + "\n")
    text = write_report(run).read_text(encoding="utf-8")
    assert "No evaluation yet" in text
    assert "No sample grids" in text
    assert "No `config.yaml`" in text
    assert (run / "plots" / "loss.png").is_file()
    for link in _links(text):
        assert (run / link).is_file()


def test_report_of_an_empty_run(tmp_path: Path):
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "No `metrics.jsonl` records" in text
    assert not (tmp_path / "plots").exists()
    assert _links(text) == []


def test_report_single_sample_grid(tmp_path: Path):
    _write_grid(tmp_path / "samples" / "step_000000.png", (1, 2, 3))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "![step 0](samples/step_000000.png)" in text


def test_report_of_a_missing_directory(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        write_report(tmp_path / "nope")


def test_read_metrics_and_moving_average(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n[1, 2]\nnot json\n\n{"step": 2, "loss": 3.0}\n')
    records, skipped = read_metrics(path)
    assert [r["loss"] for r in records] == [1.0, 3.0]
    assert skipped == 2
    assert read_metrics(tmp_path / "missing.jsonl") == ([], 0)
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([5.0], 10) == [5.0]
    with pytest.raises(ValueError):
        moving_average([1.0], 0)
