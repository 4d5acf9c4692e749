"""Per-sample squared errors of a preference pair (Diffusion-DPO, CHATS) in one pass."""

from pref_core.ops.paired_errors.fallback import PairedErrorsFunction
from pref_core.ops.paired_errors.function import PairedErrors, paired_errors, paired_errors_stacked
from pref_core.ops.paired_errors.reference import (
    mse_per_sample_reference,
    paired_errors_reference,
)

__all__ = [
    "PairedErrors",
    "PairedErrorsFunction",
    "mse_per_sample_reference",
    "paired_errors",
    "paired_errors_reference",
    "paired_errors_stacked",
]
