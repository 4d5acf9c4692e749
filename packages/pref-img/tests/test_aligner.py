"""The Implicit Aligner: identity at initialisation, masking, padding, repeats, IO, gradients.

Tiny widths (D1 = 16, D2 = 12, 2 blocks) keep every test well under a second. Tests that need a
non-zero output layer first take a few optimiser steps (:func:`_trained`), since ``out`` starts
at zero and would hide everything behind the identity.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pref_img.aligner import AlignerConfig, ImplicitAligner

D1, D2, S1 = 16, 12, 3
CONFIG = AlignerConfig(ip_dim=D1, guidance_dim=D2, num_layers=2, num_heads=4, ff_mult=2)


def _aligner(seed: int = 0, config: AlignerConfig = CONFIG) -> ImplicitAligner:
    torch.manual_seed(seed)
    return ImplicitAligner(config)


def _inputs(b: int = 3, s2: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ip = torch.randn(b, S1, D1, generator=g)
    h = torch.randn(b, s2, D2, generator=g)
    return ip, h


def _trained(steps: int = 3, seed: int = 0) -> ImplicitAligner:
    """An aligner after a few Adam steps toward random targets: every parameter non-trivial."""
    model = _aligner(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(123)
    for _ in range(steps):
        ip = torch.randn(4, S1, D1, generator=g)
        h = torch.randn(4, 6, D2, generator=g)
        target = torch.randn(4, S1, D1, generator=g)
        loss = (model(ip, h) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


# ---------------------------------------------------------------- identity and shapes
@pytest.mark.parametrize("mask_kind", ["none", "random", "all_masked_row", "int"])
def test_identity_at_initialisation(mask_kind):
    model = _aligner()
    ip, h = _inputs(b=4, s2=6)
    mask = {
        "none": None,
        "random": torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) > 0.4,
        "all_masked_row": torch.tensor([[1, 1, 0, 0, 0, 0]] * 3 + [[0] * 6], dtype=torch.bool),
        "int": torch.tensor([[1, 1, 1, 0, 0, 0]] * 4),
    }[mask_kind]
    out = model(ip, h, mask)
    assert torch.equal(out, ip)
    assert torch.equal(model.align(ip, h, mask, repeats=3), ip)


@pytest.mark.parametrize("param_dtype", [torch.float64, torch.bfloat16])
def test_identity_is_exact_whatever_the_parameter_dtype(param_dtype):
    model = _aligner().to(param_dtype)
    ip, h = _inputs()
    out = model(ip, h)
    assert out.dtype == ip.dtype == torch.float32
    assert torch.equal(out, ip)


def test_output_layer_is_zero_initialised_and_the_rest_is_seeded():
    a, b, c = _aligner(0), _aligner(0), _aligner(1)
    assert torch.count_nonzero(a.out.weight) == 0 and torch.count_nonzero(a.out.bias) == 0
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name  # same seed, same weights: no hidden global state
        if name.endswith(("to_q.weight", "guidance_proj.weight")):
            assert not torch.equal(p, r), name
    assert isinstance(a.guidance_proj, torch.nn.Linear)
    assert a.guidance_proj.in_features == D2 and a.guidance_proj.out_features == D1
    assert len(a.blocks) == CONFIG.num_layers


@pytest.mark.parametrize(("b", "s1", "s2"), [(1, 1, 1), (2, 16, 7), (3, 4, 33)])
def test_shapes(b, s1, s2):
    model = _trained()
    out = model(torch.randn(b, s1, D1), torch.randn(b, s2, D2))
    assert out.shape == (b, s1, D1)
    assert torch.isfinite(out).all()


def test_bad_inputs_raise_clear_errors():
    model = _aligner()
    ip, h = _inputs()
    with pytest.raises(ValueError, match="ip_tokens must be"):
        model(torch.randn(3, S1, D1 + 1), h)
    with pytest.raises(ValueError, match="guidance must be"):
        model(ip, torch.randn(3, 5, D2 + 1))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(ip, torch.randn(2, 5, D2))
    with pytest.raises(ValueError, match="guidance_mask must be"):
        model(ip, h, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="repeats"):
        model.align(ip, h, repeats=0)


def test_num_heads_must_divide_ip_dim():
    with pytest.raises(ValueError, match="num_heads=5 does not divide ip_dim=16"):
        AlignerConfig(ip_dim=16, guidance_dim=8, num_heads=5)
    with pytest.raises(ValueError, match="positive integer"):
        AlignerConfig(ip_dim=0, guidance_dim=8)


# ---------------------------------------------------------------- masking and padding
def test_masked_guidance_values_do_not_influence_the_output():
    model = _trained()
    ip, h = _inputs(b=3, s2=6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=bool)
    before = model(ip, h, mask)
    assert not torch.equal(before, ip)  # the trained aligner is no longer the identity
    garbage = h.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), D2) * 1e4
    assert torch.equal(model(ip, garbage, mask), before)
    garbage[~mask] = float("inf")  # padding may hold anything
    assert torch.equal(model(ip, garbage, mask), before)
    # ... while changing a *real* token does change its sample's output
    changed = h.clone()
    changed[1, 0] += 1.0
    after = model(ip, changed, mask)
    assert not torch.allclose(after[1], before[1])
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])


def test_padded_batch_equals_each_sample_alone():
    model = _trained()
    g = torch.Generator().manual_seed(5)
    lengths = [4, 1, 7]
    ips = [torch.randn(1, S1, D1, generator=g) for _ in lengths]
    hs = [torch.randn(1, n, D2, generator=g) for n in lengths]
    alone = torch.cat([model(ip, h) for ip, h in zip(ips, hs)])
    padded = torch.zeros(3, max(lengths), D2)
    mask = torch.zeros(3, max(lengths), dtype=torch.bool)
    for i, (h, n) in enumerate(zip(hs, lengths)):
        padded[i, :n] = h[0]
        mask[i, :n] = True
    batched = model(torch.cat(ips), padded, mask)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    # left padding (real tokens at the end) is the same sequence as far as attention goes
    left = torch.zeros_like(padded)
    left_mask = torch.zeros_like(mask)
    for i, (h, n) in enumerate(zip(hs, lengths)):
        left[i, -n:] = h[0]
        left_mask[i, -n:] = True
    torch.testing.assert_close(model(torch.cat(ips), left, left_mask), alone, rtol=1e-5, atol=1e-6)


def test_sample_without_guidance_gets_no_attention_update():
    """With every key masked the attention branch is zero (not NaN): each block reduces to
    x ← x + FF(LN(x)). Checked against that recursion written out, and against an empty
    (S2 = 0) guidance sequence, which takes the other code path."""
    model = _trained()
    ip, h = _inputs(b=2, s2=4)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    out = model(ip, h, mask)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        x = ip[1:2]
        for block in model.blocks:
            x = x + block.ff(block.norm_ff(x))
        expected = ip[1:2] + model.out(x)
    torch.testing.assert_close(out[1:2], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model(ip[1:2], h[1:2, :0]), expected, rtol=1e-6, atol=1e-6)


def test_integer_mask_equals_boolean_mask():
    model = _trained()
    ip, h = _inputs(b=2, s2=4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    assert torch.equal(model(ip, h, mask), model(ip, h, mask.bool()))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), s2=st.integers(1, 8))
def test_permutation_properties(seed, s2):
    """Cross-attention pools over the guidance tokens (invariant to their order) and treats
    each query token on its own (equivariant to the order of the image tokens)."""
    model = _TRAINED
    g = torch.Generator().manual_seed(seed)
    ip = torch.randn(2, S1, D1, generator=g)
    h = torch.randn(2, s2, D2, generator=g)
    mask = torch.rand(2, s2, generator=g) > 0.3
    out = model(ip, h, mask)
    perm = torch.randperm(s2, generator=g)
    torch.testing.assert_close(model(ip, h[:, perm], mask[:, perm]), out, rtol=1e-5, atol=1e-6)
    qperm = torch.randperm(S1, generator=g)
    torch.testing.assert_close(model(ip[:, qperm], h, mask), out[:, qperm], rtol=1e-5, atol=1e-6)


_TRAINED = _trained()


# ---------------------------------------------------------------- repeats, IO, gradients
def test_align_repeats_equals_successive_forward_calls():
    model = _trained()
    ip, h = _inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool)
    once = model(ip, h, mask)
    thrice = model(model(once, h, mask), h, mask)
    assert torch.equal(model.align(ip, h, mask), thrice)  # default repeats = 3
    assert torch.equal(model.align(ip, h, mask, repeats=1), once)
    assert not torch.allclose(thrice, once)


def test_save_and_load_round_trip(tmp_path):
    model = _trained()
    folder = model.save_pretrained(tmp_path / "aligner")
    assert sorted(p.name for p in folder.iterdir()) == ["aligner.safetensors", "config.json"]
    stored = json.loads((folder / "config.json").read_text())
    assert AlignerConfig.from_dict(stored) == CONFIG
    loaded = ImplicitAligner.from_pretrained(folder)
    assert loaded.config == CONFIG
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    ip, h = _inputs()
    assert torch.equal(loaded(ip, h), model(ip, h))
    assert all(p.requires_grad for p in loaded.parameters())
    as64 = ImplicitAligner.from_pretrained(folder, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in as64.parameters())
    torch.testing.assert_close(as64(ip.double(), h.double()).float(), model(ip, h))


def test_config_round_trip_and_errors():
    assert AlignerConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError, match="unknown AlignerConfig fields"):
        AlignerConfig.from_dict({**CONFIG.to_dict(), "hidden": 3})
    with pytest.raises(ValueError, match="needs"):
        AlignerConfig.from_dict({"ip_dim": 8})


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"missing \['config.json', 'aligner.safetensors'\]"
    ):
        ImplicitAligner.from_pretrained(tmp_path / "nowhere")
    folder = _aligner().save_pretrained(tmp_path / "a")
    (folder / "aligner.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"aligner\.safetensors"):
        ImplicitAligner.from_pretrained(folder)
    # weights of another configuration
    _aligner().save_pretrained(tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["num_layers"] = 3
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        ImplicitAligner.from_pretrained(tmp_path / "b")


def test_gradients_reach_guidance_proj_after_one_step():
    """With ``out`` at zero the gradient stops there: only ``out`` gets one. After one step
    ``out`` is non-zero and the gradient reaches every parameter, the projection included."""
    model = _aligner()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ip, h = _inputs()
    target = torch.randn(3, S1, D1, generator=torch.Generator().manual_seed(9))

    def step():
        opt.zero_grad()
        (model(ip, h) - target).square().mean().backward()

    step()
    assert model.out.weight.grad.abs().sum() > 0
    assert model.guidance_proj.weight.grad.abs().sum() == 0
    opt.step()
    step()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
