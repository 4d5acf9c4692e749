"""Exact PyTorch fallback for :func:`pref_core.ops.paired_errors`.

Same contract as the Triton kernel: saves only its inputs, recomputes ``policy - target`` in
backward, accumulates in float32, and writes gradients for the two policy predictions only.
"""

from __future__ import annotations

import torch

from pref_core.ops._utils import compute_dtype, per_sample_sum, per_sample_view

__all__ = ["PairedErrorsFunction"]


def _sq_err_sum(pred: torch.Tensor, target: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    # copy=True: the first operand must be a fresh buffer because it is squared in place.
    diff = pred.to(acc, copy=True).sub_(target)  # (B, ...) acc
    return per_sample_sum(diff.square_())  # (B,)


class PairedErrorsFunction(torch.autograd.Function):
    """``(policy_w, policy_l, reference_w, reference_l, target_w, target_l) -> (4, B)`` errors.

    Rows are the per-sample mean squared errors of policy_w, policy_l, reference_w and
    reference_l against their targets.
    """

    @staticmethod
    def forward(ctx, policy_w, policy_l, reference_w, reference_l, target_w, target_l):
        acc = compute_dtype(policy_w, policy_l, reference_w, reference_l, target_w, target_l)
        d = policy_w[0].numel()
        out = torch.stack(
            [
                _sq_err_sum(policy_w, target_w, acc),
                _sq_err_sum(policy_l, target_l, acc),
                _sq_err_sum(reference_w, target_w, acc),
                _sq_err_sum(reference_l, target_l, acc),
            ]
        ).div_(d)  # (4, B)
        # The reference predictions are constants of the loss, so they are not kept alive.
        ctx.save_for_backward(policy_w, policy_l, target_w, target_l)
        ctx.acc = acc
        return out

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (4, B)
        policy_w, policy_l, target_w, target_l = ctx.saved_tensors
        acc = ctx.acc
        scale = grad_out[:2].to(acc) * (2.0 / policy_w[0].numel())  # (2, B): g * 2 / D
        grads = []
        for i, (pred, target) in enumerate(((policy_w, target_w), (policy_l, target_l))):
            if not ctx.needs_input_grad[i]:
                grads.append(None)
                continue
            g = pred.to(acc, copy=True).sub_(target).mul_(per_sample_view(scale[i], pred.ndim))
            grads.append(g.to(pred.dtype))
        return grads[0], grads[1], None, None, None, None
