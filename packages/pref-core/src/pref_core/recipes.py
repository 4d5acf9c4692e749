"""Recipes: what a pref package registers so that ``pref-train --recipe NAME`` can run it.

A :class:`Recipe` is data — a name, a one-line description, the task it trains, the objective
to build, the policies it needs and the configuration defaults that differ from the trainer's —
plus, optionally, a custom training step. The trainer (``pref-apps``) owns everything else: the
model loading, data, optimiser, accelerate, checkpoints, logging and evaluation. A method package
therefore depends on pref-core only and registers recipes in its ``pyproject.toml``::

    [project.entry-points."pref.recipes"]
    dspo-sd15 = "pref_dspo.recipes:DSPO_SD15"

Two training steps are built in and cover the common cases:

- :func:`preference_step` (task ``"preference"``): noise the pair (shared t and ε by default),
  run policy ``"policy"`` and the frozen reference on both halves, apply the objective;
- :func:`denoising_step` (task ``"denoising"``): the plain diffusion/flow regression on single
  images — pretraining and the supervised fine-tuning (SFT) baseline.

A method that needs per-sample data beyond the pair (Diff-contrast's CLIP embeddings) passes
``prepare_data``: it wraps the training dataset once before training (its items may then carry
an ``"extras"`` dict of tensors, which the trainer stacks into ``PreferenceBatch.extras``).

A method that trains something other than the diffusion model's denoiser (IMG trains an
aligner over frozen models' features, an MLLM and an IP-Adapter) uses task ``"module"`` and
passes ``program``: a factory of a :class:`TrainingProgram`, which loads its own models and data
and computes the loss of a micro-batch of raw items; the trainer still owns the data order, the
optimiser, accumulation, accelerate, checkpoints and resume, logging and the report.

A method whose step differs (CHATS trains two policies on different halves of the pair) passes
its own ``step`` with the signature of :class:`TrainingStep`. A method whose result is more than
one denoiser (CHATS samples with both of its policies) also passes ``sampling`` — how the
trainer draws its sample grids from the policies — and ``finalize`` — what it adds to the
exported folder (the second network and a ``pref_model.json`` manifest, see
:mod:`pref_core.backbones.guided`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from pref_core.batch import PreferenceBatch
from pref_core.conditioning import Conditioning
from pref_core.losses import per_sample_mse
from pref_core.ops import noise_and_target
from pref_core.pairs import draw_noise_like, noise_pair, predict_pair
from pref_core.protocols import Denoiser, NoiseProcess, ObjectiveOutput, PreferenceObjective

__all__ = [
    "DIFFUSION_DPO_DEFAULTS",
    "LORA_DEFAULTS",
    "MODEL_DEFAULTS",
    "TASKS",
    "TOY_FINETUNE_DEFAULTS",
    "DataContext",
    "DenoisingBatch",
    "ProgramContext",
    "Recipe",
    "StepContext",
    "TrainingProgram",
    "TrainingStep",
    "denoising_step",
    "preference_step",
]

TASKS = ("preference", "denoising", "module")

# Per-model trainer settings every method's real-model recipes share (the base, the resolution,
# the optimiser the papers use for that model, the frozen parts' dtype, the flow timestep
# density); a recipe adds its method's settings on top: ``{**MODEL_DEFAULTS["sdxl"], ...}``.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd15": {
        "model.base": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "data.resolution": 512,
        "optim.optimizer": "adamw",
    },
    "sdxl": {
        "model.base": "stabilityai/stable-diffusion-xl-base-1.0",
        "data.resolution": 1024,
        "optim.optimizer": "adafactor",
        "model.dtype": "bfloat16",
    },
    "flux": {
        "model.base": "black-forest-labs/FLUX.1-dev",
        "data.resolution": 1024,
        "optim.optimizer": "adamw",
        "model.dtype": "bfloat16",
        "model.flow_density": "logit_normal",
    },
}

# Fine-tuning on the toy world (the toy recipes of every method): full fine-tuning of the
# shipped diffusion toy base on 8192 toy pairs (10% flipped labels), 150 steps of 16, then an
# evaluation against the base on 200 held-out prompts (DDIM, 20 steps, diffusers' w = 3).
TOY_FINETUNE_DEFAULTS: dict[str, Any] = {
    "model.base": "toy-pretrained:toy",
    "model.mode": "full",
    "data.size": 8192,
    "data.flip_rate": 0.1,
    "optim.schedule": "constant",
    "optim.warmup_steps": 10,
    "train.steps": 150,
    "train.batch_size": 16,
    "log.every": 10,
    "eval.prompts": "toy:200",
    "eval.steps": 20,
    "eval.scheduler": "auto",
    "eval.guidance_scale": 3.0,
}

# Diffusion-DPO's training setup on Pick-a-Pic v2 (Wallace et al. 2024 and its public code):
# the Diffusion-DPO recipes use it, and so do the methods built on that codebase (DSPO,
# Diff-contrast), which change the objective and its β. Learning rate 1e-8 scaled by the total
# batch, 20% empty prompts, random crop and flip, bf16 with gradient checkpointing; the paper's
# effective batch is 2048 (here 1 per GPU × 128 accumulation × the number of GPUs).
DIFFUSION_DPO_DEFAULTS: dict[str, Any] = {
    "data.source": "pickapic:yuvalkirstain/pickapic_v2",
    "data.prompt_dropout": 0.2,
    "data.crop": "random",
    "data.flip_prob": 0.5,
    "optim.lr": 1e-8,
    "optim.scale_lr": True,
    "optim.warmup_steps": 0,
    "optim.max_grad_norm": 1.0,
    "train.steps": 2000,
    "train.batch_size": 1,
    "train.grad_accum": 128,
    "model.mixed_precision": "bf16",
    "model.gradient_checkpointing": True,
    "log.every": 10,
    "log.sample_every": 250,
    "log.checkpoint_every": 250,
}

# LoRA instead of full fine-tuning: LoRA updates need a far larger step (the diffusers
# Diffusion-DPO LoRA example uses 1e-5 unscaled for SD 1.5), and less accumulation.
LORA_DEFAULTS: dict[str, Any] = {
    "model.mode": "lora",
    "model.lora_rank": 64,
    "optim.lr": 1e-5,
    "optim.scale_lr": False,
    "train.grad_accum": 16,
}


@dataclass(frozen=True)
class DenoisingBatch:
    """B single samples (latents) with their prompts' conditioning, for the denoising task."""

    cond: Conditioning
    x0: Tensor
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x0.shape[0]


@dataclass
class DataContext:
    """What a recipe's ``prepare_data`` hook may use.

    Attributes:
        pairs: the decodable pairs, index-aligned with the dataset being prepared: item i is a
            mapping with ``"prompt"``, ``"winner"`` and ``"loser"`` images (3, H, W) in [-1, 1]
            (or a skipped marker for an undecodable pair). When the trainer trains from a latent
            cache, the dataset holds latents and these are the images they came from.
        cache_dir: a folder for what the hook derives from the data (embeddings, ...): next to
            the latent cache when there is one, else in pref's cache, keyed by ``key``.
        key: what the dataset's content depends on (source, split, size, seeds, resolution).
        device: where models the hook runs should go.
        progress: show progress bars.
        log: the trainer's logger (main process only).
    """

    pairs: Any
    cache_dir: Any
    key: Mapping[str, Any]
    device: Any = "cpu"
    progress: bool = True
    log: Callable[[str], None] = print


@dataclass
class StepContext:
    """What a training step may use.

    Attributes:
        policies: the trainable policies by name, each a :class:`~pref_core.protocols.Denoiser`.
        reference: the frozen reference denoiser (the base model).
        process: the noise process of the model being trained.
        objective: the recipe's objective (``None`` for the denoising task).
        generators: one ``torch.Generator`` per sample of the batch; every random draw of the
            step for sample i comes from generator i, which makes a step independent of how a
            global batch is split over processes.
        timestep_kwargs: extra arguments for ``process.sample_timesteps`` (FLUX's shift).
        null_condition: ``null_condition(batch_size, mode)`` of the backbone ("empty"/"zeros"),
            for steps that drop prompts.
    """

    policies: Mapping[str, Denoiser]
    reference: Denoiser
    process: NoiseProcess
    objective: PreferenceObjective | None
    generators: Sequence[torch.Generator]
    timestep_kwargs: Mapping[str, Any] = field(default_factory=dict)
    null_condition: Callable[..., Conditioning] | None = None


class TrainingStep(Protocol):
    """Compute the loss of one micro-batch (the trainer does backward and the update)."""

    def __call__(
        self, ctx: StepContext, batch: PreferenceBatch | DenoisingBatch
    ) -> ObjectiveOutput: ...


def preference_step(ctx: StepContext, batch: PreferenceBatch) -> ObjectiveOutput:
    """One step of a pair objective with a single policy (Diffusion-DPO, DSPO, Diff-contrast).

    Pair i's timestep and noise come from ``ctx.generators[i]``; winner and loser share both.
    """
    if ctx.objective is None:
        raise ValueError("the preference task needs an objective; the recipe defines none")
    pair = noise_pair(
        ctx.process,
        batch.winner,
        batch.loser,
        generator=list(ctx.generators),
        **ctx.timestep_kwargs,
    )
    predictions = predict_pair(ctx.policies["policy"], ctx.reference, pair, batch.cond)
    return ctx.objective(predictions, pair, batch)


def denoising_step(ctx: StepContext, batch: DenoisingBatch) -> ObjectiveOutput:
    """The model's own regression (ε, v or flow velocity) on single samples: pretraining/SFT.

    Loss = mean over the batch of the per-sample MSE (mean over C, H, W, in float32).
    """
    generators = list(ctx.generators)
    t = torch.cat(
        [
            ctx.process.sample_timesteps(
                1, generator=g, device=batch.x0.device, **ctx.timestep_kwargs
            )
            for g in generators
        ]
    )
    noise = draw_noise_like(batch.x0, generators)
    x_t, target = noise_and_target(batch.x0, noise, *ctx.process.coefficients(t))
    prediction = ctx.policies["policy"](x_t, ctx.process.model_timesteps(t), batch.cond)
    errors = per_sample_mse(prediction, target)
    return ObjectiveOutput(
        loss=errors.mean(),
        metrics={"mse": errors.detach().mean()},
        per_sample={"mse": errors.detach()},
    )


@dataclass
class ProgramContext:
    """What a :class:`TrainingProgram` is set up with.

    Attributes:
        config: the run's configuration (``pref_apps.config.RunConfig``: sections ``model``,
            ``data``, ``optim``, ``train``, ``log``, ``eval``); read, never modified.
        run_dir: the run directory.
        device: where the program's models go.
        cache_dir: pref's cache root; a program keeps what it derives from data under it.
        main: whether this is the main process (which writes caches first; the others wait).
        progress: show progress bars.
        log: the trainer's logger (prints on the main process only).
        resolve_model: turns a model spec as users write it in ``model.base`` (a hub id, a
            folder, a finished run directory, a toy kind, ``toy-pretrained:KIND``) into a source
            the loaders read; identity when the trainer gives none.
        barrier: waits until every process reaches it (what the main process writes before
            it, the others can read after it); a no-op on one process.
    """

    config: Any
    run_dir: Path
    device: Any = "cpu"
    cache_dir: Path | None = None
    main: bool = True
    progress: bool = True
    log: Callable[[str], None] = print
    resolve_model: Callable[[str], str] = str
    barrier: Callable[[], None] = lambda: None


class TrainingProgram(Protocol):
    """What a ``task="module"`` recipe trains: modules other than the diffusion denoiser.

    The trainer calls, in order: :meth:`setup` once; then per optimiser step, for each
    micro-batch, :meth:`step` on the items the data order picked (undecodable items already
    dropped) and, after the update, :meth:`after_update` with the step's metrics averaged over
    micro-batches and processes. Checkpoints hold :meth:`modules`' weights, the optimiser, the
    RNGs and :meth:`state_dict`; :meth:`export` writes the result into ``RUN/final``.
    """

    def setup(self, ctx: ProgramContext) -> None:
        """Load the frozen models and the data; build the trainable modules."""
        ...

    def dataset(self) -> Any:
        """The training items (map-style: ``len`` and ``[i]``; item i is a mapping, or a
        marker without ``__getitem__`` for an item that could not be decoded)."""
        ...

    def modules(self) -> Mapping[str, nn.Module]:
        """The trainable modules by name (their ``requires_grad`` parameters are optimised)."""
        ...

    def step(self, items: Sequence[Mapping[str, Any]], generators: Sequence[torch.Generator]):
        """The loss of one micro-batch as an :class:`~pref_core.protocols.ObjectiveOutput`;
        ``generators[i]`` is item i's generator (as in :class:`StepContext`)."""
        ...

    def after_update(self, metrics: Mapping[str, float]) -> Mapping[str, float]:
        """Called after each optimiser step; returns metrics to log with the step."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """State beyond the trainable weights that resume needs (a reference model, counters)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def write_samples(self, path: Path, step: int) -> Path | None:
        """Write a sample grid (PNG) to ``path`` and return it, or ``None`` when the program
        has nothing to draw."""
        ...

    def export(self, out_dir: Path) -> None:
        """Write the trained result into ``out_dir`` (becomes ``RUN/final``)."""
        ...

    def describe(self) -> str:
        """Lines for the start-of-run summary (models and data)."""
        ...


@dataclass(frozen=True)
class Recipe:
    """A named training configuration that a pref package registers.

    Attributes:
        name: what users type after ``--recipe`` (``"dpo-sdxl"``); namespaced by method.
        description: one line, shown by ``pref-train ls``.
        task: ``"preference"`` (pairs), ``"denoising"`` (single images) or ``"module"`` (the
            recipe's ``program`` trains its own modules).
        objective: factory of the objective, called with the config's ``objective`` section as
            keyword arguments (its signature defines which ``objective.*`` keys are valid);
            ``None`` for the denoising task.
        program: for ``task="module"``: factory of the :class:`TrainingProgram`, called with the
            config's ``objective`` section as keyword arguments (its signature defines the valid
            ``objective.*`` keys, as for ``objective``).
        defaults: trainer settings that differ from the trainer's defaults, as dotted keys
            (``{"optim.lr": 1e-8, "model.base": "stabilityai/stable-diffusion-xl-base-1.0"}``)
            plus ``objective.*`` arguments.
        policies: names of the trainable policies the step uses.
        step: the training step; default :func:`preference_step` or :func:`denoising_step` by
            task.
        paper: where the defaults come from (shown by ``pref-train ls -v`` and the docs).
        hardware: what a full run needs (shown likewise).
        sampling: ``sampling(policies, objective) -> GuidedModel``: the model the trainer's
            sample grids come from while training (``policies`` is the trainer's
            :class:`~pref_core.backbones.training.PolicySet`); default: policy ``"policy"``
            (or the first) with the backbone's default guidance.
        prepare_data: ``prepare_data(objective, dataset, ctx) -> dataset``: wraps the training
            dataset before training (``ctx`` is a :class:`DataContext`); items of the returned
            dataset may carry ``"extras"``, a dict of tensors stacked into
            ``PreferenceBatch.extras``. Run once per process, on the main process first.
        finalize: ``finalize(policies, objective, out_dir, *, lora_dir, base)``: called
            after the trainer exported the first policy as a pipeline into ``out_dir``; adds
            what else the method's result needs (CHATS: the dispreferred denoiser and the
            manifest). For LoRA runs ``lora_dir`` is where the adapters go (the trainer writes
            none itself when a recipe finalizes) and ``base`` is the base model's source.
    """

    name: str
    description: str
    task: str = "preference"
    objective: Callable[..., PreferenceObjective] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    policies: tuple[str, ...] = ("policy",)
    step: TrainingStep | None = None
    paper: str = ""
    hardware: str = ""
    sampling: Callable[[Any, Any], Any] | None = None
    finalize: Callable[..., None] | None = None
    prepare_data: Callable[[Any, Any, DataContext], Any] | None = None
    program: Callable[..., TrainingProgram] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"recipe {self.name!r}: unknown task {self.task!r}; use one of {TASKS}"
            )
        if self.task == "preference" and self.objective is None and self.step is None:
            raise ValueError(f"recipe {self.name!r}: a preference recipe needs an objective")
        if (self.task == "module") != (self.program is not None):
            raise ValueError(
                f"recipe {self.name!r}: a program goes with task='module' and task='module' "
                f"needs a program (task {self.task!r}, program {self.program!r})"
            )
        if self.program is not None and self.objective is not None:
            raise ValueError(
                f"recipe {self.name!r}: a module recipe's settings go to its program; "
                "it takes no objective"
            )
        if not self.policies:
            raise ValueError(f"recipe {self.name!r}: needs at least one policy name")

    @property
    def training_step(self) -> TrainingStep:
        if self.step is not None:
            return self.step
        return preference_step if self.task == "preference" else denoising_step  # type: ignore[return-value]

    @property
    def settings_factory(self) -> Callable[..., Any] | None:
        """What the ``objective.*`` settings are the arguments of: the program or objective."""
        return self.program if self.program is not None else self.objective

    def build_program(self, arguments: Mapping[str, Any]) -> TrainingProgram:
        if self.program is None:
            raise ValueError(f"recipe {self.name!r} is not a module recipe; it has no program")
        return self.program(**arguments)

    def build_objective(self, arguments: Mapping[str, Any]) -> PreferenceObjective | None:
        if self.program is not None:
            return None
        if self.objective is None:
            if arguments:
                raise ValueError(
                    f"recipe {self.name!r} has no objective, so it takes no objective.* settings "
                    f"(got {', '.join(sorted(arguments))})"
                )
            return None
        return self.objective(**arguments)
