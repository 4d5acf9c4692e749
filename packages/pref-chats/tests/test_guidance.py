"""The CHATS samplers: Eq. 16 and Eq. 17 computed by hand, α = 0 as two-model CFG, the proxy
prompt on pooled embeddings, and the samplers plugged into pref's sampling loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pref_chats import ProxyPromptGuidance, ThreeTermGuidance
from pref_core.conditioning import Conditioning


class _Encoder:
    """Deterministic embeddings: prompt_embeds (B, 3, 4), pooled (B, 4), size ids (B, 6)."""

    def encode(self, prompts):
        rows = []
        for p in prompts:
            g = torch.Generator().manual_seed(sum(map(ord, p)) + 7)
            rows.append(torch.randn(3, 4, generator=g))
        embeds = torch.stack(rows)
        return Conditioning(
            {
                "prompt_embeds": embeds,
                "pooled_prompt_embeds": embeds.sum(1) + 1.0,
                "add_time_ids": torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]] * len(prompts)),
            },
            ids=("add_time_ids",),
        )


class _Backbone:
    encoder = _Encoder()

    def encode(self, prompts):
        return self.encoder.encode(list(prompts))

    def null_condition(self, batch_size, mode="empty"):
        null = self.encode([""] * batch_size)
        return null if mode == "empty" else null.zeros_like()


class _Net(nn.Module):
    """A nonlinear denoiser of (x, t, cond) using every embedding, so a wrong input shows."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(4, generator=g))
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        e = cond["prompt_embeds"].mean(1) @ self.w + cond["pooled_prompt_embeds"] @ self.w
        e = e + cond["add_time_ids"].sum(1) * 1e-3
        return torch.tanh(x * e[:, None, None, None] + t[:, None, None, None] * 1e-3)


PROMPTS = ["a red circle", "a blue square"]


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 4, 4, generator=g), torch.tensor([500, 500])


def test_proxy_prompt_rule_by_hand():
    backbone, pos, neg = _Backbone(), _Net(1), _Net(2)
    s, a = 5.0, 0.5
    rule = ProxyPromptGuidance(scale=s, alpha=a)
    x, t = _inputs()
    out = rule({"preferred": pos, "dispreferred": neg}, x, t, rule.prepare(backbone, PROMPTS))

    c = backbone.encode(PROMPTS)
    n = backbone.encode(["", ""])
    proxy = Conditioning(
        {
            "prompt_embeds": -a * c["prompt_embeds"] + (1 + a) * n["prompt_embeds"],
            "pooled_prompt_embeds": -a * c["pooled_prompt_embeds"]
            + (1 + a) * n["pooled_prompt_embeds"],
            "add_time_ids": c["add_time_ids"],
        }
    )
    expected = (1 + s) * pos(x, t, c) - s * neg(x, t, proxy)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_proxy_prompt_is_applied_to_pooled_embeddings_and_keeps_ids():
    backbone = _Backbone()
    cond, proxy = ProxyPromptGuidance(alpha=0.7).prepare(backbone, PROMPTS)
    null = backbone.encode(["", ""])
    torch.testing.assert_close(
        proxy["pooled_prompt_embeds"],
        -0.7 * cond["pooled_prompt_embeds"] + 1.7 * null["pooled_prompt_embeds"],
    )
    assert torch.equal(proxy["add_time_ids"], cond["add_time_ids"])


def test_three_term_rule_by_hand():
    backbone, pos, neg = _Backbone(), _Net(1), _Net(2)
    s, a = 5.0, 0.5
    rule = ThreeTermGuidance(scale=s, alpha=a)
    x, t = _inputs()
    out = rule({"preferred": pos, "dispreferred": neg}, x, t, rule.prepare(backbone, PROMPTS))
    c, n = backbone.encode(PROMPTS), backbone.encode(["", ""])
    # Eq. 16: (1+s)ε⁺(c) − s[−α ε⁻(c) + (1+α) ε⁻(∅)]
    expected = (1 + s) * pos(x, t, c) - s * (-a * neg(x, t, c) + (1 + a) * neg(x, t, n))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # the dispreferred model's two inputs went through one batched call
    assert neg.calls[0] == 4


@pytest.mark.parametrize("rule", [ProxyPromptGuidance, ThreeTermGuidance])
def test_alpha_zero_is_two_model_cfg(rule):
    backbone, pos, neg = _Backbone(), _Net(1), _Net(2)
    s = 3.0
    strategy = rule(scale=s, alpha=0.0)
    x, t = _inputs()
    out = strategy(
        {"preferred": pos, "dispreferred": neg}, x, t, strategy.prepare(backbone, PROMPTS)
    )
    c, n = backbone.encode(PROMPTS), backbone.encode(["", ""])
    torch.testing.assert_close(out, (1 + s) * pos(x, t, c) - s * neg(x, t, n))


def test_negative_prompts_replace_the_null_and_null_modes():
    backbone = _Backbone()
    _, proxy = ProxyPromptGuidance(alpha=1.0).prepare(backbone, PROMPTS, ["blurry", "dark"])
    c, neg = backbone.encode(PROMPTS), backbone.encode(["blurry", "dark"])
    torch.testing.assert_close(
        proxy["prompt_embeds"], -c["prompt_embeds"] + 2 * neg["prompt_embeds"]
    )
    _, zeros = ProxyPromptGuidance(alpha=1.0, null="zeros").prepare(backbone, PROMPTS)
    torch.testing.assert_close(zeros["prompt_embeds"], -c["prompt_embeds"])
    with pytest.raises(ValueError, match="null"):
        ProxyPromptGuidance(null="nothing")
    with pytest.raises(ValueError, match="scale"):
        ThreeTermGuidance(scale=-1.0)


def test_plugs_into_sample_and_alpha_zero_with_one_model_is_cfg():
    """In pref's sampling loop: with θ⁺ = θ⁻ = the base and α = 0 the proxy rule is exactly
    classifier-free guidance of the base at the same s (same null, encode(""))."""
    from pref_core.backbones.guidance import ClassifierFreeGuidance
    from pref_core.backbones.loading import load_backbone
    from pref_core.backbones.sampling import sample

    torch.manual_seed(0)
    backbone = load_backbone("toy", seed=0)
    prompts = ["a small red circle at the center", "a large blue square at the top left"]
    kwargs = {"num_inference_steps": 3, "seeds": [5, 6], "progress": False, "scheduler": "ddim"}
    cfg = sample(backbone, prompts, guidance=ClassifierFreeGuidance(2.0), **kwargs).images
    chats = sample(
        backbone,
        prompts,
        guidance=ProxyPromptGuidance(scale=2.0, alpha=0.0),
        denoisers={"preferred": backbone.denoiser, "dispreferred": backbone.denoiser},
        **kwargs,
    ).images
    # equal in exact arithmetic; float32 sums in another order (and batch sizes 2B vs 3B, which
    # change the kernels' blocking with the thread count) differ by ~1e-5 after three steps
    torch.testing.assert_close(chats, cfg, atol=1e-4, rtol=0)
    three = sample(
        backbone,
        prompts,
        guidance=ThreeTermGuidance(scale=2.0, alpha=0.5),
        denoisers={"preferred": backbone.denoiser, "dispreferred": backbone.denoiser},
        **kwargs,
    ).images
    # one model for both: (1+s)ε(c) + sα ε(c) − s(1+α) ε(∅) = CFG at s' = s(1+α)
    cfg3 = sample(backbone, prompts, guidance=ClassifierFreeGuidance(3.0), **kwargs).images
    torch.testing.assert_close(three, cfg3, atol=1e-4, rtol=0)
