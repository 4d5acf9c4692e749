"""Tiny, randomly initialised IP-Adapters and CLIP image encoders in the published layouts.

For tests (and end-to-end checks) without downloads. Each file has the key names and tensor
layout of the real one, sized for the tiny backbones of :mod:`pref_core.backbones.tiny_sd` /
:mod:`pref_core.backbones.tiny_flux`, so :func:`~pref_img.image_prompt.load_image_prompt_model`
reads them through exactly the code path of the real adapters:

- :func:`build_tiny_clip_vision`: a ``CLIPVisionModelWithProjection`` plus
  ``CLIPImageProcessor`` saved with ``save_pretrained`` (the layout of h94/IP-Adapter's
  ``models/image_encoder`` and of ``openai/clip-vit-large-patch14``);
- :func:`build_tiny_sdxl_ip_adapter_plus`: h94's ``ip-adapter-plus_sdxl_vit-h.safetensors``
  layout (``image_proj.*`` Resampler, ``ip_adapter.<odd id>.to_{k,v}_ip.weight``);
- :func:`build_tiny_flux_ip_adapter`: XLabs' ``ip_adapter.safetensors`` layout
  (``ip_adapter_proj_model.{proj,norm}.*``,
  ``double_blocks.<i>.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}``).
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from pref_img.image_prompt import (
    _cross_attention_names,
    _double_block_names,
    linear_projection_layout,
    resampler_layout,
    write_ip_adapter_file,
)

__all__ = [
    "FLUX_IP_ADAPTER_FILE",
    "SDXL_PLUS_FILE",
    "build_tiny_clip_vision",
    "build_tiny_flux_ip_adapter",
    "build_tiny_sdxl_ip_adapter_plus",
]

SDXL_PLUS_FILE = "ip-adapter-plus_sdxl_vit-h.safetensors"
FLUX_IP_ADAPTER_FILE = "ip_adapter.safetensors"


def build_tiny_clip_vision(
    path: str | PathLike[str],
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    projection_dim: int = 24,
    num_hidden_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny random CLIP image encoder to ``path`` and return ``path``.

    ``CLIPVisionModelWithProjection.save_pretrained`` (``config.json`` + weights) and
    ``CLIPImageProcessor.save_pretrained`` (``preprocessor_config.json``: shortest edge and
    centre crop ``image_size``, bicubic, OpenAI CLIP mean/std). Two or more layers, so the
    penultimate hidden state IP-Adapter-Plus reads is a real intermediate layer. Same seed,
    same weights.
    """
    if num_hidden_layers < 2:
        raise ValueError("IP-Adapter-Plus reads hidden_states[-2]: use at least 2 layers")
    path = Path(path)
    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=37,
        projection_dim=projection_dim,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    # Seeded initialisation that leaves the caller's global RNG as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config)
    model.save_pretrained(str(path))
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor.save_pretrained(str(path))
    return path


def _network(network: nn.Module | str | PathLike[str], cls: type, subfolder: str) -> nn.Module:
    """The network itself, or one built from the config in a pipeline folder's ``subfolder``
    (only its shapes matter here)."""
    if isinstance(network, nn.Module):
        return network
    folder = Path(network)
    config_dir = folder / subfolder if (folder / subfolder).is_dir() else folder
    config = json.loads((config_dir / "config.json").read_text(encoding="utf-8"))
    return cls.from_config(config)


def _encoder_config(image_encoder_path: str | PathLike[str]) -> CLIPVisionConfig:
    return CLIPVisionConfig.from_pretrained(str(image_encoder_path))


def _target_file(path: str | PathLike[str], default_name: str) -> Path:
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / default_name


def _linear_weight(generator: torch.Generator, out_features: int, in_features: int) -> Tensor:
    bound = in_features**-0.5  # nn.Linear's default U(−1/√fan_in, 1/√fan_in)
    return (torch.rand((out_features, in_features), generator=generator) * 2 - 1) * bound


def build_tiny_sdxl_ip_adapter_plus(
    path: str | PathLike[str],
    *,
    unet: nn.Module | str | PathLike[str],
    image_encoder_path: str | PathLike[str],
    num_tokens: int = 16,
    seed: int = 0,
) -> Path:
    """Write an IP-Adapter-Plus file in h94's SDXL layout, sized for ``unet``; returns the file.

    Args:
        path: the ``.safetensors`` file, or a folder to write ``ip-adapter-plus_sdxl_vit-h
            .safetensors`` into.
        unet: the tiny SDXL UNet (a module, or the pipeline folder of
            :func:`~pref_core.backbones.tiny_sd.build_tiny_sdxl`).
        image_encoder_path: the CLIP image encoder the adapter reads (its ``hidden_size`` is
            the Resampler's input width, as ViT-H's 1280 is for the real file).
        num_tokens: S (16 in the real file).
        seed: initialisation seed.

    The Resampler has the real one's structure (4 blocks, 64-wide heads, width the feature
    width rounded up to 64); tokens have the UNet's cross-attention width; one
    ``to_k_ip``/``to_v_ip`` pair per cross-attention, numbered like the real file (odd ids).
    """
    unet = _network(unet, UNet2DConditionModel, "unet")
    hidden = int(_encoder_config(image_encoder_path).hidden_size)
    width = int(unet.config.cross_attention_dim)
    generator = torch.Generator().manual_seed(int(seed))
    image_proj = resampler_layout(
        feature_dim=hidden, token_dim=width, num_tokens=num_tokens, generator=generator
    )
    ip_adapter: dict[str, Tensor] = {}
    for index, name in enumerate(_cross_attention_names(unet)):
        inner = unet.get_submodule(name).to_k.out_features
        for kv in ("k", "v"):
            weight = _linear_weight(generator, inner, width)
            ip_adapter[f"{2 * index + 1}.to_{kv}_ip.weight"] = weight
    return write_ip_adapter_file(
        _target_file(path, SDXL_PLUS_FILE), image_proj, ip_adapter, layout="standard"
    )


def build_tiny_flux_ip_adapter(
    path: str | PathLike[str],
    *,
    transformer: nn.Module | str | PathLike[str],
    image_encoder_path: str | PathLike[str],
    seed: int = 0,
) -> Path:
    """Write a FLUX IP-Adapter in XLabs' layout, sized for ``transformer``; returns the file.

    Args:
        path: the ``.safetensors`` file, or a folder to write ``ip_adapter.safetensors`` into.
        transformer: the tiny FLUX transformer (a module, or the pipeline folder of
            :func:`~pref_core.backbones.tiny_flux.build_tiny_flux`).
        image_encoder_path: the CLIP image encoder (its ``projection_dim`` is the projection's
            input width, as ViT-L/14's 768 is for the real file).
        seed: initialisation seed.

    Four tokens of ``joint_attention_dim`` (as XLabs' 4 × 4096), one biased
    ``to_k_ip``/``to_v_ip`` pair per double-stream block (``inner_dim`` outputs).
    """
    transformer = _network(transformer, FluxTransformer2DModel, "transformer")
    embed = int(_encoder_config(image_encoder_path).projection_dim)
    width = int(transformer.config.joint_attention_dim)
    inner = int(transformer.inner_dim)
    generator = torch.Generator().manual_seed(int(seed))
    image_proj = linear_projection_layout(
        feature_dim=embed, token_dim=width, num_tokens=4, generator=generator
    )
    ip_adapter: dict[str, Tensor] = {}
    for block in range(len(_double_block_names(transformer))):
        for kv in ("k", "v"):
            ip_adapter[f"{block}.to_{kv}_ip.weight"] = _linear_weight(generator, inner, width)
            bias = (torch.rand(inner, generator=generator) * 2 - 1) * width**-0.5
            ip_adapter[f"{block}.to_{kv}_ip.bias"] = bias
    return write_ip_adapter_file(
        _target_file(path, FLUX_IP_ADAPTER_FILE), image_proj, ip_adapter, layout="xlabs"
    )
