import pytest
import torch

from pref_core.conditioning import Conditioning


def make(batch=3, value=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeds = (
        torch.randn(batch, 4, 6, generator=g)
        if value is None
        else torch.full((batch, 4, 6), float(value))
    )
    pooled = torch.randn(batch, 6, generator=g)
    mask = torch.ones(batch, 4, dtype=torch.long)
    return Conditioning(
        {"prompt_embeds": embeds, "pooled": pooled, "attention_mask": mask},
        {"text_ids": torch.zeros(4, 3)},
    )


def test_access_and_repr():
    c = make()
    assert c.batch_size == len(c) == 3
    assert set(c.keys()) == {"prompt_embeds", "pooled", "attention_mask", "text_ids"}
    assert "text_ids" in c and c["text_ids"].shape == (4, 3)
    with pytest.raises(KeyError, match="entries"):
        c["nope"]
    assert "batch_size=3" in repr(c)


def test_validation():
    with pytest.raises(ValueError, match="batch size"):
        Conditioning({"a": torch.zeros(2, 3), "b": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="at least one"):
        Conditioning({})
    with pytest.raises(ValueError, match="scalar"):
        Conditioning({"a": torch.tensor(1.0)})


def test_cat_split_index_repeat():
    a, b = make(2, seed=1), make(3, seed=2)
    c = Conditioning.cat([a, b])
    assert c.batch_size == 5
    torch.testing.assert_close(c["pooled"][2:], b["pooled"])
    first, second = c.split([2, 3])
    torch.testing.assert_close(first["prompt_embeds"], a["prompt_embeds"])
    torch.testing.assert_close(second["pooled"], b["pooled"])
    picked = c.index([4, 0])
    torch.testing.assert_close(picked["pooled"], torch.stack([b["pooled"][2], a["pooled"][0]]))
    picked_bool = c.index(torch.tensor([True, False, False, False, True]))
    torch.testing.assert_close(picked_bool["pooled"], picked["pooled"].flip(0))
    rep = a.repeat(2)
    torch.testing.assert_close(rep["pooled"], torch.cat([a["pooled"], a["pooled"]]))
    halves = rep.chunk(2)
    torch.testing.assert_close(halves[1]["pooled"], a["pooled"])
    with pytest.raises(ValueError, match="divide"):
        c.chunk(2)


def test_linear_combination_proxy_prompt():
    # CHATS Eq. 17: ĉ = −α c + (1 + α) ∅. With c ≡ 2 and ∅ ≡ 1 and α = 0.5:
    # −0.5·2 + 1.5·1 = 0.5 everywhere.
    c, null = make(value=2.0), make(value=1.0)
    alpha = 0.5
    proxy = -alpha * c + (1 + alpha) * null
    assert torch.allclose(proxy["prompt_embeds"], torch.full((3, 4, 6), 0.5))
    torch.testing.assert_close(proxy["pooled"], -0.5 * c["pooled"] + 1.5 * null["pooled"])
    assert proxy["attention_mask"].dtype == torch.long
    assert torch.equal(proxy["attention_mask"], c["attention_mask"])
    diff = c - null
    assert torch.allclose(diff["prompt_embeds"], torch.ones(3, 4, 6))
    same = Conditioning.linear_combination([c, null], torch.tensor([0.25, 0.75]))
    assert torch.allclose(same["prompt_embeds"], torch.full((3, 4, 6), 1.25))


def test_per_sample_weights_and_dtype_kept():
    c = make(value=2.0).to(dtype=torch.bfloat16)
    null = make(value=0.0).to(dtype=torch.bfloat16)
    w = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    out = Conditioning.linear_combination([c, null], w)
    assert out["prompt_embeds"].dtype == torch.bfloat16
    assert out["attention_mask"].dtype == torch.long
    assert out["prompt_embeds"][:, 0, 0].float().tolist() == [2.0, 4.0, 6.0]


def test_incompatible_combinations_are_explained():
    c = make()
    other_mask = make()
    other_mask._batched["attention_mask"] = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="attention_mask"):
        c + other_mask
    longer = Conditioning(
        {
            "prompt_embeds": torch.zeros(3, 5, 6),
            "pooled": torch.zeros(3, 6),
            "attention_mask": torch.ones(3, 5, dtype=torch.long),
        },
        {"text_ids": torch.zeros(4, 3)},
    )
    with pytest.raises(ValueError, match="pad prompts"):
        Conditioning.cat([c, longer])
    shared_differs = make()
    shared_differs._shared["text_ids"] = torch.ones(4, 3)
    with pytest.raises(ValueError, match="text_ids"):
        c - shared_differs
    with pytest.raises(ValueError, match="batch size"):
        c + make(2)


def test_where_implements_prompt_dropout():
    c, null = make(), make(value=0.0)
    drop = torch.tensor([True, False, True])
    out = c.where(drop, null)
    assert torch.equal(out["prompt_embeds"][0], torch.zeros(4, 6))
    assert torch.equal(out["prompt_embeds"][1], c["prompt_embeds"][1])
    assert torch.equal(out["pooled"][2], null["pooled"][2])
    single_null = make(1, value=0.0)
    out1 = c.where(drop, single_null)
    assert torch.equal(out1["prompt_embeds"][2], torch.zeros(4, 6))
    with pytest.raises(ValueError, match="bool"):
        c.where(torch.tensor([1, 0, 1]), null)


def test_zeros_like_is_the_training_null():
    z = make().zeros_like()
    assert z["prompt_embeds"].abs().sum() == 0 and z["pooled"].abs().sum() == 0
    assert torch.equal(z["attention_mask"], torch.ones(3, 4, dtype=torch.long))


def test_to_keeps_integer_dtypes_and_gradients_flow():
    c = make().to(torch.float64)
    assert c["prompt_embeds"].dtype == torch.float64
    assert c["attention_mask"].dtype == torch.long
    embeds = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    null = torch.randn(2, 3, 4, dtype=torch.float64)

    def f(e):
        return (0.3 * Conditioning({"e": e}) + 0.7 * Conditioning({"e": null}))["e"]

    assert torch.autograd.gradcheck(f, (embeds,))


def test_declared_ids_are_carried_not_combined():
    # SDXL's add_time_ids are floats that must survive CFG arithmetic untouched.
    time_ids = torch.tensor([[512.0, 512, 0, 0, 512, 512]] * 2)

    def sdxl(value):
        return Conditioning(
            {"prompt_embeds": torch.full((2, 3, 4), float(value)), "add_time_ids": time_ids},
            ids={"add_time_ids"},
        )

    c, null = sdxl(2.0), sdxl(1.0)
    for out in (c - null, -0.5 * c + 1.5 * null, c.zeros_like(), Conditioning.cat([c, null])):
        assert out.ids == {"add_time_ids"}
        assert torch.equal(out["add_time_ids"][:2], time_ids)
    assert torch.equal((c - null)["prompt_embeds"], torch.ones(2, 3, 4))
    other = Conditioning(
        {"prompt_embeds": torch.zeros(2, 3, 4), "add_time_ids": time_ids * 2}, ids={"add_time_ids"}
    )
    with pytest.raises(ValueError, match="add_time_ids"):
        c + other
    undeclared = Conditioning({"prompt_embeds": torch.zeros(2, 3, 4), "add_time_ids": time_ids})
    with pytest.raises(ValueError, match="different ids"):
        c + undeclared
    with pytest.raises(ValueError, match="not batched"):
        Conditioning({"a": torch.zeros(2, 1)}, ids={"b"})
    swapped = c.replace(prompt_embeds=torch.zeros(2, 3, 4))
    assert swapped.ids == {"add_time_ids"} and swapped["prompt_embeds"].abs().sum() == 0
