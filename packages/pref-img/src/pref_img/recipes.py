"""IMG's recipes for ``pref-train`` (entry-point group ``pref.recipes``).

IMG trains no diffusion weights. Its chain is: an MLLM misalignment detector
(``img-mllm-*``), then the Implicit Aligner over the frozen MLLM's and IP-Adapter's features
(``img-flux``, ``img-sdxl``). Real models use published IP-Adapters; the toy world trains its
own first (``toy-ip-adapter``), so the toy chain is ``toy-ip-adapter`` → ``img-mllm-toy`` →
``img-toy``.

Settings from the paper (supplementary A.3–A.4): the aligner is trained on Pick-a-Pic v2 for
100K iterations, batch 8, AdamW with a constant learning rate 1e-4 and weight decay 1e-4, λ = 1,
k = 10; at inference the IP scale is 0.2 and the public code applies the aligner 3 times. The
detector is LLaVA-1.5-13B fine-tuned for one epoch on the CLIP-filtered InstructPix2Pix set
(313K triplets) with LLaVA's standard fine-tuning settings (learning rate 2e-5, global batch
128, cosine schedule with 3% warmup, bf16, gradient checkpointing).
"""

from __future__ import annotations

from pref_core.recipes import Recipe
from pref_img.programs import AlignerProgram, DetectorProgram, IPAdapterProgram

__all__ = [
    "IMG_FLUX",
    "IMG_MLLM_LLAVA",
    "IMG_MLLM_QWEN",
    "IMG_MLLM_TOY",
    "IMG_SDXL",
    "IMG_TOY",
    "TOY_IP_ADAPTER",
]

PAPER = "Guo et al., IMG: Calibrating Diffusion Models via Implicit Multimodal Guidance, ICCV 2025"

# The aligner's training (supplementary A.4). "8 A100 GPUs and a batch size of 8": read here as
# a global batch of 8 (1 per GPU on 8 GPUs, or 8 on one).
_ALIGNER = {
    "data.source": "pickapic:yuvalkirstain/pickapic_v2",
    "data.resolution": 512,  # the encoders resize to their own 224/336/448 inputs
    "data.crop": "center",
    "data.flip_prob": 0.0,
    "optim.optimizer": "adamw",
    "optim.lr": 1e-4,
    "optim.weight_decay": 1e-4,
    "optim.schedule": "constant",
    "optim.warmup_steps": 0,
    "optim.max_grad_norm": 1.0,
    "train.steps": 100_000,
    "train.batch_size": 8,
    "model.dtype": "bfloat16",
    "log.every": 50,
    "log.sample_every": 5000,
    "log.checkpoint_every": 5000,
    "log.sample_steps": 30,
}

# LLaVA-1.5's fine-tuning settings, one epoch of the CLIP-filtered InstructPix2Pix triplets
# (313,010 / 128 ≈ 2,446 steps).
_DETECTOR = {
    "data.source": "timbrooks/instructpix2pix-clip-filtered",
    "data.resolution": 336,
    "model.mode": "full",
    "model.dtype": "bfloat16",
    "model.gradient_checkpointing": True,
    "optim.optimizer": "adamw",
    "optim.lr": 2e-5,
    "optim.weight_decay": 0.0,
    "optim.schedule": "cosine",
    "optim.warmup_steps": 73,
    "optim.max_grad_norm": 1.0,
    "train.steps": 2446,
    "train.batch_size": 16,
    "train.grad_accum": 8,
    "log.every": 10,
    "log.checkpoint_every": 500,
    "objective.eval_size": 0,
}

IMG_FLUX = Recipe(
    name="img-flux",
    description="IMG on FLUX.1-dev: train the Implicit Aligner (XLabs IP-Adapter, MLLM guidance)",
    task="module",
    program=AlignerProgram,
    defaults={
        **_ALIGNER,
        "model.base": "black-forest-labs/FLUX.1-dev",
        "objective.ip_adapter": "XLabs-AI/flux-ip-adapter",
        "objective.ip_weight_name": "ip_adapter.safetensors",
        "objective.ip_subfolder": None,
        "objective.image_encoder": "openai/clip-vit-large-patch14",
        "objective.num_heads": 16,
        "eval.steps": 30,
    },
    paper=PAPER + "; FLUX: 30 steps, distilled guidance 3.5, IP scale 0.2",
    hardware="one 80 GB GPU (FLUX.1-dev bf16 ~24 GB + LLaVA-1.5-13B bf16 ~26 GB, frozen); "
    "paper: 8×A100, 10–15 h",
)

IMG_SDXL = Recipe(
    name="img-sdxl",
    description="IMG on SDXL (or any SDXL UNet): train the Implicit Aligner (IP-Adapter-Plus)",
    task="module",
    program=AlignerProgram,
    defaults={
        **_ALIGNER,
        "model.base": "stabilityai/stable-diffusion-xl-base-1.0",
        "objective.ip_adapter": "h94/IP-Adapter",
        "objective.ip_weight_name": "ip-adapter-plus_sdxl_vit-h.safetensors",
        "objective.ip_subfolder": "sdxl_models",
        "objective.image_encoder": "h94/IP-Adapter",
        "objective.image_encoder_subfolder": "models/image_encoder",
        "objective.num_heads": 16,
        "eval.steps": 50,
        "eval.guidance_scale": 7.5,
    },
    paper=PAPER + "; SDXL/SDXL-DPO: 50 steps, CFG 7.5, IP scale 0.2",
    hardware="one 40 GB GPU (SDXL bf16 + LLaVA-1.5-13B bf16, frozen); paper: 8×A100, 10–15 h",
)

IMG_MLLM_LLAVA = Recipe(
    name="img-mllm-llava",
    description="IMG's misalignment detector: fine-tune LLaVA-1.5 on InstructPix2Pix triplets",
    task="module",
    program=DetectorProgram,
    defaults={**_DETECTOR, "model.base": "llava-hf/llava-1.5-13b-hf"},
    paper=PAPER + "; LLaVA-1.5-13B, one epoch of InstructPix2Pix (CLIP-filtered, 313K)",
    hardware="full: 8×80 GB GPUs (13B, ZeRO-3 as LLaVA); model.mode=lora fits one 80 GB GPU",
)

IMG_MLLM_QWEN = Recipe(
    name="img-mllm-qwen",
    description="IMG's misalignment detector: fine-tune Qwen2.5-VL on InstructPix2Pix triplets",
    task="module",
    program=DetectorProgram,
    defaults={
        **_DETECTOR,
        "model.base": "Qwen/Qwen2.5-VL-7B-Instruct",
        "data.resolution": 448,
    },
    paper=PAPER + "; Qwen2.5-VL-7B works as the MLLM too (Table 4)",
    hardware="full: 4×80 GB GPUs; model.mode=lora fits one 80 GB GPU",
)

# ------------------------------------------------------------------------------ the toy chain
TOY_IP_ADAPTER = Recipe(
    name="toy-ip-adapter",
    description="an IP-Adapter for the toy base (standard IP-Adapter objective), IMG's toy chain",
    task="module",
    program=IPAdapterProgram,
    defaults={
        "model.base": "toy-pretrained:toy",
        "data.source": "toy-pretrain",
        "data.size": 8192,
        "data.defect_rate": 0.3,
        # A toy prompt describes its image completely, so with the paper's 5% text dropout the
        # image tokens have nothing to add and the adapter learns to be ignored (measured in
        # development, 600 steps with an 8 px-patch encoder: reconstruction from tokens 0.377 vs
        # 0.395 unconditional); dropping the text half the time makes the tokens carry the image.
        "objective.drop_text": 0.5,
        "optim.lr": 1e-3,
        "optim.weight_decay": 0.01,
        "optim.schedule": "constant",
        "optim.warmup_steps": 20,
        "train.steps": 1500,
        "train.batch_size": 32,
        "log.every": 20,
        "log.sample_every": 200,
        "log.checkpoint_every": 200,
        "log.sample_steps": 20,
    },
    paper="Ye et al., IP-Adapter (2023): denoising loss with image tokens, 5% text/image/both "
    "dropped",
    hardware="2 CPU cores: ~20 min",
)

IMG_MLLM_TOY = Recipe(
    name="img-mllm-toy",
    description="IMG's misalignment detector for the toy world: a small LLaVA trained on toy "
    "edit triplets",
    task="module",
    program=DetectorProgram,
    defaults={
        "model.base": "toy-detector",
        "model.mode": "full",
        "data.source": "toy-triplets",
        "data.size": 8192,
        "optim.lr": 2e-3,
        "optim.weight_decay": 0.01,
        "optim.schedule": "cosine",
        "optim.warmup_steps": 30,
        "optim.max_grad_norm": 1.0,
        "train.steps": 2000,
        "train.batch_size": 32,
        "log.every": 20,
        "log.checkpoint_every": 200,
        "objective.eval_size": 200,
    },
    paper=PAPER + " (A.3, toy analogue: the instruction names the wrong attribute's fix)",
    hardware="2 CPU cores: ~9 min",
)

IMG_TOY = Recipe(
    name="img-toy",
    description="IMG on the toy base: train the Implicit Aligner over the toy IP-Adapter and "
    "toy MLLM, then compare re-generations with the initial images",
    task="module",
    program=AlignerProgram,
    defaults={
        "model.base": "toy-pretrained:toy",
        "data.source": "toy-pairs",
        "data.size": 4096,
        "data.flip_rate": 0.1,
        "objective.ip_adapter": "./runs/toy-ip-adapter",
        "objective.ip_weight_name": None,
        "objective.ip_subfolder": None,
        "objective.detector": "./runs/img-mllm-toy",
        "objective.num_heads": 4,
        "objective.feature_cache": True,
        "optim.lr": 1e-3,
        "optim.weight_decay": 1e-4,
        "optim.schedule": "constant",
        "optim.warmup_steps": 0,
        "train.steps": 400,
        "train.batch_size": 32,
        "log.every": 20,
        "log.sample_every": 200,
        "log.checkpoint_every": 200,
        "log.sample_steps": 20,
        "eval.prompts": "toy:200",
        "eval.steps": 20,
        "eval.scheduler": "auto",
        "eval.guidance_scale": 3.0,
    },
    paper=PAPER + " (toy analogue)",
    hardware="2 CPU cores: 6–9 min with the evaluation, after toy-ip-adapter and img-mllm-toy",
)
