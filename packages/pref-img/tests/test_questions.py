"""Question templates of the misalignment detector (IMG supp. A.3: one of 100 per example)."""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pref_img.questions import INFERENCE_TEMPLATE, QUESTION_TEMPLATES, question, sample_question


def test_exactly_100_distinct_templates_each_with_one_prompt_placeholder():
    assert len(QUESTION_TEMPLATES) == 100
    assert len(set(QUESTION_TEMPLATES)) == 100
    for template in QUESTION_TEMPLATES:
        assert template.count("{prompt}") == 1
        assert template.count("{") == template.count("}") == 1


def test_every_template_formats_with_the_prompt_and_differs_from_the_others():
    prompt = "a large red circle at the top left"
    questions = [question(prompt, i) for i in range(100)]
    assert all(prompt in q for q in questions)
    assert len(set(questions)) == 100
    # Without the prompt the wordings still differ: the templates are not one sentence
    # with different prompts.
    assert len({q.replace(prompt, "") for q in questions}) == 100


def test_inference_template_is_the_papers_wording():
    assert INFERENCE_TEMPLATE == 0
    assert question("a cat", INFERENCE_TEMPLATE) == (
        "How can the image match the intended prompt: a cat?"
    )


@pytest.mark.parametrize("index", [-1, 100, 1000])
def test_out_of_range_template_index_raises(index):
    with pytest.raises(IndexError, match="0 to 99"):
        question("a cat", index)


def test_non_string_prompt_raises():
    with pytest.raises(TypeError, match="prompt must be a string"):
        question(["a cat"], 0)  # type: ignore[arg-type]


def test_sample_question_is_reproducible_and_uniform():
    draws = [sample_question("p", torch.Generator().manual_seed(7)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    counts = collections.Counter(sample_question("p", generator) for _ in range(n))
    assert len(counts) == 100  # every template is reachable
    # Uniform: each count ~ Binomial(n, 1/100): mean 200, sd ~14.1; 6 sd bounds never fail
    # by chance but catch a skewed draw (e.g. one template twice as likely).
    assert all(200 - 85 < c < 200 + 85 for c in counts.values())
    chi2 = sum((c - n / 100) ** 2 / (n / 100) for c in counts.values())
    assert chi2 < 180  # 99 degrees of freedom: P(chi2 > 180) < 1e-6


@settings(max_examples=50, deadline=None)
@given(
    prompt=st.text(min_size=1, max_size=60).filter(lambda s: s.strip()), index=st.integers(0, 99)
)
def test_question_contains_the_stripped_prompt_for_any_text(prompt, index):
    q = question(prompt, index)
    assert prompt.strip() in q
    assert q == QUESTION_TEMPLATES[index].replace("{prompt}", prompt.strip())
