"""The misalignment detector on tiny LLaVA / Qwen2.5-VL models saved in the hub layout and read
back through load_detector (transformers' own from_pretrained)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from pref_data.toy import from_tensor
from pref_img.detector import (
    IGNORE_INDEX,
    LlavaDetector,
    MisalignmentDetector,
    QwenVLDetector,
    load_detector,
)
from pref_img.questions import question
from pref_img.tiny_mllm import build_tiny_llava, build_tiny_qwen2_5_vl, build_toy_detector
from pref_img.triplets import ToyTriplets

PROMPTS = [
    "a small red circle at the center",
    "a large blue square at the top left on a white background",
    "a cross",
]
ANSWERS = ["make it red", "move it to the top left", "add a small green cross at the center"]


@pytest.fixture(scope="module")
def llava_path(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="module")
def llava(llava_path):
    return load_detector(llava_path)


@pytest.fixture(scope="module")
def qwen(qwen_path):
    return load_detector(qwen_path)


def _images(n, size, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _reference_loss(detector, batch):
    """Cross-entropy over the answer positions, from the full ...ForConditionalGeneration logits
    (LM head on every position), computed in float64 position by position."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = detector.model(**inputs, use_cache=False).logits.double()  # (B, L, V)
    labels = batch["labels"]
    terms, correct = [], []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == IGNORE_INDEX:
                continue
            terms.append(-torch.log_softmax(logits[b, t], -1)[target])
            correct.append(float(logits[b, t].argmax() == target))
    return torch.stack(terms).mean(), sum(correct) / len(correct), len(terms)


# ---------------------------------------------------------------------------------- loading
def test_loaded_detectors_follow_the_protocol(llava, qwen):
    assert isinstance(llava, LlavaDetector) and llava.kind == "llava"
    assert isinstance(qwen, QwenVLDetector) and qwen.kind == "qwen2_5_vl"
    for detector in (llava, qwen):
        assert isinstance(detector, MisalignmentDetector)
        assert detector.hidden_size == 32
        assert detector.trainable_parameters() == []  # frozen by default
        assert not detector.model.training


def test_tiny_llava_has_the_llava_hf_files(llava_path):
    names = {p.name for p in llava_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert json.loads((llava_path / "config.json").read_text())["model_type"] == "llava"


def test_kind_is_read_from_the_config_and_checked(llava_path):
    assert load_detector(llava_path, kind="llava").kind == "llava"
    with pytest.raises(ValueError, match=r"'qwen2_5_vl' but .* is a 'llava' model"):
        load_detector(llava_path, kind="qwen2_5_vl")
    with pytest.raises(ValueError, match="unknown detector kind"):
        load_detector(llava_path, kind="blip")


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_detector(tmp_path / "missing")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"model_type 'gpt2'.*llava, qwen2_5_vl"):
        load_detector(tmp_path / "gpt")
    with pytest.raises(OSError, match="download it first"):
        load_detector("no-such-org/no-such-detector", local_files_only=True)
    with pytest.raises(ValueError, match="unknown mode"):
        load_detector(tmp_path / "gpt", mode="half")


def test_modes_choose_the_trainable_parameters(llava_path):
    full = load_detector(llava_path, mode="full")
    names = {n for n, p in full.model.named_parameters() if p.requires_grad}
    assert names and not any("vision_tower" in n for n in names)
    assert any("multi_modal_projector" in n for n in names)
    assert any("language_model" in n for n in names) and any("lm_head" in n for n in names)

    lora = load_detector(llava_path, mode="lora", lora_rank=4)
    names = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "multi_modal_projector" in n for n in names)
    assert any("lora_A" in n for n in names) and any("multi_modal_projector" in n for n in names)
    # LoRA only on the language model (the vision tower has q_proj/k_proj too).
    assert not any("vision_tower" in n and "lora_" in n for n, _ in lora.model.named_parameters())
    assert lora.lora == {"lora_rank": 4, "lora_alpha": 8.0}


# ---------------------------------------------------------------------------------- loss
def test_labels_cover_exactly_the_answer_and_its_end_token(llava):
    questions = [question(p, 3) for p in PROMPTS]
    batch = llava.encode(_images(3, 32), questions, ANSWERS)
    tokenizer = llava.tokenizer
    for b, answer in enumerate(ANSWERS):
        expected = [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        length = int(batch["attention_mask"][b].sum())
        labels = batch["labels"][b]
        assert labels[length - len(expected) : length].tolist() == expected
        assert (labels[: length - len(expected)] == IGNORE_INDEX).all()
        assert (labels[length:] == IGNORE_INDEX).all()  # right padding unlabelled
        # The labelled ids are the input ids there (teacher forcing on the answer).
        assert batch["input_ids"][b, length - len(expected) : length].tolist() == expected
        assert tokenizer.decode(expected, skip_special_tokens=True).strip() == answer


def test_loss_equals_cross_entropy_over_answer_positions_from_full_logits(llava):
    images = _images(3, 32)
    questions = [question(p, 11) for p in PROMPTS]
    out = llava.loss(images, PROMPTS, ANSWERS, questions=questions)
    batch = llava.encode(images, questions, ANSWERS)
    expected, accuracy, count = _reference_loss(llava, batch)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["answer_tokens"].item() == pytest.approx(count / 3)
    assert out.metrics["token_accuracy"].item() == pytest.approx(accuracy)
    # An untrained model over ~1000 tokens: the loss is near log(V), never near zero.
    assert out.loss.item() > 0.5 * torch.log(torch.tensor(len(llava.tokenizer))).item()


def test_loss_ignores_what_the_question_says_about_labels(llava):
    """Changing the question changes the inputs but not which tokens are scored."""
    images = _images(3, 32)
    a = llava.loss(images, PROMPTS, ANSWERS, questions=[question(p, 1) for p in PROMPTS])
    b = llava.loss(images, PROMPTS, ANSWERS, questions=[question(p, 42) for p in PROMPTS])
    assert a.metrics["answer_tokens"] == b.metrics["answer_tokens"]
    assert a.loss.item() != b.loss.item()


def test_sampled_questions_follow_the_generator(llava):
    images = _images(2, 32)
    one = llava.loss(images, PROMPTS[:2], ANSWERS[:2], generator=torch.Generator().manual_seed(3))
    two = llava.loss(images, PROMPTS[:2], ANSWERS[:2], generator=torch.Generator().manual_seed(3))
    assert one.loss.item() == two.loss.item()


def test_loss_backpropagates_only_into_trainable_parameters(llava_path):
    detector = load_detector(llava_path, mode="full")
    out = detector.loss(_images(2, 32), PROMPTS[:2], ANSWERS[:2])
    out.loss.backward()
    for name, parameter in detector.model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name


def test_bad_inputs_raise(llava):
    with pytest.raises(ValueError, match="got 2 images but 1 prompts"):
        llava.loss(_images(2, 32), PROMPTS[:1], ANSWERS[:1])
    with pytest.raises(TypeError, match="not one string"):
        llava.guidance_features(_images(1, 32), "a cat")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        llava.guidance_features(torch.zeros(1, 4, 32, 32), ["a cat"])


def test_loss_falls_when_the_toy_detector_trains_on_toy_triplets(tmp_path):
    torch.manual_seed(0)
    detector = load_detector(build_toy_detector(tmp_path / "toy"), mode="full")
    items = [ToyTriplets(6, seed=1)[i] for i in range(6)]
    images = torch.stack([it["image"] for it in items])
    prompts = [it["prompt"] for it in items]
    answers = [it["instruction"] for it in items]
    questions = [question(p, i) for i, p in enumerate(prompts)]
    vision_before = [p.detach().clone() for p in detector.model.model.vision_tower.parameters()]
    optimizer = torch.optim.AdamW(detector.trainable_parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        out = detector.loss(images, prompts, answers, questions=questions)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.25 * losses[0], losses
    assert out.metrics["token_accuracy"] > 0.8
    # The vision encoder is frozen in "full" mode (LLaVA's convention).
    for before, after in zip(vision_before, detector.model.model.vision_tower.parameters()):
        assert torch.equal(before, after)


# ---------------------------------------------------------------------------------- features
@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_guidance_features_ignore_padding(family, llava, qwen):
    detector, size = (llava, 32) if family == "llava" else (qwen, 56)
    images = _images(3, size, seed=5)
    features, mask = detector.guidance_features(images, PROMPTS)
    assert features.dtype == torch.float32 and mask.dtype == torch.bool
    assert features.shape[:2] == mask.shape and features.shape[2] == detector.hidden_size
    assert not features.requires_grad
    lengths = []
    for b in range(3):
        alone, alone_mask = detector.guidance_features(images[b : b + 1], PROMPTS[b : b + 1])
        assert alone_mask.all()  # a batch of one has no padding
        lengths.append(alone.shape[1])
        torch.testing.assert_close(features[b][mask[b]], alone[0], atol=1e-5, rtol=1e-5)
        # Right padding: the real tokens come first.
        assert mask[b, : lengths[-1]].all() and not mask[b, lengths[-1] :].any()
    assert mask.sum(1).tolist() == lengths
    assert len(set(lengths)) == 3  # the prompts really pad differently


def test_guidance_features_cover_image_and_question_tokens(llava):
    features, _mask = llava.guidance_features(_images(1, 32), ["a cat"])
    batch = llava.encode(_images(1, 32), [question("a cat", 0)])
    image_tokens = int((batch["input_ids"] == llava.model.config.image_token_id).sum())
    assert image_tokens == (32 // 8) ** 2
    assert features.shape[1] == batch["input_ids"].shape[1] > image_tokens


def test_guidance_features_can_carry_gradients(llava_path):
    detector = load_detector(llava_path, mode="full")
    features, _ = detector.guidance_features(_images(1, 32), ["a cat"], grad=True)
    assert features.requires_grad
    features.sum().backward()
    assert detector.model.model.multi_modal_projector.linear_1.weight.grad is not None


def test_tensor_and_pil_images_give_the_same_features(llava):
    images = _images(2, 32, seed=9)
    pil = [Image.fromarray(a) for a in from_tensor(images)]
    a, _ = llava.guidance_features(images, PROMPTS[:2])
    b, _ = llava.guidance_features(pil, PROMPTS[:2])
    torch.testing.assert_close(a, b)


def test_generate_is_greedy_and_independent_of_batching(llava):
    images = _images(3, 32, seed=2)
    together = llava.generate(images, PROMPTS, max_new_tokens=6)
    alone = [
        llava.generate(images[i : i + 1], PROMPTS[i : i + 1], max_new_tokens=6)[0] for i in range(3)
    ]
    assert together == alone
    assert all(isinstance(t, str) for t in together)


# ---------------------------------------------------------------------------------- save/load
def _perturb(parameters, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parameters:
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def test_full_finetune_round_trip(llava_path, tmp_path):
    detector = load_detector(llava_path, mode="full")
    _perturb(detector.trainable_parameters(), 0)
    images = _images(2, 32, seed=4)
    expected, _ = detector.guidance_features(images, PROMPTS[:2])
    folder = detector.save_pretrained(tmp_path / "full")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    reloaded = load_detector(folder)
    actual, _ = reloaded.guidance_features(images, PROMPTS[:2])
    torch.testing.assert_close(actual, expected)
    original, _ = load_detector(llava_path).guidance_features(images, PROMPTS[:2])
    assert not torch.allclose(original, expected)  # the perturbation mattered


def test_lora_round_trip(llava_path, tmp_path):
    detector = load_detector(llava_path, mode="lora", lora_rank=4)
    _perturb(detector.trainable_parameters(), 1)  # LoRA B starts at zero: make it count
    images = _images(2, 32, seed=6)
    expected, _ = detector.guidance_features(images, PROMPTS[:2])
    folder = detector.save_pretrained(tmp_path / "lora")
    info = json.loads((folder / "detector.json").read_text())
    assert info["base"] == str(llava_path.resolve()) and info["kind"] == "llava"
    assert (folder / "adapter_config.json").is_file()
    assert not (folder / "model.safetensors").exists()  # only the adapter is stored
    for mode in ("lora", "frozen"):  # frozen merges the adapter into the weights
        reloaded = load_detector(folder, mode=mode)
        actual, _ = reloaded.guidance_features(images, PROMPTS[:2])
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    original, _ = load_detector(llava_path).guidance_features(images, PROMPTS[:2])
    assert not torch.allclose(original, expected)


# ---------------------------------------------------------------------------------- Qwen2.5-VL
def test_qwen_loss_equals_cross_entropy_over_answer_positions(qwen):
    images = _images(3, 56, seed=1)
    questions = [question(p, 7) for p in PROMPTS]
    out = qwen.loss(images, PROMPTS, ANSWERS, questions=questions)
    batch = qwen.encode(images, questions, ANSWERS)
    end = qwen.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for b, answer in enumerate(ANSWERS):
        labelled = batch["labels"][b][batch["labels"][b] != IGNORE_INDEX].tolist()
        assert labelled == [*qwen.tokenizer(answer, add_special_tokens=False).input_ids, end]
    # 4 image tokens per 56-pixel image (4×4 patches merged 2×2), marked for M-RoPE.
    assert (batch["mm_token_type_ids"].sum(1) == 4).all()
    expected, accuracy, count = _reference_loss(qwen, batch)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["answer_tokens"].item() == pytest.approx(count / 3)
    assert out.metrics["token_accuracy"].item() == pytest.approx(accuracy)
