"""Forward noising and training target (epsilon / v / x0 / flow velocity) in one pass."""

from pref_core.ops.noising.fallback import NoiseAndTargetFunction
from pref_core.ops.noising.function import noise_and_target
from pref_core.ops.noising.reference import noise_and_target_reference

__all__ = ["NoiseAndTargetFunction", "noise_and_target", "noise_and_target_reference"]
