"""Real model backbones (SD 1.5, SDXL, FLUX.1) and the toy ones, behind pref-core's protocols.

This subpackage is the ``pref-core[diffusers]`` extra (LoRA training also needs
``pref-core[peft]``). ``import pref_core`` never loads it. See ``docs/backbones.md``.

Names below resolve on first use, so ``import pref_core.backbones`` loads only the contract.
"""

import importlib
from typing import Any

from pref_core._optional import import_optional

# Fail once, here, with the extra to install, rather than deep inside a loader.
for _module in ("diffusers", "transformers", "safetensors"):
    import_optional(_module, extra="diffusers", purpose="pref_core.backbones")

from pref_core.backbones.base import (  # noqa: E402
    KINDS,
    Backbone,
    IdentityCodec,
    LoadOptions,
    VAECodec,
)

_LAZY = {
    "load_backbone": "pref_core.backbones.loading",
    "DEFAULT_SOURCES": "pref_core.backbones.loading",
    "PolicySet": "pref_core.backbones.training",
    "LoraSettings": "pref_core.backbones.training",
    "export_lora": "pref_core.backbones.export",
    "export_denoiser": "pref_core.backbones.export",
    "export_pipeline": "pref_core.backbones.export",
    "sample": "pref_core.backbones.sampling",
    "SampleResult": "pref_core.backbones.sampling",
    "make_grid": "pref_core.backbones.sampling",
    "GuidanceStrategy": "pref_core.backbones.guidance",
    "ClassifierFreeGuidance": "pref_core.backbones.guidance",
    "DistilledGuidance": "pref_core.backbones.guidance",
    "TrueCFG": "pref_core.backbones.guidance",
    "NoGuidance": "pref_core.backbones.guidance",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pref_core.backbones' has no attribute {name!r}")


__all__ = ["KINDS", "Backbone", "IdentityCodec", "LoadOptions", "VAECodec", *_LAZY]
