import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pref_data.toy import (
    BACKGROUNDS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    ToyPrompt,
    ToyWorldConfig,
    evaluation_prompts,
    parse_prompt,
    sample_prompts,
)
from pref_data.toy.grammar import all_words

prompts = st.builds(
    ToyPrompt,
    colour=st.sampled_from(tuple(PALETTE)),
    shape=st.sampled_from(SHAPES),
    position=st.sampled_from(POSITIONS),
    size=st.sampled_from(SIZES),
    background=st.none() | st.sampled_from(tuple(BACKGROUNDS)),
)


def test_text_format():
    assert ToyPrompt("red", "circle", "top left", "large").text == (
        "a large red circle at the top left"
    )
    prompt = ToyPrompt("cyan", "cross", "center", "small", "white")
    assert prompt.text == "a small cyan cross at the center on a white background"
    assert prompt.category == "cross"
    assert prompt.attributes == {
        "colour": "cyan",
        "shape": "cross",
        "position": "center",
        "size": "small",
        "background": "white",
    }


@given(prompts)
def test_parse_inverts_text(prompt):
    assert parse_prompt(prompt.text) == prompt


@given(prompts)
def test_every_prompt_word_is_in_the_tokenizer_vocabulary(vocabulary, prompt):
    assert set(prompt.text.split()) <= vocabulary


def test_all_grammar_words_are_in_vocabulary(vocabulary):
    assert all_words() <= vocabulary


def test_parse_is_lenient_on_case_and_spacing():
    assert parse_prompt("  A Small  BLUE square at the bottom right.") == ToyPrompt(
        "blue", "square", "bottom right", "small"
    )


@pytest.mark.parametrize(
    "text",
    [
        "a large red blob at the top left",
        "a red circle at the top left",
        "a large red circle at the middle",
        "a large red circle at the top left on a pink background",
        "",
    ],
)
def test_parse_rejects_naming_the_text(text):
    with pytest.raises(ValueError, match="cannot parse") as info:
        parse_prompt(text)
    assert repr(text) in str(info.value)


def test_prompt_rejects_unknown_values():
    with pytest.raises(ValueError, match="colour"):
        ToyPrompt("orange", "circle", "center", "small")


def test_sample_prompts_reproducible_and_prefix_stable():
    assert sample_prompts(50, seed=3) == sample_prompts(50, seed=3)
    assert sample_prompts(80, seed=3)[:50] == sample_prompts(50, seed=3)
    assert sample_prompts(50, seed=3) != sample_prompts(50, seed=4)


def test_evaluation_prompts_are_a_different_stream():
    assert evaluation_prompts(200) == evaluation_prompts(200)
    assert evaluation_prompts(200, seed=0) != sample_prompts(200, seed=0)


def test_background_prob_and_uniform_attributes():
    drawn = sample_prompts(4000, seed=0)
    named = sum(p.background is not None for p in drawn) / len(drawn)
    assert abs(named - 0.25) < 0.03  # binomial std ≈ 0.007
    for shape in SHAPES:
        share = sum(p.shape == shape for p in drawn) / len(drawn)
        assert abs(share - 0.25) < 0.03
    never = sample_prompts(200, seed=0, config=ToyWorldConfig(background_prob=0.0))
    assert all(p.background is None for p in never)


def test_config_subset_and_validation():
    config = ToyWorldConfig(colours=("red",), shapes=("square",), backgrounds=("white",))
    drawn = sample_prompts(100, seed=1, config=config)
    assert {(p.colour, p.shape) for p in drawn} == {("red", "square")}
    assert {p.background for p in drawn} <= {None, "white"}
    with pytest.raises(ValueError, match="colours"):
        ToyWorldConfig(colours=("orange",))
    with pytest.raises(ValueError, match="background_prob"):
        ToyWorldConfig(background_prob=1.5)


def test_prompt_is_frozen():
    prompt = ToyPrompt("red", "circle", "center", "small")
    with pytest.raises(dataclasses.FrozenInstanceError):
        prompt.colour = "blue"
