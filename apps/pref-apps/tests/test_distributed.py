"""Two CPU processes under `accelerate launch` (gloo) compute what one process computes on the
same global batch — and what one process with gradient accumulation computes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SCRIPT = Path(__file__).parent / "scripts" / "train_toy_dpo.py"
WEIGHTS = Path("final", "unet", "diffusion_pytorch_model.safetensors")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
    ]  # fmt: skip
    # Without a GPU the launched processes run on the CPU with gloo (Accelerator(cpu=True)).
    _run([*launch, str(SCRIPT), str(tmp_path / "two"), "2", "1"], tmp_path)
    _run([sys.executable, str(SCRIPT), str(tmp_path / "one"), "4", "1"], tmp_path)
    _run([sys.executable, str(SCRIPT), str(tmp_path / "accum"), "2", "2"], tmp_path)

    two, one, accum = (_metrics(tmp_path / name) for name in ("two", "one", "accum"))
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for rows in (two, accum):
        for a, b in zip(one, rows):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
    # The runs did train: the loss moved away from log 2 and the weights agree after 3 updates.
    assert one[-1]["loss"] != pytest.approx(one[0]["loss"], abs=1e-4)
    w_one = safetensors_torch.load_file(str(tmp_path / "one" / WEIGHTS))
    for other in ("two", "accum"):
        w = safetensors_torch.load_file(str(tmp_path / other / WEIGHTS))
        assert max((w_one[k] - w[k]).abs().max().item() for k in w_one) < 1e-4
