"""``load_backbone``: one entry point for every model family, from a hub id or a local folder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pref_core.backbones.base import KINDS, Backbone, LoadOptions

# What `load_backbone("sdxl")` means. Any other hub id or directory works too.
DEFAULT_SOURCES = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "flux": "black-forest-labs/FLUX.1-dev",
}

# model_index.json `_class_name` → family. Img2img/inpaint variants share the components.
PIPELINE_KINDS = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionImg2ImgPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
}


def read_model_index(source: str, options: LoadOptions | None = None) -> dict[str, Any]:
    """The pipeline's ``model_index.json``, from a local directory or the Hub (or its cache)."""
    options = options or LoadOptions()
    path = Path(source).expanduser()
    if path.exists():
        index = path / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(
                f"{path} is not a diffusers pipeline folder: it has no model_index.json. "
                "Point at the folder that holds model_index.json, unet/ or transformer/, vae/, "
                "text_encoder*/, tokenizer*/ and scheduler/ (the Hub layout)"
            )
        return json.loads(index.read_text(encoding="utf-8"))
    from huggingface_hub import hf_hub_download

    try:
        downloaded = hf_hub_download(
            source,
            "model_index.json",
            revision=options.revision,
            local_files_only=options.local_files_only,
        )
    except Exception as exc:  # network, auth, missing repo: one message with the way out
        raise OSError(
            f"could not get model_index.json of {source!r}: it is not a local directory and "
            f"the Hub (or its local cache) did not provide it ({type(exc).__name__}: {exc}). "
            "Pass a local directory in the Hub layout, download the model once with network "
            "access, or check the repository id and your token"
        ) from exc
    return json.loads(Path(downloaded).read_text(encoding="utf-8"))


def kind_of(index: Mapping[str, Any]) -> str:
    """The model family a ``model_index.json`` describes."""
    pref_kind = index.get("_pref_kind")
    if pref_kind is not None:
        if pref_kind not in KINDS:
            raise ValueError(f"unknown _pref_kind {pref_kind!r}; known: {', '.join(KINDS)}")
        return pref_kind
    class_name = str(index.get("_class_name", ""))
    try:
        return PIPELINE_KINDS[class_name]
    except KeyError:
        raise ValueError(
            f"pref has no backbone for {class_name or 'this pipeline'}; supported pipelines: "
            f"{', '.join(sorted(PIPELINE_KINDS))}. See docs/backbones.md for adding one"
        ) from None


def load_backbone(
    kind_or_path: str = "sd15",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    variant: str | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    denoiser: str | None = None,
    denoiser_subfolder: str | None = None,
    flow_density: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Backbone:
    """Load a backbone by family name, hub id or local directory.

    Args:
        kind_or_path: ``"sd15"``, ``"sdxl"`` or ``"flux"`` (their reference hub ids, see
            :data:`DEFAULT_SOURCES`); ``"toy"`` or ``"toy-flux"`` (built fresh from the package's
            configs with ``seed``); or any hub id / directory holding a diffusers pipeline
            (``model_index.json`` says which family it is).
        dtype, device, variant, revision, local_files_only: as in diffusers' ``from_pretrained``.
        denoiser: a different denoiser checkpoint (hub id or directory) to use instead of the
            pipeline's own, e.g. an SDXL-DPO UNet; ``denoiser_subfolder`` says where in it.
        flow_density: timestep-density settings for flow models (``weighting_scheme``, ...).
        seed: initialisation seed of the toy backbones.

    Example::

        backbone = load_backbone("sdxl", dtype=torch.bfloat16, device="cuda",
                                 denoiser="mhdang/dpo-sdxl-text2image-v1")
    """
    options = LoadOptions(
        dtype=dtype,
        device=device,
        variant=variant,
        revision=revision,
        local_files_only=local_files_only,
        denoiser=denoiser,
        denoiser_subfolder=denoiser_subfolder,
        flow_density=dict(flow_density or {}),
    )
    if kind_or_path in ("toy", "toy-flux"):
        from pref_core.backbones.toy import build_toy

        if denoiser is not None:
            raise ValueError(
                "a fresh toy backbone has no checkpoint to swap; save it and load the folder"
            )
        return build_toy(kind_or_path, seed=seed).to(device=device, dtype=dtype)

    expected = kind_or_path if kind_or_path in DEFAULT_SOURCES else None
    source = DEFAULT_SOURCES.get(kind_or_path, kind_or_path)
    kind = kind_of(read_model_index(source, options))
    if expected is not None and kind != expected:
        raise ValueError(f"{source} holds a {kind} pipeline, not {expected}")
    return load_kind(kind, source, options)


def load_kind(kind: str, source: str, options: LoadOptions) -> Backbone:
    """Dispatch to the family loader (no detection)."""
    if kind == "sd15":
        from pref_core.backbones.sd import load_sd15

        return load_sd15(source, options)
    if kind == "sdxl":
        from pref_core.backbones.sd import load_sdxl

        return load_sdxl(source, options)
    if kind == "flux":
        from pref_core.backbones.flux import load_flux

        return load_flux(source, options)
    if kind in ("toy", "toy-flux"):
        from pref_core.backbones.toy import load_toy

        return load_toy(source, options)
    raise ValueError(f"unknown backbone kind {kind!r}; known: {', '.join(KINDS)}")
