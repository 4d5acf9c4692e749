"""Public entry points of the paired-errors op."""

from __future__ import annotations

from typing import NamedTuple

import torch

from pref_core.ops._backend import resolve_backend
from pref_core.ops._utils import check_no_grad, check_same_shape
from pref_core.ops.paired_errors.fallback import PairedErrorsFunction

__all__ = ["PairedErrors", "paired_errors", "paired_errors_stacked"]


class PairedErrors(NamedTuple):
    """Per-sample mean squared errors of a preference pair, each ``(B,)`` float32.

    ``policy_w``/``policy_l``: trainable model on the winner/loser; ``reference_w``/
    ``reference_l``: frozen reference model on the same noisy inputs.
    """

    policy_w: torch.Tensor  # (B,)
    policy_l: torch.Tensor  # (B,)
    reference_w: torch.Tensor  # (B,)
    reference_l: torch.Tensor  # (B,)


def paired_errors(
    policy_w: torch.Tensor,
    policy_l: torch.Tensor,
    reference_w: torch.Tensor,
    reference_l: torch.Tensor,
    target_w: torch.Tensor,
    target_l: torch.Tensor,
    *,
    backend: str | None = None,
) -> PairedErrors:
    """The four per-sample errors of Diffusion-DPO / CHATS in one pass over memory.

    Each field of the result is ``mean((pred - target)^2)`` over the non-batch dims, computed and
    accumulated in float32 (float64 for float64 inputs), shape ``(B,)``. These are the
    ``||eps - eps_theta(x_t)||^2`` terms of Diffusion-DPO (Wallace et al. 2024, Eq. 14); CHATS
    passes ``theta+(x_w)`` as ``policy_w`` and ``theta-(x_l)`` as ``policy_l``.

    Args:
        policy_w, policy_l: trainable predictions for winners / losers, ``(B, ...)``.
        reference_w, reference_l: frozen reference predictions, ``(B, ...)``; must not require
            grad (compute them under ``torch.no_grad()``).
        target_w, target_l: regression targets (noise, v or flow velocity), ``(B, ...)``; must
            not require grad.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or ``None`` (``$PREF_CORE_KERNELS``).

    Backward writes only the policy gradients,
    ``grad_policy_w = g_w[b] * 2 / D * (policy_w - target_w)`` (likewise for ``l``), with
    ``D`` the number of elements per sample. Only the inputs are saved for it.

    All six tensors share one shape; dtypes may be float32, bfloat16 or float16 (mixed is fine).
    """
    tensors = {
        "policy_w": policy_w,
        "policy_l": policy_l,
        "reference_w": reference_w,
        "reference_l": reference_l,
        "target_w": target_w,
        "target_l": target_l,
    }
    check_same_shape("paired_errors", tensors)
    check_no_grad(
        "paired_errors",
        {k: v for k, v in tensors.items() if not k.startswith("policy")},
        "reference predictions and targets are constants of the loss and get no gradient: "
        "compute the reference model under torch.no_grad() and .detach() the targets",
    )
    inputs = tuple(tensors.values())
    if resolve_backend(backend, *inputs) == "triton":
        from pref_core.ops.paired_errors.triton_kernel import PairedErrorsTriton

        out = PairedErrorsTriton.apply(*inputs)
    else:
        out = PairedErrorsFunction.apply(*inputs)
    return PairedErrors(*out.unbind(0))


def paired_errors_stacked(
    policy: torch.Tensor,
    reference: torch.Tensor,
    target: torch.Tensor,
    *,
    backend: str | None = None,
) -> PairedErrors:
    """:func:`paired_errors` for the Diffusion-DPO batch layout ``[winners; losers]``.

    ``policy``, ``reference`` and ``target`` are ``(2B, ...)`` with the B winners first; they are
    split into views (no copy). Returns ``(B,)`` errors as in :func:`paired_errors`.
    """
    for name, t in (("policy", policy), ("reference", reference), ("target", target)):
        if not isinstance(t, torch.Tensor) or t.ndim < 1 or t.shape[0] % 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"paired_errors_stacked: {name} must be a (2B, ...) tensor with winners then "
                f"losers along dim 0, got {shape}"
            )
    policy_w, policy_l = policy.chunk(2)
    reference_w, reference_l = reference.chunk(2)
    target_w, target_l = target.chunk(2)
    return paired_errors(
        policy_w, policy_l, reference_w, reference_l, target_w, target_l, backend=backend
    )
