"""Helpers for end-to-end tests of recipes on tiny models: shared by pref-apps' Diffusion-DPO
tests and every method package's recipe tests (which run through ``pref-train``).

Nothing here downloads anything: the tiny SD 1.5 / SDXL / FLUX.1 pipelines are built from
config (``pref_core.backbones.tiny_sd`` / ``tiny_flux``) and saved in the hub layout.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

__all__ = [
    "PICKAPIC_PAIRS",
    "TINY_RESOLUTION",
    "build_tiny_models",
    "encoded_image",
    "probe",
    "run_metrics",
    "tiny_run_args",
    "write_pickapic_parquet",
]

# Four pairs; (width, height) differs per caption so SDXL's original_size says which pair it is.
PICKAPIC_PAIRS = {
    "a photo of a cat sitting on a red chair": (48, 40),
    "a dog running in the green park": (40, 56),
    "a bowl of fresh fruit on a wooden table": (64, 48),
    "a small house by the lake at sunset": (36, 36),
}

TINY_RESOLUTION = 32  # the tiny models' VAEs are 2×: 16×16 latents


def build_tiny_models(root: str | Path) -> dict[str, Path]:
    """Tiny random SD 1.5, SDXL and FLUX.1 pipelines under ``root``: family → folder."""
    from pref_core.backbones.tiny_flux import build_tiny_flux
    from pref_core.backbones.tiny_sd import build_tiny_sd15, build_tiny_sdxl

    root = Path(root)
    return {
        "sd15": build_tiny_sd15(root / "sd15", seed=0),
        "sdxl": build_tiny_sdxl(root / "sdxl", seed=0),
        "flux": build_tiny_flux(root / "flux", seed=0),
    }


def encoded_image(size: tuple[int, int], seed: int, fmt: str = "PNG") -> bytes:
    """A random RGB image of ``size`` = (width, height), encoded as ``fmt`` (PNG, JPEG)."""
    from PIL import Image

    width, height = size
    noise = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=noise, dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format=fmt)
    return buffer.getvalue()


def write_pickapic_parquet(
    path: str | Path, pairs: dict[str, tuple[int, int]] | None = None
) -> Path:
    """A Pick-a-Pic v2 style parquet file (``caption``, ``jpg_0``/``jpg_1`` as JPEG and PNG
    bytes, ``label_0``/``label_1``, ``model_0``/``model_1``), winners on both sides: one pair
    per caption of ``pairs`` (caption → (width, height); default :data:`PICKAPIC_PAIRS`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i, (caption, size) in enumerate((pairs or PICKAPIC_PAIRS).items()):
        winner = i % 2
        rows.append(
            {
                "caption": caption,
                "jpg_0": encoded_image(size, 2 * i, "JPEG"),
                "jpg_1": encoded_image(size, 2 * i + 1, "PNG"),
                "label_0": float(winner == 0),
                "label_1": float(winner == 1),
                "model_0": "A",
                "model_1": "B",
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), path)
    return path


def tiny_run_args(recipe: str, base: Path, data: str, run_dir: Path, *extra: str) -> list[str]:
    """``pref-train`` arguments that run ``recipe`` on a tiny model for two steps of batch 2 at
    32 px, float32, no evaluation; ``data`` is the ``data.source`` spec; ``extra`` goes last."""
    return [
        "--recipe",
        recipe,
        f"model.base={base}",
        f"data.source={data}",
        f"data.resolution={TINY_RESOLUTION}",
        "train.steps=2",
        "train.batch_size=2",
        "train.grad_accum=1",
        "model.dtype=float32",
        "model.mixed_precision=no",
        "model.gradient_checkpointing=false",
        "log.sample_steps=2",
        "log.sample_prompts=a photo of a cat",
        "log.tensorboard=false",
        "log.progress=false",
        f"log.output_dir={run_dir}",
        "eval.prompts=null",
        *extra,
    ]


def run_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``RUN/metrics.jsonl``, strictly: every non-blank line must parse."""
    import json

    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def probe(backbone, seed: int = 0, resolution: int = TINY_RESOLUTION):
    """A fixed (x_t (2, C, h, w), t (2,), cond) for comparing denoisers of one family."""
    g = torch.Generator().manual_seed(seed)
    latents = resolution // backbone.codec.downsample_factor
    x_t = torch.randn(2, backbone.codec.latent_channels, latents, latents, generator=g)
    if backbone.kind == "flux":  # flow matching: σ in [0, 1], the model sees σ · 1000
        t = backbone.process.model_timesteps(torch.tensor([0.3, 0.7]))
    else:  # DDPM: integer timesteps
        t = torch.tensor([300, 700])
    with torch.no_grad():
        cond = backbone.encode(["a photo of a cat", "a dog in the park"])
    return x_t, t, cond
