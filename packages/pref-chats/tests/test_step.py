"""The CHATS training step: gradient routing, what each network sees (prompt dropout for θ⁻
with the chosen null, the reference on exactly the policies' inputs), and the mixed-adapter
forward of two LoRA policies (one call, same outputs and gradients as two calls)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pref_chats import CHATS, chats_step
from pref_core.backbones.joint import run_jointly
from pref_core.batch import PreferenceBatch
from pref_core.conditioning import Conditioning
from pref_core.recipes import StepContext
from pref_core.schedules import DDPMSchedule


class _Affine(nn.Module):
    """ε̂ = a·x_t + b·mean(prompt_embeds): two scalars, and a log of what it saw."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.seen: list[tuple[torch.Tensor, Conditioning]] = []

    def forward(self, x_t, t, cond):
        self.seen.append((x_t.detach().clone(), cond))
        e = cond["prompt_embeds"].double().mean(dim=(1, 2))[:, None, None, None]
        return self.a * x_t + self.b * e


def _batch(b: int = 4):
    g = torch.Generator().manual_seed(11)
    cond = Conditioning({"prompt_embeds": torch.randn(b, 3, 2, generator=g, dtype=torch.float64)})
    winner = torch.randn(b, 1, 2, 2, generator=g, dtype=torch.float64)
    loser = torch.randn(b, 1, 2, 2, generator=g, dtype=torch.float64)
    return PreferenceBatch(cond=cond, winner=winner, loser=loser)


def _ctx(objective, pos, neg, ref, b=4, seed=0):
    null = Conditioning({"prompt_embeds": torch.full((1, 3, 2), 0.5, dtype=torch.float64)})
    return StepContext(
        policies={"preferred": pos, "dispreferred": neg},
        reference=ref,
        process=DDPMSchedule.linear(),
        objective=objective,
        generators=[torch.Generator().manual_seed(seed * 100 + i) for i in range(b)],
        null_condition=lambda n, mode: null.repeat(n),
    )


def test_gradients_reach_each_policy_only_through_its_half():
    """Autograd through the step equals the paper's formula differentiated by hand: θ⁺'s
    gradient involves only the winners, θ⁻'s only the losers."""
    pos, neg, ref = _Affine(0.9, 0.1), _Affine(1.1, -0.2), _Affine(1.0, 0.0)
    T = 3.0
    objective = CHATS(T, p_uncond=0.0, kernel_backend="torch")
    batch = _batch()
    out = chats_step(_ctx(objective, pos, neg, ref), batch)
    out.loss.backward()

    (x_w, c_w), (x_l, c_l) = pos.seen[0], neg.seen[0]
    # replay the noise: the same generators give the same (t, ε)
    from pref_core.pairs import noise_pair

    pair = noise_pair(
        DDPMSchedule.linear(),
        batch.winner,
        batch.loser,
        generator=[torch.Generator().manual_seed(i) for i in range(4)],
    )
    assert torch.equal(x_w, pair.x_t_w) and torch.equal(x_l, pair.x_t_l)
    m = lambda c: c["prompt_embeds"].mean(dim=(1, 2))[:, None, None, None]  # noqa: E731
    err = lambda a, b, x, c, target: ((a * x + b * m(c) - target) ** 2).mean(dim=(1, 2, 3))  # noqa: E731
    e_pos = err(0.9, 0.1, x_w, c_w, pair.target_w)
    e_neg = err(1.1, -0.2, x_l, c_l, pair.target_l)
    e_rw = err(1.0, 0.0, x_w, c_w, pair.target_w)
    e_rl = err(1.0, 0.0, x_l, c_l, pair.target_l)
    z = -T * ((e_pos - e_rw) + (e_neg - e_rl))
    weight = T * torch.sigmoid(-z) / 4  # ∂L/∂e_i = T σ(−z_i) / B
    # ∂e/∂a = mean(2 (a x + b m − target) x), ∂e/∂b = mean(2 (a x + b m − target) m)
    r_w = 0.9 * x_w + 0.1 * m(c_w) - pair.target_w
    r_l = 1.1 * x_l - 0.2 * m(c_l) - pair.target_l
    grad_a_pos = (weight * (2 * r_w * x_w).mean(dim=(1, 2, 3))).sum()
    grad_b_pos = (weight * (2 * r_w * m(c_w)).mean(dim=(1, 2, 3))).sum()
    grad_a_neg = (weight * (2 * r_l * x_l).mean(dim=(1, 2, 3))).sum()
    assert pos.a.grad.item() == pytest.approx(grad_a_pos.item(), rel=1e-9)
    assert pos.b.grad.item() == pytest.approx(grad_b_pos.item(), rel=1e-9)
    assert neg.a.grad.item() == pytest.approx(grad_a_neg.item(), rel=1e-9)
    assert ref.a.grad is None  # the reference runs without autograd


@pytest.mark.parametrize("mode", ["empty", "zeros"])
def test_dispreferred_sees_the_null_and_the_reference_sees_what_each_policy_saw(mode):
    pos, neg, ref = _Affine(1.0, 0.0), _Affine(1.0, 0.0), _Affine(1.0, 0.0)
    objective = CHATS(p_uncond=0.5, null=mode)
    batch = _batch(8)
    out = chats_step(_ctx(objective, pos, neg, ref, b=8, seed=1), batch)
    drawn = []
    for i in range(8):  # the step's draws for sample i: t, ε, then the drop
        g = torch.Generator().manual_seed(100 + i)
        DDPMSchedule.linear().sample_timesteps(1, generator=g)
        torch.randn(batch.winner.shape[1:], generator=g, dtype=torch.float32)
        drawn.append(bool(torch.rand((), generator=g) < 0.5))
    dropped = torch.tensor(drawn)
    assert 0 < dropped.sum() < 8, "seed choice should drop some losers and keep others"
    assert out.metrics["uncond_fraction"].item() == pytest.approx(dropped.float().mean().item())

    c_pos = pos.seen[0][1]["prompt_embeds"]
    c_neg = neg.seen[0][1]["prompt_embeds"]
    null = torch.full((3, 2), 0.5 if mode == "empty" else 0.0, dtype=torch.float64)
    assert torch.equal(c_pos, batch.cond["prompt_embeds"])  # θ⁺ never drops its prompt
    for i in range(8):
        expected = null if drawn[i] else batch.cond["prompt_embeds"][i]
        assert torch.equal(c_neg[i], expected)
    x_ref, c_ref = ref.seen[0]
    assert torch.equal(x_ref, torch.cat([pos.seen[0][0], neg.seen[0][0]]))
    assert torch.equal(c_ref["prompt_embeds"], torch.cat([c_pos, c_neg]))


def test_without_reference_the_reference_is_not_called():
    pos, neg, ref = _Affine(1.0, 0.0), _Affine(1.0, 0.0), _Affine(1.0, 0.0)
    out = chats_step(_ctx(CHATS(reference=False), pos, neg, ref), _batch())
    assert ref.seen == []
    assert out.metrics["reference_err_w"].item() == 0.0
    assert math.isfinite(out.loss.item())


# ------------------------------------------------------------------ two LoRA policies, one call
@pytest.fixture(scope="module")
def lora_pair():
    pytest.importorskip("peft")
    from pref_core.backbones.loading import load_backbone
    from pref_core.backbones.training import LoraSettings, PolicySet

    backbone = load_backbone("toy", seed=0)
    policies = PolicySet(
        backbone, mode="lora", names=("preferred", "dispreferred"), lora=LoraSettings(rank=4)
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # make the adapters differ from each other and from the base
        for p in policies.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return backbone, policies


def _probe(backbone, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    cond = backbone.encode(["a red circle", "a small blue square", "a green cross"][:b])
    return x, t, cond


def test_mixed_adapter_forward_equals_separate_calls(lora_pair):
    backbone, policies = lora_pair
    x, t, cond = _probe(backbone)
    pos, neg = policies["preferred"], policies["dispreferred"]
    with torch.no_grad():
        separate = [pos(x, t, cond), neg(x, t, cond)]
        joint = run_jointly([(pos, x, t, cond), (neg, x, t, cond)])
    assert not torch.allclose(separate[0], separate[1], atol=1e-4)
    for a, b in zip(joint, separate):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mixed_adapter_forward_counts_one_network_call(lora_pair):
    backbone, policies = lora_pair
    x, t, cond = _probe(backbone)
    calls = []
    handle = backbone.model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        with torch.no_grad():
            run_jointly(
                [(policies["preferred"], x, t, cond), (policies["dispreferred"], x, t, cond)]
            )
    finally:
        handle.remove()
    assert calls == [6]


def test_mixed_adapter_gradients_equal_separate_gradients(lora_pair):
    """The training path: one mixed forward gives each adapter the gradient it gets from its own
    call — θ⁺'s adapter from the first half only, θ⁻'s from the second."""
    backbone, policies = lora_pair
    x, t, cond = _probe(backbone, b=2, seed=1)
    pos, neg = policies["preferred"], policies["dispreferred"]
    params = policies.trainable_parameters()

    def grads(outputs):
        loss = (outputs[0] ** 2).mean() + 3 * (outputs[1] ** 2).mean()
        return torch.autograd.grad(loss, params, allow_unused=True)

    separate = grads([pos(x, t, cond), neg(x, t, cond)])
    joint = grads(run_jointly([(pos, x, t, cond), (neg, x, t, cond)]))
    for a, b in zip(joint, separate):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # every adapter matrix of both policies gets a gradient
    assert sum(g is not None and g.abs().sum() > 0 for g in joint) == len(params)
