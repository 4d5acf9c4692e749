"""Conformance checks every preference objective in pref must pass.

Mix :class:`ObjectiveConformance` into a pytest class and implement :meth:`make_objective`::

    class TestMyObjective(ObjectiveConformance):
        def make_objective(self):
            return MyObjective(beta=100.0)

The inherited ``test_*`` methods then check that the loss is a finite scalar, that gradients
reach every trainable parameter and nothing frozen, that metrics are detached, that a fixed
seed reproduces the loss, and that reversing every preference behaves as the method's math
says (:meth:`check_swap`; the default is the Diffusion-DPO behaviour). Methods with a
different model layout (CHATS's two policies) override :meth:`make_policies` and
:meth:`predict`.
"""

from __future__ import annotations

import abc
import copy
import math

import torch
from torch import nn

from pref_core.batch import PreferenceBatch
from pref_core.pairs import NoisedPair, PairPredictions, noise_pair, predict_pair
from pref_core.protocols import NoiseProcess, ObjectiveOutput, PreferenceObjective
from pref_core.schedules import DDPMSchedule
from pref_core.testing.models import TinyDenoiser, random_conditioning


class ObjectiveConformance(abc.ABC):
    """Shared tests for :class:`~pref_core.protocols.PreferenceObjective` implementations."""

    batch_size: int = 4
    latent_shape: tuple[int, ...] = (4, 8, 8)
    seed: int = 0

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def make_objective(self) -> PreferenceObjective:
        """The objective under test, with hyper-parameters that give O(1) logits here."""

    def make_process(self) -> NoiseProcess:
        return DDPMSchedule.scaled_linear()

    def make_reference(self) -> nn.Module:
        torch.manual_seed(self.seed)
        reference = TinyDenoiser(channels=self.latent_shape[0])
        reference.requires_grad_(False)
        return reference

    def make_policies(self, reference: nn.Module) -> dict[str, nn.Module]:
        """Trainable copies of the reference, nudged off it so gradients are not degenerate."""
        policy = copy.deepcopy(reference).requires_grad_(True)
        generator = torch.Generator().manual_seed(self.seed + 1)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        return {"policy": policy}

    def predict(
        self,
        policies: dict[str, nn.Module],
        reference: nn.Module,
        pair: NoisedPair,
        batch: PreferenceBatch,
    ) -> PairPredictions:
        return predict_pair(policies["policy"], reference, pair, batch.cond)

    def make_batch(self, generator: torch.Generator) -> PreferenceBatch:
        cond = random_conditioning(self.batch_size, generator=generator)
        winner = torch.randn(self.batch_size, *self.latent_shape, generator=generator)
        loser = torch.randn(self.batch_size, *self.latent_shape, generator=generator)
        return PreferenceBatch(cond, winner, loser)

    def check_swap(self, original: ObjectiveOutput, swapped: ObjectiveOutput) -> None:
        """Reversing every preference: implicit accuracy a → 1 − a, reward margin → −margin."""
        a = original.metrics["implicit_accuracy"]
        b = swapped.metrics["implicit_accuracy"]
        assert math.isclose(float(a + b), 1.0, abs_tol=1e-6), (float(a), float(b))
        m, n = original.metrics["reward_margin"], swapped.metrics["reward_margin"]
        assert math.isclose(float(m), -float(n), rel_tol=1e-4, abs_tol=1e-6), (float(m), float(n))

    # ------------------------------------------------------------------ plumbing
    def _run(self, *, swap: bool = False):
        generator = torch.Generator().manual_seed(self.seed)
        batch = self.make_batch(generator)
        process = self.make_process()
        pair = noise_pair(process, batch.winner, batch.loser, generator=generator)
        reference = self.make_reference()
        policies = self.make_policies(reference)
        objective = self.make_objective()
        if swap:
            batch, pair = batch.swapped(), pair.swapped()
        predictions = self.predict(policies, reference, pair, batch)
        return objective(predictions, pair, batch), policies, reference, batch

    # ------------------------------------------------------------------ the checks
    def test_objective_satisfies_protocol(self):
        assert isinstance(self.make_objective(), PreferenceObjective)

    def test_loss_is_finite_scalar(self):
        out, *_ = self._run()
        assert out.loss.ndim == 0, f"loss must be a scalar, got shape {tuple(out.loss.shape)}"
        assert torch.isfinite(out.loss), f"loss is not finite: {out.loss}"

    def test_gradient_reaches_only_trainable_parameters(self):
        out, policies, reference, batch = self._run()
        out.loss.backward()
        for name, policy in policies.items():
            for pname, p in policy.named_parameters():
                assert p.grad is not None, f"{name}.{pname} received no gradient"
                assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
                assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"
        for pname, p in reference.named_parameters():
            assert p.grad is None, f"frozen reference parameter {pname} received a gradient"
        for tensor in (batch.winner, batch.loser, *batch.cond.batched.values()):
            assert tensor.grad is None

    def test_metrics_are_detached_finite_scalars(self):
        out, *_ = self._run()
        for name, value in out.metrics.items():
            assert value.ndim == 0, f"metric {name} is not a scalar"
            assert not value.requires_grad, f"metric {name} is attached to the graph"
            assert torch.isfinite(value), f"metric {name} is not finite"

    def test_same_seed_same_loss(self):
        first, *_ = self._run()
        second, *_ = self._run()
        assert torch.equal(first.loss, second.loss)

    def test_swapping_winner_and_loser(self):
        original, *_ = self._run()
        swapped, *_ = self._run(swap=True)
        self.check_swap(original, swapped)
