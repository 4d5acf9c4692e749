"""The recipes pref-apps registers: the toy world's base training and baselines, and Diffusion-DPO.

Real-model Diffusion-DPO recipes use the reference implementation's defaults (Wallace et al.
2024 and its public code, see ``docs/recipes.md``): β = 5000 with the ½ convention, learning
rate 1e-8 scaled by the total batch (effective batch 2048 in the paper: 16 GPUs × 1 × 128
accumulation), AdamW for SD 1.5 and Adafactor for SDXL, 2000 steps, 20% empty-prompt dropout,
512 px (SD 1.5) / 1024 px (SDXL), Pick-a-Pic v2. FLUX.1 follows flow_grpo's DPO for flow models:
flow-velocity target, logit-normal timesteps, a smaller β.
"""

from __future__ import annotations

import hashlib
import json

from pref_core.objectives import DiffusionDPO
from pref_core.recipes import (
    DIFFUSION_DPO_DEFAULTS,
    LORA_DEFAULTS,
    MODEL_DEFAULTS,
    TOY_FINETUNE_DEFAULTS,
    Recipe,
)

# ------------------------------------------------------------------------------ the toy world
_TOY_PRETRAIN_DEFAULTS = {
    "model.base": "toy",
    "model.mode": "full",
    "model.train_text_encoder": True,
    "data.source": "toy-pretrain",
    "data.prompt_dropout": 0.1,
    "data.size": 20000,
    "data.defect_rate": 0.3,
    "optim.lr": 2e-3,
    "optim.schedule": "cosine",
    "optim.warmup_steps": 50,
    "train.steps": 3000,
    "train.batch_size": 16,
    "log.every": 25,
    "log.sample_every": 0,
    "eval.scheduler": "auto",
}

TOY_PRETRAIN = Recipe(
    name="toy-pretrain",
    description="train a toy base model from scratch on the toy world (30% defective images)",
    task="denoising",
    defaults=_TOY_PRETRAIN_DEFAULTS,
    paper="the toy world (docs/data.md): a deliberately imperfect base for alignment to improve",
    hardware="2 CPU cores: the shipped bases took about 35 min (toy) and 11 min (toy-flux, 1500 steps) with 1 thread each, sharing the machine",
)


# The flow toy base trains half as long: each of its steps costs more on a CPU.
TOY_PRETRAIN_KIND_DEFAULTS = {"toy": {}, "toy-flux": {"train.steps": 1500}}


def toy_pretrain_settings(kind: str, seed: int = 0) -> dict:
    """The settings ``toy-pretrained:KIND[:SEED]`` trains its base with (over the recipe's)."""
    return {"model.base": kind, "train.seed": seed, **TOY_PRETRAIN_KIND_DEFAULTS[kind]}


def toy_pretrain_version(kind: str) -> str:
    """A short hash of what the cached toy base depends on (recipe defaults and toy config)."""
    from pref_core.backbones.toy import toy_config

    # What the weights depend on (not logging or evaluation); looked up at call time.
    defaults = {
        k: v for k, v in TOY_PRETRAIN.defaults.items() if not k.startswith(("log.", "eval."))
    }
    blob = json.dumps(
        [defaults, TOY_PRETRAIN_KIND_DEFAULTS[kind], toy_config(kind), "v1"],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


_TOY_FINETUNE = TOY_FINETUNE_DEFAULTS

SFT_TOY = Recipe(
    name="sft-toy",
    description="supervised fine-tuning baseline: the toy base trained on the preferred images only",
    task="denoising",
    defaults={**_TOY_FINETUNE, "data.source": "toy-winners", "optim.lr": 1e-4},
    paper="the SFT baseline of Diffusion-DPO (Wallace et al. 2024, Sec. 5)",
    hardware="2 CPU cores, a few minutes with evaluation",
)

DPO_TOY = Recipe(
    name="dpo-toy",
    description="Diffusion-DPO on the toy world, then evaluation against the base (the quickstart)",
    objective=DiffusionDPO,
    # beta 5000 (the paper's) with lr 2e-5: measured on the toy base (docs/benchmarks.md); with
    # lr 1e-4 and beta 500 both errors grow and the tuned model is worse than the base.
    defaults={
        **_TOY_FINETUNE,
        "data.source": "toy-pairs",
        "optim.lr": 2e-5,
        "objective.beta": 5000.0,
    },
    paper="Diffusion-DPO (Wallace et al. 2024) scaled to the toy world",
    hardware="2 CPU cores: about 4 minutes with evaluation (measured, docs/benchmarks.md)",
)

# ------------------------------------------------------------------------------ real models
_DPO_COMMON = {**DIFFUSION_DPO_DEFAULTS, "objective.beta": 5000.0}
_LORA = LORA_DEFAULTS


def _dpo(name: str, description: str, defaults: dict, paper: str, hardware: str) -> Recipe:
    return Recipe(
        name=name,
        description=description,
        objective=DiffusionDPO,
        defaults={**_DPO_COMMON, **defaults},
        paper=paper,
        hardware=hardware,
    )


_SD15 = MODEL_DEFAULTS["sd15"]
_SDXL = MODEL_DEFAULTS["sdxl"]
_FLUX = {**MODEL_DEFAULTS["flux"], "objective.beta": 1000.0}

DPO_SD15 = _dpo(
    "dpo-sd15",
    "Diffusion-DPO, full fine-tuning of Stable Diffusion 1.5 on Pick-a-Pic v2 (paper settings)",
    _SD15,
    "Wallace et al. 2024: beta 5000, lr 1e-8 x total batch, AdamW, 2000 steps, batch 2048",
    "16 x A100-80GB in the paper (2048 pairs per step); 1 x 40 GB GPU with accumulation",
)
DPO_SD15_LORA = _dpo(
    "dpo-sd15-lora",
    "Diffusion-DPO with LoRA on Stable Diffusion 1.5 (reference = adapters disabled)",
    {**_SD15, **_LORA},
    "diffusers' Diffusion-DPO LoRA example: lr 1e-5, beta 5000 with the 1/2 (2500 folded)",
    "1 x 24 GB GPU",
)
DPO_SDXL = _dpo(
    "dpo-sdxl",
    "Diffusion-DPO, full fine-tuning of SDXL base on Pick-a-Pic v2 (paper settings, Adafactor)",
    _SDXL,
    "Wallace et al. 2024: beta 5000, lr 1e-8 x total batch, Adafactor, 1024 px",
    "8-16 x 80 GB GPUs (full SDXL UNet + frozen reference copy)",
)
DPO_SDXL_LORA = _dpo(
    "dpo-sdxl-lora",
    "Diffusion-DPO with LoRA on SDXL base (reference = adapters disabled)",
    {**_SDXL, **_LORA, "optim.optimizer": "adamw"},
    "diffusers' SDXL Diffusion-DPO LoRA example",
    "1 x 40-80 GB GPU at 1024 px with gradient checkpointing",
)
DPO_FLUX = _dpo(
    "dpo-flux",
    "Diffusion-DPO for flow matching, full fine-tuning of FLUX.1-dev",
    _FLUX,
    "flow_grpo's DPO for flow models: v = eps - x0, logit-normal t, beta ~100-2000",
    "8 x 80 GB GPUs with FSDP (12B transformer + frozen reference)",
)
DPO_FLUX_LORA = _dpo(
    "dpo-flux-lora",
    "Diffusion-DPO for flow matching with LoRA on FLUX.1-dev",
    {**_FLUX, **_LORA},
    "flow_grpo's DPO for flow models, LoRA",
    "1 x 80 GB GPU (bf16 base, gradient checkpointing)",
)

ALL = (
    TOY_PRETRAIN,
    SFT_TOY,
    DPO_TOY,
    DPO_SD15,
    DPO_SD15_LORA,
    DPO_SDXL,
    DPO_SDXL_LORA,
    DPO_FLUX,
    DPO_FLUX_LORA,
)
