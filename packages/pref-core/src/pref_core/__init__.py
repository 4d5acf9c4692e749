"""pref-core: diffusion/flow math, preference-loss primitives, fused kernels and the protocols
that every pref package composes through.

Importing this package needs only torch and einops. diffusers, transformers, peft, accelerate and
triton are optional and imported lazily by the modules that use them.
"""

from pref_core.__about__ import __version__

__all__ = ["__version__"]
