"""Benchmark the fused ops of ``pref_core.ops`` against eager PyTorch.

"Eager" is the plain fp32 reference code of each op (``pref_core.ops.*.reference``), i.e. the
way the losses are written by hand: ``(pred.float() - target.float()).pow(2).mean(dims)`` and
friends, run by autograd. "Fused" is the public op with ``--backend`` (default ``auto``: the
Triton kernels on CUDA, the exact PyTorch fallback on CPU). Both get the same inputs and, for the
``fwd+bwd`` rows, the same upstream gradients.

Usage::

    python benchmarks/kernels.py --device cpu --sizes small          # seconds; fallback vs eager
    python benchmarks/kernels.py --device cuda --sizes real          # SD1.5 / SDXL / FLUX latents

On CUDA the table also reports the bytes the fused kernels move (their compulsory HBM traffic:
every input read once, every output written once), the bandwidth that implies and its fraction
of ``--peak-gbps`` (default 4800 GB/s, the H200's HBM3e), and the peak extra memory of both
paths. On CPU only times are reported (peak memory is not measured there).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pref_core.ops import (
    combine_guidance,
    dspo_residual,
    noise_and_target,
    paired_errors,
    resolve_backend,
)
from pref_core.ops.dspo_residual import dspo_residual_reference
from pref_core.ops.guidance import combine_guidance_reference
from pref_core.ops.noising import noise_and_target_reference
from pref_core.ops.paired_errors import paired_errors_reference

# (label, shape, dtype)
SIZES: dict[str, list[tuple[str, tuple[int, ...], torch.dtype]]] = {
    "small": [
        ("tiny-latent", (4, 4, 32, 32), torch.float32),
        ("tiny-latent", (4, 4, 32, 32), torch.bfloat16),
        ("tiny-packed", (2, 256, 64), torch.bfloat16),
    ],
    "real": [
        ("SD1.5", (8, 4, 64, 64), torch.bfloat16),
        ("SDXL", (4, 4, 128, 128), torch.bfloat16),
        ("FLUX-packed", (2, 4096, 64), torch.bfloat16),
    ],
}
GUIDANCE_TERMS = (2, 3)  # CFG and CHATS three-term guidance


@dataclass
class Case:
    op: str
    mode: str  # "fwd" or "fwd+bwd"
    label: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    eager: Callable[[], object]
    fused: Callable[[], object]
    fused_inputs: tuple[torch.Tensor, ...]
    bytes_moved: int  # compulsory traffic of the fused kernels for one call


@dataclass
class Timing:
    median_ms: float
    peak_extra_mib: float | None


def _grad(outputs, inputs, upstream):
    return torch.autograd.grad(outputs, inputs, upstream)


def build_cases(shape, dtype, label, device, backend: str) -> list[Case]:
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*, grad=False):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_(grad)

    batch = shape[0]
    n = math.prod(shape)
    es = torch.empty((), dtype=dtype).element_size()
    cases = []

    # paired_errors: the Diffusion-DPO loss terms, forward + backward to the two policy outputs.
    pw, pl = randn(grad=True), randn(grad=True)
    rw, rl, tw, tl = randn(), randn(), randn(), randn()
    g4 = [torch.randn(batch, generator=gen, device=device) for _ in range(4)]
    cases.append(
        Case(
            "paired_errors",
            "fwd+bwd",
            label,
            shape,
            dtype,
            eager=lambda: _grad(
                paired_errors_reference(pw, pl, rw, rl, tw, tl)[:2], (pw, pl), g4[:2]
            ),
            fused=lambda: _grad(
                paired_errors(pw, pl, rw, rl, tw, tl, backend=backend), (pw, pl), g4
            ),
            fused_inputs=(pw, pl, rw, rl, tw, tl),
            # forward reads 6 tensors; backward reads policy+target of both halves, writes 2 grads
            bytes_moved=(6 + 4 + 2) * n * es,
        )
    )

    # combine_guidance: sampling-time guidance (forward only), and forward + backward.
    for k in GUIDANCE_TERMS:
        preds = [randn(grad=True) for _ in range(k)]
        s, alpha = 5.0, 0.5
        weights = [1 + s, -s] if k == 2 else [1 + s, s * alpha, -s * (1 + alpha)]
        gy = torch.randn(shape, generator=gen, device=device, dtype=dtype)
        groups = -(-k // 4)
        fwd_bytes = (k + 1) * n * es + 2 * (groups - 1) * n * 4
        bwd_bytes = (groups + k) * n * es
        name = f"combine_guidance[K={k}]"
        detached = [p.detach() for p in preds]
        cases.append(
            Case(
                name,
                "fwd",
                label,
                shape,
                dtype,
                eager=lambda d=detached, w=weights: combine_guidance_reference(d, w),
                fused=lambda d=detached, w=weights: combine_guidance(d, w, backend=backend),
                fused_inputs=tuple(detached),
                bytes_moved=fwd_bytes,
            )
        )
        cases.append(
            Case(
                name,
                "fwd+bwd",
                label,
                shape,
                dtype,
                eager=lambda p=preds, w=weights, g=gy: _grad(
                    combine_guidance_reference(p, w), p, g
                ),
                fused=lambda p=preds, w=weights, g=gy: _grad(
                    combine_guidance(p, w, backend=backend), p, g
                ),
                fused_inputs=tuple(preds),
                bytes_moved=fwd_bytes + bwd_bytes,
            )
        )

    # dspo_residual: DSPO training loss, gradient to the policy prediction.
    pred, target, reference = randn(grad=True), randn(), randn()
    weight = torch.rand(batch, generator=gen, device=device)
    gb = torch.randn(batch, generator=gen, device=device)
    cases.append(
        Case(
            "dspo_residual",
            "fwd+bwd",
            label,
            shape,
            dtype,
            eager=lambda: _grad(dspo_residual_reference(pred, target, reference, weight), pred, gb),
            fused=lambda: _grad(
                dspo_residual(pred, target, reference, weight, backend=backend), pred, gb
            ),
            fused_inputs=(pred, target, reference, weight),
            # forward reads 3; backward reads 3 and writes grad_pred
            bytes_moved=(3 + 3 + 1) * n * es,
        )
    )

    # noise_and_target: the training data path (forward only: x0 and noise need no gradient).
    x0, noise = randn(), randn()
    ab = torch.rand(batch, generator=gen, device=device, dtype=torch.float64)
    coeffs = (ab.sqrt(), (1 - ab).sqrt(), -(1 - ab).sqrt(), ab.sqrt())  # v-prediction
    cases.append(
        Case(
            "noise_and_target",
            "fwd",
            label,
            shape,
            dtype,
            eager=lambda: noise_and_target_reference(x0, noise, *coeffs),
            fused=lambda: noise_and_target(x0, noise, *coeffs, backend=backend),
            fused_inputs=(x0, noise),
            bytes_moved=4 * n * es,
        )
    )
    return cases


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> Timing:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
        del result
        return Timing(statistics.median(times), peak)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return Timing(statistics.median(times), None)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sizes", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (JIT, caches)")
    parser.add_argument(
        "--backend",
        choices=["auto", "triton", "torch"],
        default="auto",
        help="backend of the fused ops (auto: Triton on CUDA, the torch fallback on CPU)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 avoids thread-pool stalls on busy "
        "machines",
    )
    parser.add_argument(
        "--peak-gbps",
        type=float,
        default=4800.0,
        help="peak memory bandwidth in GB/s for the fraction-of-peak column "
        "(default 4800: H200 HBM3e)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    cuda = device.type == "cuda"
    print(f"# pref-core fused ops vs eager PyTorch -- device={device}", end="")
    if cuda:
        print(f" ({torch.cuda.get_device_name(device)})", end="")
    else:
        print(
            f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            end="",
        )
    print(f", torch {torch.__version__}, sizes={args.sizes}, repeats={args.repeats} (median)")
    print(
        "# eager = fp32 reference code run by autograd; fused = pref_core.ops with "
        f"backend={args.backend!r}; speedup = eager ms / fused ms"
    )
    if cuda:
        print(
            f"# bytes = compulsory HBM traffic of the fused kernels; %peak uses --peak-gbps "
            f"{args.peak_gbps:g} GB/s (default 4800 = H200 HBM3e); peak MiB = extra allocated"
        )
    else:
        print("# CPU: the torch fallback's cost relative to eager; peak memory is not measured")

    header = ["op", "mode", "size", "shape", "dtype", "backend", "eager ms", "fused ms", "speedup"]
    if cuda:
        header += ["MB moved", "GB/s", "%peak", "eager MiB", "fused MiB"]
    rows = []
    for label, shape, dtype in SIZES[args.sizes]:
        for case in build_cases(shape, dtype, label, device, args.backend):
            eager = time_fn(case.eager, device, args.repeats, args.warmup)
            fused = time_fn(case.fused, device, args.repeats, args.warmup)
            used = resolve_backend(args.backend, *case.fused_inputs)
            row = [
                case.op,
                case.mode,
                case.label,
                _fmt_shape(case.shape),
                str(case.dtype).removeprefix("torch."),
                used,
                f"{eager.median_ms:.3f}",
                f"{fused.median_ms:.3f}",
                f"{eager.median_ms / fused.median_ms:.2f}x",
            ]
            if cuda:
                gbps = case.bytes_moved / (fused.median_ms * 1e-3) / 1e9
                row += [
                    f"{case.bytes_moved / 1e6:.1f}",
                    f"{gbps:.0f}",
                    f"{100 * gbps / args.peak_gbps:.1f}%",
                    f"{eager.peak_extra_mib:.1f}",
                    f"{fused.peak_extra_mib:.1f}",
                ]
            rows.append(row)

    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
