"""The forward process applied to preference pairs, and the predictions made on them.

One training step of every pair method in pref flows through these two containers:
:func:`noise_pair` draws (t, ε) for each pair and produces x_t and the regression target for the
winner and the loser; the denoisers' outputs on those inputs are gathered in a
:class:`PairPredictions`; an objective turns both into a loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pref_core.conditioning import Conditioning
from pref_core.ops import noise_and_target, paired_errors
from pref_core.ops.paired_errors import PairedErrors
from pref_core.protocols import Denoiser, NoiseProcess


@dataclass(frozen=True)
class NoisedPair:
    """x_t and targets for B pairs.

    Attributes:
        t: process timesteps, (B,) (integer indices for DDPM, σ for flow) — of the winners.
        t_loser: the losers' timesteps; the same tensor as ``t`` when timesteps are shared.
        model_t / model_t_loser: what the denoiser is called with, (B,).
        x_t_w, x_t_l: noised winner and loser, (B, ...).
        target_w, target_l: regression targets (ε, v or the flow velocity), (B, ...).
        noise_w, noise_l: the noise drawn; the same tensor when noise is shared.
    """

    t: Tensor
    t_loser: Tensor
    model_t: Tensor
    model_t_loser: Tensor
    x_t_w: Tensor
    x_t_l: Tensor
    target_w: Tensor
    target_l: Tensor
    noise_w: Tensor
    noise_l: Tensor

    @property
    def shares_timestep(self) -> bool:
        return self.t is self.t_loser or bool(torch.equal(self.t, self.t_loser))

    def stacked(self) -> tuple[Tensor, Tensor]:
        """(x_t, model_t) in the [winners; losers] layout, (2B, ...) and (2B,): one forward
        pass of a network over both halves."""
        return (torch.cat([self.x_t_w, self.x_t_l]), torch.cat([self.model_t, self.model_t_loser]))

    def swapped(self) -> NoisedPair:
        """Winner and loser exchanged."""
        return NoisedPair(
            self.t_loser,
            self.t,
            self.model_t_loser,
            self.model_t,
            self.x_t_l,
            self.x_t_w,
            self.target_l,
            self.target_w,
            self.noise_l,
            self.noise_w,
        )


@dataclass(frozen=True)
class PairPredictions:
    """Denoiser outputs at a :class:`NoisedPair`, each (B, ...).

    ``policy_w``/``policy_l`` come from the trained network(s) — for CHATS, the preferred model
    θ⁺ on the winner and the dispreferred model θ⁻ on the loser — and ``reference_*`` from the
    frozen reference, computed without gradients.
    """

    policy_w: Tensor
    policy_l: Tensor
    reference_w: Tensor
    reference_l: Tensor

    def swapped(self) -> PairPredictions:
        return PairPredictions(self.policy_l, self.policy_w, self.reference_l, self.reference_w)


def pair_errors(
    predictions: PairPredictions, pair: NoisedPair, *, backend: str | None = None
) -> PairedErrors:
    """The four per-sample errors (policy and reference, winner and loser) of a pair's
    predictions against its targets, in one fused pass (:func:`pref_core.ops.paired_errors`)."""
    return paired_errors(
        predictions.policy_w,
        predictions.policy_l,
        predictions.reference_w,
        predictions.reference_l,
        pair.target_w,
        pair.target_l,
        backend=backend,
    )


def _per_sample(
    generator: torch.Generator | Sequence[torch.Generator] | None, batch: int
) -> list[torch.Generator] | None:
    if generator is None or isinstance(generator, torch.Generator):
        return None
    generators = list(generator)
    if len(generators) != batch:
        raise ValueError(
            f"got {len(generators)} generators for a batch of {batch}; pass one per sample"
        )
    return generators


def draw_noise_like(
    x: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None
) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn in float32 on the generator's device.

    With a sequence of generators (one per sample), sample i comes from generator i alone.
    """
    generators = _per_sample(generator, x.shape[0])
    if generators is None:
        noise = torch.randn(
            x.shape,
            generator=generator,
            dtype=torch.float32,
            device=generator.device if generator is not None else x.device,
        )
    else:
        noise = torch.cat(
            [
                torch.randn((1, *x.shape[1:]), generator=g, dtype=torch.float32, device=g.device)
                for g in generators
            ]
        )
    return noise.to(device=x.device, dtype=x.dtype)


def noise_pair(
    process: NoiseProcess,
    x0_w: Tensor,
    x0_l: Tensor,
    *,
    share_noise: bool = True,
    share_timestep: bool = True,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    backend: str | None = None,
    **timestep_kwargs,
) -> NoisedPair:
    """Draw timesteps and noise for B pairs and apply the forward process in one fused pass.

    By default a pair shares t and ε (Diffusion-DPO's and CHATS's choice): the winner/loser
    error difference then compares the two images under identical corruption, which lowers
    the variance of the preference signal. Either can be drawn independently per image.

    Args:
        process: a :class:`~pref_core.protocols.NoiseProcess` (DDPM schedule or flow).
        x0_w, x0_l: clean winner/loser latents, (B, ...).
        generator: drives every random draw, for reproducibility. A sequence of B generators
            draws pair i's timestep and noise from generator i alone, so a pair's corruption
            does not depend on the batch it lands in — how the trainer makes one process and
            several processes sharing the same global batch compute the same step.
        backend: kernel backend for :func:`pref_core.ops.noise_and_target`.
        timestep_kwargs: passed to ``process.sample_timesteps`` (e.g. ``image_seq_len``).
    """
    if x0_w.shape != x0_l.shape:
        raise ValueError(f"winner {tuple(x0_w.shape)} and loser {tuple(x0_l.shape)} differ")
    batch = x0_w.shape[0]
    device = x0_w.device

    generators = _per_sample(generator, batch)

    def draw_t() -> Tensor:
        if generators is None:
            return process.sample_timesteps(
                batch, generator=generator, device=device, **timestep_kwargs
            )
        return torch.cat(
            [
                process.sample_timesteps(1, generator=g, device=device, **timestep_kwargs)
                for g in generators
            ]
        )

    def draw_noise() -> Tensor:
        return draw_noise_like(x0_w, generator)

    t_w = draw_t()
    t_l = t_w if share_timestep else draw_t()
    noise_w = draw_noise()
    noise_l = noise_w if share_noise else draw_noise()

    if share_timestep:
        # Both halves in one kernel launch over the [w; l] layout.
        coeffs = process.coefficients(t_w)
        x_t, target = noise_and_target(
            torch.cat([x0_w, x0_l]),
            torch.cat([noise_w, noise_l]),
            *(torch.cat([v, v]) for v in coeffs),
            backend=backend,
        )
        x_t_w, x_t_l = x_t.chunk(2)
        target_w, target_l = target.chunk(2)
    else:
        x_t_w, target_w = noise_and_target(
            x0_w, noise_w, *process.coefficients(t_w), backend=backend
        )
        x_t_l, target_l = noise_and_target(
            x0_l, noise_l, *process.coefficients(t_l), backend=backend
        )
    return NoisedPair(
        t_w,
        t_l,
        process.model_timesteps(t_w),
        process.model_timesteps(t_l),
        x_t_w,
        x_t_l,
        target_w,
        target_l,
        noise_w,
        noise_l,
    )


def predict_pair(
    policy: Denoiser, reference: Denoiser, pair: NoisedPair, cond: Conditioning
) -> PairPredictions:
    """Run a policy and a frozen reference on both halves of a pair, one batched call each.

    Winner and loser go through each network together as [x_t_w; x_t_l] with the prompt
    conditioning repeated, the Diffusion-DPO layout. The reference runs under ``no_grad``.
    With LoRA, ``reference`` can be the same module with its adapters disabled.
    """
    x_t, model_t = pair.stacked()
    cond2 = cond.repeat(2)
    policy_w, policy_l = policy(x_t, model_t, cond2).chunk(2)
    with torch.no_grad():
        reference_w, reference_l = reference(x_t, model_t, cond2).chunk(2)
    return PairPredictions(policy_w, policy_l, reference_w, reference_l)
