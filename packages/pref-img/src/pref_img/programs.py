"""What IMG's recipes train, as :class:`pref_core.recipes.TrainingProgram` s.

IMG fine-tunes no diffusion weights. Its recipes train, in order:

- :class:`IPAdapterProgram` (``toy-ip-adapter``): an IP-Adapter for the toy base, with the
  standard IP-Adapter objective (real models use published adapters);
- :class:`DetectorProgram` (``img-mllm-*``): the MLLM misalignment detector on
  instruction-editing triplets (answer-token loss);
- :class:`AlignerProgram` (``img-*``): the Implicit Aligner with the Iteratively Updated
  Preference Objective (Eq. 7) on preference pairs, over features of the frozen MLLM and
  IP-Adapter.

The trainer (``pref-apps``) runs them: data order, optimiser, accumulation, checkpoints and
exact resume, logging, sample grids and the export are its business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pref_core.protocols import ObjectiveOutput
from pref_core.recipes import ProgramContext

__all__ = [
    "AlignerProgram",
    "DetectorProgram",
    "IPAdapterProgram",
    "resolve_component",
    "toy_ip_reconstruction",
]

SAMPLE_PROMPTS_REAL = (
    "a green banana and a brown horse",
    "a blue cup and a green cell phone",
    "a fish near a car",
    "a leather jacket and a glass vase",
)


# The toy chain's components and the recipe that makes each.
# The recipe that makes each component: (toy world, real models); None: use a published one.
_CHAIN = {
    "objective.ip_adapter": ("toy-ip-adapter", None),
    "objective.detector": ("img-mllm-toy", "img-mllm-llava"),
}


def _maker(setting: str | None, toy: bool) -> str | None:
    return _CHAIN.get(setting or "", (None, None))[0 if toy else 1]


def _looks_local(spec: str) -> bool:
    """A path rather than a hub id (``ORG/NAME``): explicit (``./``, ``/``, ``~``) or not of
    the hub's two-part form."""
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1


def resolve_component(
    spec: str, ctx: ProgramContext, setting: str | None = None, *, toy: bool = False
) -> str:
    """A component spec → a loadable source: a finished run directory gives its ``final/``
    folder (whatever the run exported: an MLLM, an IP-Adapter); the rest goes through the
    trainer's model resolution (hub ids and folders unchanged, ``toy-pretrained:KIND``).

    A local-looking path that does not exist is an error naming the recipe that makes it."""
    path = Path(spec).expanduser()
    if _looks_local(spec) and not path.exists():
        hint = ""
        maker = _maker(setting, toy)
        if maker is not None:
            hint = f"; train it first: pref-train --recipe {maker} log.output_dir={spec}"
        raise FileNotFoundError(f"{setting or 'the model'} {spec!r} does not exist{hint}")
    if (path / "checkpoints").is_dir() or (path / "config.yaml").is_file():
        final = path / "final"
        if not final.is_dir():
            raise ValueError(
                f"{spec} is a run directory that has not finished (no final/); resume it with "
                f"`pref-train --config {path / 'config.yaml'} resume=latest` first"
            )
        return str(final)
    return ctx.resolve_model(spec)


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"model.dtype {name!r} is not a torch dtype (float32, bfloat16, ...)")
    return value


def _stack(items: Sequence[Mapping[str, Any]], key: str, device: Any) -> Tensor:
    return torch.stack([it[key] for it in items]).to(device)


def _toy_data(config: Any) -> bool:
    return str(config.data.source).startswith("toy")


def _real_pairs(config: Any) -> Any:
    """Preference pairs from a Pick-a-Pic-schema source (hub id or local files), as the other
    methods' recipes read them."""
    import pref_data

    d = config.data
    spec = d.source
    has_split = spec.split(":", 1)[0] in ("pickapic", "oip", "hpdv2")
    source = pref_data.open_source(spec, **({"split": d.split} if has_split else {}))
    resolution = d.resolution or 512
    transform = pref_data.PairTransform(resolution, crop=d.crop, flip_prob=d.flip_prob)
    return pref_data.PairDataset(source, transform, seed=d.seed)


def _toy_pairs(config: Any) -> Any:
    from pref_data import toy

    d = config.data
    world = toy.ToyWorldConfig(resolution=d.resolution or 32)
    return toy.PreferencePairs(d.size, seed=d.seed, flip_rate=d.flip_rate, config=world)


def _sample_prompts(config: Any, toy: bool) -> list[str]:
    if config.log.sample_prompts:
        return list(config.log.sample_prompts)
    if toy:
        from pref_data import toy as toy_world

        return [p.text for p in toy_world.evaluation_prompts(6, seed=12345)]
    return list(SAMPLE_PROMPTS_REAL)


def _save_rows(rows: Sequence[Tensor], path: Path) -> Path:
    """Rows of images (each (N, 3, H, W) in [0, 1]) as one PNG grid: one row per stage."""
    from pref_core.backbones.sampling import make_grid

    n = rows[0].shape[0]
    grid = make_grid(torch.cat(list(rows)), nrow=n)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


# ---------------------------------------------------------------------------------- aligner
class AlignerProgram:
    """Train the Implicit Aligner f_θ with L = L_base + λ·L_pref (Eq. 7) and the iterative
    reference update (k consecutive steps where f_θ(c) is closer to c_w than f_ref(c)).

    Per pair: c_w, c_l = IP tokens of the winner and the loser; h = the MLLM's guidance
    features of the *loser* with its prompt; the aligner maps (h, c_l) toward c_w. Features come
    from the frozen MLLM and image encoder on the fly, or from a feature cache built once
    (``feature_cache=True``, for small datasets such as the toy world's).

    Args:
        ip_adapter: the IP-Adapter (hub id, folder or file; a finished ``toy-ip-adapter`` run).
        ip_weight_name, ip_subfolder: where the adapter file is inside ``ip_adapter``.
        image_encoder, image_encoder_subfolder: the CLIP image encoder (default: found with the
            adapter, as diffusers' loader does).
        detector: the finetuned MLLM (hub id, folder, or a finished ``img-mllm-*`` run).
        lam: λ of Eq. 7 (the paper's 1; its ablation: 0, 0.5, 1, 2).
        reference_update_k: k of the reference update (10); 0 keeps the initial reference.
        num_layers, num_heads, ff_mult: aligner size (4 cross-attention layers).
        distance: ``"mean"`` (default) or ``"sum"`` over tokens and features in ‖·‖².
        feature_cache: precompute all features once (small datasets) instead of on the fly.
        ip_scale, aligner_repeats, rounds: the exported model's inference settings.
        denoiser, denoiser_subfolder: another UNet / transformer checkpoint for the base
            pipeline (hub id or folder), e.g. SDXL-DPO's UNet on SDXL; saved with the model.
    """

    def __init__(
        self,
        ip_adapter: str = "h94/IP-Adapter",
        ip_weight_name: str | None = "ip-adapter-plus_sdxl_vit-h.safetensors",
        ip_subfolder: str | None = "sdxl_models",
        image_encoder: str | None = None,
        image_encoder_subfolder: str | None = None,
        detector: str = "llava-hf/llava-1.5-13b-hf",
        lam: float = 1.0,
        reference_update_k: int = 10,
        num_layers: int = 4,
        num_heads: int = 8,
        ff_mult: int = 4,
        distance: str = "mean",
        feature_cache: bool = False,
        ip_scale: float = 0.2,
        aligner_repeats: int = 3,
        rounds: int = 1,
        denoiser: str | None = None,
        denoiser_subfolder: str | None = None,
    ) -> None:
        if lam < 0:
            raise ValueError(f"lam (λ of Eq. 7) must be ≥ 0, got {lam}")
        if reference_update_k < 0:
            raise ValueError(f"reference_update_k must be ≥ 0, got {reference_update_k}")
        if distance not in ("mean", "sum"):
            raise ValueError(f"distance must be 'mean' or 'sum', got {distance!r}")
        self.ip_spec = {
            "source": ip_adapter,
            "weight_name": ip_weight_name,
            "subfolder": ip_subfolder,
            "image_encoder": image_encoder,
            "image_encoder_subfolder": image_encoder_subfolder,
        }
        self.detector_spec = detector
        # another UNet/transformer in the base pipeline (SDXL-DPO's UNet on SDXL)
        self.denoiser = {"denoiser": denoiser, "denoiser_subfolder": denoiser_subfolder}
        self.lam = float(lam)
        self.k = int(reference_update_k)
        self.sizes = {"num_layers": num_layers, "num_heads": num_heads, "ff_mult": ff_mult}
        self.distance = distance
        self.feature_cache = bool(feature_cache)
        from pref_img.pipeline import IMGSettings

        self.settings = IMGSettings(
            rounds=rounds, aligner_repeats=aligner_repeats, ip_scale=ip_scale
        )

    def validate(self, config: Any) -> list[str]:
        problems = []
        for name, spec in (
            ("ip_adapter", self.ip_spec["source"]),
            ("detector", self.detector_spec),
        ):
            if _looks_local(spec) and not Path(spec).expanduser().exists():
                hint = _maker(f"objective.{name}", _toy_data(config))
                problems.append(
                    f"objective.{name} {spec!r} does not exist"
                    + (f" (train it with pref-train --recipe {hint})" if hint else "")
                )
        return problems

    # -------------------------------------------------------------- setup
    def setup(self, ctx: ProgramContext) -> None:
        from pref_core.backbones.loading import load_backbone
        from pref_img.aligner import AlignerConfig, ImplicitAligner
        from pref_img.detector import load_detector
        from pref_img.image_prompt import load_image_prompt_model
        from pref_img.objective import ReferenceUpdate

        c = ctx.config
        self.ctx = ctx
        self.device = ctx.device
        dtype = _dtype(c.model.dtype)
        self.toy = _toy_data(c)
        self.base_source = ctx.resolve_model(c.model.base)
        ip_spec = dict(self.ip_spec)
        ip_spec["source"] = resolve_component(
            ip_spec["source"], ctx, "objective.ip_adapter", toy=self.toy
        )
        if ip_spec["source"] != self.ip_spec["source"]:  # a run's export: the file is at the top
            ip_spec["weight_name"] = None
            ip_spec["subfolder"] = None
        self.ip_spec_resolved = ip_spec
        self.detector_source = resolve_component(
            self.detector_spec, ctx, "objective.detector", toy=self.toy
        )
        ctx.log(f"loading the base model {self.base_source}")
        backbone = load_backbone(self.base_source, dtype=dtype, device=ctx.device, **self.denoiser)
        options = {k: v for k, v in ip_spec.items() if k != "source"}
        self.image_prompt = load_image_prompt_model(
            backbone, ip_spec["source"], dtype=dtype, device=ctx.device, **options
        )
        ctx.log(f"loading the MLLM {self.detector_source}")
        self.detector = load_detector(self.detector_source, dtype=dtype, device=ctx.device)
        config = AlignerConfig(
            ip_dim=self.image_prompt.token_dim,
            guidance_dim=self.detector.hidden_size,
            **self.sizes,
        )
        torch.manual_seed(c.train.seed)
        self.aligner = ImplicitAligner(config).to(ctx.device)
        # f_ref starts from its *own* random initialisation (supplementary B.2); with the zero
        # output layer that initialisation is the identity map, f_ref(c) = c_l.
        torch.manual_seed(c.train.seed + 1)
        self.reference = ImplicitAligner(config).to(ctx.device).requires_grad_(False).eval()
        self.updates = ReferenceUpdate(self.k) if self.k > 0 else None
        self.pairs = _toy_pairs(c) if self.toy else _real_pairs(c)
        self.items: Any = self.pairs
        if self.feature_cache:
            self.items = self._build_cache(ctx)

    def _features(
        self, items: Sequence[Mapping[str, Any]]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_w, c_l, h, mask) of a batch of pairs: (B, S, D), (B, S, D), (B, L, D2), (B, L)."""
        if "guidance" in items[0]:  # from the feature cache
            from pref_img.features import collate_features

            f = collate_features(items)
            return (
                f.winner.to(self.device),
                f.loser.to(self.device),
                f.guidance.to(self.device),
                f.guidance_mask.to(self.device),
            )
        winner = _stack(items, "winner", self.device)
        loser = _stack(items, "loser", self.device)
        prompts = [it["prompt"] for it in items]
        with torch.no_grad():
            c_w = self.image_prompt.encode(winner).float()
            c_l = self.image_prompt.encode(loser).float()
            h, mask = self.detector.guidance_features(loser, prompts)
        return c_w, c_l, h.float(), mask

    def _build_cache(self, ctx: ProgramContext) -> Any:
        import hashlib

        from pref_img.features import FeatureCache

        c = ctx.config
        key = {
            "data": c.data.source,
            "size": c.data.size,
            "seed": c.data.seed,
            "flip_rate": c.data.flip_rate,
            "resolution": c.data.resolution,
            "base": str(self.base_source),
            "ip_adapter": json.dumps(self.ip_spec_resolved, sort_keys=True),
            "detector": str(self.detector_source),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        folder = Path(ctx.cache_dir or ctx.run_dir) / "img-features" / digest
        if not (folder / "manifest.json").exists() and ctx.main:
            ctx.log(f"aligner features: computing {len(self.pairs)} pairs once into {folder}")
            FeatureCache.build(folder, self._feature_rows(), key=key, progress=ctx.progress)
        ctx.barrier()  # the other processes read what the main process wrote
        ctx.log(f"aligner features: cache {folder}")
        return FeatureCache.open(folder, expected_key=key)

    def _feature_rows(self):
        """(id, c_w, c_l, h) of every decodable pair, computed in batches of 32."""
        batch: list[Mapping[str, Any]] = []
        for i in range(len(self.pairs)):
            item = self.pairs[i]
            if isinstance(item, Mapping):
                batch.append(item)
            if len(batch) == 32 or (i == len(self.pairs) - 1 and batch):
                c_w, c_l, h, mask = self._features(batch)
                for j, it in enumerate(batch):
                    yield (str(it.get("id", i)), c_w[j].cpu(), c_l[j].cpu(), h[j][mask[j]].cpu())
                batch = []

    def describe(self) -> str:
        return (
            f"IMG aligner on {self.base_source} ({self.image_prompt.kind} IP-Adapter, "
            f"{self.image_prompt.num_tokens}×{self.image_prompt.token_dim} tokens) with MLLM "
            f"{self.detector_source} ({self.detector.kind}, width {self.detector.hidden_size}); "
            f"λ = {self.lam}, reference update k = {self.k or 'off'}; "
            f"{len(self.items)} pairs{' (feature cache)' if self.feature_cache else ''}"
        )

    # -------------------------------------------------------------- the program
    def dataset(self) -> Any:
        return self.items

    def modules(self) -> Mapping[str, nn.Module]:
        return {"aligner": self.aligner}

    def step(self, items: Sequence[Mapping[str, Any]], generators: Sequence[torch.Generator]):
        from pref_img.objective import img_loss

        c_w, c_l, h, mask = self._features(items)
        pred = self.aligner(c_l, h, mask)
        with torch.no_grad():
            ref_pred = self.reference(c_l, h, mask)
        return img_loss(pred, ref_pred, c_w, c_l, lam=self.lam, reduction=self.distance)

    def after_update(self, metrics: Mapping[str, float]) -> Mapping[str, float]:
        from pref_img.objective import copy_into

        if self.updates is None:
            return {}
        if self.updates.observe(metrics["dist_winner"], metrics["dist_winner_ref"]):
            copy_into(self.reference, self.aligner)
        return {"reference_updates": float(self.updates.updates)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": {k: v.detach().cpu() for k, v in self.reference.state_dict().items()},
            "updates": self.updates.state_dict() if self.updates is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reference.load_state_dict(state["reference"])
        if self.updates is not None and state.get("updates") is not None:
            self.updates.load_state_dict(state["updates"])

    def model(self) -> Any:
        from pref_img.pipeline import IMGModel

        return IMGModel(self.image_prompt, self.detector, self.aligner, self.settings, source=None)

    def write_samples(self, path: Path, step: int) -> Path | None:
        """Initial images (top row) and their re-generations (bottom row), same seeds."""
        c = self.ctx.config
        prompts = _sample_prompts(c, self.toy)
        was = self.aligner.training
        self.aligner.eval()
        try:
            result = self.model().run(
                prompts,
                seeds=list(range(len(prompts))),
                num_inference_steps=c.log.sample_steps,
                batch_size=len(prompts),
                scheduler=c.eval.scheduler,
            )
        finally:
            self.aligner.train(was)
        return _save_rows([result.initial, *result.rounds], path)

    def export(self, out_dir: Path) -> None:
        from pref_img.pipeline import save_img

        save_img(
            out_dir,
            self.aligner,
            base=self.base_source,
            ip_adapter=self.ip_spec_resolved,
            detector=self.detector_source,
            settings=self.settings,
            **self.denoiser,
        )


# ---------------------------------------------------------------------------------- detector
class DetectorProgram:
    """Fine-tune the MLLM misalignment detector on (I0, T1, TE) triplets: the question built
    from the intended prompt T1 with one of the 100 templates, the answer-token loss on TE.

    ``model.base`` is the MLLM (hub id or folder; ``toy-detector`` builds the untrained toy
    MLLM), ``model.mode`` ``full`` or ``lora``; ``data.source`` an InstructPix2Pix-format
    dataset (hub id or local path) or ``toy-triplets``.

    Args:
        eval_size: held-out triplets the finished detector is evaluated on (0: none).
        max_new_tokens: generation length of that evaluation.
    """

    def __init__(self, eval_size: int = 200, max_new_tokens: int = 24) -> None:
        self.eval_size = int(eval_size)
        self.max_new_tokens = int(max_new_tokens)

    def validate(self, config: Any) -> list[str]:
        return []

    def setup(self, ctx: ProgramContext) -> None:
        from pref_img.detector import load_detector
        from pref_img.triplets import InstructionTriplets, ToyTriplets

        c = ctx.config
        self.ctx = ctx
        self.device = ctx.device
        base = c.model.base
        if base == "toy-detector":
            from pref_img.tiny_mllm import build_toy_detector

            folder = Path(ctx.cache_dir or ctx.run_dir) / "img-toy-detector" / f"seed{c.train.seed}"
            if not (folder / "config.json").exists() and ctx.main:
                build_toy_detector(folder, seed=c.train.seed)
            ctx.barrier()
            base = str(folder)
        else:
            base = resolve_component(base, ctx, "model.base")
        self.base_source = None  # no diffusion model to compare against
        self.source = base
        mode = c.model.mode if c.model.mode in ("full", "lora") else "full"
        self.detector = load_detector(
            base,
            dtype=_dtype(c.model.dtype),
            device=ctx.device,
            mode=mode,
            lora_rank=c.model.lora_rank,
            lora_alpha=c.model.lora_alpha,
            gradient_checkpointing=c.model.gradient_checkpointing,
        )
        self.toy = _toy_data(c)
        d = c.data
        if self.toy:
            self.triplets = ToyTriplets(d.size, d.seed, resolution=d.resolution or 32)
            self.held_out = ToyTriplets(
                self.eval_size, d.seed + 1_000_003, resolution=d.resolution or 32
            )
        else:
            self.triplets = InstructionTriplets(d.source, split=d.split, resolution=d.resolution)
            self.held_out = None
        self.module = _Parameters(self.detector.trainable_parameters())

    def describe(self) -> str:
        return (
            f"MLLM misalignment detector {self.source} ({self.detector.kind}) on "
            f"{len(self.triplets)} instruction triplets"
        )

    def dataset(self) -> Any:
        return self.triplets

    def modules(self) -> Mapping[str, nn.Module]:
        return {"detector": self.module}

    def step(self, items: Sequence[Mapping[str, Any]], generators: Sequence[torch.Generator]):
        images = _stack(items, "image", self.device)
        return self.detector.loss(
            images,
            [it["prompt"] for it in items],
            [it["instruction"] for it in items],
            generator=generators[0],
        )

    def after_update(self, metrics: Mapping[str, float]) -> Mapping[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def write_samples(self, path: Path, step: int) -> Path | None:
        return None  # a text model: evaluate() reports its answers

    def export(self, out_dir: Path) -> None:
        self.detector.save_pretrained(out_dir)

    def evaluate(self, final: Path, out_dir: Path) -> dict[str, float] | None:
        """Agreement of the detector's answers with the true instructions on held-out toy
        triplets (the paper's 76.3% check); written to ``eval/detector.json``."""
        from pref_img.triplets import detector_agreement

        if self.held_out is None or self.eval_size == 0:
            return None
        result = detector_agreement(self.detector, self.held_out, batch_size=32)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "detector.json").write_text(json.dumps(result, indent=2))
        self.ctx.log(
            f"detector on {result.get('n')} held-out triplets: "
            + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if k != "n")
        )
        return result


class _Parameters(nn.Module):
    """A module holding given parameters by position (what the trainer optimises and
    checkpoints), for a model whose trainable part is a subset of its parameters."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterList(list(params))


# ---------------------------------------------------------------------------------- toy IP
class IPAdapterProgram:
    """Train an IP-Adapter for a base model with the standard IP-Adapter objective (Ye et al.
    2023): the base's own denoising loss with the image tokens of the training image, text,
    image and both dropped 5% of the time each. Used for the toy base (real models have
    published adapters).

    Args:
        image_encoder: the frozen CLIP image encoder (a folder or hub id); ``toy`` builds the
            toy's small random one (seeded; random features still identify a 32×32 image).
        style: ``plus`` (penultimate hidden states through a Resampler) or ``plain``.
        num_tokens: image tokens (16 plus, 4 plain).
        drop_text, drop_image, drop_both: the classifier-free-guidance dropout rates (the
            IP-Adapter paper's 0.05 each).
        eval_size: held-out clean images of the reconstruction check (0: none).
    """

    def __init__(
        self,
        image_encoder: str = "toy",
        style: str = "plus",
        num_tokens: int = 16,
        drop_text: float = 0.05,
        drop_image: float = 0.05,
        drop_both: float = 0.05,
        eval_size: int = 100,
    ) -> None:
        rates = {"drop_text": drop_text, "drop_image": drop_image, "drop_both": drop_both}
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if sum(rates.values()) > 1.0:
            raise ValueError("drop_text + drop_image + drop_both must be at most 1")
        self.image_encoder_spec = image_encoder
        self.style = style
        self.num_tokens = int(num_tokens)
        self.drops = rates
        self.eval_size = int(eval_size)

    def validate(self, config: Any) -> list[str]:
        return []

    def setup(self, ctx: ProgramContext) -> None:
        from transformers import CLIPVisionModelWithProjection

        from pref_core.backbones.loading import load_backbone
        from pref_img.image_prompt import attach_ip_adapter

        c = ctx.config
        self.ctx = ctx
        self.device = ctx.device
        self.base_source = ctx.resolve_model(c.model.base)
        backbone = load_backbone(self.base_source, dtype=torch.float32, device=ctx.device)
        self.toy = backbone.kind in ("toy", "toy-flux")
        encoder_source = self.image_encoder_spec
        if encoder_source == "toy":
            from pref_img.tiny_ip import build_tiny_clip_vision

            # 4 px patches (an 8×8 grid on 32 px): the oracle reads position and shape, which
            # coarser patches blur; random weights, seeded, frozen.
            folder = Path(ctx.cache_dir or ctx.run_dir) / "img-toy-image-encoder" / "p4-w64-seed0"
            if not (folder / "config.json").exists() and ctx.main:
                build_tiny_clip_vision(
                    folder,
                    image_size=backbone.sample_size[0],
                    patch_size=4,
                    hidden_size=64,
                    projection_dim=64,
                    num_hidden_layers=2,
                    seed=0,
                )
            ctx.barrier()
            encoder_source = str(folder)
        self.encoder_source = encoder_source
        encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_source).to(ctx.device)
        self.model = attach_ip_adapter(
            backbone, encoder, style=self.style, num_tokens=self.num_tokens, seed=c.train.seed
        )
        from pref_img.image_prompt import trainable_ip_parameters

        self.module = _Parameters(trainable_ip_parameters(self.model))
        d = c.data
        from pref_data import toy

        world = toy.ToyWorldConfig(resolution=d.resolution or backbone.sample_size[0])
        self.images = toy.PretrainingSet(
            d.size, seed=d.seed, defect_rate=d.defect_rate, config=world
        )

    def describe(self) -> str:
        return (
            f"IP-Adapter ({self.style}, {self.num_tokens} tokens) for {self.base_source} with "
            f"image encoder {self.encoder_source}; {len(self.images)} images"
        )

    def dataset(self) -> Any:
        return self.images

    def modules(self) -> Mapping[str, nn.Module]:
        return {"ip_adapter": self.module}

    def step(self, items: Sequence[Mapping[str, Any]], generators: Sequence[torch.Generator]):
        from pref_img.image_prompt import ip_adapter_loss

        backbone = self.model.backbone
        images = _stack(items, "image", self.device)  # (B, 3, H, W) in [-1, 1]
        prompts = [it["prompt"] for it in items]
        x0 = backbone.codec.encode(images)
        cond = backbone.encode(prompts)
        errors = ip_adapter_loss(
            self.model, x0, cond, images, backbone.process, list(generators), **self.drops
        )
        return ObjectiveOutput(
            loss=errors.mean(),
            metrics={"mse": errors.detach().mean()},
            per_sample={"mse": errors.detach()},
        )

    def after_update(self, metrics: Mapping[str, float]) -> Mapping[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def write_samples(self, path: Path, step: int) -> Path | None:
        """Reference images (top), the base's images (middle) and images generated with the
        references' IP tokens at scale 1 (bottom), same seeds."""
        from pref_data import toy

        c = self.ctx.config
        world = toy.ToyWorldConfig(resolution=self.model.backbone.sample_size[0])
        refs = toy.PretrainingSet(6, seed=4242, defect_rate=0.0, config=world)
        items = [refs[i] for i in range(len(refs))]
        images = torch.stack([it["image"] for it in items]).to(self.device)
        prompts = [it["prompt"] for it in items]
        kwargs = {
            "seeds": list(range(len(prompts))),
            "num_inference_steps": c.log.sample_steps,
            "batch_size": len(prompts),
        }
        with torch.no_grad():
            tokens = self.model.encode(images)
            plain = self.model.generate(
                prompts, self.model.negative_tokens(len(prompts)), scale=0.0, **kwargs
            ).images
            guided = self.model.generate(prompts, tokens, scale=1.0, **kwargs).images
        return _save_rows([(images.cpu() + 1) / 2, plain, guided], path)

    def export(self, out_dir: Path) -> None:
        from pref_img.image_prompt import save_ip_adapter

        save_ip_adapter(self.model, out_dir)

    def evaluate(self, final: Path, out_dir: Path) -> dict[str, float] | None:
        """:func:`toy_ip_reconstruction` of the trained adapter, written to
        ``eval/ip_adapter.json``."""
        if not self.toy or self.eval_size == 0:
            return None
        result = toy_ip_reconstruction(
            self.model, self.eval_size, num_inference_steps=self.ctx.config.eval.steps
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "ip_adapter.json").write_text(json.dumps(result, indent=2))
        self.ctx.log(
            "IP-Adapter reconstruction (empty prompt, oracle vs the reference's prompt): "
            f"from tokens {result['from_tokens_total']:.3f}, unconditional "
            f"{result['unconditional_total']:.3f}"
        )
        return result


@torch.no_grad()
def toy_ip_reconstruction(
    model: Any, n: int = 100, *, num_inference_steps: int = 20, scale: float = 1.0
) -> dict[str, float]:
    """How much of a toy image its IP tokens carry.

    Generates from the tokens of ``n`` held-out clean toy images with an *empty* prompt (IP
    ``scale``, seeds 0 … n−1) and scores the generations with the oracle against the
    references' prompts; the same with black-image tokens at scale 0 (the unconditional
    model) is the floor. Returns ``{"n", "from_tokens_total", "from_tokens_colour", ...,
    "unconditional_total", ...}`` (oracle means).
    """
    from pref_data import toy

    world = toy.ToyWorldConfig(resolution=model.backbone.sample_size[0])
    refs = toy.PretrainingSet(n, seed=777_000, defect_rate=0.0, config=world)
    items = [refs[i] for i in range(len(refs))]
    prompts = [it["prompt"] for it in items]
    device = next(model.network.parameters()).device
    result: dict[str, float] = {"n": float(len(items))}
    for label, s in (("from_tokens", scale), ("unconditional", 0.0)):
        generated = []
        for start in range(0, len(items), 50):
            chunk = items[start : start + 50]
            images = torch.stack([it["image"] for it in chunk]).to(device)
            tokens = model.encode(images) if s else model.negative_tokens(len(chunk))
            out = model.generate(
                [""] * len(chunk),
                tokens,
                scale=s,
                seeds=list(range(start, start + len(chunk))),
                num_inference_steps=num_inference_steps,
                batch_size=len(chunk),
            )
            generated.append(out.images * 2 - 1)
        scores = toy.score_batch(torch.cat(generated), prompts)
        for key in ("total", "colour", "shape", "position", "size"):
            result[f"{label}_{key}"] = float(scores[key].mean())
    return result
