"""Saving and loading a CHATS pair: identical samples after a round trip (full copies and LoRA
adapters), the manifest, the entry-point loader, and clear errors for broken folders."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from pref_chats import ProxyPromptGuidance, ThreeTermGuidance
from pref_chats.pair import load_pair, save_lora_pair, save_pair
from pref_core.backbones.guided import GuidedModel, load_guided
from pref_core.backbones.loading import load_backbone
from pref_core.backbones.toy import save_toy

PROMPTS = ["a small red circle at the center", "a large blue square at the top left"]
KWARGS = {"num_inference_steps": 3, "seeds": [3, 4], "progress": False, "scheduler": "auto"}


def _perturbed(denoiser, seed: int):
    other = copy.deepcopy(denoiser)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return other


@pytest.mark.parametrize("kind", ["toy", "toy-flux"])
def test_full_pair_round_trip_gives_identical_samples(tmp_path, kind):
    backbone = load_backbone(kind, seed=0)
    backbone.denoiser = _perturbed(backbone.denoiser, 1)  # θ⁺
    dispreferred = _perturbed(backbone.denoiser, 2)  # θ⁻
    rule = ProxyPromptGuidance(scale=4.0, alpha=0.25)
    before = GuidedModel(
        backbone, {"preferred": backbone.denoiser, "dispreferred": dispreferred}, rule
    ).sample(PROMPTS, **KWARGS)

    folder = save_pair(
        backbone, dispreferred, tmp_path / "pair", sampler={"scale": 4.0, "alpha": 0.25}
    )
    manifest = json.loads((folder / "pref_model.json").read_text())
    assert manifest["method"] == "chats"
    assert manifest["sampler"] == {"rule": "proxy", "scale": 4.0, "alpha": 0.25, "null": "empty"}
    assert (folder / "model_index.json").is_file()  # θ⁺ alone is a stock pipeline folder

    loaded = load_guided(folder)  # through the pref.samplers entry point
    assert isinstance(loaded, GuidedModel) and loaded.guidance == rule
    after = loaded.sample(PROMPTS, **KWARGS)
    assert torch.equal(before.images, after.images)
    # θ⁺ alone loads with the plain loader and is the preferred model
    alone = load_backbone(str(folder))
    x = torch.randn(1, *before.images.shape[1:]) if kind == "toy" else None
    if x is not None:
        t = torch.tensor([400])
        cond = alone.encode(PROMPTS[:1])
        with torch.no_grad():
            torch.testing.assert_close(alone.denoiser(x, t, cond), backbone.denoiser(x, t, cond))


def test_with_guidance_changes_the_rule():
    backbone = load_backbone("toy", seed=0)
    model = GuidedModel(
        backbone,
        {"preferred": backbone.denoiser, "dispreferred": backbone.denoiser},
        ProxyPromptGuidance(),
    )
    assert model.with_guidance(alpha=0.7).guidance == ProxyPromptGuidance(alpha=0.7)
    assert isinstance(model.with_guidance(ThreeTermGuidance()).guidance, ThreeTermGuidance)
    with pytest.raises(TypeError, match="no settings"):
        model.with_guidance(alfa=0.7)
    with pytest.raises(KeyError, match="dispreferred"):
        GuidedModel(backbone, {"preferred": backbone.denoiser}, ProxyPromptGuidance())


def test_lora_pair_round_trip_gives_identical_samples(tmp_path):
    from pref_core.backbones.training import LoraSettings, PolicySet

    base_dir = save_toy(load_backbone("toy", seed=0), tmp_path / "base")
    backbone = load_backbone(str(base_dir))
    policies = PolicySet(
        backbone, mode="lora", names=("preferred", "dispreferred"), lora=LoraSettings(rank=4)
    )
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in policies.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    policies.eval()
    rule = ProxyPromptGuidance(scale=5.0, alpha=0.5)
    before = GuidedModel(
        backbone, {n: policies[n] for n in ("preferred", "dispreferred")}, rule
    ).sample(PROMPTS, **KWARGS)

    folder = save_lora_pair(policies, None, tmp_path / "lora", base=str(base_dir))
    assert (folder / "preferred" / "pytorch_lora_weights.safetensors").is_file()
    assert (folder / "dispreferred" / "pytorch_lora_weights.safetensors").is_file()
    loaded = load_pair(folder)
    # both adapters on one network: the sampler runs them in one mixed forward
    assert loaded.denoisers["preferred"].joint_group is loaded.denoisers["dispreferred"].joint_group
    after = loaded.sample(PROMPTS, **KWARGS)
    torch.testing.assert_close(after.images, before.images, atol=1e-5, rtol=0)


def test_broken_folders_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pref_model\.json"):
        load_pair(tmp_path)
    (tmp_path / "pref_model.json").write_text('{"method": "chats", "dispreferred": "nope"}')
    save_toy(load_backbone("toy", seed=0), tmp_path)
    with pytest.raises(FileNotFoundError, match="re-export"):
        load_pair(tmp_path)
    (tmp_path / "pref_model.json").write_text('{"method": "imaginary"}')
    with pytest.raises(LookupError, match="install pref-imaginary"):
        load_guided(tmp_path)
    (tmp_path / "pref_model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_guided(tmp_path)
