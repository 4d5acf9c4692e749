"""DSPO per-sample residual loss (Eq. 13) in one pass."""

from pref_core.ops.dspo_residual.fallback import DSPOResidualFunction
from pref_core.ops.dspo_residual.function import dspo_residual
from pref_core.ops.dspo_residual.reference import dspo_residual_reference

__all__ = ["DSPOResidualFunction", "dspo_residual", "dspo_residual_reference"]
