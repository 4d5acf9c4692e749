import time

import numpy as np
import pytest
import torch

from pref_data.toy import (
    BACKGROUNDS,
    DEFECTS,
    PALETTE,
    ToyPrompt,
    applicable_defects,
    from_tensor,
    render,
    render_batch,
    sample_prompts,
    to_tensor,
)

PROMPT = ToyPrompt("red", "square", "top left", "large", "white")


def rng(seed=0):
    return np.random.default_rng(seed)


def test_render_shape_dtype_and_background():
    image = render(PROMPT, rng())
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    # A top-left object leaves the bottom-right corner region pure background.
    assert (image[24:, 24:] == BACKGROUNDS["white"]).all()
    # The anchor (9.6, 9.6) is deep inside a 14 px square: exact colour up to the ±12 shade jitter.
    assert np.abs(image[9, 9].astype(int) - PALETTE["red"]).max() <= 13


def test_default_background_is_black_and_text_accepted():
    image = render("a small blue circle at the center", rng())
    assert (image[0, 0] == 0).all()
    assert image[16, 16, 2] > 200


def test_same_generator_state_same_bytes():
    assert render(PROMPT, rng(3)).tobytes() == render(PROMPT, rng(3)).tobytes()
    assert render(PROMPT, rng(3)).tobytes() != render(PROMPT, rng(4)).tobytes()


@pytest.mark.parametrize("size, extent", [("small", 8.0), ("large", 14.0)])
def test_extent_of_squares(size, extent):
    # A square's coverage sums to extent², extent within ±10 % of 8 px (small) or 14 px (large).
    for seed in range(20):
        image = render(ToyPrompt("yellow", "square", "center", size), rng(seed))
        red = image[..., 0].astype(float)
        area = red.sum() / red[16, 16]  # interior pixel = full coverage (shade jitter included)
        assert (0.9 * extent) ** 2 * 0.99 <= area <= (1.1 * extent) ** 2 * 1.01


@pytest.mark.parametrize("position", ["top left", "top right", "bottom left", "bottom right"])
@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "cross"])
def test_large_shapes_at_corners_stay_inside(shape, position):
    for seed in range(10):
        image = render(ToyPrompt("green", shape, position, "large"), rng(seed)).astype(int)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        # At most faint anti-aliasing reaches the outermost pixels.
        assert border.max() <= 0.35 * 190


def test_every_defect_changes_the_image():
    for defect in DEFECTS:
        clean = render(PROMPT, rng(7))
        bad = render(PROMPT, rng(7), defect=defect)
        assert not np.array_equal(clean, bad), defect
    missing = render(PROMPT, rng(7), defect="missing")
    assert (missing == BACKGROUNDS["white"]).all()


def test_wrong_background_needs_a_named_background():
    plain = PROMPT.replace(background=None)
    assert "wrong_background" not in applicable_defects(plain)
    with pytest.raises(ValueError, match="background"):
        render(plain, rng(), defect="wrong_background")
    with pytest.raises(ValueError, match="unknown defect"):
        render(PROMPT, rng(), defect="smudge")


def test_render_batch_equals_sequential_renders():
    prompts = sample_prompts(6, seed=1)
    defects = [None, "blur", None, "noise", "wrong_shape", None]
    batch = render_batch(prompts, rng(9), defects=defects)
    g = rng(9)
    expected = np.stack([render(p, g, defect=d) for p, d in zip(prompts, defects)])
    assert np.array_equal(batch, expected)


def test_other_resolutions_scale_geometry():
    image = render(ToyPrompt("red", "square", "center", "large"), rng(), resolution=64)
    assert image.shape == (64, 64, 3)
    side = (image[..., 0] > 110).sum() ** 0.5
    assert 25 <= side <= 31  # 14/32 of 64 = 28, ±10 %


def test_tensor_round_trip():
    images = render_batch(sample_prompts(4, seed=2), rng())
    tensor = to_tensor(images)
    assert tensor.shape == (4, 3, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    # 0 ↦ -1, 255 ↦ 1.
    assert to_tensor(np.zeros((2, 2, 3), np.uint8)).eq(-1).all()
    assert to_tensor(np.full((2, 2, 3), 255, np.uint8)).eq(1).all()
    assert np.array_equal(from_tensor(tensor), images)
    assert np.array_equal(from_tensor(tensor[0]), images[0])
    # Out-of-range model outputs are clipped; numpy input works too.
    assert (from_tensor(torch.full((3, 2, 2), 3.0)) == 255).all()
    assert (from_tensor(np.full((1, 3, 2, 2), -3.0)) == 0).all()


def test_render_is_fast():
    prompts = sample_prompts(500, seed=0)
    g = rng()
    start = time.perf_counter()
    render_batch(prompts, g)
    assert (time.perf_counter() - start) / len(prompts) < 1e-3
