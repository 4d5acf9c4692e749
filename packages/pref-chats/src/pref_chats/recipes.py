"""The CHATS recipes (``pref-train --recipe chats-...``).

Real-model recipes follow the paper (App. C.2) and its public training scripts: two networks
initialised from the base plus the frozen reference; OpenImagePreferences (7,459 pairs); T =
1000; p_uncond 0.5; learning rate 1e-8 scaled by the total batch; Adafactor for SDXL, AdamW
otherwise; effective batch 512 (here 1 per GPU × 64 accumulation × 8 GPUs); bf16 with gradient
checkpointing; sampler s = 5, α = 0.5 with the proxy prompt. ``-lora`` variants hold the two
policies as two LoRA adapters on one frozen base (the reference is the base with adapters
disabled), so one copy of the base weights is in memory instead of three.

The toy recipes scale this to the toy world (docs/benchmarks.md has the measurements).
"""

from __future__ import annotations

from pref_chats.objective import CHATS, POLICIES, chats_step
from pref_chats.pair import finalize_export, guided_from_policies
from pref_core.recipes import LORA_DEFAULTS, MODEL_DEFAULTS, TOY_FINETUNE_DEFAULTS, Recipe

__all__ = [
    "ALL",
    "CHATS_FLUX",
    "CHATS_FLUX_LORA",
    "CHATS_SD15",
    "CHATS_SD15_LORA",
    "CHATS_SDXL",
    "CHATS_SDXL_LORA",
    "CHATS_TOY",
    "CHATS_TOY_FLOW",
]

_PAPER = "CHATS (Fu et al. 2025), App. C.2, and its public training scripts"


def _chats(name: str, description: str, defaults: dict, paper: str, hardware: str) -> Recipe:
    return Recipe(
        name=name,
        description=description,
        objective=CHATS,
        defaults=defaults,
        policies=POLICIES,
        step=chats_step,
        paper=paper,
        hardware=hardware,
        sampling=guided_from_policies,
        finalize=finalize_export,
    )


# ------------------------------------------------------------------------------ the toy world
_TOY = {
    **TOY_FINETUNE_DEFAULTS,
    "data.source": "toy-pairs",
    # calibrated on seed 0 (docs/benchmarks.md): lr 2e-5 (Diffusion-DPO's toy lr) / 4e-5 / 8e-5
    # gave oracle 0.594 / 0.613 / 0.636 and win rates 66.5% / 67.5% / 73.0% over the base
    "optim.lr": 8e-5,
    # the base (and Diffusion-DPO) are sampled with diffusers' w = 3, i.e. s = 2; CHATS samples
    # with the same s so the comparison isolates the method (the paper's s = 5 is measured too)
    "objective.guidance_scale": 2.0,
    "objective.temperature": 1000.0,
}

CHATS_TOY = _chats(
    "chats-toy",
    "CHATS on the toy world (diffusion toy base), then evaluation against the base",
    _TOY,
    "CHATS (Fu et al. 2025) scaled to the toy world: T = 1000, p_uncond 0.5, proxy prompt α = 0.5",
    "2 CPU cores: 7-12 min with evaluation (measured, docs/benchmarks.md)",
)
CHATS_TOY_FLOW = _chats(
    "chats-toy-flow",
    "CHATS on the toy world's rectified-flow base (Eq. 14), then evaluation against the base",
    # measured at Diffusion-DPO's toy lr (docs/benchmarks.md); the diffusion toy's 8e-5 is
    # untested on the flow base
    {**_TOY, "model.base": "toy-pretrained:toy-flux", "optim.lr": 2e-5},
    "CHATS Eq. 14 (flow matching) on the toy-flux base",
    "2 CPU cores: 4-6 min with evaluation (measured, docs/benchmarks.md)",
)

# ------------------------------------------------------------------------------ real models
_OIP = "oip:data-is-better-together/open-image-preferences-v1-binarized"
_COMMON = {
    "data.source": _OIP,
    "data.crop": "random",
    "data.flip_prob": 0.5,
    "objective.temperature": 1000.0,
    "objective.p_uncond": 0.5,
    "objective.guidance_scale": 5.0,
    "objective.alpha": 0.5,
    "optim.lr": 1e-8,
    "optim.scale_lr": True,
    "optim.warmup_steps": 0,
    "optim.max_grad_norm": 1.0,
    "train.steps": 6000,
    "train.batch_size": 1,
    "train.grad_accum": 64,
    "model.mixed_precision": "bf16",
    "model.gradient_checkpointing": True,
    "log.every": 10,
    "log.sample_every": 250,
    "log.checkpoint_every": 250,
}
_LORA = LORA_DEFAULTS
_SD15 = MODEL_DEFAULTS["sd15"]
_SDXL = MODEL_DEFAULTS["sdxl"]
_FLUX = MODEL_DEFAULTS["flux"]

CHATS_SD15 = _chats(
    "chats-sd15",
    "CHATS, two full copies of Stable Diffusion 1.5 on OpenImagePreferences (paper settings)",
    {**_COMMON, **_SD15},
    f"{_PAPER}: AdamW, lr 1e-8 x total batch, effective batch 512, T 1000",
    "8 x 80 GB GPUs (two trainable UNets + frozen reference); 1 x 40 GB with accumulation",
)
CHATS_SD15_LORA = _chats(
    "chats-sd15-lora",
    "CHATS with two LoRA adapters on one frozen Stable Diffusion 1.5",
    {**_COMMON, **_SD15, **_LORA},
    f"{_PAPER}; LoRA policies are pref's option (the paper trains full copies)",
    "1 x 24 GB GPU",
)
CHATS_SDXL = _chats(
    "chats-sdxl",
    "CHATS, two full copies of SDXL base on OpenImagePreferences (paper settings, Adafactor)",
    {**_COMMON, **_SDXL},
    f"{_PAPER}: Adafactor, lr 1e-8 x total batch, 1024 px, bf16, gradient checkpointing",
    "8 x 80 GB GPUs (the paper's scripts); see docs/methods/chats.md for the memory budget",
)
CHATS_SDXL_LORA = _chats(
    "chats-sdxl-lora",
    "CHATS with two LoRA adapters on one frozen SDXL base",
    {**_COMMON, **_SDXL, **_LORA, "optim.optimizer": "adamw"},
    f"{_PAPER}; LoRA policies are pref's option",
    "1 x 40-80 GB GPU at 1024 px with gradient checkpointing",
)
CHATS_FLUX = _chats(
    "chats-flux",
    "CHATS for flow matching (Eq. 14), two full copies of FLUX.1-dev",
    {**_COMMON, **_FLUX},
    f"{_PAPER}: Eq. 14, AdamW (the paper's flow model is in-house; FLUX.1-dev is pref's choice)",
    "8 x 80 GB GPUs with FSDP (two 12B transformers + frozen reference)",
)
CHATS_FLUX_LORA = _chats(
    "chats-flux-lora",
    "CHATS for flow matching with two LoRA adapters on one frozen FLUX.1-dev",
    {**_COMMON, **_FLUX, **_LORA},
    f"{_PAPER}; LoRA policies are pref's option",
    "1 x 80 GB GPU (bf16 base, gradient checkpointing)",
)

ALL = (
    CHATS_TOY,
    CHATS_TOY_FLOW,
    CHATS_SD15,
    CHATS_SD15_LORA,
    CHATS_SDXL,
    CHATS_SDXL_LORA,
    CHATS_FLUX,
    CHATS_FLUX_LORA,
)
