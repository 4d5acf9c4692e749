import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pref_data.toy import (
    DEFECTS,
    EditTriplets,
    PreferencePairs,
    PretrainingSet,
    ToyWorldConfig,
    edit_instruction,
    from_tensor,
    parse_prompt,
    sample_prompts,
    score,
    score_batch,
)


def same_item(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            if value.numpy().tobytes() != b[key].numpy().tobytes():
                return False
        elif value != b[key]:
            return False
    return True


@pytest.mark.parametrize(
    "make",
    [lambda n: PretrainingSet(n, 7), lambda n: PreferencePairs(n, 7), lambda n: EditTriplets(n, 7)],
)
def test_items_depend_only_on_seed_and_index(make):
    small, large = make(10), make(200)
    assert same_item(small[3], large[3])  # independent of the length
    large[150], large[4]
    assert same_item(large[3], make(200)[3])  # independent of what was read before
    assert not same_item(large[3], large[4])
    assert same_item(small[-1], small[9])
    with pytest.raises(IndexError):
        small[10]


def test_prompts_match_sample_prompts_without_rendering():
    data = PretrainingSet(50, seed=3)
    assert data.prompts == sample_prompts(50, seed=3)
    assert data.prompt(7) == data.prompts[7]
    assert data[7]["prompt"] == data.prompts[7].text
    assert data[7]["category"] == data.prompts[7].shape


def test_pretraining_item_format_and_collation():
    data = PretrainingSet(8, seed=0, config=ToyWorldConfig(resolution=32))
    item = data[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    batch = next(iter(DataLoader(data, batch_size=8)))
    assert batch["image"].shape == (8, 3, 32, 32) and len(batch["prompt"]) == 8


def test_pretraining_defect_rate_and_labels():
    data = PretrainingSet(2000, seed=1, defect_rate=0.3)
    defects = [data.defect(i) for i in range(len(data))]
    rate = sum(d != "" for d in defects) / len(defects)
    assert abs(rate - 0.3) < 0.035  # binomial std ≈ 0.010
    assert set(defects) - {""} == set(DEFECTS)
    for i in range(40):  # the label says what the image shows
        item = data[i]
        verdict = score(item["image"], item["prompt"])
        assert verdict.success == (item["defect"] == "")


def test_pretraining_defect_choice():
    only_blur = PretrainingSet(200, seed=0, defect_rate=1.0, defects=["blur"])
    assert {only_blur.defect(i) for i in range(200)} == {"blur"}
    assert {PretrainingSet(100, 0, defect_rate=0.0).defect(i) for i in range(100)} == {""}
    with pytest.raises(ValueError, match="wrong_background"):
        PretrainingSet(10, 0, defects={"wrong_background": 1.0})
    with pytest.raises(ValueError, match="unknown defects"):
        PretrainingSet(10, 0, defects=["smudge"])


def test_pairs_flip_rate():
    data = PreferencePairs(2000, seed=2, flip_rate=0.1)
    choices = [data.choices(i) for i in range(len(data))]
    flipped = np.asarray([f for _, f in choices])
    assert abs(flipped.mean() - 0.1) < 0.025  # binomial std ≈ 0.007
    assert {d for d, _ in choices} == set(DEFECTS)
    for i in range(0, 2000, 97):  # the items agree with the cheap choices
        assert (data[i]["defect"], data[i]["flipped"]) == choices[i]


def test_pairs_winner_has_the_higher_oracle_total():
    data = PreferencePairs(300, seed=2, flip_rate=0.3)
    items = [data[i] for i in range(len(data))]
    flipped = np.asarray([item["flipped"] for item in items])
    winners = torch.stack([item["winner"] for item in items])
    losers = torch.stack([item["loser"] for item in items])
    prompts = [item["prompt"] for item in items]
    total_w = score_batch(winners, prompts)["total"]
    total_l = score_batch(losers, prompts)["total"]
    # Unflipped pairs prefer the higher oracle total; flipped ones the lower.
    assert (total_w[~flipped] >= total_l[~flipped]).all()
    assert (total_w[flipped] <= total_l[flipped]).all()
    # The clean render is the unflipped winner: it passes the oracle, its loser does not.
    assert score_batch(winners[~flipped], [p for p, f in zip(prompts, flipped) if not f])[
        "success"
    ].all()
    assert items[0]["id"] == "toy-2-0"


def test_pairs_without_flips():
    data = PreferencePairs(50, seed=4, flip_rate=0.0)
    assert not any(data[i]["flipped"] for i in range(50))


def test_edit_triplets_fix_what_the_instruction_says(vocabulary):
    data = EditTriplets(300, seed=5)
    seen = set()
    for i in range(len(data)):
        item = data[i]
        seen.add(item["defect"])
        assert set(item["instruction"].split()) <= vocabulary
        assert item["instruction"] == edit_instruction(parse_prompt(item["prompt"]), item["defect"])
        target = score(item["target"], item["prompt"])
        assert target.success
        assert not score(item["defective"], item["prompt"]).success
        if item["defect"] in ("blur", "noise"):
            # Same object underneath: the defect is the only difference.
            diff = from_tensor(item["defective"]).astype(int) - from_tensor(item["target"])
            assert np.abs(diff).mean() < 40
    assert seen == set(DEFECTS)


@pytest.mark.parametrize(
    "defect, instruction",
    [
        ("wrong_colour", "make it red"),
        ("wrong_shape", "make it a circle"),
        ("wrong_position", "move it to the top left"),
        ("wrong_size", "make it large"),
        ("wrong_background", "make the background white"),
        ("blur", "make it sharp"),
        ("noise", "remove the noise"),
        ("missing", "add a large red circle at the top left"),
    ],
)
def test_edit_instructions(defect, instruction):
    prompt = parse_prompt("a large red circle at the top left on a white background")
    assert edit_instruction(prompt, defect) == instruction
