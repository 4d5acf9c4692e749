"""The DSPO recipes (``pref-train --recipe dspo-...``).

Real-model recipes follow the paper (App. D.2) and its public code, a fork of the Diffusion-DPO
script: Pick-a-Pic v2, AdamW (Adafactor for SDXL, as Diffusion-DPO), effective batch 2048, lr
1e-8 scaled by the total batch as that code runs it (the text writes "2.048e-8", Diffusion-DPO's
notation), λ = 0.001 (γ = 1). The
paper trains SD 1.5 and SDXL; FLUX uses the flow-velocity analogue, pref's extension
(docs/methods/dspo.md). ``-lora`` variants: Table 6 reports DSPO-LoRA close to full training.

The toy recipes scale this to the toy world (docs/benchmarks.md has the measurements).
"""

from __future__ import annotations

from pref_core.recipes import (
    DIFFUSION_DPO_DEFAULTS,
    LORA_DEFAULTS,
    MODEL_DEFAULTS,
    TOY_FINETUNE_DEFAULTS,
    Recipe,
)
from pref_dspo.objective import DSPO, dspo_step

__all__ = [
    "ALL",
    "DSPO_E_TOY",
    "DSPO_FLUX",
    "DSPO_FLUX_LORA",
    "DSPO_REF_TOY",
    "DSPO_SD15",
    "DSPO_SD15_LORA",
    "DSPO_SDXL",
    "DSPO_SDXL_LORA",
    "DSPO_TOY",
    "DSPO_TOY_FLOW",
]

_PAPER = "DSPO (Zhu et al. 2025), Eq. 13/14, App. D.2, and its public code"


def _dspo(name: str, description: str, defaults: dict, paper: str, hardware: str) -> Recipe:
    return Recipe(
        name=name,
        description=description,
        objective=DSPO,
        defaults=defaults,
        step=dspo_step,
        paper=paper,
        hardware=hardware,
    )


# ------------------------------------------------------------------------------ the toy world
_TOY = {
    **TOY_FINETUNE_DEFAULTS,
    "data.source": "toy-pairs",
    # sft-toy's learning rate: at λ = 0.001 DSPO is SFT on the winners (docs/benchmarks.md)
    "optim.lr": 1e-4,
    "objective.lam": 0.001,
}

DSPO_TOY = _dspo(
    "dspo-toy",
    "DSPO (Eq. 13) on the toy world (diffusion toy base), then evaluation against the base",
    _TOY,
    "DSPO (Zhu et al. 2025) scaled to the toy world: λ = 0.001, γ = 1",
    "2 CPU cores: 7.5-11 min with evaluation (measured, docs/benchmarks.md)",
)
DSPO_TOY_FLOW = _dspo(
    "dspo-toy-flow",
    "DSPO's flow-velocity analogue (pref's extension) on the toy world's rectified-flow base",
    {**_TOY, "model.base": "toy-pretrained:toy-flux"},
    "DSPO Eq. 13 with the flow velocity in place of ε (pref's extension)",
    "2 CPU cores: about as long as dspo-toy",
)
DSPO_E_TOY = _dspo(
    "dspo-e-toy",
    "DSPO-E (App. C.3, Eq. 45: energy-based, no pairwise term) on the toy world",
    {**_TOY, "objective.variant": "dspo-e"},
    "DSPO-E, the paper's ablation (Table 5)",
    "2 CPU cores: 5.5-8.5 min with evaluation (measured, docs/benchmarks.md)",
)
DSPO_REF_TOY = _dspo(
    "dspo-ref-toy",
    "DSPO-ref (Table 6: the pretrained score in place of the data score) on the toy world",
    {**_TOY, "objective.variant": "dspo-ref"},
    "DSPO-ref, the paper's ablation (Table 6); stationary at the base (docs/methods/dspo.md)",
    "2 CPU cores: about as long as dspo-toy",
)

# ------------------------------------------------------------------------------ real models
_COMMON = {**DIFFUSION_DPO_DEFAULTS, "objective.lam": 0.001, "objective.gamma": 1.0}
_LORA = LORA_DEFAULTS
_SD15 = MODEL_DEFAULTS["sd15"]
_SDXL = MODEL_DEFAULTS["sdxl"]
_FLUX = MODEL_DEFAULTS["flux"]

DSPO_SD15 = _dspo(
    "dspo-sd15",
    "DSPO, full fine-tuning of Stable Diffusion 1.5 on Pick-a-Pic v2 (paper settings)",
    {**_COMMON, **_SD15},
    f"{_PAPER}: λ 0.001, AdamW, lr 1e-8 x total batch, effective batch 2048",
    "4 x V100 in the paper (4 pairs each, 128 accumulation); 1 x 40 GB GPU with accumulation",
)
DSPO_SD15_LORA = _dspo(
    "dspo-sd15-lora",
    "DSPO with LoRA on Stable Diffusion 1.5 (DSPO-LoRA, Table 6; reference = adapters disabled)",
    {**_COMMON, **_SD15, **_LORA},
    f"{_PAPER}; LoRA as in Table 6 (lr: diffusers' Diffusion-DPO LoRA example, 1e-5)",
    "1 x 24 GB GPU",
)
DSPO_SDXL = _dspo(
    "dspo-sdxl",
    "DSPO (Eq. 13), full fine-tuning of SDXL base on Pick-a-Pic v2 (Adafactor)",
    {**_COMMON, **_SDXL},
    f"{_PAPER}: Eq. 13 (the public code's SDXL branch is objective.variant=sdxl-code)",
    "8-16 x 80 GB GPUs (full SDXL UNet + frozen reference copy)",
)
DSPO_SDXL_LORA = _dspo(
    "dspo-sdxl-lora",
    "DSPO with LoRA on SDXL base (reference = adapters disabled)",
    {**_COMMON, **_SDXL, **_LORA, "optim.optimizer": "adamw"},
    f"{_PAPER}; LoRA",
    "1 x 40-80 GB GPU at 1024 px with gradient checkpointing",
)
DSPO_FLUX = _dspo(
    "dspo-flux",
    "DSPO's flow-velocity analogue (pref's extension), full fine-tuning of FLUX.1-dev",
    {**_COMMON, **_FLUX},
    "DSPO Eq. 13 with the flow velocity in place of ε (pref's extension; untested upstream)",
    "8 x 80 GB GPUs with FSDP (12B transformer + frozen reference)",
)
DSPO_FLUX_LORA = _dspo(
    "dspo-flux-lora",
    "DSPO's flow-velocity analogue with LoRA on FLUX.1-dev",
    {**_COMMON, **_FLUX, **_LORA},
    "DSPO Eq. 13 with the flow velocity (pref's extension), LoRA",
    "1 x 80 GB GPU (bf16 base, gradient checkpointing)",
)

ALL = (
    DSPO_TOY,
    DSPO_TOY_FLOW,
    DSPO_E_TOY,
    DSPO_REF_TOY,
    DSPO_SD15,
    DSPO_SD15_LORA,
    DSPO_SDXL,
    DSPO_SDXL_LORA,
    DSPO_FLUX,
    DSPO_FLUX_LORA,
)
