"""Fused ops: Triton kernels with exact, memory-frugal PyTorch fallbacks.

=====================  ==========================================================================
op                     computes
=====================  ==========================================================================
``paired_errors``      the four per-sample MSEs of Diffusion-DPO / CHATS in one pass
``combine_guidance``   ``sum_k w_k * pred_k`` (CFG, CHATS three-term guidance)
``dspo_residual``      DSPO Eq. 13 per-sample residual loss
``noise_and_target``   ``x_t`` and the training target (eps / v / x0 / flow velocity) in one pass
=====================  ==========================================================================

Every op takes ``backend="auto" | "triton" | "torch" | None``; ``None`` reads
``$PREF_CORE_KERNELS`` (default ``"auto"``: Triton for CUDA tensors when triton is installed, the
PyTorch fallback otherwise). Each op computes in float32 whatever the input dtype. Importing this
package does not import triton; the kernels load on first use. See ``docs/kernels.md``.
"""

from pref_core.ops._backend import ENV_VAR, available_backends, resolve_backend
from pref_core.ops.dspo_residual import dspo_residual
from pref_core.ops.guidance import combine_guidance
from pref_core.ops.noising import noise_and_target
from pref_core.ops.paired_errors import PairedErrors, paired_errors, paired_errors_stacked

__all__ = [
    "ENV_VAR",
    "PairedErrors",
    "available_backends",
    "combine_guidance",
    "dspo_residual",
    "noise_and_target",
    "paired_errors",
    "paired_errors_stacked",
    "resolve_backend",
]
