"""Tiny multimodal LLMs in the real hub layout, for tests and for the toy world.

No weights are downloaded anywhere in this project: these builders make randomly initialised
LLaVA-1.5 and Qwen2.5-VL models from config, with processors whose tokenizers behave like the
hub ones, and write them with ``save_pretrained`` so that :func:`pref_img.detector.load_detector`
reads them through transformers' own loading code exactly as it reads ``llava-hf/llava-1.5-7b-hf``
or ``Qwen/Qwen2.5-VL-7B-Instruct``.

Tokenizers are built with the ``tokenizers`` library and trained (BPE) on a small corpus: the
question templates, toy-world prompts and edit instructions, the toy vocabulary and each model's
chat words, so the words the detector reads and writes are whole tokens.

- LLaVA-1.5 style (Llama-2's): sentencepiece-like BPE (``▁`` marks a preceding space, prepended to
  the first word only; byte fallback, so no text is unknown), ``<s>`` added in front of every
  encoding, ``</s>`` as end of answer, ``<image>`` and ``<pad>`` as added special tokens.
- Qwen2.5-VL style (Qwen2's): byte-level BPE (every byte is a token), no BOS, the chat and vision
  special tokens ``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>``, ...,
  ``<|endoftext|>`` as padding and ``<|im_end|>`` as end of turn.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessor,
)

from pref_img.questions import QUESTION_TEMPLATES

__all__ = [
    "LLAVA_SPECIAL_TOKENS",
    "QWEN_SPECIAL_TOKENS",
    "build_tiny_llava",
    "build_tiny_qwen2_5_vl",
    "build_toy_detector",
    "detector_corpus",
    "llama_style_tokenizer",
    "qwen_style_tokenizer",
]

LLAVA_SPECIAL_TOKENS = {
    "bos": "<s>",
    "eos": "</s>",
    "unk": "<unk>",
    "pad": "<pad>",
    "image": "<image>",
}
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_CHAT_LINES = (
    "USER: ASSISTANT:",
    "system user assistant",
    "You are a helpful assistant.",
)


# ---------------------------------------------------------------------------------- corpus
def _toy_instructions() -> Iterator[str]:
    """Every edit instruction the toy world can produce (``pref_data.toy.edit_instruction``)."""
    from pref_data.toy import (
        BACKGROUNDS,
        DEFECTS,
        PALETTE,
        POSITIONS,
        SHAPES,
        SIZES,
        ToyPrompt,
        edit_instruction,
    )

    for colour, shape, position, size in itertools.product(PALETTE, SHAPES, POSITIONS, SIZES):
        for background in (None, *BACKGROUNDS):
            prompt = ToyPrompt(colour, shape, position, size, background)
            for defect in DEFECTS:
                if defect == "wrong_background" and background is None:
                    continue
                yield edit_instruction(prompt, defect)


def detector_corpus(extra: Iterable[str] = ()) -> list[str]:
    """The text the tiny tokenizers are trained on: every question template about a few toy
    prompts, the toy world's prompts, edit instructions and vocabulary, chat words, ``extra``."""
    from pref_core.backbones.toy import DEFAULT_VOCABULARY
    from pref_data.toy import sample_prompts

    prompts = [p.text for p in sample_prompts(64, seed=0)]
    lines = [t.format(prompt=p) for t, p in zip(QUESTION_TEMPLATES, itertools.cycle(prompts))]
    lines += prompts
    lines += sorted(set(_toy_instructions()))
    lines.append(" ".join(DEFAULT_VOCABULARY))
    lines += _CHAT_LINES
    lines += list(extra)
    return lines


# ---------------------------------------------------------------------------------- tokenizers
def llama_style_tokenizer(
    corpus: Iterable[str], *, vocab_size: int = 4000
) -> PreTrainedTokenizerFast:
    """A LLaVA-1.5 (Llama-2) style tokenizer trained on ``corpus``.

    BPE with byte fallback (the 256 ``<0xNN>`` tokens), a ``▁``-metaspace pre-tokenizer that
    prepends ``▁`` to the first word only (as Llama's ``add_dummy_prefix``), ``<s>`` before every
    encoding, ``</s>`` end of sequence, ``<pad>`` and ``<image>`` added special tokens.

    Args:
        corpus: training lines.
        vocab_size: upper bound on the BPE vocabulary (merges stop earlier on a small corpus
            once every word is a single token).
    """
    special = [LLAVA_SPECIAL_TOKENS[k] for k in ("unk", "bos", "eos")]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tokenizer = Tokenizer(models.BPE(unk_token=LLAVA_SPECIAL_TOKENS["unk"], byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Metaspace(replacement="▁", prepend_scheme="first"),
            decoders.ByteFallback(),
            decoders.Fuse(),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special + byte_tokens, show_progress=False
    )
    tokenizer.train_from_iterator(list(corpus), trainer)
    bos = LLAVA_SPECIAL_TOKENS["bos"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tokenizer.token_to_id(bos))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=LLAVA_SPECIAL_TOKENS["eos"],
        unk_token=LLAVA_SPECIAL_TOKENS["unk"],
        padding_side="left",  # llava-hf's setting; the detector pads explicitly anyway
    )
    fast.add_special_tokens(
        {"pad_token": LLAVA_SPECIAL_TOKENS["pad"], "additional_special_tokens": ["<image>"]}
    )
    return fast


def qwen_style_tokenizer(
    corpus: Iterable[str], *, vocab_size: int = 4000
) -> PreTrainedTokenizerFast:
    """A Qwen2.5-VL (Qwen2) style tokenizer trained on ``corpus``: byte-level BPE, no BOS,
    ``<|im_end|>`` as end of sequence, ``<|endoftext|>`` as padding, and Qwen's chat and vision
    special tokens (:data:`QWEN_SPECIAL_TOKENS`)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    return fast


# ---------------------------------------------------------------------------------- models
def _seeded_init(seed: int):
    fork = torch.random.fork_rng(devices=[])
    fork.__enter__()
    torch.manual_seed(seed)
    return fork


def _llava(
    path: str | os.PathLike[str],
    *,
    image_size: int,
    patch_size: int,
    vision: dict,
    text: dict,
    corpus: list[str],
    seed: int,
) -> Path:
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    tokenizer = llama_style_tokenizer(corpus)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    # llava-hf's processors count the CLS token (+1) and drop it again ("default" strategy).
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    image_seq_length = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=image_size, patch_size=patch_size, **vision),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            max_position_embeddings=512,
            **text,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(LLAVA_SPECIAL_TOKENS["image"]),
        image_seq_length=image_seq_length,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
    )
    fork = _seeded_init(seed)
    try:
        model = LlavaForConditionalGeneration(config)
    finally:
        fork.__exit__(None, None, None)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_llava(path: str | os.PathLike[str], *, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny random LLaVA-1.5 (CLIP vision tower + 2-layer projector + Llama) saved in
    llava-hf's layout (``config.json``, ``model.safetensors``, ``generation_config.json``,
    processor and tokenizer files) for tests; ``(image_size / 8)²`` image tokens.

    Args:
        path: output folder (created).
        image_size: square input resolution of the vision tower (a multiple of 8).
        seed: weight initialisation seed.
    """
    return _llava(
        path,
        image_size=image_size,
        patch_size=8,
        vision={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": 32,
        },
        text={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        corpus=detector_corpus(),
        seed=seed,
    )


def build_toy_detector(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """An untrained small LLaVA sized for the toy world, trained from scratch by the
    ``img-mllm-toy`` recipe on a CPU.

    32×32 images in 4×4 patches (64 image tokens) through a 3-layer CLIP vision tower of width 64;
    a 3-layer Llama of width 128; a tokenizer in which every toy-world word, question-template
    word and edit-instruction word is a single token.
    """
    return _llava(
        path,
        image_size=32,
        patch_size=4,
        vision={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "projection_dim": 64,
        },
        text={
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        },
        corpus=detector_corpus(),
        seed=seed,
    )


def build_tiny_qwen2_5_vl(
    path: str | os.PathLike[str], *, image_size: int = 56, seed: int = 0
) -> Path:
    """A tiny random Qwen2.5-VL saved in the hub layout, for tests.

    Qwen's own patching (14-pixel patches, 2 frames per temporal patch, 2×2 patch merging), so a
    56×56 image is a 4×4 patch grid and 4 image tokens. Window attention in the first vision
    block, full attention in the second (as Qwen2.5-VL alternates them); M-RoPE sections for
    the text head dimension 8.

    Args:
        path: output folder (created).
        image_size: the images' side; the processor's pixel bounds are set so this size is kept
            (a multiple of 28).
        seed: weight initialisation seed.
    """
    if image_size % 28:
        raise ValueError(
            f"image_size must be a multiple of 28 (patch 14 × merge 2), got {image_size}"
        )
    tokenizer = qwen_style_tokenizer(detector_corpus())
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text_hidden = 32
    config = Qwen2_5_VLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": text_hidden,
            "fullatt_block_indexes": [1],
            "window_size": 56,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text_hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 1, 1],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    fork = _seeded_init(seed)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        fork.__exit__(None, None, None)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    _save_qwen_processor(path, image_processor, tokenizer)
    return path


def _save_qwen_processor(path: Path, image_processor, tokenizer) -> None:
    """Write the processor files of a Qwen2.5-VL checkpoint (``preprocessor_config.json`` naming
    ``Qwen2_5_VLProcessor``, tokenizer files), as the hub repositories hold them.

    Written piecewise because transformers' ``Qwen2_5_VLProcessor`` cannot be constructed without
    a video processor, which needs torchvision; :func:`pref_img.detector.load_detector` loads the
    full processor when it can and the image processor + tokenizer otherwise."""
    image_processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        file = path / name
        data = json.loads(file.read_text(encoding="utf-8"))
        data["processor_class"] = "Qwen2_5_VLProcessor"
        file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
