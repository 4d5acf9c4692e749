"""Running several denoiser calls of one step together.

Two-model methods (CHATS) call two networks per step: while training, the preferred model on
the winners and the dispreferred model on the losers; while sampling, ε⁺(c) and ε⁻(ĉ).
:func:`run_jointly` takes the list of calls and makes as few, as large forwards as the
denoisers allow:

1. calls to the *same* denoiser are concatenated along the batch into one call;
2. denoisers that belong to one joint group — the policies of a LoRA
   :class:`~pref_core.backbones.training.PolicySet`, adapters on one shared network — run as
   **one** mixed-adapter forward (``group.mixed_forward(names, x, t, cond)``), so two LoRA
   policies cost one batched call;
3. separate networks (full copies) on a CUDA device, without autograd (sampling), run on
   their own CUDA streams so their kernels can overlap;
4. anything else runs one call after the other.

The results are exactly what the separate calls return (up to the batch-size dependence of
floating-point kernels), in the order of ``calls``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pref_core.conditioning import Conditioning
from pref_core.protocols import Denoiser

__all__ = ["Call", "run_jointly"]

Call = tuple[Denoiser, Tensor, Tensor, Conditioning]


def _group_by_denoiser(calls: Sequence[Call]) -> list[tuple[Denoiser, list[int]]]:
    groups: dict[int, tuple[Denoiser, list[int]]] = {}
    for i, (denoiser, *_rest) in enumerate(calls):
        groups.setdefault(id(denoiser), (denoiser, []))[1].append(i)
    return list(groups.values())


def _concat(calls: Sequence[Call], members: list[int]) -> tuple[Tensor, Tensor, Conditioning]:
    if len(members) == 1:
        _, x, t, c = calls[members[0]]
        return x, t, c
    x = torch.cat([calls[i][1] for i in members])
    t = torch.cat([calls[i][2] for i in members])
    c = Conditioning.cat([calls[i][3] for i in members])
    return x, t, c


def _split(output: Tensor, calls: Sequence[Call], members: list[int], results: list) -> None:
    sizes = [calls[i][1].shape[0] for i in members]
    for i, part in zip(members, output.split(sizes)):
        results[i] = part


def run_jointly(calls: Sequence[Call], *, overlap: bool = True) -> list[Tensor]:
    """Evaluate ``denoiser(x, t, cond)`` for every call, batching what can be batched.

    Args:
        calls: ``(denoiser, x_t (B_k, ...), timesteps (B_k,), cond (B_k))`` per call.
        overlap: allow CUDA streams for separate networks when autograd is off.

    Returns:
        one output per call, (B_k, ...), in order.
    """
    if not calls:
        return []
    results: list[Tensor | None] = [None] * len(calls)
    groups = _group_by_denoiser(calls)

    owners = {id(getattr(d, "joint_group", None)) for d, _ in groups}
    owner = getattr(groups[0][0], "joint_group", None)
    if len(groups) > 1 and owner is not None and len(owners) == 1:
        members = [i for _, idx in groups for i in idx]
        x, t, c = _concat(calls, members)
        names = [d.joint_name for d, idx in groups for i in idx for _ in range(len(calls[i][1]))]
        _split(owner.mixed_forward(names, x, t, c), calls, members, results)
        return results  # type: ignore[return-value]

    device = calls[0][1].device
    if overlap and len(groups) > 1 and device.type == "cuda" and not torch.is_grad_enabled():
        current = torch.cuda.current_stream(device)
        outputs = []
        for denoiser, idx in groups:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                x, t, c = _concat(calls, idx)
                outputs.append((stream, denoiser(x, t, c), idx))
        for stream, output, idx in outputs:
            current.wait_stream(stream)
            output.record_stream(current)
            _split(output, calls, idx, results)
        return results  # type: ignore[return-value]

    for denoiser, idx in groups:
        x, t, c = _concat(calls, idx)
        _split(denoiser(x, t, c), calls, idx, results)
    return results  # type: ignore[return-value]
