"""Weighted combination of guidance branches (CFG, CHATS three-term guidance) in one pass."""

from pref_core.ops.guidance.fallback import CombineGuidanceFunction
from pref_core.ops.guidance.function import combine_guidance
from pref_core.ops.guidance.reference import combine_guidance_reference

__all__ = ["CombineGuidanceFunction", "combine_guidance", "combine_guidance_reference"]
