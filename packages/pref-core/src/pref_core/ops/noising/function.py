"""Public entry point of the fused forward-noising op."""

from __future__ import annotations

import torch

from pref_core.ops._backend import resolve_backend
from pref_core.ops._utils import (
    check_no_grad,
    check_same_shape,
    compute_dtype,
    per_sample_coefficient,
)
from pref_core.ops.noising.fallback import NoiseAndTargetFunction

__all__ = ["noise_and_target"]

_OP = "noise_and_target"


def noise_and_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    a: torch.Tensor | float,
    b: torch.Tensor | float,
    c: torch.Tensor | float,
    d: torch.Tensor | float,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward noising and the regression target in one pass over ``x0`` and ``noise``.

    ``x_t = a[i] * x0 + b[i] * noise`` and ``target = c[i] * x0 + d[i] * noise`` per sample
    ``i``. The noise process supplies the coefficients (see
    ``pref_core.schedules``):

    ==========================  ===============  ===============  ===========  ==========
    process / prediction        a                b                c            d
    ==========================  ===============  ===============  ===========  ==========
    DDPM, epsilon               sqrt(abar)       sqrt(1 - abar)   0            1
    DDPM, v (Salimans & Ho)     sqrt(abar)       sqrt(1 - abar)   -sqrt(1-abar) sqrt(abar)
    DDPM, x0                    sqrt(abar)       sqrt(1 - abar)   1            0
    rectified flow (velocity)   1 - sigma        sigma            -1           1
    ==========================  ===============  ===============  ===========  ==========

    Args:
        x0: clean latents ``(B, ...)``.
        noise: Gaussian noise ``(B, ...)``, same shape (dtype may differ).
        a, b, c, d: ``(B,)`` floating tensors (float32 or float64; cast to float32 for the math),
            or Python numbers / 0-d tensors shared by all samples. Not differentiable.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or ``None`` (``$PREF_CORE_KERNELS``).

    Returns:
        ``(x_t, target)``, both ``(B, ...)`` in ``x0``'s dtype, computed in float32 (float64 for
        float64 inputs). Backward: ``grad_x0 = a * g_xt + c * g_target`` and
        ``grad_noise = b * g_xt + d * g_target``, each only when needed; only the ``(4, B)``
        coefficients are saved.
    """
    batch, _ = check_same_shape(_OP, {"x0": x0, "noise": noise})
    coefficients = {"a": a, "b": b, "c": c, "d": d}
    check_no_grad(
        _OP,
        coefficients,
        "the noise-schedule coefficients are not differentiable here; pass .detach()ed values",
    )
    acc = compute_dtype(x0, noise)
    columns = [
        per_sample_coefficient(_OP, name, v, batch, x0, allow_scalar=True, scalar_dtype=acc)
        for name, v in coefficients.items()
    ]
    # stack promotes mixed float32/float64 columns; one cast then yields the compute dtype.
    coeffs = torch.stack(columns).to(acc)  # (4, B): a, b, c, d
    if resolve_backend(backend, x0, noise) == "triton":
        from pref_core.ops.noising.triton_kernel import NoiseAndTargetTriton

        x_t, target = NoiseAndTargetTriton.apply(x0, noise, coeffs)
    else:
        x_t, target = NoiseAndTargetFunction.apply(x0, noise, coeffs)
    return x_t, target
