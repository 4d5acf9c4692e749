"""The training loop behind ``pref-train``: any :class:`~pref_core.recipes.Recipe`, through accelerate.

One process by default; ``accelerate launch`` runs the same code on several processes (and
machines), with the backend accelerate's config chooses. The loop itself owns no distributed
code: the trainable networks are wrapped by ``accelerator.prepare`` and gradients are averaged
by it.

Reproducibility is by construction. Which samples a micro-batch holds is a pure function of
(seed, step, micro-batch) — a seeded permutation per epoch — and every random draw of the step
for sample i (timestep, noise, prompt dropout) comes from a generator seeded by (seed, step,
micro-batch, i's position in the global batch). So a resumed run computes exactly what the
uninterrupted run computes, and N processes sharing a global batch compute what one process
computes on it.

Run directory::

    RUN/config.yaml            resolved configuration
    RUN/metrics.jsonl          one line per optimiser step
    RUN/tb/                    TensorBoard logs
    RUN/samples/step_N.png     sample grids (fixed prompts and seeds)
    RUN/checkpoints/step_N/    resumable state (written atomically; the last K kept)
    RUN/final/                 the trained model as a pipeline folder
    RUN/lora/                  LoRA runs: the adapter in diffusers' format
    RUN/eval/, RUN/report.md   evaluation and report
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pref_apps.config import RunConfig, to_yaml
from pref_core.batch import PreferenceBatch
from pref_core.conditioning import Conditioning
from pref_core.recipes import DenoisingBatch, Recipe, StepContext

CHECKPOINT_PREFIX = "step_"
_PROGRESS_KEYS = ("loss", "implicit_accuracy", "reward_margin", "mse")
TOY_PRETRAINED = "toy-pretrained:"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the batch."""


class DataPreparationError(RuntimeError):
    """The recipe's ``prepare_data`` hook could not prepare the data (a missing embedder model,
    bad embedder settings, ...): the message says what to change."""


class ProgramSetupError(RuntimeError):
    """A module recipe's program could not load its models or data (a missing component, an
    unreadable source): pref-train prints the message and exits 2."""


class ResumeError(RuntimeError):
    """A run cannot be resumed as asked."""


# ------------------------------------------------------------------------------ helpers
def _seed_of(*parts: int) -> int:
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1
    )


def sample_generators(
    seed: int, step: int, positions: Sequence[int], stream: int = 0
) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, step, the sample's position in the step's
    samples, stream). Positions count across processes and micro-batches, so a step's draws do
    not depend on how its samples are split over processes or accumulation."""
    return [torch.Generator().manual_seed(_seed_of(seed, step, p, stream)) for p in positions]


def epoch_order(size: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(_seed_of(seed, epoch, 7)))


class DataOrder:
    """Global sample indices of each (step, micro-batch): seeded permutations, epoch after epoch."""

    def __init__(self, size: int, seed: int, global_batch: int, accum: int) -> None:
        if size < 1:
            raise ValueError("the training data is empty")
        self.size, self.seed, self.global_batch, self.accum = size, seed, global_batch, accum
        self._cache: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._cache:
            self._cache = {epoch: epoch_order(self.size, self.seed, epoch)}
        return self._cache[epoch]

    def epoch(self, step: int, micro: int, position: int) -> int:
        return ((step * self.accum + micro) * self.global_batch + position) // self.size

    def indices(self, step: int, micro: int) -> list[int]:
        start = (step * self.accum + micro) * self.global_batch
        out = []
        for position in range(start, start + self.global_batch):
            epoch, offset = divmod(position, self.size)
            out.append(int(self._perm(epoch)[offset]))
        return out


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(
    config: RunConfig, params: list[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    o = config.optim
    if o.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
        )
    from transformers.optimization import Adafactor

    return Adafactor(
        params,
        lr=lr,
        weight_decay=o.weight_decay,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ the step module
class StepModule(nn.Module):
    """The trainable networks and the recipe's step, as one module for ``accelerator.prepare``.

    Its forward computes one micro-batch's loss; wrapping it (DDP) makes every trainable
    parameter's gradient averaged across processes.
    """

    def __init__(
        self, policies: Any, recipe: Recipe, objective: Any, *, train_text_encoder: bool = False
    ) -> None:
        super().__init__()
        unique = {
            id(policies.denoiser_module(n)): policies.denoiser_module(n) for n in policies.names
        }
        if train_text_encoder:
            unique[id(policies.backbone.encoder)] = policies.backbone.encoder
        self.trainable = nn.ModuleList(unique.values())
        self.train_text_encoder = train_text_encoder
        self._policies = policies
        self._recipe = recipe
        self._objective = objective

    def forward(
        self, batch: Any, generators: list[torch.Generator], timestep_kwargs: dict[str, Any]
    ):
        p = self._policies
        if self.train_text_encoder:  # encode with gradients, inside the wrapped forward
            batch = dataclasses.replace(
                batch, cond=p.backbone.encode(batch.extras["encoded_prompts"])
            )
        ctx = StepContext(
            policies={n: p[n] for n in p.names},
            reference=p.reference,
            process=p.backbone.process,
            objective=self._objective,
            generators=generators,
            timestep_kwargs=timestep_kwargs,
            null_condition=p.backbone.null_condition,
        )
        out = self._recipe.training_step(ctx, batch)
        return out.loss, dict(out.metrics)


# ------------------------------------------------------------------------------ data
@dataclasses.dataclass
class TrainData:
    dataset: Any
    kind: str  # "pairs", "images", "cached"
    describe: str
    pairs: Any = None  # the decodable pairs, index-aligned with ``dataset`` (pair kinds)
    key: Mapping[str, Any] | None = None  # what the pairs depend on (for derived caches)


def build_data(config: RunConfig, recipe: Recipe, backbone: Any, main: bool) -> TrainData:
    d = config.data
    resolution = d.resolution or backbone.sample_size[0]
    if d.source.startswith("toy-"):
        from pref_data import toy

        world = toy.ToyWorldConfig(resolution=resolution)
        if d.source == "toy-pretrain":
            ds = toy.PretrainingSet(d.size, seed=d.seed, defect_rate=d.defect_rate, config=world)
            return TrainData(
                ds, "images", f"toy pretraining set ({d.size}, {d.defect_rate:.0%} defective)"
            )
        if d.source in ("toy-pairs", "toy-winners", "toy-pair-images"):
            ds = toy.PreferencePairs(d.size, seed=d.seed, flip_rate=d.flip_rate, config=world)
            if d.source == "toy-winners":
                return TrainData(_Winners(ds), "images", f"winners of {d.size} toy pairs")
            if d.source == "toy-pair-images":
                return TrainData(
                    _PairImages(ds), "images", f"winners and losers of {d.size} toy pairs"
                )
            key = {
                "data": d.source,
                "size": d.size,
                "seed": d.seed,
                "flip_rate": d.flip_rate,
                "resolution": resolution,
            }
            describe = f"{d.size} toy pairs ({d.flip_rate:.0%} flipped labels)"
            return TrainData(ds, "pairs", describe, pairs=ds, key=key)
        raise ValueError(
            f"unknown toy data source {d.source!r}; use toy-pairs, toy-pretrain, toy-winners "
            "or toy-pair-images"
        )
    import pref_data

    source = open_data_source(d.source, d.split)
    transform = pref_data.PairTransform(resolution, crop=d.crop, flip_prob=d.flip_prob)
    ds = pref_data.PairDataset(source, transform, seed=d.seed)
    if recipe.task == "denoising":
        return TrainData(_Winners(ds), "images", f"winners of {source.name}")
    if d.cache:
        key = {
            "model": str(config.model.base),
            "revision": config.model.revision,
            "data": d.source,
            "split": d.split,
            "resolution": resolution,
            "crop": d.crop,
            "flip_prob": d.flip_prob,
            "seed": d.seed,
        }
        cache_dir = Path(d.cache)
        if not (cache_dir / "manifest.json").exists() and main:
            pref_data.build_cache(
                ds,
                codec=backbone.codec,
                encoder=backbone.encoder,
                out_dir=cache_dir,
                key=key,
                progress=config.log.progress,
            )
        return TrainData(
            pref_data.open_cache(cache_dir, expected_key=key),
            "cached",
            f"cache {cache_dir}",
            pairs=ds,
            key=key,
        )
    key = {
        "data": d.source,
        "split": d.split,
        "resolution": resolution,
        "crop": d.crop,
        "flip_prob": d.flip_prob,
        "seed": d.seed,
    }
    return TrainData(ds, "pairs", source.name, pairs=ds, key=key)


def open_data_source(spec: str, split: str) -> Any:
    """``pref_data.open_source`` with the split for the readers that have splits."""
    import pref_data

    has_split = spec.split(":", 1)[0] in ("pickapic", "oip", "hpdv2")
    return pref_data.open_source(spec, **({"split": split} if has_split else {}))


class _Winners(torch.utils.data.Dataset):
    """The preferred image of each pair, as single-image items (the SFT baseline's data)."""

    def __init__(self, pairs: Any) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Any:
        item = self.pairs[i]
        if not isinstance(item, Mapping):
            return item
        return {"prompt": item["prompt"], "image": item["winner"], "id": str(item.get("id", i))}


class _PairImages(torch.utils.data.Dataset):
    """Both images of every pair as single-image items, ranking dropped: item 2i is pair i's
    winner, 2i + 1 its loser (the "single model, full data" ablation of CHATS, Table 4)."""

    def __init__(self, pairs: Any) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    def __getitem__(self, i: int) -> Any:
        item = self.pairs[i // 2]
        side = "winner" if i % 2 == 0 else "loser"
        return {
            "prompt": item["prompt"],
            "image": item[side],
            "id": f"{item.get('id', i // 2)}-{side}",
        }


# ------------------------------------------------------------------------------ the trainer
class Trainer:
    def __init__(
        self, recipe: Recipe, config: RunConfig, *, run_dir: Path, accelerator: Any | None = None
    ) -> None:
        from accelerate import Accelerator

        self.recipe = recipe
        self.config = config
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.model.mixed_precision
            if config.model.mixed_precision != "no"
            else "no",
            cpu=not torch.cuda.is_available(),
        )
        self.main = self.accelerator.is_main_process
        self.skipped: list[str] = []
        self._writer = None

    # -------------------------------------------------------------- setup
    def _log(self, message: str) -> None:
        if self.main:
            print(message, flush=True)

    def setup(self) -> None:
        from pref_core.backbones import load_backbone
        from pref_core.backbones.training import LoraSettings, PolicySet

        c = self.config
        torch.manual_seed(c.train.seed)
        dtype = getattr(torch, c.model.dtype)
        self.base_source = resolve_base(c.model.base, progress=c.log.progress, log=self._log)
        load_dtype = dtype if c.model.mode == "lora" else torch.float32
        backbone = load_backbone(
            self.base_source,
            dtype=load_dtype,
            revision=c.model.revision,
            variant=c.model.variant,
            flow_density={"weighting_scheme": c.model.flow_density}
            if c.model.flow_density
            else None,
            seed=c.train.seed,
        )
        for part in (backbone.encoder, backbone.codec):
            if isinstance(part, nn.Module):
                part.to(dtype=dtype)
        backbone.to(self.accelerator.device)
        self.backbone = backbone
        mp = None if c.model.mixed_precision == "no" else c.model.mixed_precision
        self.policies = PolicySet(
            backbone,
            mode=c.model.mode,
            names=self.recipe.policies,
            lora=LoraSettings(
                rank=c.model.lora_rank, alpha=c.model.lora_alpha, dropout=c.model.lora_dropout
            ),
            mixed_precision=mp,
            gradient_checkpointing=c.model.gradient_checkpointing,
        )
        if c.model.mode == "full" and mp is None and dtype != torch.float32:
            backbone.denoiser.to(dtype=dtype)  # the frozen reference
        encoder_params: list[nn.Parameter] = []
        if c.model.train_text_encoder:
            from pref_core.backbones.base import set_text_encoders_trainable
            from pref_core.backbones.toy import TOY_KINDS

            if backbone.kind not in TOY_KINDS or self.recipe.task != "denoising":
                raise ValueError(
                    "model.train_text_encoder is for training toy bases from scratch (a denoising "
                    f"recipe on a toy model); got {backbone.kind!r} with a {self.recipe.task} recipe"
                )
            encoder_params = set_text_encoders_trainable(backbone.encoder)
        self.objective = self.recipe.build_objective(c.objective)
        self.data = build_data(c, self.recipe, backbone, self.main)
        if self.recipe.prepare_data is not None and self.data.pairs is not None:
            self.data = self._prepare_data(self.data)
        world = self.accelerator.num_processes
        self.global_batch = world * c.train.batch_size
        self.order = DataOrder(
            len(self.data.dataset), c.train.seed, self.global_batch, c.train.grad_accum
        )
        total_batch = self.global_batch * c.train.grad_accum
        self.lr = c.optim.lr * total_batch if c.optim.scale_lr else c.optim.lr
        params = self.policies.trainable_parameters() + encoder_params
        self.trainable_params = params
        self.optimizer = make_optimizer(c, params, self.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(c.optim.schedule, c.optim.warmup_steps, c.train.steps)
        )
        self.module = StepModule(
            self.policies,
            self.recipe,
            self.objective,
            train_text_encoder=c.model.train_text_encoder,
        )
        self.module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        self.step = 0
        self._log(
            f"recipe {self.recipe.name}: {self.recipe.description}\n"
            f"  model {self.base_source} ({backbone.kind}, {c.model.mode}; "
            f"{sum(p.numel() for p in params):,} trainable parameters)\n"
            f"  data {self.data.describe}; {world} process(es) × batch {c.train.batch_size} × "
            f"accumulation {c.train.grad_accum} = {total_batch} per step; lr {self.lr:g}\n"
            f"  run directory {self.run_dir}"
        )

    def _prepare_data(self, data: TrainData) -> TrainData:
        """The recipe's ``prepare_data`` hook: the main process first (it fills the cache),
        then the others (which read it)."""
        from pref_core.recipes import DataContext

        c = self.config
        key = dict(data.key or {})
        if c.data.cache:
            cache_dir = Path(c.data.cache) / "derived"
        else:
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            cache_dir = cache_root() / "derived" / digest
        ctx = DataContext(
            pairs=data.pairs,
            cache_dir=cache_dir,
            key=key,
            device=self.accelerator.device,
            progress=c.log.progress and self.main,
            log=self._log,
        )

        def prepare() -> Any:
            try:
                return self.recipe.prepare_data(self.objective, data.dataset, ctx)
            except (OSError, ValueError) as exc:
                raise DataPreparationError(
                    f"recipe {self.recipe.name}: preparing the training data failed: {exc}"
                ) from exc

        prepared = prepare() if self.main else None
        self.accelerator.wait_for_everyone()
        if not self.main:
            prepared = prepare()
        return dataclasses.replace(data, dataset=prepared)

    # -------------------------------------------------------------- batches
    def _batch(self, step: int, micro: int) -> tuple[Any, list[int], list[str], list[str]]:
        c = self.config
        indices = self.order.indices(step, micro)
        rank = self.accelerator.process_index
        lo, hi = rank * c.train.batch_size, (rank + 1) * c.train.batch_size
        positions = list(range(lo, hi))
        offset = micro * self.global_batch  # position within the step's samples
        items = []
        kept = []
        skipped = []
        for pos in positions:
            item = self._item(indices[pos], step, micro, pos)
            if not isinstance(item, Mapping):  # a skipped (undecodable) item
                skipped.append(str(getattr(item, "id", indices[pos])))
                continue
            items.append(item)
            kept.append(offset + pos)
        if not items:
            return None, [], [], skipped
        prompts = [it["prompt"] for it in items]
        ids = [str(it.get("id", "")) for it in items]
        device = self.accelerator.device
        drop = self._dropped(step, micro, kept)
        enc_prompts = ["" if d else p for p, d in zip(prompts, drop)]
        with torch.no_grad():
            if self.data.kind == "cached":
                cond = Conditioning.cat([it["cond"] for it in items]).to(device)
                winner = torch.stack([it["latent_w"] for it in items]).to(device)
                loser = torch.stack([it["latent_l"] for it in items]).to(device)
            else:
                cond = self.backbone.encode(enc_prompts, **self._size_conditions(items))
                codec_gen = torch.Generator().manual_seed(
                    _seed_of(c.train.seed, step, micro, rank, 3)
                )
                if self.data.kind == "images":
                    images = torch.stack([it["image"] for it in items]).to(device)
                    x0 = self._encode_images(images, codec_gen)
                    return (
                        DenoisingBatch(
                            cond,
                            x0,
                            {"prompts": prompts, "ids": ids, "encoded_prompts": enc_prompts},
                        ),
                        kept,
                        ids,
                        skipped,
                    )
                both = torch.cat(
                    [
                        torch.stack([it["winner"] for it in items]),
                        torch.stack([it["loser"] for it in items]),
                    ]
                ).to(device)
                latents = self._encode_images(both, codec_gen)
                winner, loser = latents.chunk(2)
            if self.data.kind == "cached" and any(drop):
                null = self.backbone.null_condition(len(items), "empty").to(device)
                cond = cond.where(torch.tensor(drop, device=device), null)
        extras: dict[str, Any] = {"prompts": prompts, "ids": ids, "encoded_prompts": enc_prompts}
        for name in items[0].get("extras", {}):  # the recipe's prepare_data added these
            extras[name] = torch.stack([it["extras"][name] for it in items]).to(device)
        return (
            PreferenceBatch(cond, winner, loser, extras),
            kept,
            ids,
            skipped,
        )

    def _size_conditions(self, items: list[Mapping[str, Any]]) -> dict[str, Any]:
        """SDXL's micro-conditioning from the crops actually taken (original size, crop)."""
        if self.backbone.kind != "sdxl" or not all("original_size" in it for it in items):
            return {}
        size = self.config.data.resolution or self.backbone.sample_size[0]
        return {
            "original_sizes": [tuple(it["original_size"]) for it in items],
            "crops": [tuple(it["crop_top_left"]) for it in items],
            "target_sizes": [(size, size)] * len(items),
        }

    def _item(self, index: int, step: int, micro: int, position: int) -> Any:
        dataset = self.data.dataset
        if hasattr(dataset, "set_epoch"):  # fresh random crops and flips every epoch
            dataset.set_epoch(self.order.epoch(step, micro, position))
        return dataset[index]

    def _encode_images(self, images: Tensor, generator: torch.Generator) -> Tensor:
        codec = self.backbone.codec
        dtype = (
            next((p.dtype for p in codec.parameters()), torch.float32)
            if isinstance(codec, nn.Module)
            else torch.float32
        )
        # Contiguous: VAE latents can come out channels-last, and diffusers' ResnetBlock2D makes
        # its input contiguous in train mode only, so the training policy and the eval-mode
        # reference would run other kernels and differ by float noise at step 1 (× β in the
        # DPO logit) although their weights are equal.
        return codec.encode(images.to(dtype), generator=generator).float().contiguous()

    def _dropped(self, step: int, micro: int, positions: list[int]) -> list[bool]:
        rate = self.config.data.prompt_dropout
        if rate <= 0:
            return [False] * len(positions)
        gens = sample_generators(self.config.train.seed, step, positions, stream=1)
        return [bool(torch.rand((), generator=g) < rate) for g in gens]

    # -------------------------------------------------------------- the loop
    def train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        c = self.config
        acc = self.accelerator
        if self.main:
            self._prepare_run_dir()
        acc.wait_for_everyone()
        if self.step == 0 and self.main:
            self.write_samples(0)
        metrics_path = self.run_dir / "metrics.jsonl"
        bar = tqdm(
            total=c.train.steps,
            initial=self.step,
            desc=f"train {self.recipe.name}",
            disable=not (self.main and c.log.progress),
            dynamic_ncols=True,
        )
        self.module.train()
        last: dict[str, float] = {}
        started = time.perf_counter()
        while self.step < c.train.steps:
            sums: dict[str, Tensor] = {}
            count = 0
            for micro in range(c.train.grad_accum):
                batch, kept, ids, skipped = self._batch(self.step, micro)
                self.skipped += skipped
                if batch is None:
                    continue
                gens = sample_generators(c.train.seed, self.step, kept)
                sync = micro == c.train.grad_accum - 1
                ctx = contextlib.nullcontext() if sync else acc.no_sync(self.module)
                with ctx:
                    loss, metrics = self._forward(batch, gens)
                    self._check_finite(loss, micro, ids, batch)
                    acc.backward(loss / c.train.grad_accum)
                sums["loss"] = sums.get("loss", 0) + loss.detach()
                for k, v in metrics.items():
                    if k != "loss":  # an objective that reports its loss: counted above
                        sums[k] = sums.get(k, 0) + v.detach().float()
                count += 1
            grad_norm = None
            if c.optim.max_grad_norm:
                grad_norm = acc.clip_grad_norm_(self.trainable_params, c.optim.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            row = {
                k: acc.reduce(v / max(count, 1), reduction="mean").item() for k, v in sums.items()
            }
            if grad_norm is not None:
                row["grad_norm"] = float(grad_norm)
            row.update(self._after_update(row))
            row = {"step": self.step, **row, "lr": self.scheduler.get_last_lr()[0]}
            last = row
            if self.main:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                self._tensorboard(row)
                if self.step % c.log.every == 0 or self.step == c.train.steps:
                    # The headline numbers; metrics.jsonl and TensorBoard have all of them.
                    shown = [k for k in _PROGRESS_KEYS if k in row] or ["loss"]
                    bar.set_postfix({k: f"{row[k]:.4g}" for k in shown}, refresh=False)
            bar.update(1)
            if (
                c.log.sample_every
                and self.step % c.log.sample_every == 0
                and self.step < c.train.steps
                and self.main
            ):
                self.write_samples(self.step)
            if c.log.checkpoint_every and self.step % c.log.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        elapsed = time.perf_counter() - started
        self.save_checkpoint()
        if self.main:
            self.write_samples(self.step)
            self.export()
            if self.skipped:
                print(
                    f"skipped {len(self.skipped)} undecodable image pair(s) during training; ids: "
                    + ", ".join(self.skipped[:20])
                    + (" ..." if len(self.skipped) > 20 else ""),
                    flush=True,
                )
                (self.run_dir / "skipped.json").write_text(json.dumps(self.skipped))
        acc.wait_for_everyone()
        if self._writer is not None:
            self._writer.close()
        return {"final": last, "seconds": elapsed}

    def _forward(self, batch: Any, generators: list[torch.Generator]) -> tuple[Tensor, Any]:
        """One micro-batch's loss and metrics through the (accelerate-wrapped) step module."""
        tk = self.backbone.timestep_kwargs(
            batch.winner if isinstance(batch, PreferenceBatch) else batch.x0
        )
        return self.module(batch, generators, tk)

    def _after_update(self, row: Mapping[str, float]) -> Mapping[str, float]:
        """Extra metrics after an optimiser step (none for denoiser training)."""
        return {}

    def _check_finite(self, loss: Tensor, micro: int, ids: list[str], batch: Any) -> None:
        bad = torch.tensor(
            [0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device
        )
        if self.accelerator.reduce(bad, reduction="sum").item() == 0:
            return
        extras = getattr(batch, "extras", None)
        prompts = (
            list(extras.get("prompts", []))
            if extras is not None
            else [str(it.get("prompt", "")) for it in batch if isinstance(it, Mapping)]
        )
        last = self.latest_checkpoint()
        message = (
            f"the loss is {loss.item()} at step {self.step + 1} (micro-batch {micro + 1} of "
            f"{self.config.train.grad_accum}); the run stops before updating the model.\n"
            f"  batch ids: {', '.join(ids) or '?'}\n"
            f"  prompts: {prompts[:8]}\n"
            f"  last good checkpoint: {last if last else 'none yet (no checkpoint was written)'} — "
            f"unchanged; continue from it with resume=latest after lowering optim.lr or the "
            f"objective's beta, or removing the offending data."
        )
        if self.main:
            _atomic_write(
                self.run_dir / "diverged.json",
                json.dumps(
                    {
                        "step": self.step + 1,
                        "micro_batch": micro + 1,
                        "ids": ids,
                        "prompts": prompts,
                        "loss": str(loss.item()),
                        "last_checkpoint": str(last) if last else None,
                    },
                    indent=2,
                ),
            )
        raise TrainingDiverged(message)

    def _tensorboard(self, row: dict[str, float]) -> None:
        if not self.config.log.tensorboard:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"))
        for k, v in row.items():
            if k != "step":
                self._writer.add_scalar(f"train/{k}", v, row["step"])

    # -------------------------------------------------------------- run directory
    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "samples").mkdir(exist_ok=True)
        _atomic_write(self.run_dir / "config.yaml", to_yaml(self.config))
        metrics = self.run_dir / "metrics.jsonl"
        if self.step == 0:
            metrics.write_text("")
        else:  # resumed: keep what the checkpoint covers, drop what came after it
            kept = (
                [
                    line
                    for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step
                ]
                if metrics.exists()
                else []
            )
            _atomic_write(metrics, "".join(line + "\n" for line in kept))

    def sample_prompts(self) -> list[str]:
        prompts = list(self.config.log.sample_prompts)
        if prompts:
            return prompts
        if self.backbone.kind in ("toy", "toy-flux"):
            from pref_data import toy

            return [p.text for p in toy.evaluation_prompts(8, seed=12345)]
        return [
            "a photo of a cat",
            "a red bicycle leaning on a wall",
            "a bowl of fruit",
            "a lighthouse at dusk",
        ]

    def write_samples(self, step: int) -> Path:
        from pref_core.backbones.sampling import sample

        c = self.config
        prompts = self.sample_prompts()
        if self.recipe.sampling is not None:  # a multi-network method samples its own way
            model = self.recipe.sampling(self.policies, self.objective)
            result = model.sample(
                prompts,
                num_inference_steps=c.log.sample_steps,
                seeds=list(range(len(prompts))),
                progress=False,
                batch_size=len(prompts),
                scheduler=c.eval.scheduler,
            )
            return self._save_samples(result, step)
        denoiser = (
            self.policies.denoiser_module("policy") if "policy" in self.policies.names else None
        )
        tuned = (
            dataclasses.replace(self.backbone, denoiser=denoiser)
            if (denoiser is not None and self.policies.mode == "full")
            else None
        )
        from pref_apps.evaluation import resolve_guidance

        # The same guidance as the evaluation (eval.guidance_scale is diffusers' w).
        kwargs = {
            "guidance": resolve_guidance(self.backbone, guidance_scale=c.eval.guidance_scale),
            "scheduler": c.eval.scheduler,
        }
        if tuned is not None:
            result = sample(
                tuned,
                prompts,
                num_inference_steps=c.log.sample_steps,
                seeds=list(range(len(prompts))),
                progress=False,
                batch_size=len(prompts),
                **kwargs,
            )
        else:
            result = sample(
                self.backbone,
                prompts,
                num_inference_steps=c.log.sample_steps,
                seeds=list(range(len(prompts))),
                progress=False,
                batch_size=len(prompts),
                denoisers={"policy": self.policies["policy"]},
                **kwargs,
            )
        return self._save_samples(result, step)

    def _save_samples(self, result: Any, step: int) -> Path:
        self.module.train()
        path = self.run_dir / "samples" / f"step_{step:06d}.png"
        result.save_grid(path)
        if self.config.log.tensorboard and self._writer is not None:
            self._writer.add_image("samples", np.asarray(result.grid()), step, dataformats="HWC")
        return path

    # -------------------------------------------------------------- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.run_dir)

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        acc.wait_for_everyone()
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:06d}"
        if self.main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint_dir / f".tmp-{final.name}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            self._save_weights(tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(
                {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                },
                tmp / "rng.pt",
            )
            (tmp / "state.json").write_text(
                json.dumps(
                    {
                        "step": self.step,
                        "recipe": self.recipe.name,
                        "processes": acc.num_processes,
                        "global_batch": self.global_batch,
                        "skipped": self.skipped,
                    },
                    indent=2,
                )
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.run_dir)[: -self.config.log.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _save_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        for name in self.policies.names:
            state = {
                k: v.detach().contiguous().cpu()
                for k, v in self.policies.trainable_state_dict(name).items()
            }
            save_file(state, str(folder / f"policy-{name}.safetensors"))
        if self.config.model.train_text_encoder:
            from safetensors.torch import save_model

            # save_model: T5 ties its input embedding to `shared`.
            save_model(self.backbone.encoder, str(folder / "text-encoders.safetensors"))

    def _load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        for name in self.policies.names:
            weights = load_file(
                str(folder / f"policy-{name}.safetensors"), device=str(self.accelerator.device)
            )
            self.policies.load_trainable_state_dict(name, weights)
        if self.config.model.train_text_encoder:
            from safetensors.torch import load_model

            load_model(
                self.backbone.encoder,
                str(folder / "text-encoders.safetensors"),
                device=str(self.accelerator.device),
            )

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / "state.json").read_text())
        if state["recipe"] != self.recipe.name:
            raise ResumeError(
                f"{path} is a checkpoint of recipe {state['recipe']!r}, not {self.recipe.name!r}"
            )
        if state["global_batch"] != self.global_batch:
            raise ResumeError(
                f"{path} was written with a global batch of {state['global_batch']} "
                f"(processes × batch size) but this run has {self.global_batch}; resume with the "
                "same number of processes and train.batch_size to continue exactly"
            )
        self._load_weights(path)
        self.optimizer.load_state_dict(
            torch.load(
                path / "optimizer.pt", weights_only=False, map_location=self.accelerator.device
            )
        )
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng = torch.load(path / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.step = int(state["step"])
        self.skipped = list(state.get("skipped", []))
        self._log(f"resumed from {path} at step {self.step}")

    # -------------------------------------------------------------- export
    def export(self) -> Path:
        from pref_core.backbones.export import export_denoiser, export_lora, export_pipeline
        from pref_core.backbones.toy import TOY_KINDS, save_toy

        out = self.run_dir / "final"
        tmp = self.run_dir / ".tmp-final"
        if tmp.exists():
            shutil.rmtree(tmp)
        name = "policy" if "policy" in self.policies.names else self.policies.names[0]
        finalize = self.recipe.finalize
        if self.policies.mode == "lora" and finalize is None:
            export_lora(self.policies, name, self.run_dir / "lora")
        if self.backbone.kind in TOY_KINDS:
            if self.policies.mode == "full":
                denoiser = self.policies.denoiser_module(name)
            else:
                denoiser = copy.deepcopy(self.backbone.denoiser)
                export_denoiser(self.policies, name, tmp / "_merged")
                denoiser.model = type(self.backbone.model).from_pretrained(tmp / "_merged")
                shutil.rmtree(tmp / "_merged")
            save_toy(dataclasses.replace(self.backbone, denoiser=denoiser), tmp)
        else:
            export_pipeline(self.policies, name, self.base_source, tmp)
        if finalize is not None:  # the method adds its other networks and its manifest
            lora_dir = self.run_dir / "lora" if self.policies.mode == "lora" else None
            finalize(self.policies, self.objective, tmp, lora_dir=lora_dir, base=self.base_source)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return out


# ------------------------------------------------------------------------------ module recipes
class ProgramModule(nn.Module):
    """A program's trainable modules and its step, as one module for ``accelerator.prepare``."""

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.trainable = nn.ModuleDict(dict(program.modules()))
        self._program = program

    def forward(self, items: list[Mapping[str, Any]], generators: list[torch.Generator]):
        out = self._program.step(items, generators)
        return out.loss, dict(out.metrics)


class ModuleTrainer(Trainer):
    """The trainer for ``task="module"`` recipes: the recipe's
    :class:`~pref_core.recipes.TrainingProgram` loads its models and data and computes the loss;
    everything around it (data order, optimiser, accumulation, checkpoints and exact resume,
    non-finite checks, metrics, TensorBoard, sample grids, the export) is the
    :class:`Trainer`'s."""

    def setup(self) -> None:
        from pref_core.recipes import ProgramContext

        c = self.config
        torch.manual_seed(c.train.seed)
        self.program = self.recipe.build_program(c.objective)
        context = ProgramContext(
            config=c,
            run_dir=self.run_dir,
            device=self.accelerator.device,
            cache_dir=cache_root(),
            main=self.main,
            progress=c.log.progress and self.main,
            log=self._log,
            resolve_model=lambda spec: resolve_base(
                spec, progress=c.log.progress and self.main, log=self._log
            ),
            barrier=self.accelerator.wait_for_everyone,
        )
        try:
            self.program.setup(context)
        except (OSError, ValueError) as exc:
            raise ProgramSetupError(f"recipe {self.recipe.name}: {exc}") from exc
        self.base_source = getattr(self.program, "base_source", None)
        self.objective = None
        dataset = self.program.dataset()
        self.data = TrainData(dataset, "items", f"{len(dataset)} items")
        world = self.accelerator.num_processes
        self.global_batch = world * c.train.batch_size
        self.order = DataOrder(len(dataset), c.train.seed, self.global_batch, c.train.grad_accum)
        total_batch = self.global_batch * c.train.grad_accum
        self.lr = c.optim.lr * total_batch if c.optim.scale_lr else c.optim.lr
        modules = dict(self.program.modules())
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"recipe {self.recipe.name}: its program has nothing to train")
        self.trainable_params = params
        self.optimizer = make_optimizer(c, params, self.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(c.optim.schedule, c.optim.warmup_steps, c.train.steps)
        )
        self.module = ProgramModule(self.program)
        self.module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        self.step = 0
        self._log(
            f"recipe {self.recipe.name}: {self.recipe.description}\n"
            f"  {self.program.describe()}\n"
            f"  trains {', '.join(modules)} ({sum(p.numel() for p in params):,} parameters)\n"
            f"  {world} process(es) × batch {c.train.batch_size} × accumulation "
            f"{c.train.grad_accum} = {total_batch} per step; lr {self.lr:g}\n"
            f"  run directory {self.run_dir}"
        )

    def _batch(self, step: int, micro: int) -> tuple[Any, list[int], list[str], list[str]]:
        c = self.config
        indices = self.order.indices(step, micro)
        rank = self.accelerator.process_index
        offset = micro * self.global_batch
        items, kept, ids, skipped = [], [], [], []
        for pos in range(rank * c.train.batch_size, (rank + 1) * c.train.batch_size):
            item = self._item(indices[pos], step, micro, pos)
            if not isinstance(item, Mapping):  # undecodable
                skipped.append(str(getattr(item, "id", indices[pos])))
                continue
            items.append(item)
            kept.append(offset + pos)
            ids.append(str(item.get("id", indices[pos])))
        return (items or None), kept, ids, skipped

    def _forward(self, batch: Any, generators: list[torch.Generator]) -> tuple[Tensor, Any]:
        return self.module(batch, generators)

    def _after_update(self, row: Mapping[str, float]) -> Mapping[str, float]:
        return dict(self.program.after_update(row) or {})

    def _save_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        for name, module in self.program.modules().items():
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, str(folder / f"module-{name}.safetensors"))
        torch.save(self.program.state_dict(), folder / "program.pt")

    def _load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        device = str(self.accelerator.device)
        for name, module in self.program.modules().items():
            module.load_state_dict(load_file(str(folder / f"module-{name}.safetensors"), device))
        self.program.load_state_dict(
            torch.load(folder / "program.pt", weights_only=False, map_location=device)
        )

    def write_samples(self, step: int) -> Path | None:
        path = self.run_dir / "samples" / f"step_{step:06d}.png"
        written = self.program.write_samples(path, step)
        self.module.train()
        if written is not None and self.config.log.tensorboard and self._writer is not None:
            from PIL import Image

            with Image.open(written) as image:
                self._writer.add_image(
                    "samples", np.asarray(image.convert("RGB")), step, dataformats="HWC"
                )
        return written

    def export(self) -> Path:
        out = self.run_dir / "final"
        tmp = self.run_dir / ".tmp-final"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.program.export(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return out


# ------------------------------------------------------------------------------ module functions
def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(
        (
            p
            for p in root.iterdir()
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "state.json").exists()
        ),
        key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]),
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def cache_root() -> Path:
    return Path(os.environ.get("PREF_CACHE", Path.home() / ".cache" / "pref"))


SHIPPED_BASES = Path(__file__).parent / "toy_bases"


def shipped_base(kind: str, seed: int) -> Path | None:
    """The toy base shipped with pref-apps for (kind, seed), if it is exactly what the current
    ``toy-pretrain`` recipe would train (its ``pref_base.json`` records the recipe version)."""
    from pref_apps.recipes import toy_pretrain_version

    folder = SHIPPED_BASES / f"{kind}-seed{seed}"
    meta = folder / "pref_base.json"
    if not meta.exists() or not (folder / "model_index.json").exists():
        return None
    if json.loads(meta.read_text()).get("version") != toy_pretrain_version(kind):
        return None
    return folder


def resolve_base(spec: str, *, progress: bool = True, log: Callable[[str], None] = print) -> str:
    """``toy-pretrained:KIND[:SEED]`` → the folder of that toy base; a run directory → its
    ``final/`` pipeline (an error naming its checkpoints when it has not finished); anything
    else unchanged.

    In order: the base shipped with pref-apps (seed 0 of each kind, trained by the
    ``toy-pretrain`` recipe with its current defaults), the local cache, or — on first use —
    training it with ``toy-pretrain`` into the cache (``$PREF_CACHE``, default ``~/.cache/pref``).
    """
    if not spec.startswith(TOY_PRETRAINED):
        from pref_apps.models import is_run_dir, resolve_spec

        # a finished run as the base (two-stage training: SFT, then a preference method)
        return resolve_spec(spec) if is_run_dir(spec) else spec
    parts = spec[len(TOY_PRETRAINED) :].split(":")
    kind = parts[0]
    seed = int(parts[1]) if len(parts) > 1 else 0
    if kind not in ("toy", "toy-flux"):
        raise ValueError(f"{spec!r}: the toy bases are 'toy' and 'toy-flux', got {kind!r}")
    from pref_apps.recipes import TOY_PRETRAIN, toy_pretrain_settings, toy_pretrain_version

    shipped = shipped_base(kind, seed)
    if shipped is not None:
        return str(shipped)
    run = cache_root() / "toy-bases" / f"{kind}-seed{seed}-{toy_pretrain_version(kind)}"
    final = run / "final"
    if (final / "model_index.json").exists():
        return str(final)
    log(
        f"the toy base {spec!r} is not cached yet; training it once with recipe toy-pretrain into {run}"
    )
    from pref_apps.config import build_config

    config = build_config(
        TOY_PRETRAIN,
        [("toy base", {**toy_pretrain_settings(kind, seed), "log.progress": progress})],
    )
    run_recipe(TOY_PRETRAIN, config, run_dir=run, report=False)
    (final / "pref_base.json").write_text(
        json.dumps(
            {
                "recipe": TOY_PRETRAIN.name,
                "kind": kind,
                "seed": seed,
                "version": toy_pretrain_version(kind),
            },
            indent=2,
        )
    )
    return str(final)


def default_run_dir(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_recipe(
    recipe: Recipe, config: RunConfig, *, run_dir: Path | None = None, report: bool = True
) -> Path:
    """Train ``recipe`` with ``config``; then evaluate (when configured) and write the report."""
    run_dir = Path(run_dir or config.log.output_dir or default_run_dir(recipe.name))
    config.log.output_dir = str(run_dir)
    resume_from: Path | None = None
    if config.resume:
        resume_from = (
            latest_checkpoint(run_dir) if config.resume == "latest" else Path(config.resume)
        )
        if resume_from is None:
            if config.resume == "latest":
                print(
                    f"resume=latest: {run_dir} has no checkpoint yet; starting from scratch",
                    file=sys.stderr,
                )
            else:
                raise ResumeError(f"resume={config.resume!r}: no such checkpoint")
        elif not (resume_from / "state.json").exists():
            raise ResumeError(f"{resume_from} is not a complete checkpoint (no state.json)")
    trainer = (ModuleTrainer if recipe.task == "module" else Trainer)(
        recipe, config, run_dir=run_dir
    )
    trainer.setup()
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
    if trainer.step >= config.train.steps and (run_dir / "final").is_dir():
        trainer._log(f"{run_dir} already finished {trainer.step} steps")
    else:
        trainer.train()
    if trainer.main and report:
        evaluate = getattr(getattr(trainer, "program", None), "evaluate", None)
        if evaluate is not None:  # a module recipe that evaluates its own result
            evaluate(run_dir / "final", run_dir / "eval")
        elif config.eval.prompts and trainer.base_source is not None:
            evaluate_run(config, run_dir, trainer.base_source)
        from pref_apps.report import write_report

        path = write_report(run_dir, title=f"{recipe.name}: {recipe.description}")
        print(f"\nreport: {path}", flush=True)
    return run_dir


def evaluate_run(config: RunConfig, run_dir: Path, base_source: str) -> Any:
    from pref_apps.evaluation import compare, load_prompts
    from pref_apps.models import load_for_sampling
    from pref_apps.scorers import load_scorer

    e = config.eval
    prompts = load_prompts(e.prompts)
    base = load_for_sampling(base_source, seed=config.train.seed)  # a fresh toy kind: same init
    tuned = load_for_sampling(str(run_dir))
    result = compare(
        base,
        tuned,
        prompts,
        load_scorer(e.scorer),
        num_inference_steps=e.steps,
        guidance_scale=e.guidance_scale,
        scheduler=e.scheduler,
        batch_size=e.batch_size,
        seeds=e.seed,
        progress=config.log.progress,
    )
    result.save(run_dir / "eval")
    print(result.to_markdown(), flush=True)
    return result
