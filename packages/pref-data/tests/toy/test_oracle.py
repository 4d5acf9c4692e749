import time

import numpy as np
import pytest
import torch

from pref_data.toy import (
    BACKGROUNDS,
    PALETTE,
    OracleScore,
    ToyPrompt,
    applicable_defects,
    render,
    sample_prompts,
    score,
    score_batch,
    to_tensor,
)
from pref_data.toy.render import gaussian_blur

DISCRETE = ("colour", "shape", "position", "size")


def canvas(background: str) -> np.ndarray:
    return np.broadcast_to(np.uint8(BACKGROUNDS[background]), (32, 32, 3)).copy()


def pixel_grid():
    y, x = np.mgrid[0:32, 0:32] + 0.5  # pixel centres
    return x, y


def add_noise(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 255 * std, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


# --- hand-drawn images with known answers -------------------------------------------------------


def test_hand_drawn_square_top_left():
    image = canvas("black")
    image[3:17, 3:17] = PALETTE[
        "red"
    ]  # 14 px square centred at (10, 10): nearest anchor (9.6, 9.6)
    result = score(image, "a large red square at the top left")
    assert isinstance(result, OracleScore)
    assert (result.colour, result.shape, result.position, result.size) == (1, 1, 1, 1)
    assert result.background is None  # not named, not counted
    assert result.quality > 0.95 and result.success
    assert result.total == pytest.approx((4 + result.quality) / 5)
    # The same image against wrong prompts: exactly the named attribute fails.
    assert score(image, "a large blue square at the top left").colour == 0
    assert score(image, "a large red circle at the top left").shape == 0
    assert score(image, "a large red square at the center").position == 0
    assert score(image, "a small red square at the top left").size == 0
    wrong_bg = score(image, "a large red square at the top left on a white background")
    assert wrong_bg.background == 0 and wrong_bg.colour == 1 and not wrong_bg.success
    assert wrong_bg.detected["background"] == "black"


def test_hand_drawn_small_disc_bottom_right_on_white():
    image = canvas("white")
    x, y = pixel_grid()
    image[(x - 23) ** 2 + (y - 23) ** 2 <= 4.2**2] = PALETTE["blue"]  # radius ≈ 4: 8 px wide
    result = score(image, "a small blue circle at the bottom right on a white background")
    assert result.detected["shape"] == "circle" and result.detected["size"] == "small"
    assert result.detected["position"] == "bottom right" and result.detected["colour"] == "blue"
    assert result.background == 1 and result.success


def test_hand_drawn_cross_center_on_gray():
    image = canvas("gray")
    image[14:19, 9:23] = PALETTE["green"]  # 14 × 5 bar
    image[9:23, 14:19] = PALETTE["green"]  # 5 × 14 bar: a plus centred at (16.5, 16.5)
    result = score(image, "a large green cross at the center on a gray background")
    assert result.success, result


def test_hand_drawn_triangle_bottom_left():
    image = canvas("black")
    x, y = pixel_grid()
    # Apex (8, 17), base y = 27 from x = 2 to 14: 12 wide, 10 high, centroid (8, 23.7).
    inside = (y >= 17) & (y <= 27) & (np.abs(x - 8) <= (y - 17) * 0.6)
    image[inside] = PALETTE["yellow"]
    result = score(image, "a large yellow triangle at the bottom left")
    assert result.success, result


def test_empty_image_has_no_object():
    result = score(canvas("gray"), "a small red circle at the center on a gray background")
    assert (result.colour, result.shape, result.position, result.size) == (0, 0, 0, 0)
    assert result.background == 1
    assert result.detected["shape"] is None
    assert result.total == pytest.approx((1 + result.quality) / 6)


@pytest.mark.parametrize("background", list(BACKGROUNDS))
@pytest.mark.parametrize("colour", list(PALETTE))
def test_colour_survives_blending_with_background(colour, background):
    # A half-transparent object (60 % colour, 40 % background) still has its colour.
    image = canvas(background).astype(float)
    image[8:24, 8:24] = 0.6 * np.asarray(PALETTE[colour]) + 0.4 * image[8:24, 8:24]
    prompt = ToyPrompt(colour, "square", "center", "large", background)
    assert score(np.rint(image).astype(np.uint8), prompt).colour == 1


# --- renders ---------------------------------------------------------------------------------------


def test_clean_renders_are_fully_correct(clean_set):
    prompts, images = clean_set
    s = score_batch(images, prompts)
    for name in DISCRETE:
        assert s[name].min() == 1, name
    named = s["has_background"]
    assert named.any() and (s["background"][named] == 1).all()
    assert np.isnan(s["background"][~named]).all()
    assert s["total"].min() >= 0.95
    assert s["success"].all()


def test_mild_noise_does_not_flip_discrete_attributes(clean_set):
    prompts, images = clean_set
    clean = score_batch(images, prompts)
    noisy = score_batch(add_noise(images, 0.03), prompts)
    for name in (*DISCRETE, "detected_background"):
        assert np.array_equal(clean[name], noisy[name]), name
    assert noisy["quality"].min() > 0.5


def test_slightly_soft_noisy_images_still_read_correctly():
    # Roughly what a decent generative model produces: soft edges (σ 0.6 px), faint noise.
    prompts = sample_prompts(300, seed=21)
    rng = np.random.default_rng(0)
    images = np.stack([gaussian_blur(render(p, rng).astype(np.float32), 0.6) for p in prompts])
    s = score_batch(add_noise(images, 0.02), prompts)
    assert s["success"].mean() >= 0.98


def defect_scores(defect: str, n: int = 300):
    prompts = [p for p in sample_prompts(3 * n, seed=31) if defect in applicable_defects(p)][:n]
    clean = np.stack([render(p, np.random.default_rng([1, i])) for i, p in enumerate(prompts)])
    bad = np.stack(
        [render(p, np.random.default_rng([1, i]), defect=defect) for i, p in enumerate(prompts)]
    )
    return prompts, score_batch(clean, prompts), score_batch(bad, prompts)


@pytest.mark.parametrize(
    "defect, attribute",
    [
        ("wrong_colour", "colour"),
        ("wrong_shape", "shape"),
        ("wrong_position", "position"),
        ("wrong_size", "size"),
        ("wrong_background", "background"),
    ],
)
def test_each_wrong_attribute_is_detected_and_only_it(defect, attribute):
    _, _, s = defect_scores(defect)
    assert s[attribute].max() == 0
    for other in ("colour", "shape", "position", "size", "background"):
        if other != attribute:
            assert np.nanmean(s[other]) >= 0.99, other
    assert s["quality"].mean() > 0.95
    assert not s["success"].any()


def test_missing_object_zeroes_object_attributes():
    _, _, s = defect_scores("missing")
    for name in DISCRETE:
        assert s[name].max() == 0
    assert (s["detected_shape"] == "").all()
    assert s["total"].max() < 0.5


@pytest.mark.parametrize("defect", ["blur", "noise"])
def test_blur_and_noise_lower_quality(defect):
    prompts, clean, bad = defect_scores(defect)
    assert (bad["quality"] < 0.5).mean() >= 0.97
    assert (clean["quality"] > bad["quality"]).all()  # same object, with and without the defect
    assert (clean["total"] > bad["total"]).all()
    assert not bad["success"].any() if defect == "blur" else bad["success"].mean() < 0.03
    assert bad["colour"].mean() >= 0.99 and bad["position"].mean() >= 0.99
    large = np.asarray([p.size == "large" for p in prompts])
    # Strong blur makes small shapes (8 px) round blobs; large ones keep their shape.
    assert bad["shape"][large].mean() >= 0.95 and bad["size"].mean() >= 0.97
    if defect == "noise":
        assert bad["shape"].mean() >= 0.95


# --- API -------------------------------------------------------------------------------------------


def test_batched_equals_single(clean_set):
    prompts, images = clean_set
    prompts, images = prompts[:20], images[:20].copy()
    images[3] = render(prompts[3], np.random.default_rng(0), defect="blur")
    images[4] = render(prompts[4], np.random.default_rng(0), defect="wrong_shape")
    batch = score_batch(images, [p.text for p in prompts])
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        single = score(image, prompt)
        for name in ("colour", "shape", "position", "size", "quality", "total"):
            assert getattr(single, name) == pytest.approx(float(batch[name][i]), abs=1e-6)
        assert single.success == batch["success"][i]


def test_tensor_input_equals_uint8_input(clean_set):
    prompts, images = clean_set
    prompts, images = prompts[:100], add_noise(images[:100], 0.05)
    from_uint8 = score_batch(images, prompts)
    from_tensor = score_batch(to_tensor(images), prompts)
    from_float64 = score_batch(to_tensor(images).double().numpy(), prompts)
    for other in (from_tensor, from_float64):
        for name, value in from_uint8.items():
            if value.dtype.kind == "f":
                np.testing.assert_allclose(other[name], value, atol=1e-4, err_msg=name)
            else:
                assert np.array_equal(other[name], value), name
    single = score(to_tensor(images[0]), prompts[0])
    assert single.total == pytest.approx(float(from_uint8["total"][0]), abs=1e-4)


def test_input_validation():
    with pytest.raises(ValueError, match="prompts"):
        score_batch(np.zeros((2, 32, 32, 3), np.uint8), ["a small red circle at the center"])
    with pytest.raises(ValueError, match="one image"):
        score(torch.zeros(2, 3, 32, 32), "a small red circle at the center")
    with pytest.raises(ValueError):
        score_batch(np.zeros((1, 32, 32, 3), np.int64), ["a small red circle at the center"])


def test_scoring_400_images_takes_under_a_second(clean_set):
    prompts, images = clean_set
    prompts, images = prompts[:400], images[:400]
    best = min(_timed(lambda: score_batch(images, prompts)) for _ in range(3))
    assert best < 1.0  # ≈ 0.12 s measured on one core


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
