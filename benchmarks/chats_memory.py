"""Training memory of CHATS' two policies: two full copies against two LoRA adapters.

CHATS trains a preferred (θ⁺) and a dispreferred (θ⁻) model against a frozen reference.
:class:`pref_core.backbones.training.PolicySet` holds them in one of two ways:

- ``full``: two trainable full copies of the denoiser (fp32) plus the frozen reference (the
  original, cast to the mixed-precision dtype): three sets of weights, gradients and optimizer
  state for two.
- ``lora``: two LoRA adapters (rank r on the attention projections, fp32) on one frozen base
  (bf16); the reference is the base with its adapters disabled: one set of base weights, and
  gradients and optimizer state for the adapters only.

Part 1 counts parameters exactly on the real SDXL base UNet, the FLUX.1-dev transformer and the
SD 1.5 UNet, built on the meta device (no memory), and turns them into GiB of weights,
gradients and optimizer state for AdamW (two fp32 moments per parameter) and for transformers'
Adafactor as ``pref_apps.trainer.make_optimizer`` builds it (no first moment, factored second
moment: row and column statistics for every tensor of two or more dimensions). Activations, the
text encoders and the VAE are not counted.

Part 2 builds the tiny SDXL and FLUX pipelines, sets up ``PolicySet`` in both modes exactly as
the trainer does, runs one backward and one optimizer step, measures the bytes actually held
(unique tensor storages of all denoiser networks' parameters and buffers, their gradients, the
optimizer state) and checks them against Part 1's formula on the tiny models' own shapes.

Usage::

    python benchmarks/chats_memory.py                   # rank 64, bf16 frozen weights
    python benchmarks/chats_memory.py --rank 16 --mixed-precision no
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

GIB = 1024**3
NAMES = ("preferred", "dispreferred")  # CHATS' two policies
OPTIMIZERS = ("adamw", "adafactor")
BYTES = {"bf16": 2, "fp16": 2, "no": 4}
TRAINABLE_BYTES = 4  # trainable weights, their gradients and all optimizer state: fp32
SCALAR_BYTES = 4  # one fp32 0-dim tensor per trainable tensor: AdamW's step, Adafactor's RMS

Shape = tuple[int, ...]


# ------------------------------------------------------------------------------ the formula
def numel(shapes: Iterable[Shape]) -> int:
    return sum(math.prod(s) for s in shapes)


def adafactor_floats(shape: Shape) -> int:
    """Floats of Adafactor's second-moment state for one tensor (transformers' Adafactor with
    ``beta1=None``): a tensor of two or more dimensions keeps a row statistic of shape
    ``shape[:-1]`` and a column statistic of shape ``shape[:-2] + shape[-1:]`` (n + m for an
    (n, m) matrix); a vector keeps a full second moment."""
    if len(shape) >= 2:
        return math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]
    return math.prod(shape)


def optimizer_bytes(optimizer: str, trainable: Sequence[Shape]) -> int:
    if optimizer == "adamw":  # exp_avg and exp_avg_sq, plus the step counter
        floats = 2 * numel(trainable)
    elif optimizer == "adafactor":  # row/column (or full) second moment, plus the RMS scalar
        floats = sum(adafactor_floats(s) for s in trainable)
    else:
        raise ValueError(optimizer)
    return TRAINABLE_BYTES * floats + SCALAR_BYTES * len(trainable)


@dataclass(frozen=True)
class Memory:
    weights: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer


def formula(
    base: Sequence[Shape],
    adapter: Sequence[Shape],
    mode: str,
    optimizer: str,
    frozen_bytes: int,
    policies: int = len(NAMES),
) -> Memory:
    """Bytes of weights, gradients and optimizer state for ``policies`` policies.

    ``base``: the denoiser's parameter shapes; ``adapter``: one LoRA adapter's shapes.
    full: ``policies`` trainable fp32 copies + one frozen reference in ``frozen_bytes``.
    lora: one frozen base in ``frozen_bytes`` + ``policies`` fp32 adapters.
    """
    trainable = list(base if mode == "full" else adapter) * policies
    weights = frozen_bytes * numel(base) + TRAINABLE_BYTES * numel(trainable)
    return Memory(
        weights, TRAINABLE_BYTES * numel(trainable), optimizer_bytes(optimizer, trainable)
    )


# ------------------------------------------------------------------------------ part 1
def sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def flux_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(  # black-forest-labs/FLUX.1-dev, transformer/config.json
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
    )


def sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)


# name, builder, LoRA targets attribute, published parameter count
REAL_MODELS = (
    ("SDXL UNet", sdxl_unet, "UNET_LORA_TARGETS", 2.567e9),
    ("FLUX.1 transformer", flux_transformer, "FLUX_LORA_TARGETS", 11.9e9),
    ("SD1.5 UNet", sd15_unet, "UNET_LORA_TARGETS", 860e6),
)


def linear_lora_count(model: nn.Module, targets: Sequence[str], rank: int) -> int:
    """Σ r·(in + out) over the nn.Linear modules peft's target list matches (name suffix)."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    )


def lora_shapes(model: nn.Module, adapter: str) -> list[Shape]:
    return [
        tuple(p.shape)
        for name, p in model.named_parameters()
        if "lora_" in name and f".{adapter}." in name
    ]


def base_shapes(model: nn.Module) -> list[Shape]:
    return [tuple(p.shape) for name, p in model.named_parameters() if "lora_" not in name]


def part1(rank: int, frozen_bytes: int, precision: str) -> None:
    from pref_core.backbones import training
    from pref_core.backbones.training import LoraSettings

    print("## Part 1: real models, exact parameter counts (meta device)\n")
    counts, rows = [], []
    for label, build, targets_attr, published in REAL_MODELS:
        targets = getattr(training, targets_attr)
        with torch.device("meta"):
            model = build()
        base = base_shapes(model)
        expected_lora = linear_lora_count(model, targets, rank)
        # exactly what PolicySet does: one peft adapter per policy, default targets
        model.add_adapter(LoraSettings(rank=rank).config(targets), adapter_name=NAMES[0])
        adapter = lora_shapes(model, NAMES[0])
        n, n_lora = numel(base), numel(adapter)
        assert n_lora == expected_lora, (label, n_lora, expected_lora)
        assert abs(n / published - 1) < 0.01, (label, n, published)
        counts.append(
            f"| {label} | {n:,} | ≈{published / 1e9:g}B | {n / published - 1:+.2%} "
            f"| {n_lora:,} | {n_lora / n:.2%} |"
        )
        full_adamw = None
        for mode in ("full", "lora"):
            for opt in OPTIMIZERS:
                m = formula(base, adapter, mode, opt, frozen_bytes)
                full_adamw = full_adamw or m.total
                trainable = len(NAMES) * (n if mode == "full" else n_lora)
                rows.append(
                    f"| {label} | {mode} | {opt} | {trainable:,} | {m.weights / GIB:.2f} "
                    f"| {m.grads / GIB:.2f} | {m.optimizer / GIB:.2f} | {m.total / GIB:.2f} "
                    f"| {m.total / full_adamw:.3f} |"
                )
        del model

    print(f"LoRA: rank {rank}, alpha = rank, PolicySet's default targets (attention projections);")
    print("peft's adapter on the meta-device model matches Σ r·(in + out) over those nn.Linear.\n")
    print("| model | parameters | published | diff | LoRA params / adapter | LoRA / base |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(counts))
    print(
        f"\nCHATS training memory in GiB, two policies ({', '.join(NAMES)}). Trainable weights, "
        f"gradients and optimizer state fp32; frozen base / reference weights "
        f"{precision if precision != 'no' else 'fp32'} ({frozen_bytes} B). "
        "AdamW: 2 moments per trainable parameter; Adafactor (make_optimizer: beta1=None): "
        "row + column statistics per ≥2-D tensor, a full second moment per 1-D tensor "
        "(a 4-D conv kernel (o, i, 3, 3) is factored over its last two dims only: 6/9 of its "
        "size). Plus one fp32 scalar per trainable tensor (AdamW's step, Adafactor's RMS). "
        "**Activations, text encoders and VAE excluded.**\n"
    )
    print(
        "| model | mode | optimizer | trainable params | weights | grads | optimizer "
        "| total | vs full+AdamW |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


# ------------------------------------------------------------------------------ part 2
def _probe(backbone, resolution: int = 32):
    """A fixed (x_t, t, cond), as apps/pref-apps/tests/test_real_recipes.py builds it."""
    g = torch.Generator().manual_seed(0)
    latents = resolution // backbone.codec.downsample_factor
    x_t = torch.randn(2, backbone.codec.latent_channels, latents, latents, generator=g)
    if backbone.kind == "flux":  # flow matching: σ in [0, 1], the model sees σ · 1000
        t = backbone.process.model_timesteps(torch.tensor([0.3, 0.7]))
    else:
        t = torch.tensor([300, 700])
    with torch.no_grad():
        cond = backbone.encode(["a photo of a cat", "a dog in the park"])
    return x_t, t, cond


def _storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storage counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        if storage.nbytes():
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _make_optimizer(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-5)
    from transformers.optimization import Adafactor

    # as pref_apps.trainer.make_optimizer builds it
    return Adafactor(params, lr=1e-5, scale_parameter=False, relative_step=False, warmup_init=False)


def measure(path: Path, mode: str, rank: int, precision: str) -> dict[str, tuple[Memory, Memory]]:
    """Measured and predicted memory per optimizer for one tiny pipeline and mode."""
    from pref_core.backbones.loading import load_backbone
    from pref_core.backbones.training import LoraSettings, PolicySet

    backbone = load_backbone(str(path))
    base = base_shapes(backbone.denoiser.model)
    policies = PolicySet(
        backbone,
        mode=mode,
        names=NAMES,
        lora=LoraSettings(rank=rank),
        mixed_precision=None if precision == "no" else precision,
    )
    adapter = lora_shapes(backbone.denoiser.model, NAMES[0]) if mode == "lora" else []
    networks = {id(backbone.denoiser): backbone.denoiser}
    for name in NAMES:
        module = policies.denoiser_module(name)
        networks[id(module)] = module
    params = [p for m in networks.values() for p in m.parameters()]
    buffers = [b for m in networks.values() for b in m.buffers()]
    assert not buffers, "the formula assumes buffer-free denoisers"

    policies.train()
    probe = _probe(backbone)
    loss = sum(policies[n](*probe).float().pow(2).mean() for n in NAMES)
    loss.backward()
    out = {}
    for opt_name in OPTIMIZERS:
        optimizer = _make_optimizer(opt_name, policies.trainable_parameters())
        optimizer.step()
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        measured = Memory(
            _storage_bytes(params + buffers),
            _storage_bytes(p.grad for p in params if p.grad is not None),
            _storage_bytes(state),
        )
        predicted = formula(base, adapter, mode, opt_name, BYTES[precision])
        out[opt_name] = (measured, predicted)
        del optimizer, state
    return out


def part2(rank: int, precision: str) -> None:
    from pref_core.backbones.tiny_flux import build_tiny_flux
    from pref_core.backbones.tiny_sd import build_tiny_sdxl

    frozen = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}[precision]
    print("\n## Part 2: tiny models, measured after one backward and one optimizer step\n")
    print(
        f"PolicySet(mode=..., names={NAMES}, mixed_precision={precision!r}, rank {rank}) as the "
        f"trainer builds it: trainable tensors fp32, frozen tensors {frozen}. Measured: unique "
        "storages of every denoiser network's parameters and buffers (backbone.denoiser and each "
        "policy's module), their .grad tensors, and the optimizer's state tensors. Predicted: "
        "Part 1's formula on the tiny model's own parameter shapes. Bytes.\n"
    )
    print(
        "| model | mode | optimizer | weights | grads | optimizer state | total "
        "| predicted total | match |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    ratios = []
    all_match = True
    with tempfile.TemporaryDirectory() as tmp:
        for label, build in (("tiny SDXL", build_tiny_sdxl), ("tiny FLUX", build_tiny_flux)):
            path = build(Path(tmp) / label.replace(" ", "-"))
            results = {mode: measure(path, mode, rank, precision) for mode in ("full", "lora")}
            for mode, per_opt in results.items():
                for opt, (got, want) in per_opt.items():
                    match = got == want
                    all_match &= match
                    print(
                        f"| {label} | {mode} | {opt} | {got.weights:,} | {got.grads:,} "
                        f"| {got.optimizer:,} | {got.total:,} | {want.total:,} "
                        f"| {'exact' if match else f'MISMATCH (predicted {want})'} |"
                    )
            for opt in OPTIMIZERS:
                lora, full = results["lora"][opt][0], results["full"][opt][0]
                ratios.append(f"| {label} | {opt} | {lora.total / full.total:.3f} |")
    print(f"\nAll measured bytes equal the formula: {all_match}.\n")
    print("| model | optimizer | measured total lora / full |")
    print("|---|---|---:|")
    print("\n".join(ratios))
    print(
        "\n(The tiny models' ratios are not representative: their layers are 32–128 wide, so a "
        f"rank-{rank} adapter is a large fraction of the layer it adapts.)"
    )


def _quiet() -> None:
    """Silence progress bars and the expected warnings (a second peft adapter on one model;
    bf16 activations meeting fp32 norm weights under autocast in full mode)."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank (default 64)")
    parser.add_argument(
        "--mixed-precision",
        default="bf16",
        choices=sorted(BYTES),
        help="dtype of the frozen base / reference (default bf16, as the real recipes)",
    )
    args = parser.parse_args(argv)
    _quiet()
    start = time.perf_counter()
    torch.manual_seed(0)
    part1(args.rank, BYTES[args.mixed_precision], args.mixed_precision)
    part2(args.rank, args.mixed_precision)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
