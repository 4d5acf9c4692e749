"""Guided models: a backbone sampled with several denoisers and a guidance rule of its own.

Some methods produce more than one network. CHATS trains a *preferred* and a *dispreferred*
model and samples with both (``(1 + s)·ε⁺(c) − s·ε⁻(ĉ)``); its result is not a single
denoiser that the stock CFG could use. A :class:`GuidedModel` packs what sampling it takes —
the backbone (encoders, codec, scheduler config), the denoisers by name and the default
:class:`~pref_core.backbones.guidance.GuidanceStrategy` — so samplers and evaluators treat it
like any other model::

    model = load_guided("runs/chats-sdxl/final")   # or pref_apps.models.load_for_sampling
    result = model.sample(["a photo of a cat"], num_inference_steps=30)

On disk a guided model is a folder holding a manifest, ``pref_model.json``::

    {"format": 1, "method": "chats", ...method-specific fields...}

``method`` names the loader: the installed package that registered that name in the
``pref.samplers`` entry-point group (``chats = "pref_chats.pair:load_pair"``) is called with the
folder and the manifest. The rest of the folder is the method's business (CHATS: a diffusers
pipeline for the preferred model plus the dispreferred denoiser in a subfolder).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as metadata
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pref_core.backbones.base import Backbone
from pref_core.backbones.guidance import GuidanceStrategy
from pref_core.protocols import Denoiser

__all__ = [
    "MANIFEST",
    "SAMPLERS_GROUP",
    "GuidedModel",
    "load_guided",
    "read_manifest",
    "write_manifest",
]

MANIFEST = "pref_model.json"
SAMPLERS_GROUP = "pref.samplers"
FORMAT = 1


@dataclass
class GuidedModel:
    """A backbone plus the named denoisers and the guidance rule it samples with.

    Attributes:
        backbone: encoders, codec and scheduler config (its own ``denoiser`` may be one of
            ``denoisers`` or unused).
        denoisers: the denoisers ``guidance`` calls, by name.
        guidance: the default guidance rule (its ``requires`` names keys of ``denoisers``).
        method: which method produced it (``"chats"``).
        source: where it was loaded from.
        settings: the method's sampler defaults as saved (for reports).
    """

    backbone: Backbone
    denoisers: Mapping[str, Denoiser]
    guidance: GuidanceStrategy
    method: str = ""
    source: str | None = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [n for n in getattr(self.guidance, "requires", ()) if n not in self.denoisers]
        if missing:
            raise KeyError(
                f"{type(self.guidance).__name__} calls denoisers {missing} that this model does "
                f"not have (it has {sorted(self.denoisers)})"
            )

    @property
    def kind(self) -> str:
        return self.backbone.kind

    @property
    def sample_size(self) -> tuple[int, int]:
        return self.backbone.sample_size

    def with_guidance(self, guidance: GuidanceStrategy | None = None, **changes: Any):
        """A copy sampling with ``guidance``, or with the current rule's fields changed
        (``model.with_guidance(alpha=0.25)`` for a dataclass rule)."""
        if guidance is None:
            if not dataclasses.is_dataclass(self.guidance):
                raise TypeError(
                    f"{type(self.guidance).__name__} is not a dataclass; pass a new guidance rule"
                )
            names = {f.name for f in dataclasses.fields(self.guidance)}
            unknown = sorted(set(changes) - names)
            if unknown:
                raise TypeError(
                    f"{type(self.guidance).__name__} has no settings {unknown}; it has "
                    f"{sorted(names)}"
                )
            guidance = dataclasses.replace(self.guidance, **changes)
        elif changes:
            raise TypeError("pass either a guidance rule or changes to the current one, not both")
        return dataclasses.replace(self, guidance=guidance)

    def sample(self, prompts: str | Sequence[str], **kwargs: Any):
        """:func:`pref_core.backbones.sampling.sample` with this model's denoisers and rule
        (``guidance=`` overrides the rule; every other argument is passed through)."""
        from pref_core.backbones.sampling import sample

        kwargs.setdefault("guidance", self.guidance)
        if "denoisers" in kwargs:
            raise TypeError("a GuidedModel brings its own denoisers")
        return sample(self.backbone, prompts, denoisers=self.denoisers, **kwargs)

    def to(self, *args: Any, **kwargs: Any) -> GuidedModel:
        self.backbone.to(*args, **kwargs)
        for denoiser in {id(d): d for d in self.denoisers.values()}.values():
            if hasattr(denoiser, "to"):
                denoiser.to(*args, **kwargs)
        return self


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The folder's ``pref_model.json`` as a dict, or ``None`` when it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("method"), str):
        raise ValueError(f"{path} must be a JSON object with a 'method' string")
    if manifest.get("format", FORMAT) > FORMAT:
        raise ValueError(
            f"{path} has format {manifest['format']}, newer than this pref-core reads "
            f"({FORMAT}); upgrade pref-core"
        )
    return manifest


def write_manifest(folder: str | os.PathLike[str], method: str, **fields: Any) -> Path:
    """Write ``pref_model.json`` (``{"format": 1, "method": method, **fields}``)."""
    path = Path(folder) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": FORMAT, "method": method, **fields}
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load_guided(folder: str | os.PathLike[str], **kwargs: Any) -> GuidedModel:
    """Load the guided model saved in ``folder`` through its method's registered loader.

    Keyword arguments (``dtype``, ``device``, ...) go to the loader.

    Raises:
        FileNotFoundError: the folder has no ``pref_model.json``.
        LookupError: no installed package registers the manifest's method.
    """
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(
            f"{folder} has no {MANIFEST}; it is a plain pipeline, load it with load_backbone"
        )
    method = manifest["method"]
    found = [ep for ep in metadata.entry_points(group=SAMPLERS_GROUP) if ep.name == method]
    if not found:
        raise LookupError(
            f"{folder} holds a {method!r} model, but no installed package registers a {method!r} "
            f"loader in the {SAMPLERS_GROUP!r} entry points; install pref-{method}"
        )
    loader = found[0].load()
    return loader(Path(folder), manifest, **kwargs)
