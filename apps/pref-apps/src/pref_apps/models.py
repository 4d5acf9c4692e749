"""Resolving a model spec for sampling: a training run, a pipeline folder, a hub id or a kind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from pref_core.backbones.base import Backbone
    from pref_core.backbones.guided import GuidedModel

__all__ = [
    "DTYPES",
    "ModelSpecError",
    "is_run_dir",
    "load_for_sampling",
    "parse_dtype",
    "read_run_config",
    "resolve_spec",
]

TOY_KINDS = ("toy", "toy-flux")
DTYPES = ("float32", "bfloat16", "float16")


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable (an unfinished run, a folder without a model)."""


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a training run directory (``config.yaml``, ``metrics.jsonl``,
    ``final/`` or ``checkpoints/`` inside) rather than a pipeline folder."""
    path = Path(path)
    if not path.is_dir() or (path / "model_index.json").is_file():
        return False
    markers = ("config.yaml", "metrics.jsonl", "final", "checkpoints")
    return any((path / name).exists() for name in markers)


def read_run_config(run: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's ``config.yaml`` as a dict (empty when the file is missing).

    Raises:
        ModelSpecError: the file exists but is not a YAML mapping.
    """
    path = Path(run) / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelSpecError(f"{path} is not valid YAML: {exc}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ModelSpecError(f"{path} holds a {type(config).__name__}, not a mapping of sections")
    return config


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``"float32"``, ``"bfloat16"``, ``"float16"`` (or ``fp32``, ``bf16``, ``fp16``) → dtype."""
    if name is None:
        return None
    import torch

    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    canonical = aliases.get(name, name)
    if canonical not in DTYPES:
        raise ModelSpecError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, canonical)


def _checkpoints(run: Path) -> list[str]:
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def resolve_spec(spec: str | os.PathLike[str]) -> str:
    """What :func:`load_for_sampling` hands to ``load_backbone`` for ``spec``.

    - a run directory → its ``final/`` folder (a pipeline, or a method's model with a
      ``pref_model.json`` manifest; an error when the run has not finished, listing its
      checkpoints);
    - a pipeline folder (``model_index.json`` inside) → itself;
    - any other existing folder → an error explaining what was expected;
    - ``toy-pretrained:KIND[:SEED]`` → the trainer's cached toy base folder (trained once on
      first use, as ``pref-train`` does);
    - anything else (``"toy"``, ``"toy-flux"``, ``"sd15"``, ``"sdxl"``, ``"flux"``, a hub id) →
      unchanged.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if text in TOY_KINDS:
        return text
    if not path.exists():
        prefix, colon, _ = text.partition(":")
        if colon and prefix == "toy-pretrained":
            return _toy_pretrained(text)
        if colon and "/" not in prefix:
            raise ModelSpecError(
                f"{text!r} is not a model spec: use a run directory, a pipeline folder, a hub id, "
                "a kind (toy, toy-flux, sd15, sdxl, flux) or toy-pretrained:KIND"
            )
        return text
    if not path.is_dir():
        raise ModelSpecError(
            f"{path} is a file; a model is a run directory, a pipeline folder (with "
            "model_index.json), a hub id, or a kind (toy, toy-flux, sd15, sdxl, flux)"
        )
    if (path / "model_index.json").is_file() or (path / "pref_model.json").is_file():
        return str(path)
    if is_run_dir(path):
        final = path / "final"
        if (final / "model_index.json").is_file() or (final / "pref_model.json").is_file():
            return str(final)
        checkpoints = _checkpoints(path)
        listing = (
            f"its checkpoints: {', '.join(checkpoints)} (under {path / 'checkpoints'})"
            if checkpoints
            else "it has no checkpoints yet"
        )
        state = (
            "has a final/ folder without model_index.json" if final.exists() else "has no final/"
        )
        raise ModelSpecError(
            f"run {path} has not finished: it {state}, where the trainer writes the trained "
            f"pipeline at the end; {listing}. Resume or finish the run, or point at a pipeline "
            "folder"
        )
    raise ModelSpecError(
        f"{path} is neither a training run (config.yaml, metrics.jsonl, final/) nor a pipeline "
        "folder (model_index.json)"
    )


def _toy_pretrained(spec: str) -> str:
    """``toy-pretrained:KIND[:SEED]``: the trainer's cached toy base (trained on first use)."""
    try:
        from pref_apps.trainer import resolve_base
    except ImportError as exc:  # the trainer's dependencies are missing
        raise ModelSpecError(
            f"{spec!r} needs pref-train's trainer, which failed to import: {exc}"
        ) from exc
    try:
        return resolve_base(spec)
    except ValueError as exc:
        raise ModelSpecError(str(exc)) from None


def load_for_sampling(
    spec: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> Backbone | GuidedModel:
    """Load a :class:`~pref_core.backbones.base.Backbone` to sample or evaluate — or, for a
    folder with a ``pref_model.json`` manifest (a CHATS pair), the
    :class:`~pref_core.backbones.guided.GuidedModel` its method's loader builds.

    Args:
        spec: a run directory (its ``final/`` pipeline is loaded), a pipeline folder, a hub id,
            a family name (``sd15``, ``sdxl``, ``flux``) or a toy kind (``toy``, ``toy-flux``:
            freshly initialised with ``seed``, default 0).
        dtype: weights dtype; default float32.
        device: default ``"cuda"`` when available, else ``"cpu"``.
        **kwargs: passed to :func:`pref_core.backbones.loading.load_backbone` (``variant``,
            ``local_files_only``, ``denoiser``, ``seed``, ...).

    Raises:
        ModelSpecError: the spec is an unfinished run or a folder that holds no pipeline.
    """
    import torch

    from pref_core.backbones.guided import load_guided, read_manifest
    from pref_core.backbones.loading import load_backbone

    source = resolve_spec(spec)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if Path(source).is_dir():
        try:
            manifest = read_manifest(source)
        except ValueError as exc:
            raise ModelSpecError(str(exc)) from None
        if manifest is not None:
            try:
                return load_guided(source, dtype=dtype or torch.float32, device=device, **kwargs)
            except LookupError as exc:
                raise ModelSpecError(str(exc)) from None
    return load_backbone(source, dtype=dtype or torch.float32, device=device, **kwargs)


def samples_itself(model: Any) -> bool:
    """Whether ``model`` is a pipeline that runs its own sampling — a method's model made of
    more than denoisers (IMG: generate, read with an MLLM, re-generate) — rather than a
    :class:`~pref_core.backbones.base.Backbone` or a ``GuidedModel`` that
    :func:`pref_core.backbones.sampling.sample` drives. Such a model has a ``backbone`` (the
    diffusion model it builds on) and ``sample(prompts, **sample_kwargs) -> SampleResult``."""
    from pref_core.backbones.base import Backbone
    from pref_core.backbones.guided import GuidedModel

    return (
        not isinstance(model, (Backbone, GuidedModel))
        and callable(getattr(model, "sample", None))
        and hasattr(model, "backbone")
    )
