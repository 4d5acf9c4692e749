import importlib.resources

import numpy as np
import pytest

from pref_data.toy import render, sample_prompts


@pytest.fixture(scope="session")
def vocabulary() -> set[str]:
    """The toy tokenizer's words, read from pref-core's package data (no tokenizer needed)."""
    path = importlib.resources.files("pref_core") / "backbones/toy_configs/vocabulary.txt"
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line and not line.startswith("#")}


@pytest.fixture(scope="session")
def clean_set():
    """2000 random prompts and one clean render of each."""
    prompts = sample_prompts(2000, seed=11)
    rng = np.random.default_rng(5)
    return prompts, np.stack([render(p, rng) for p in prompts])
