"""Loading helpers shared by the family loaders (SD, FLUX, toy) and the tiny test checkpoints.

Private: the family modules keep their own layout hints (the text that says what a checkpoint
folder of that family holds) and pass them in, so every error names the family's layout.

- :func:`expand`, :func:`looks_like_path`, :func:`is_local`: telling local folders from hub ids;
- :func:`require_folders`: fail early, naming the missing component folders of a local pipeline
  (and refusing a path that does not exist instead of sending it to the Hub as a repository id);
- :func:`weights_kwargs`: dtype/variant keyword arguments for diffusers' and transformers'
  ``from_pretrained``;
- :func:`load_component` / :func:`load_denoiser_model`: one pipeline component, and the
  denoiser network with the ``LoadOptions.denoiser`` swap;
- :func:`seeded`: deterministic initialisation of freshly built models.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from pref_core.backbones.base import LoadOptions


# ---------------------------------------------------------------------------------- sources
def expand(source: str | os.PathLike[str]) -> str:
    """``~/models/sd`` → an absolute path; hub ids and other paths pass through unchanged."""
    source = os.fspath(source)
    return os.path.expanduser(source) if source.startswith("~") else source


def is_local(source: str) -> bool:
    """Whether ``source`` names something on this machine (else it is taken as a hub id)."""
    return Path(source).expanduser().exists()


def looks_like_path(source: str) -> bool:
    """Whether ``source`` is meant as a local path rather than a hub id (``owner/name``)."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or os.path.exists(source)
    )


def require_folders(source: str, folders: Sequence[str], layout_hint: str) -> None:
    """For a local pipeline folder, fail early, naming the missing component folders.

    A hub id passes (``from_pretrained`` resolves it and reports what is missing); a path that
    is not a directory is refused here rather than sent to the Hub as a repository id.
    ``layout_hint`` is the family's sentence on what its checkpoint folder holds.
    """
    if not os.path.isdir(source):
        if looks_like_path(source):
            raise FileNotFoundError(
                f"{source!r} is not a directory; pass a directory in the diffusers hub layout "
                f"or a hub id. {layout_hint}"
            )
        return
    root = Path(source)
    missing = [name for name in folders if not (root / name).is_dir()]
    if missing:
        names = ", ".join(repr(name + "/") for name in missing)
        plural = "s" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{source} has no {names} folder{plural}. {layout_hint}")


# ---------------------------------------------------------------------------------- weights
def _transformers_dtype_key() -> str:
    """transformers ≥ 4.56 names the weights dtype ``dtype`` (``torch_dtype`` is deprecated)."""
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def weights_kwargs(options: LoadOptions, *, transformers_model: bool) -> dict[str, Any]:
    """dtype, variant (when set) and the shared hub arguments for ``from_pretrained``:
    ``torch_dtype`` for diffusers models, the installed transformers' dtype keyword for
    transformers models."""
    key = _transformers_dtype_key() if transformers_model else "torch_dtype"
    kwargs: dict[str, Any] = {key: options.dtype, **options.pretrained_kwargs()}
    if options.variant is not None:
        kwargs["variant"] = options.variant
    return kwargs


# ---------------------------------------------------------------------------------- loading
def load_component(loader: Any, source: str, name: str, layout_hint: str, **kwargs: Any) -> Any:
    """``loader(source, subfolder=name, **kwargs)``; an ``OSError`` comes back naming the
    component and the family's layout."""
    try:
        return loader(source, subfolder=name, **kwargs)
    except OSError as error:
        raise OSError(
            f"could not load the {name!r} component of {source!r}: {error}. {layout_hint}"
        ) from error


def load_denoiser_model(
    cls: Any, source: str, subfolder: str, options: LoadOptions, *, layout_hint: str
) -> nn.Module:
    """The pipeline's own denoiser network (``source``/``subfolder``), or the one in
    ``options.denoiser``: in its ``options.denoiser_subfolder`` when that is set (``""``: the
    root), else in ``subfolder``, else at its root.

    A separate denoiser checkpoint is read in ``options.variant`` when it has that variant and
    in its plain weights otherwise (cast to ``options.dtype`` either way). When none of the
    places holds one, a ``FileNotFoundError`` lists what was tried.
    """
    kwargs = weights_kwargs(options, transformers_model=False)
    if options.denoiser is None:
        require_folders(source, [subfolder], layout_hint)
        return load_component(cls.from_pretrained, source, subfolder, layout_hint, **kwargs)
    other = expand(options.denoiser)
    if options.denoiser_subfolder is not None:
        candidates: list[str | None] = [options.denoiser_subfolder or None]
    else:
        candidates = [subfolder, None]
    attempts = [kwargs]
    if "variant" in kwargs:
        attempts.append({k: v for k, v in kwargs.items() if k != "variant"})
    errors = []
    for candidate in candidates:
        if is_local(other):
            config = Path(other) / (candidate or "") / "config.json"
            if not config.is_file():
                errors.append(f"{config} not found")
                continue
        for attempt in attempts:
            try:
                return cls.from_pretrained(other, subfolder=candidate, **attempt)
            except (OSError, ValueError) as exc:
                errors.append(
                    f"subfolder {candidate!r}, variant {attempt.get('variant')!r}: "
                    f"{type(exc).__name__}: {exc}"
                )
    tried = ", ".join("the root" if c is None else repr(c) for c in candidates)
    raise FileNotFoundError(
        f"no {cls.__name__} found in denoiser checkpoint {other!r} (tried {tried}); save one "
        f"with {subfolder}.save_pretrained(directory) or pass denoiser_subfolder. Details: "
        + "; ".join(errors)
    )


# ---------------------------------------------------------------------------------- building
@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
