"""The Diff-contrast recipes (``pref-train --recipe contrast-...``).

Real-model recipes follow the paper (App. D, Table 1) on Diffusion-DPO's training setup, which
its authors built on: Pick-a-Pic v2; SD 1.5: β = 2000, τ = 0.01, AdamW, 16 pairs per GPU × 4
accumulation (× 8 GPUs = 512); SDXL: β = 5000, τ = 0.5, Adafactor, 8 per GPU × 8 accumulation;
learning rate (2000/β) × 1e-8, scaled by the total batch, as Diffusion-DPO's code runs it (the
paper writes "(2000/β)·2.048e-8", Diffusion-DPO's notation). The contrast runs over each GPU's mini-batch of M
pairs, so the per-GPU batch is part of the method, not only of the memory budget. f is CLIP
ViT-L/14 (image and text, ``modality=both``); the paper says "the CLIP encoder" without naming
one, so the model is pref's choice. FLUX is pref's extension (flow-velocity errors in Eq. 9).

The toy recipes scale this to the toy world (docs/benchmarks.md has the measurements).
"""

from __future__ import annotations

from pref_contrast.objective import DiffContrast, prepare_embeddings
from pref_core.recipes import (
    DIFFUSION_DPO_DEFAULTS,
    LORA_DEFAULTS,
    MODEL_DEFAULTS,
    TOY_FINETUNE_DEFAULTS,
    Recipe,
)

__all__ = [
    "ALL",
    "CONTRAST_FLUX",
    "CONTRAST_FLUX_LORA",
    "CONTRAST_SD15",
    "CONTRAST_SD15_LORA",
    "CONTRAST_SDXL",
    "CONTRAST_SDXL_LORA",
    "CONTRAST_TOY",
    "CONTRAST_TOY_FLOW",
]

_PAPER = "Diff-contrast (Diffusion-RPO), Eq. 9, Sec. 2.1, App. D"
CLIP = "clip:openai/clip-vit-large-patch14"


def _contrast(name: str, description: str, defaults: dict, paper: str, hardware: str) -> Recipe:
    return Recipe(
        name=name,
        description=description,
        objective=DiffContrast,
        defaults=defaults,
        prepare_data=prepare_embeddings,
        paper=paper,
        hardware=hardware,
    )


# ------------------------------------------------------------------------------ the toy world
_TOY = {
    **TOY_FINETUNE_DEFAULTS,
    "data.source": "toy-pairs",
    # Diffusion-DPO's toy settings (β 5000, lr 2e-5), so the comparison isolates the contrast
    "optim.lr": 2e-5,
    "objective.beta": 5000.0,
    "objective.tau": 0.01,
    "objective.embedder": "toy",
    "objective.modality": "both",
}

CONTRAST_TOY = _contrast(
    "contrast-toy",
    "Diff-contrast on the toy world (diffusion toy base), then evaluation against the base",
    _TOY,
    "Diff-contrast scaled to the toy world: M = 16 pairs, τ = 0.01, the toy embedder",
    "2 CPU cores: 7.5-11 min with evaluation, plus 1-2 min to embed the pairs once (measured)",
)
CONTRAST_TOY_FLOW = _contrast(
    "contrast-toy-flow",
    "Diff-contrast with flow-velocity errors (pref's extension) on the toy rectified-flow base",
    {**_TOY, "model.base": "toy-pretrained:toy-flux"},
    "Diff-contrast Eq. 9 with flow-matching errors (pref's extension)",
    "2 CPU cores: about as long as contrast-toy",
)

# ------------------------------------------------------------------------------ real models
_COMMON = {**DIFFUSION_DPO_DEFAULTS, "objective.embedder": CLIP, "objective.modality": "both"}
_SD15 = {
    **MODEL_DEFAULTS["sd15"],
    "objective.beta": 2000.0,
    "objective.tau": 0.01,
    "optim.lr": 1e-8,  # (2000 / β) × 1e-8
    "train.batch_size": 16,
    "train.grad_accum": 4,
}
_SDXL = {
    **MODEL_DEFAULTS["sdxl"],
    "objective.beta": 5000.0,
    "objective.tau": 0.5,
    "optim.lr": 4e-9,  # (2000 / β) × 1e-8
    "train.batch_size": 8,
    "train.grad_accum": 8,
}
_FLUX = {
    **MODEL_DEFAULTS["flux"],
    "objective.beta": 1000.0,  # pref's Diffusion-DPO β for flow models (dpo-flux)
    "objective.tau": 0.5,
    "train.batch_size": 4,
    "train.grad_accum": 16,
}
_LORA = LORA_DEFAULTS

CONTRAST_SD15 = _contrast(
    "contrast-sd15",
    "Diff-contrast, full fine-tuning of Stable Diffusion 1.5 on Pick-a-Pic v2 (paper settings)",
    {**_COMMON, **_SD15},
    f"{_PAPER}: β 2000, τ 0.01, AdamW, lr 1e-8 x total batch, 16 pairs per GPU x 4 x 8 GPUs",
    "8 x A100 in the paper (16 pairs of 512 px per GPU); CLIP ViT-L/14 for the embeddings",
)
CONTRAST_SD15_LORA = _contrast(
    "contrast-sd15-lora",
    "Diff-contrast with LoRA on Stable Diffusion 1.5 (reference = adapters disabled)",
    {**_COMMON, **_SD15, **_LORA, "train.grad_accum": 4},
    f"{_PAPER}; LoRA is pref's option (lr: diffusers' Diffusion-DPO LoRA example)",
    "1 x 40 GB GPU (16 pairs per micro-batch with gradient checkpointing)",
)
CONTRAST_SDXL = _contrast(
    "contrast-sdxl",
    "Diff-contrast, full fine-tuning of SDXL base on Pick-a-Pic v2 (paper settings, Adafactor)",
    {**_COMMON, **_SDXL},
    f"{_PAPER}: β 5000, τ 0.5, Adafactor, lr 4e-9 x total batch, 8 pairs per GPU x 8 x 8 GPUs",
    "8 x 80 GB GPUs (full SDXL UNet + frozen reference, 8 pairs of 1024 px per GPU)",
)
CONTRAST_SDXL_LORA = _contrast(
    "contrast-sdxl-lora",
    "Diff-contrast with LoRA on SDXL base (reference = adapters disabled)",
    {**_COMMON, **_SDXL, **_LORA, "optim.optimizer": "adamw", "train.grad_accum": 8},
    f"{_PAPER}; LoRA is pref's option",
    "1 x 80 GB GPU at 1024 px with gradient checkpointing",
)
CONTRAST_FLUX = _contrast(
    "contrast-flux",
    "Diff-contrast with flow-velocity errors (pref's extension), full fine-tuning of FLUX.1-dev",
    {**_COMMON, **_FLUX},
    f"{_PAPER} with flow-matching errors (pref's extension): β 1000 (as dpo-flux), τ 0.5",
    "8 x 80 GB GPUs with FSDP (12B transformer + frozen reference)",
)
CONTRAST_FLUX_LORA = _contrast(
    "contrast-flux-lora",
    "Diff-contrast with flow-velocity errors, LoRA on FLUX.1-dev",
    {**_COMMON, **_FLUX, **_LORA, "train.grad_accum": 16},
    f"{_PAPER} with flow-matching errors (pref's extension), LoRA",
    "1 x 80 GB GPU (bf16 base, gradient checkpointing)",
)

ALL = (
    CONTRAST_TOY,
    CONTRAST_TOY_FLOW,
    CONTRAST_SD15,
    CONTRAST_SD15_LORA,
    CONTRAST_SDXL,
    CONTRAST_SDXL_LORA,
    CONTRAST_FLUX,
    CONTRAST_FLUX_LORA,
)
