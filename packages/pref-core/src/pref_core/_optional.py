"""Lazy imports of optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

# Which pref-core extra brings each optional top-level module.
EXTRAS = {
    "diffusers": "diffusers",
    "transformers": "diffusers",
    "accelerate": "diffusers",
    "safetensors": "diffusers",
    "peft": "peft",
    "triton": "triton",
}


def import_optional(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an ImportError that says how to get it.

    Args:
        module: dotted module name, e.g. ``"diffusers"`` or ``"peft.tuners.lora"``.
        extra: the pref-core extra that provides it (looked up from the top-level name when
            omitted).
        purpose: what needs it, for the message ("loading SDXL", ...).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = extra or EXTRAS.get(top)
        need = f" for {purpose}" if purpose else ""
        hint = (
            f"install it with `pip install 'pref-core[{extra}]'`"
            if extra
            else f"install it with `pip install {top}`"
        )
        raise ImportError(f"{module!r} is needed{need} but is not installed; {hint}") from exc
