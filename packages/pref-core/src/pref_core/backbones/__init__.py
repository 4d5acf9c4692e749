"""Real model backbones (SD 1.5, SDXL, FLUX.1) and the toy ones, behind pref-core's protocols.

This subpackage is the ``pref-core[diffusers]`` extra: it needs diffusers, transformers,
safetensors and (for LoRA) peft. ``import pref_core`` never loads it.
"""

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

__all__ = ["KINDS", "Backbone", "IdentityCodec", "LoadOptions", "VAECodec"]
