"""Test helpers for packages built on pref-core: tiny components and conformance mixins.

Importing this module needs nothing beyond pref-core's own dependencies; the mixins are plain
classes whose ``test_*`` methods pytest collects in subclasses.
"""

from pref_core.testing.conformance import ObjectiveConformance
from pref_core.testing.models import TinyDenoiser, random_conditioning, timestep_embedding

__all__ = ["ObjectiveConformance", "TinyDenoiser", "random_conditioning", "timestep_embedding"]
