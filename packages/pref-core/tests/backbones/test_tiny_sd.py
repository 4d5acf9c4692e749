"""The tiny SD 1.5/SDXL builders: real hub layout, loadable tokenizers, determinism."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from pref_core.backbones.tiny_sd import (
    DEFAULT_CORPUS,
    build_tiny_sd15,
    build_tiny_sdxl,
    make_clip_tokenizer,
    tiny_sd15_unet,
)


def test_tokenizer_files_load_with_clip_tokenizer(tmp_path):
    make_clip_tokenizer(tmp_path / "tok", model_max_length=16)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / "tok" / name).is_file(), name
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tokenizer.model_max_length == 16
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    assert vocab["<|startoftext|>"] == tokenizer.bos_token_id
    assert vocab["<|endoftext|>"] == tokenizer.eos_token_id == tokenizer.pad_token_id
    assert "cat</w>" in vocab  # CLIP's end-of-word suffix on whole words
    ids = tokenizer(["A cat", ""], padding="max_length", max_length=16, truncation=True).input_ids
    assert ids[0][:3] == [tokenizer.bos_token_id, vocab["a</w>"], vocab["cat</w>"]]
    assert ids[0][3] == tokenizer.eos_token_id and len(ids[0]) == 16
    assert ids[1] == [tokenizer.bos_token_id] + [tokenizer.eos_token_id] * 15
    # Every single letter exists with the suffix, so no word maps to <unk> mid-word.
    assert all(f"{c}</w>" in vocab for c in "abcdefghijklmnopqrstuvwxyz0123456789")


def test_tokenizer_training_is_deterministic_and_honours_the_corpus(tmp_path):
    a = make_clip_tokenizer(tmp_path / "a")
    b = make_clip_tokenizer(tmp_path / "b")
    assert a.get_vocab() == b.get_vocab()
    assert (tmp_path / "a" / "merges.txt").read_text() == (
        tmp_path / "b" / "merges.txt"
    ).read_text()
    custom = make_clip_tokenizer(tmp_path / "c", ["purple purple purple giraffe"], pad_token="!")
    assert "purple</w>" in custom.get_vocab() and "purple</w>" not in a.get_vocab()
    assert custom.pad_token == "!"
    assert DEFAULT_CORPUS and all(isinstance(line, str) for line in DEFAULT_CORPUS)
    with pytest.raises(ValueError, match="empty"):
        make_clip_tokenizer(tmp_path / "d", [])


def test_builds_are_deterministic_in_the_seed(tmp_path):
    def unet_weights(path):
        return load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))

    first = unet_weights(build_tiny_sd15(tmp_path / "one", seed=3))
    again = unet_weights(build_tiny_sd15(tmp_path / "two", seed=3))
    other = unet_weights(build_tiny_sd15(tmp_path / "three", seed=4))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    xl = [
        load_file(
            str(build_tiny_sdxl(tmp_path / f"xl{i}") / "text_encoder_2" / "model.safetensors")
        )
        for i in range(2)
    ]
    assert all(torch.equal(xl[0][k], xl[1][k]) for k in xl[0])
    # The standalone UNet builder makes the pipeline's UNet for the same seed.
    standalone = tiny_sd15_unet(seed=3).state_dict()
    assert all(torch.equal(first[k], standalone[k]) for k in first)
    # Building leaves the caller's RNG alone.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_sd15_unet(seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_stock_pipelines_load_and_sample_the_tiny_checkpoints(tiny_sd15_dir, tiny_sdxl_dir):
    layouts = {
        tiny_sd15_dir: ("StableDiffusionPipeline", StableDiffusionPipeline),
        tiny_sdxl_dir: ("StableDiffusionXLPipeline", StableDiffusionXLPipeline),
    }
    for path, (class_name, pipeline_class) in layouts.items():
        index = json.loads((path / "model_index.json").read_text())
        assert index["_class_name"] == class_name
        pipe = pipeline_class.from_pretrained(str(path))
        out = pipe(
            "a cat",
            num_inference_steps=2,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        ).images
        assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    xl_index = json.loads((tiny_sdxl_dir / "model_index.json").read_text())
    assert xl_index["force_zeros_for_empty_prompt"] is True
    assert (tiny_sdxl_dir / "tokenizer_2" / "vocab.json").is_file()
