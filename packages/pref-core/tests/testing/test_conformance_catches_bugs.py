"""The conformance mixin must fail on objectives that break its rules: a check that cannot fail
protects nothing."""

import pytest
import torch

from pref_core.objectives import DiffusionDPO
from pref_core.protocols import ObjectiveOutput
from pref_core.testing import ObjectiveConformance


class DetachedLoss:
    """Forgets the graph: no gradient reaches the policy."""

    def __call__(self, predictions, pair, batch):
        out = DiffusionDPO(beta=200.0)(predictions, pair, batch)
        return ObjectiveOutput(out.loss.detach().requires_grad_(), out.metrics)


class NonScalarLoss:
    def __call__(self, predictions, pair, batch):
        out = DiffusionDPO(beta=200.0)(predictions, pair, batch)
        return ObjectiveOutput(out.per_sample["logits"].requires_grad_(), out.metrics)


class AttachedMetrics:
    def __call__(self, predictions, pair, batch):
        out = DiffusionDPO(beta=200.0)(predictions, pair, batch)
        return ObjectiveOutput(out.loss, {**out.metrics, "loss": out.loss})


class IgnoresPreference:
    """Scores winner and loser alike, so swapping them changes nothing — the swap check must
    notice that accuracy does not go from a to 1 − a."""

    def __call__(self, predictions, pair, batch):
        loss = (predictions.policy_w - pair.target_w).square().mean() + (
            predictions.policy_l - pair.target_l
        ).square().mean()
        return ObjectiveOutput(
            loss, {"implicit_accuracy": torch.tensor(1.0), "reward_margin": torch.tensor(1.0)}
        )


def harness(objective):
    class Harness(ObjectiveConformance):
        def make_objective(self):
            return objective

    return Harness()


def test_a_correct_objective_passes_every_check():
    h = harness(DiffusionDPO(beta=200.0))
    h.test_loss_is_finite_scalar()
    h.test_gradient_reaches_only_trainable_parameters()
    h.test_metrics_are_detached_finite_scalars()
    h.test_same_seed_same_loss()
    h.test_swapping_winner_and_loser()
    h.test_objective_satisfies_protocol()


def test_detached_loss_is_caught():
    with pytest.raises(AssertionError, match="no gradient"):
        harness(DetachedLoss()).test_gradient_reaches_only_trainable_parameters()


def test_non_scalar_loss_is_caught():
    with pytest.raises(AssertionError, match="scalar"):
        harness(NonScalarLoss()).test_loss_is_finite_scalar()


def test_attached_metric_is_caught():
    with pytest.raises(AssertionError, match="attached"):
        harness(AttachedMetrics()).test_metrics_are_detached_finite_scalars()


def test_preference_blind_objective_fails_the_swap_check():
    with pytest.raises(AssertionError):
        harness(IgnoresPreference()).test_swapping_winner_and_loser()
