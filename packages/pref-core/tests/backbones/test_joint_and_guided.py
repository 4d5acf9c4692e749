"""run_jointly (batching the denoiser calls of one step), PolicySet.mixed_forward, and the
GuidedModel manifest helpers."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pref_core.backbones.guided import MANIFEST, load_guided, read_manifest, write_manifest
from pref_core.backbones.joint import run_jointly
from pref_core.testing.models import TinyDenoiser, random_conditioning


class _Counting(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = TinyDenoiser(channels=2, cond_dim=8)
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        return self.net(x, t, cond)


def _call(denoiser, b, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, 4, 4, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    return (denoiser, x, t, random_conditioning(b, generator=g))


def test_calls_to_one_denoiser_become_one_batched_call():
    a, b = _Counting(0), _Counting(1)
    calls = [_call(a, 2, 0), _call(b, 3, 1), _call(a, 1, 2)]
    with torch.no_grad():
        expected = [d(x, t, c) for d, x, t, c in calls]
    a.calls.clear()
    b.calls.clear()
    with torch.no_grad():
        out = run_jointly(calls)
    assert a.calls == [3] and b.calls == [3]
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert run_jointly([]) == []


@pytest.fixture(scope="module")
def toy_policies():
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from pref_core.backbones.loading import load_backbone
    from pref_core.backbones.training import LoraSettings, PolicySet

    out = {}
    for mode in ("lora", "full"):
        backbone = load_backbone("toy", seed=0)
        policies = PolicySet(backbone, mode=mode, names=("a", "b"), lora=LoraSettings(rank=2))
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in policies.trainable_parameters("b"):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        out[mode] = policies
    return out


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_mixed_forward_routes_each_sample_to_its_policy(toy_policies, mode):
    policies = toy_policies[mode]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    t = torch.tensor([10, 200, 500, 900])
    cond = policies.backbone.encode(["a red circle", "a blue square", "a cross", "a triangle"])
    names = ["b", "a", "a", "b"]
    with torch.no_grad():
        mixed = policies.mixed_forward(names, x, t, cond)
        for i, name in enumerate(names):
            alone = policies[name](x[i : i + 1], t[i : i + 1], cond.index([i]))
            torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-5, rtol=1e-5)
        # the two policies really differ, so a swapped route would show
        assert not torch.allclose(policies["a"](x, t, cond), policies["b"](x, t, cond), atol=1e-4)
    with pytest.raises(ValueError, match="names"):
        policies.mixed_forward(["a"], x, t, cond)
    with pytest.raises(KeyError, match="no policy"):
        policies.mixed_forward(["a", "a", "c", "b"], x, t, cond)


def test_a_plain_forward_after_a_mixed_one_uses_the_active_adapter(toy_policies):
    policies = toy_policies["lora"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    t = torch.tensor([100, 600])
    cond = policies.backbone.encode(["a red circle", "a blue square"])
    with torch.no_grad():
        before = policies["a"](x, t, cond)
        policies.mixed_forward(["a", "b"], x, t, cond)
        torch.testing.assert_close(policies["a"](x, t, cond), before)


def test_manifest_round_trip_and_errors(tmp_path):
    assert read_manifest(tmp_path) is None
    path = write_manifest(tmp_path, "chats", sampler={"alpha": 0.5})
    assert path.name == MANIFEST
    assert read_manifest(tmp_path) == {"format": 1, "method": "chats", "sampler": {"alpha": 0.5}}
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 99, "method": "x"}))
    with pytest.raises(ValueError, match="upgrade pref-core"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"sampler": {}}))
    with pytest.raises(ValueError, match="'method'"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"method": "no-such-method"}))
    with pytest.raises(LookupError, match="install pref-no-such-method"):
        load_guided(tmp_path)
    with pytest.raises(FileNotFoundError, match="plain pipeline"):
        load_guided(tmp_path / "missing")


@pytest.mark.gpu
def test_separate_networks_on_cuda_streams_give_the_sequential_results():
    a, b = _Counting(0).cuda(), _Counting(1).cuda()
    calls = []
    for i, d in enumerate((a, b)):
        _, x, t, c = _call(d, 4, i)
        calls.append((d, x.cuda(), t.cuda(), c.to("cuda")))
    with torch.no_grad():
        expected = [d(x, t, c) for d, x, t, c in calls]
        out = run_jointly(calls)
    torch.cuda.synchronize()
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want)


def test_policies_report_the_dtype_and_device_of_their_network():
    """The sampler draws latents on the first denoiser's device and dtype; a PolicySet policy
    holds no parameters itself, so it reports its network's (on a GPU a LoRA pair would
    otherwise get CPU latents)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from pref_core.backbones.loading import load_backbone
    from pref_core.backbones.sampling import _dtype_device
    from pref_core.backbones.training import PolicySet

    policies = PolicySet(
        load_backbone("toy", seed=0), mode="lora", names=("a", "b"), mixed_precision="bf16"
    )
    assert list(policies["a"].parameters()) == []
    assert _dtype_device(policies["a"]) == (torch.bfloat16, torch.device("cpu"))
