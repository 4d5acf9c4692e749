"""A Markdown report of a training run: config, metric plots, sample grids and the evaluation.

Reads what the trainer and :mod:`pref_apps.evaluation` write into a run directory::

    RUN/config.yaml            resolved config
    RUN/metrics.jsonl          {"step": ..., "loss": ..., "lr": ..., ...} per logged step
    RUN/samples/step_*.png     fixed-prompt sample grids (step_000000 = before training)
    RUN/eval/eval.json         evaluation summary (and its grids)

and writes ``RUN/plots/<metric>.png`` and ``RUN/report.md``. Every piece is optional: a run
with no metrics, no samples or no evaluation gets a report that says so.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pref_apps.evaluation import render_markdown

__all__ = ["moving_average", "plot_metrics", "read_metrics", "write_report"]

# Plotted first, in this order; any other numeric metric follows alphabetically.
PREFERRED_METRICS = ("loss", "implicit_accuracy", "reward_margin", "lr", "grad_norm")
# Config keys shown in the summary table; the full YAML follows it.
_CONFIG_ROWS = 40
_SAMPLE_NAME = re.compile(r"step_(\d+)\.png$")


def read_metrics(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """The records of a ``metrics.jsonl`` file and the number of unreadable lines skipped
    (a run killed mid-write leaves a truncated last line)."""
    records: list[dict[str, Any]] = []
    skipped = 0
    path = Path(path)
    if not path.is_file():
        return records, skipped
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """metric → (steps, values) for every numeric metric other than ``step``."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, record in enumerate(records):
        step = record.get("step", index)
        step = float(step) if _is_number(step) else float(index)
        for key, value in record.items():
            if key == "step" or not _is_number(value):
                continue
            steps, values = series.setdefault(str(key), ([], []))
            steps.append(step)
            values.append(float(value))
    order = [k for k in PREFERRED_METRICS if k in series]
    order += sorted(k for k in series if k not in PREFERRED_METRICS)
    return {key: series[key] for key in order}


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    out: list[float] = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _window(count: int) -> int:
    """Smoothing window: about a twentieth of the points, at least 1."""
    return max(1, round(count / 20))


def _safe_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") or "metric"


def plot_metrics(
    records: Sequence[Mapping[str, Any]], directory: str | os.PathLike[str]
) -> dict[str, Path]:
    """One PNG per numeric metric (raw values and their moving average against the step).

    Uses matplotlib's object-oriented API on an Agg canvas, so no global backend is touched.
    Returns metric → written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(directory)
    written: dict[str, Path] = {}
    for metric, (steps, values) in _series(records).items():
        out.mkdir(parents=True, exist_ok=True)
        figure = Figure(figsize=(6.4, 3.6), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        window = _window(len(values))
        if len(values) == 1:
            axes.plot(steps, values, "o", color="C0", label=metric)
        else:
            axes.plot(steps, values, color="C0", alpha=0.35, linewidth=1, label=metric)
            axes.plot(
                steps,
                moving_average(values, window),
                color="C0",
                linewidth=2,
                label=f"moving average ({window})",
            )
        if metric == "lr" and min(values) > 0 and max(values) / min(values) > 100:
            axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_title(metric)
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize="small")
        figure.tight_layout()
        path = out / f"{_safe_name(metric)}.png"
        figure.savefig(path, format="png")
        written[metric] = path
    return written


def _sample_grids(samples: Path) -> list[tuple[int, Path]]:
    if not samples.is_dir():
        return []
    found = []
    for path in samples.iterdir():
        match = _SAMPLE_NAME.search(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _config_section(run: Path) -> list[str]:
    path = run / "config.yaml"
    if not path.is_file():
        return ["## Config", "", "No `config.yaml` in this run.", ""]
    text = path.read_text(encoding="utf-8")
    lines = ["## Config", ""]
    try:
        import yaml

        config = yaml.safe_load(text)
    except Exception as exc:  # a report must not fail on a config it only displays
        config = None
        lines += [f"`config.yaml` could not be parsed ({type(exc).__name__}).", ""]
    if isinstance(config, dict):
        flat = list(_flatten(config).items())
        if flat:
            lines += ["| key | value |", "|---|---|"]
            for key, value in flat[:_CONFIG_ROWS]:
                cell = str(value).replace("|", "\\|")
                lines.append(f"| `{key}` | {cell} |")
            if len(flat) > _CONFIG_ROWS:
                lines.append(f"| … | {len(flat) - _CONFIG_ROWS} more in config.yaml |")
            lines.append("")
    lines += [
        "<details><summary>config.yaml</summary>",
        "",
        "```yaml",
        text.rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    return lines


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif not isinstance(value, (list, tuple)) or len(value) <= 8:
            flat[name] = value
    return flat


def _metrics_section(
    records: Sequence[Mapping[str, Any]], skipped: int, plots: Mapping[str, Path], run: Path
) -> list[str]:
    lines = ["## Training metrics", ""]
    if not records:
        return [*lines, "No `metrics.jsonl` records in this run.", ""]
    series = _series(records)
    last_step = series[next(iter(series))][0][-1] if series else None
    summary = f"{len(records)} logged steps"
    if last_step is not None:
        summary += f", last step {int(last_step)}"
    if skipped:
        summary += f"; {skipped} unreadable line(s) skipped"
    lines += [summary + ".", ""]
    if series:
        lines += ["| metric | first | final | final moving average | min | max |"]
        lines += ["|---|---|---|---|---|---|"]
        for metric, (_, values) in series.items():
            smooth = moving_average(values, _window(len(values)))[-1]
            cells = [values[0], values[-1], smooth, min(values), max(values)]
            lines.append(f"| {metric} | " + " | ".join(f"{v:.4g}" for v in cells) + " |")
        lines.append("")
    for metric, path in plots.items():
        lines += [f"![{metric}]({_relative(path, run)})", ""]
    return lines


def _samples_section(run: Path) -> list[str]:
    grids = _sample_grids(run / "samples")
    lines = ["## Samples", ""]
    if not grids:
        return [*lines, "No sample grids in `samples/`.", ""]
    (first_step, first), (last_step, last) = grids[0], grids[-1]
    if len(grids) == 1:
        lines += [f"Step {first_step}:", "", f"![step {first_step}]({_relative(first, run)})", ""]
    else:
        before = "before training" if first_step == 0 else f"step {first_step}"
        lines += [
            "Fixed prompts and seeds; the first and the last grid.",
            "",
            f"| {before} | step {last_step} |",
            "|---|---|",
            f"| ![{before}]({_relative(first, run)}) "
            f"| ![step {last_step}]({_relative(last, run)}) |",
            "",
        ]
    if len(grids) > 2:
        links = ", ".join(f"[{step}]({_relative(path, run)})" for step, path in grids)
        lines += [f"All grids by step: {links}.", ""]
    return lines


def _eval_section(run: Path) -> list[str]:
    path = run / "eval" / "eval.json"
    if not path.is_file():
        return [
            "## Evaluation",
            "",
            f"No evaluation yet (`eval/eval.json`); run `pref-eval --tuned {run} --prompts ...`.",
            "",
        ]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return ["## Evaluation", "", f"`eval/eval.json` is not valid JSON ({exc.msg}).", ""]
    return [render_markdown(data, image_dir="eval", heading="##")]


def write_report(run_dir: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write ``RUN/report.md`` (and ``RUN/plots/*.png``) for a run directory; return its path.

    Sections: config summary (and the full YAML), training metrics (first/final/smoothed/min/max
    per numeric metric and a plot each, raw values with a moving average), the first and last
    sample grids, and the evaluation (per-model means with intervals, win rate, per-category
    table, grids) when ``eval/eval.json`` exists. Missing pieces are reported, not errors.

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"no run directory {str(run)!r}")
    records, skipped = read_metrics(run / "metrics.jsonl")
    plots = plot_metrics(records, run / "plots") if records else {}
    lines = [f"# {title or f'Run report: {run.resolve().name}'}", ""]
    lines += _config_section(run)
    lines += _metrics_section(records, skipped, plots, run)
    lines += _samples_section(run)
    lines += _eval_section(run)
    path = run / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
