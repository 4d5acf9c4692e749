"""Training modes on tiny SD 1.5-, SDXL- and FLUX-shaped pipelines loaded from disk."""

import copy

import pytest
import torch

from pref_core.backbones.loading import load_backbone
from pref_core.backbones.training import LoraSettings, PolicySet
from pref_core.objectives import DiffusionDPO
from pref_core.pairs import noise_pair, predict_pair

PROMPTS = ["a red square", "a blue circle"]


def batch_for(backbone, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    channels = backbone.codec.latent_channels
    x0_w = torch.randn(2, channels, size, size, generator=g)
    x0_l = torch.randn(2, channels, size, size, generator=g)
    return x0_w, x0_l, backbone.encode(PROMPTS)


def noised(backbone, x0_w, x0_l, seed=1):
    return noise_pair(
        backbone.process,
        x0_w,
        x0_l,
        generator=torch.Generator().manual_seed(seed),
        **backbone.timestep_kwargs(x0_w),
    )


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def dpo_steps(backbone, policies, steps=2, lr=1e-2):
    x0_w, x0_l, cond = batch_for(backbone)
    optimizer = torch.optim.Adam(policies.trainable_parameters(), lr=lr)
    losses = []
    for step in range(steps):
        pair = noised(backbone, x0_w, x0_l, seed=step)
        preds = predict_pair(policies["policy"], policies.reference, pair, cond)
        out = DiffusionDPO(beta=100.0)(preds, pair, None)
        assert torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    return losses


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_one_training_step_changes_exactly_the_trainable_parameters(tiny_dir, mode):
    backbone = load_backbone(str(tiny_dir))
    encoder_before, codec_before = snapshot(backbone.encoder), snapshot(backbone.codec)
    base_before = {k: v for k, v in snapshot(backbone.model).items() if "lora_" not in k}
    policies = PolicySet(backbone, mode=mode, lora=LoraSettings(rank=4))
    trainable = policies.trainable_parameters()
    assert trainable and all(p.requires_grad for p in trainable)
    names = {id(p): n for n, p in backbone.model.named_parameters()}
    names.update({id(p): n for n, p in policies.denoiser_module("policy").model.named_parameters()})
    before = [p.detach().clone() for p in trainable]
    # LoRA's B starts at zero, so A receives gradient only from the second step on.
    dpo_steps(backbone, policies, steps=2)
    unchanged = [names[id(p)] for b, p in zip(before, trainable) if torch.equal(b, p.detach())]
    assert not unchanged, f"trainable parameters that did not change: {unchanged[:5]}"
    for name, value in snapshot(backbone.encoder).items():
        assert torch.equal(value, encoder_before[name]), f"text encoder {name} changed"
    for name, value in snapshot(backbone.codec).items():
        assert torch.equal(value, codec_before[name]), f"codec {name} changed"
    after = snapshot(backbone.model)
    for name, value in base_before.items():
        key = name if name in after else name.replace(".weight", ".base_layer.weight")
        key = key if key in after else name.replace(".bias", ".base_layer.bias")
        assert torch.equal(after[key], value), f"frozen denoiser weight {name} changed"


def test_lora_reference_is_the_base_model_exactly(tiny_sd15_dir):
    plain = load_backbone(str(tiny_sd15_dir))
    backbone = load_backbone(str(tiny_sd15_dir))
    policies = PolicySet(backbone, mode="lora", lora=LoraSettings(rank=4, init=True))
    x0_w, x0_l, cond = batch_for(backbone)
    pair = noised(backbone, x0_w, x0_l)
    x_t, t = pair.stacked()
    cond2 = cond.repeat(2)
    base = plain.denoiser(x_t, t, cond2)
    # A fresh adapter (B = 0) predicts exactly the base...
    torch.testing.assert_close(policies["policy"](x_t, t, cond2), base, rtol=0, atol=0)
    dpo_steps(backbone, policies, steps=2)
    # ...after training it differs, and with adapters disabled it is the base again, exactly.
    assert not torch.equal(policies["policy"](x_t, t, cond2), base)
    torch.testing.assert_close(policies.reference(x_t, t, cond2), base, rtol=0, atol=0)
    assert not policies.reference(x_t, t, cond2).requires_grad


def test_two_named_adapters_train_jointly_on_one_base(tiny_sd15_dir):
    backbone = load_backbone(str(tiny_sd15_dir))
    policies = PolicySet(
        backbone, mode="lora", names=("preferred", "dispreferred"), lora=LoraSettings(rank=4)
    )
    with torch.no_grad():  # make the adapters differ so selection is observable
        for i, name in enumerate(policies.names):
            for p in policies.trainable_parameters(name):
                p.add_(0.05 * (i + 1))
    x0_w, x0_l, cond = batch_for(backbone)
    pair = noised(backbone, x0_w, x0_l)
    # CHATS layout: θ⁺ predicts the winner, θ⁻ the loser, one loss.
    pred_w = policies["preferred"](pair.x_t_w, pair.model_t, cond)
    pred_l = policies["dispreferred"](pair.x_t_l, pair.model_t, cond)
    assert not torch.equal(pred_w, policies["dispreferred"](pair.x_t_w, pair.model_t, cond))
    loss = (pred_w - pair.target_w).square().mean() + (pred_l - pair.target_l).square().mean()
    loss.backward()
    for name in policies.names:
        grads = [p.grad for p in policies.trainable_parameters(name)]
        assert all(g is not None for g in grads), f"{name} got no gradient"
        assert any(g.abs().sum() > 0 for g in grads)
    # The same selection after switching back and forth, and the reference ignores both.
    again = policies["preferred"](pair.x_t_w, pair.model_t, cond)
    torch.testing.assert_close(again, pred_w, rtol=0, atol=0)


def test_full_mode_makes_independent_copies_and_a_frozen_reference(tiny_sd15_dir):
    backbone = load_backbone(str(tiny_sd15_dir))
    reference_before = snapshot(backbone.model)
    policies = PolicySet(backbone, mode="full", names=("a", "b"))
    assert policies.denoiser_module("a") is not policies.denoiser_module("b")
    assert policies.denoiser_module("a").model is not backbone.model
    with torch.no_grad():
        next(iter(policies.trainable_parameters("a"))).add_(1.0)
    for name, value in snapshot(backbone.model).items():
        assert torch.equal(value, reference_before[name])
    assert all(not p.requires_grad for p in backbone.model.parameters())


def test_mixed_precision_keeps_lora_in_fp32(tiny_sd15_dir):
    backbone = load_backbone(str(tiny_sd15_dir))
    policies = PolicySet(backbone, mode="lora", mixed_precision="bf16", lora=LoraSettings(rank=4))
    assert all(p.dtype == torch.float32 for p in policies.trainable_parameters())
    frozen = [p for n, p in backbone.model.named_parameters() if "lora_" not in n]
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    losses = dpo_steps(backbone, policies, steps=1)
    assert all(torch.isfinite(torch.tensor(losses)))
    with pytest.raises(ValueError, match="mixed_precision"):
        PolicySet(load_backbone(str(tiny_sd15_dir)), mixed_precision="int8")


def test_gradient_checkpointing_and_compile_give_the_same_predictions(tiny_sd15_dir):
    plain = PolicySet(load_backbone(str(tiny_sd15_dir)), mode="full")
    switched = PolicySet(
        load_backbone(str(tiny_sd15_dir)),
        mode="full",
        gradient_checkpointing=True,
        compile={"backend": "eager"},
    )
    assert switched.denoiser_module("policy").model.is_gradient_checkpointing
    backbone = plain.backbone
    x0_w, x0_l, cond = batch_for(backbone)
    pair = noised(backbone, x0_w, x0_l)
    plain.train()
    switched.train()
    a = plain["policy"](pair.x_t_w, pair.model_t, cond)
    b = switched["policy"](pair.x_t_w, pair.model_t, cond)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    ga = [p.grad for p in plain.trainable_parameters()]
    gb = [p.grad for p in switched.trainable_parameters()]
    for x, y in zip(ga, gb):
        if x is None:
            assert y is None
        else:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_trainable_state_round_trip(tiny_sd15_dir, mode):
    backbone = load_backbone(str(tiny_sd15_dir))
    policies = PolicySet(backbone, mode=mode, lora=LoraSettings(rank=4))
    dpo_steps(backbone, policies, steps=2)
    saved = policies.trainable_state_dict("policy")
    x0_w, x0_l, cond = batch_for(backbone)
    pair = noised(backbone, x0_w, x0_l)
    expected = policies["policy"](pair.x_t_w, pair.model_t, cond).detach()
    dpo_steps(backbone, policies, steps=1)
    assert not torch.equal(policies["policy"](pair.x_t_w, pair.model_t, cond), expected)
    policies.load_trainable_state_dict("policy", copy.deepcopy(saved))
    torch.testing.assert_close(
        policies["policy"](pair.x_t_w, pair.model_t, cond), expected, rtol=0, atol=0
    )
    assert all(p.requires_grad for p in policies.trainable_parameters())


def test_bad_arguments_are_explained(tiny_sd15_dir):
    backbone = load_backbone(str(tiny_sd15_dir))
    with pytest.raises(ValueError, match="training mode"):
        PolicySet(backbone, mode="qlora")
    with pytest.raises(ValueError, match="distinct"):
        PolicySet(backbone, names=("a", "a"))
    policies = PolicySet(backbone, lora=LoraSettings(rank=2))
    with pytest.raises(KeyError, match="policies"):
        policies["nope"]
    with pytest.raises(ValueError, match="already carries adapters"):
        PolicySet(backbone)
