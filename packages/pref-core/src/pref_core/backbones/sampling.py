"""Text-to-image sampling for any :class:`~pref_core.backbones.base.Backbone`, with pluggable
guidance.

One loop serves every family (SD 1.5, SDXL, FLUX.1, the toys) and every guidance rule; it follows
diffusers' ``StableDiffusionPipeline`` / ``FluxPipeline`` step for step, so the same model, seed
and scheduler give the same image as the stock pipeline::

    set_timesteps                   (FLUX: σ = linspace(1, 1/N, N) and the resolution shift μ)
    x = randn(per-image seed) · init_noise_sigma
    for t in timesteps:
        x_in = scale_model_input(x, t)
        pred = guidance(denoisers, x_in, t, state)      # CFG, distilled, CHATS, ...
        x = scheduler.step(pred, t, x)
    images = (codec.decode(x) / 2 + 0.5).clamp(0, 1)

The guidance rule is a :class:`~pref_core.backbones.guidance.GuidanceStrategy`; schedulers are
stock diffusers schedulers built from the model's own scheduler config.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from pref_core.backbones.base import Backbone
from pref_core.backbones.guidance import (
    ClassifierFreeGuidance,
    DistilledGuidance,
    GuidanceStrategy,
    NoGuidance,
)
from pref_core.protocols import Denoiser
from pref_core.schedules import resolution_shift_mu

__all__ = [
    "DEFAULT_DIFFUSERS_GUIDANCE_SCALE",
    "DEFAULT_FLUX_GUIDANCE",
    "SCHEDULERS",
    "SampleResult",
    "default_guidance",
    "is_flow_backbone",
    "is_flow_scheduler",
    "make_grid",
    "make_scheduler",
    "sample",
]

# Scheduler names → diffusers classes. The first three are DDPM-family (ε / v models: SD 1.5,
# SDXL, toy); "flow-euler" is for rectified-flow models (FLUX.1, toy-flux).
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm-solver": "DPMSolverMultistepScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}

# StableDiffusionPipeline's default guidance_scale (w = 1 + s).
DEFAULT_DIFFUSERS_GUIDANCE_SCALE = 7.5
# FluxPipeline's default distilled guidance for FLUX.1-dev.
DEFAULT_FLUX_GUIDANCE = 3.5

_FLUX_KINDS = ("flux", "toy-flux")
_OUTPUT_TYPES = ("pt", "pil", "latent")


# ---------------------------------------------------------------------------------- results
@dataclass
class SampleResult:
    """What :func:`sample` returns.

    Attributes:
        images: (N, 3, H, W) float32 in [0, 1] on the CPU (``output_type="pt"``); a list of N
            PIL images (``"pil"``); or the final (N, C, H/f, W/f) latents (``"latent"``).
        seeds: the seed of each image (its initial noise is ``randn`` from
            ``torch.Generator().manual_seed(seed)``).
        prompts: the prompt of each image.
    """

    images: Tensor | list[Image.Image]
    seeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def grid(self, nrow: int | None = None) -> Image.Image:
        """All images in one PIL image (see :func:`make_grid`)."""
        if isinstance(self.images, Tensor) and self.images.shape[1] != 3:
            raise ValueError(
                f"these are latents with {self.images.shape[1]} channels (output_type='latent'), "
                "not images; sample with output_type='pt' or 'pil' to make a grid"
            )
        return make_grid(self.images, nrow=nrow)

    def save_grid(self, path: str | os.PathLike[str], nrow: int | None = None) -> Path:
        """Write :meth:`grid` as a PNG to ``path`` (parent folders are created) and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.grid(nrow).save(path, format="PNG")
        return path


def _to_uint8_hwc(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) uint8, rounded like diffusers' ``numpy_to_pil``."""
    image = image.detach().float().clamp(0, 1).cpu()
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def make_grid(images: Tensor | Sequence[Image.Image], nrow: int | None = None) -> Image.Image:
    """Tile N images of H×W into one RGB image, row by row, without padding.

    Args:
        images: (N, 3, H, W) in [0, 1] (what :func:`sample` returns) or N PIL images of one
            size.
        nrow: images per row (torchvision's meaning); default ⌈√N⌉. The grid is
            ``nrow·W`` wide and ``⌈N / nrow⌉·H`` tall; empty cells stay black.
    """
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"make_grid expects images (N, 3, H, W) in [0, 1], got {tuple(images.shape)}"
            )
        tiles = [Image.fromarray(_to_uint8_hwc(image)) for image in images]
    else:
        tiles = [image.convert("RGB") for image in images]
    if not tiles:
        raise ValueError("make_grid needs at least one image")
    sizes = {tile.size for tile in tiles}
    if len(sizes) != 1:
        raise ValueError(f"all images must have one size to be tiled, got sizes {sorted(sizes)}")
    width, height = tiles[0].size
    count = len(tiles)
    per_row = nrow if nrow is not None else math.ceil(math.sqrt(count))
    if per_row < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    per_row = min(per_row, count)
    rows = math.ceil(count / per_row)
    grid = Image.new("RGB", (per_row * width, rows * height))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % per_row) * width, (i // per_row) * height))
    return grid


# ---------------------------------------------------------------------------------- schedulers
def is_flow_backbone(backbone: Backbone) -> bool:
    """Whether the backbone is a rectified-flow model (FLUX.1, toy-flux) rather than DDPM-family."""
    class_name = str(backbone.scheduler_config.get("_class_name", ""))
    return "FlowMatch" in class_name or getattr(backbone.process, "prediction_type", "") == "flow"


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether a diffusers scheduler integrates a flow ODE (``FlowMatch*``, or a solver
    configured for flow sigmas / flow predictions) rather than a DDPM-family process."""
    config = getattr(scheduler, "config", {}) or {}
    return (
        "FlowMatch" in type(scheduler).__name__
        or bool(config.get("use_flow_sigmas", False))
        or config.get("prediction_type") == "flow_prediction"
    )


def _scheduler_class(name: str) -> type:
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(
            f"diffusers {diffusers.__version__} has no scheduler class {name!r}; pass one of "
            f"{', '.join(repr(k) for k in ('default', 'auto', *SCHEDULERS))}, a diffusers scheduler "
            "class name or a scheduler instance"
        )
    return cls


def make_scheduler(backbone: Backbone, scheduler: str | Any = "default") -> Any:
    """A fresh diffusers scheduler for ``backbone``, built from its own scheduler config.

    Args:
        backbone: the model to sample.
        scheduler: ``"default"`` (the class the model ships with, the config's
            ``_class_name``); ``"auto"`` (a deterministic few-step solver: DDIM for a model
            that ships the stochastic ``DDPMScheduler``, whose ancestral steps need hundreds of
            steps, else the model's own class); a short name from :data:`SCHEDULERS` (``"ddim"``, ``"euler"``,
            ``"dpm-solver"``, ``"flow-euler"``); any diffusers scheduler class name; or a
            scheduler instance (copied, so the caller's object is never advanced).

    The model's config carries what the scheduler must agree on (betas, prediction type,
    timestep spacing, shift), so ``Class.from_config(backbone.scheduler_config)`` is the
    documented way to swap schedulers. A DDPM-family scheduler on a flow model, or a flow
    scheduler on a DDPM-family model, is refused: it would integrate the wrong process.
    """
    flow_model = is_flow_backbone(backbone)
    if isinstance(scheduler, str):
        if scheduler == "auto":
            shipped = backbone.scheduler_config.get("_class_name")
            scheduler = "ddim" if shipped == "DDPMScheduler" else "default"
        if scheduler == "default":
            class_name = backbone.scheduler_config.get("_class_name")
            if not class_name:
                raise ValueError(
                    "the backbone's scheduler_config has no _class_name, so there is no default "
                    f"scheduler; pass one of {', '.join(repr(k) for k in SCHEDULERS)}"
                )
        else:
            class_name = SCHEDULERS.get(scheduler, scheduler)
        instance = _scheduler_class(class_name).from_config(dict(backbone.scheduler_config))
    elif hasattr(scheduler, "set_timesteps") and hasattr(scheduler, "step"):
        instance = copy.deepcopy(scheduler)
    else:
        raise TypeError(
            f"scheduler must be a name or a diffusers scheduler, got {type(scheduler).__name__}"
        )
    if is_flow_scheduler(instance) != flow_model:
        config_class = backbone.scheduler_config.get("_class_name", "unknown")
        if flow_model:
            problem = (
                f"{type(instance).__name__} is a DDPM-family scheduler, but {backbone.kind!r} is "
                f"a rectified-flow model (scheduler config: {config_class})"
            )
            fix = "'flow-euler' or 'default'"
        else:
            problem = (
                f"{type(instance).__name__} integrates a flow ODE, but {backbone.kind!r} is a "
                f"DDPM-family (ε/v-prediction) model (scheduler config: {config_class})"
            )
            fix = "'ddim', 'euler', 'dpm-solver' or 'default'"
        raise ValueError(f"{problem}; it would integrate the wrong process. Use {fix}")
    return instance


def _set_timesteps(
    scheduler: Any,
    num_inference_steps: int,
    device: torch.device,
    *,
    flux: bool,
    latent_size: tuple[int, int],
) -> Tensor:
    """``set_timesteps`` the way the stock pipeline calls it; returns ``scheduler.timesteps``.

    DDPM family (``StableDiffusionPipeline``): ``set_timesteps(N, device)``. FLUX
    (``FluxPipeline``): ``sigmas = linspace(1, 1/N, N)`` and ``mu`` for the resolution-dependent
    shift, linear in the packed sequence length (latent H/2 · W/2) between the config's
    ``base_image_seq_len``/``base_shift`` and ``max_image_seq_len``/``max_shift``.
    """
    accepted = set(inspect.signature(scheduler.set_timesteps).parameters)
    kwargs: dict[str, Any] = {}
    if flux:
        config = scheduler.config
        seq_len = (latent_size[0] // 2) * (latent_size[1] // 2)
        mu = resolution_shift_mu(
            seq_len,
            base_seq_len=config.get("base_image_seq_len", 256),
            max_seq_len=config.get("max_image_seq_len", 4096),
            base_shift=config.get("base_shift", 0.5),
            max_shift=config.get("max_shift", 1.15),
        )
        if "sigmas" in accepted and not config.get("use_flow_sigmas", False):
            kwargs["sigmas"] = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
        if "mu" in accepted:
            kwargs["mu"] = mu
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps


def _step_kwargs(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    """``prepare_extra_step_kwargs``: η = 0 for DDIM, and the per-image generators for
    stochastic schedulers, so their step noise is per image too."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


# ---------------------------------------------------------------------------------- defaults
def _is_flux(backbone: Backbone) -> bool:
    return backbone.kind in _FLUX_KINDS or backbone.pipeline_class == "FluxPipeline"


def _has_guidance_embeds(backbone: Backbone) -> bool:
    config = getattr(getattr(backbone.denoiser, "model", None), "config", None)
    return bool(getattr(config, "guidance_embeds", False))


def default_guidance(backbone: Backbone) -> GuidanceStrategy:
    """The stock pipeline's default guidance for this backbone.

    - FLUX-family models with guidance embeddings (FLUX.1-dev): :class:`DistilledGuidance`
      with ``FluxPipeline``'s 3.5.
    - Real FLUX models without them (FLUX.1-schnell, timestep-distilled): :class:`NoGuidance`,
      as ``FluxPipeline`` samples them (``true_cfg_scale`` 1).
    - Everything else — SD 1.5, SDXL, the toy and toy-flux models (trained with prompt dropout,
      not distilled): :class:`ClassifierFreeGuidance` with diffusers' ``guidance_scale`` 7.5,
      i.e. s = 6.5.
    """
    if _is_flux(backbone) and _has_guidance_embeds(backbone):
        return DistilledGuidance(DEFAULT_FLUX_GUIDANCE)
    if backbone.kind == "flux":
        return NoGuidance()
    return ClassifierFreeGuidance.from_diffusers_scale(DEFAULT_DIFFUSERS_GUIDANCE_SCALE)


class _EncoderAtResolution:
    """An SDXL-style encoder whose size ids follow the sampling resolution.

    ``StableDiffusionXLPipeline`` conditions on ``original_size = target_size = (height,
    width)`` and crop (0, 0) unless told otherwise; this view passes those sizes to the wrapped
    encoder's ``encode``/``null`` and forwards every other attribute.
    """

    def __init__(self, encoder: Any, size: tuple[int, int]) -> None:
        self._encoder = encoder
        self._size = size

    def encode(self, prompts: Sequence[str]) -> Any:
        return self._encoder.encode(prompts, original_sizes=self._size, target_sizes=self._size)

    def null(self, batch_size: int, mode: str = "empty") -> Any:
        return self._encoder.null(
            batch_size, mode, original_sizes=self._size, target_sizes=self._size
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)


def _at_resolution(backbone: Backbone, height: int, width: int) -> Backbone:
    """The backbone as guidance strategies see it while sampling at ``height`` × ``width``:
    unchanged, except that encoders with size micro-conditioning (SDXL's ``add_time_ids``)
    encode the sampling resolution, as the stock pipeline does."""
    encoder = backbone.encoder
    wanted = {"original_sizes", "target_sizes"}
    takes_sizes = all(
        wanted <= set(inspect.signature(getattr(encoder, name)).parameters)
        for name in ("encode", "null")
        if callable(getattr(encoder, name, None))
    )
    if not (hasattr(encoder, "encode") and hasattr(encoder, "null") and takes_sizes):
        return backbone
    return dataclasses.replace(backbone, encoder=_EncoderAtResolution(encoder, (height, width)))


def _dtype_device(module: Any) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of a denoiser: its ``dtype`` attribute or first floating parameter."""
    params = list(module.parameters()) if isinstance(module, nn.Module) else []
    floating = [p for p in params if p.is_floating_point()]
    dtype = getattr(module, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = floating[0].dtype if floating else torch.float32
    if floating:
        device = floating[0].device
    else:  # a view without parameters of its own (a PolicySet policy) says where it runs
        device = getattr(module, "device", None)
        device = device if isinstance(device, torch.device) else torch.device("cpu")
    return dtype, device


def _as_list(values: str | Sequence[str] | None, count: int, what: str) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return [values] * count
    values = list(values)
    if len(values) != count:
        raise ValueError(f"got {len(values)} {what} for {count} prompts; pass one per prompt")
    return values


def _seed_list(seeds: int | Sequence[int] | None, count: int) -> list[int]:
    if seeds is None:
        return list(range(count))
    if isinstance(seeds, int):
        return list(range(seeds, seeds + count))
    seeds = [int(s) for s in seeds]
    if len(seeds) != count:
        raise ValueError(f"got {len(seeds)} seeds for {count} prompts; pass one seed per image")
    return seeds


# ---------------------------------------------------------------------------------- the loop
def sample(
    backbone: Backbone,
    prompts: str | Sequence[str],
    *,
    guidance: GuidanceStrategy | None = None,
    scheduler: str | Any = "default",
    num_inference_steps: int = 30,
    height: int | None = None,
    width: int | None = None,
    seeds: int | Sequence[int] | None = None,
    batch_size: int = 4,
    denoisers: Mapping[str, Denoiser] | None = None,
    negative_prompts: str | Sequence[str] | None = None,
    progress: bool = True,
    output_type: str = "pt",
) -> SampleResult:
    """Generate one image per prompt.

    Args:
        backbone: the model (its encoder, codec and scheduler config are used; its denoiser is
            the default ``"policy"``).
        prompts: N prompts (a single string means N = 1).
        guidance: a :class:`~pref_core.backbones.guidance.GuidanceStrategy`; default
            :func:`default_guidance` (CFG with diffusers' 7.5 for SD-family and toy models,
            distilled guidance 3.5 for FLUX.1-dev).
        scheduler: see :func:`make_scheduler` (``"default"``, ``"ddim"``, ``"euler"``,
            ``"dpm-solver"``, ``"flow-euler"``, a class name or an instance).
        num_inference_steps: sampling steps N.
        height, width: image size in pixels; default ``backbone.sample_size``. Must be
            multiples of the codec's downsample factor (twice that for FLUX, which packs 2×2
            latent patches).
        seeds: one seed per image (or one int s for seeds s, s+1, ...); default 0 … N−1. Each
            image's initial noise is drawn from its own CPU ``torch.Generator`` (then moved),
            so an image does not depend on the batch it lands in, the device, or
            ``batch_size`` — as with diffusers' ``generator=[...]`` list of CPU generators.
        batch_size: images per forward batch (CFG doubles what the denoiser sees).
        denoisers: the denoisers the strategy calls, by name; default
            ``{"policy": backbone.denoiser}``. CHATS-style strategies take two.
        negative_prompts: one per prompt (or one string for all); replace ∅ in CFG.

    Encoders with size micro-conditioning (SDXL) encode ``original_size = target_size =
    (height, width)`` and crop (0, 0), the stock pipeline's defaults.
        progress: show a tqdm bar.
        output_type: ``"pt"`` ((N, 3, H, W) float32 in [0, 1], CPU), ``"pil"`` or
            ``"latent"`` (the final latents, not decoded).

    Runs under ``torch.no_grad()`` with latents in the (first required) denoiser's dtype;
    denoiser modules are put in eval mode for the call and restored afterwards.
    """
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompt_list:
        raise ValueError("sample needs at least one prompt")
    count = len(prompt_list)
    if output_type not in _OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {_OUTPUT_TYPES}, got {output_type!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    seed_list = _seed_list(seeds, count)
    negatives = _as_list(negative_prompts, count, "negative prompts")

    strategy = default_guidance(backbone) if guidance is None else guidance
    if not (callable(strategy) and hasattr(strategy, "prepare")):
        raise TypeError(
            f"guidance must be a GuidanceStrategy (prepare(...) and __call__(...)), got "
            f"{type(strategy).__name__}"
        )
    denoiser_map = dict(denoisers) if denoisers is not None else {"policy": backbone.denoiser}
    if not denoiser_map:
        raise ValueError("denoisers is empty; pass at least one denoiser by name")
    required = tuple(getattr(strategy, "requires", ()))
    missing = [name for name in required if name not in denoiser_map]
    if missing:
        raise KeyError(
            f"{type(strategy).__name__} calls denoisers {list(required)}, but denoisers has "
            f"{sorted(denoiser_map)} (missing {missing}); pass denoisers={{...}} with those "
            "names or a strategy that uses the ones given"
        )
    primary = denoiser_map[required[0]] if required else next(iter(denoiser_map.values()))
    dtype, device = _dtype_device(primary)

    flux = _is_flux(backbone)
    codec = backbone.codec
    factor = int(codec.downsample_factor) * (2 if flux else 1)
    height = int(height if height is not None else backbone.sample_size[0])
    width = int(width if width is not None else backbone.sample_size[1])
    if height % factor or width % factor:
        raise ValueError(
            f"height and width must be multiples of {factor} for {backbone.kind!r} "
            f"(codec downsample {codec.downsample_factor}"
            f"{', ×2 for FLUX packing' if flux else ''}), got {height}×{width}"
        )
    latent_shape = (
        int(codec.latent_channels),
        height // int(codec.downsample_factor),
        width // int(codec.downsample_factor),
    )  # (C, H/f, W/f)

    sched = make_scheduler(backbone, scheduler)
    view = _at_resolution(backbone, height, width)
    chunks = [range(i, min(i + batch_size, count)) for i in range(0, count, batch_size)]
    modules = [d for d in {id(d): d for d in denoiser_map.values()}.values()]
    was_training = [(m, m.training) for m in modules if isinstance(m, nn.Module)]
    outputs: list[Any] = []
    bar = tqdm(
        total=len(chunks) * num_inference_steps, disable=not progress, desc="sampling", leave=False
    )
    try:
        for module, _ in was_training:
            module.eval()
        with torch.no_grad():
            for chunk in chunks:
                chunk_prompts = [prompt_list[i] for i in chunk]
                chunk_negatives = None if negatives is None else [negatives[i] for i in chunk]
                state = strategy.prepare(view, chunk_prompts, chunk_negatives)

                timesteps = _set_timesteps(
                    sched, num_inference_steps, device, flux=flux, latent_size=latent_shape[1:]
                )
                if hasattr(sched, "set_begin_index"):
                    sched.set_begin_index(0)
                # One CPU generator per image, then moved (diffusers' randn_tensor with a list).
                generators = [torch.Generator().manual_seed(seed_list[i]) for i in chunk]
                noise = torch.cat(
                    [torch.randn((1, *latent_shape), generator=g, dtype=dtype) for g in generators]
                ).to(device)  # (B, C, H/f, W/f)
                latents = noise * getattr(sched, "init_noise_sigma", 1.0)
                step_kwargs = _step_kwargs(sched, generators)

                for t in timesteps:
                    model_input = latents
                    if hasattr(sched, "scale_model_input"):
                        model_input = sched.scale_model_input(latents, t)
                    t_batch = t.reshape(1).expand(latents.shape[0])  # (B,)
                    prediction = strategy(denoiser_map, model_input, t_batch, state)
                    latents = sched.step(prediction, t, latents, **step_kwargs, return_dict=False)[
                        0
                    ]
                    bar.update()

                if output_type == "latent":
                    outputs.append(latents.float().cpu())
                    continue
                decoded = codec.decode(latents)  # (B, 3, H, W) in [-1, 1]
                outputs.append((decoded.float() / 2 + 0.5).clamp(0, 1).cpu())
    finally:
        bar.close()
        for module, training in was_training:
            module.train(training)

    images: Tensor | list[Image.Image] = torch.cat(outputs)
    if output_type == "pil":
        images = [Image.fromarray(_to_uint8_hwc(image)) for image in images]
    return SampleResult(images=images, seeds=seed_list, prompts=prompt_list)
