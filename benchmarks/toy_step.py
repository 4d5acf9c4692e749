"""Size and speed of the toy backbones: parameters and one Diffusion-DPO training step.

The toy world trains these on a CPU; this script backs the numbers quoted in
docs/backbones.md. It times full fine-tuning (forward of policy and reference on the
[winners; losers] batch, backward, AdamW step) and, as the baseline in the same run, the
reference forward alone, and prints the ratio.

    python benchmarks/toy_step.py [--pairs 8] [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pref_core.backbones.loading import load_backbone
from pref_core.backbones.toy import parameter_counts
from pref_core.backbones.training import PolicySet
from pref_core.objectives import DiffusionDPO
from pref_core.pairs import noise_pair, predict_pair


def measure(kind: str, pairs: int, repeats: int) -> dict[str, float]:
    backbone = load_backbone(kind, seed=0)
    counts = parameter_counts(backbone)
    policies = PolicySet(backbone, mode="full")
    optimizer = torch.optim.AdamW(policies.trainable_parameters(), lr=1e-5)
    objective = DiffusionDPO(beta=500.0)
    g = torch.Generator().manual_seed(0)
    size = backbone.sample_size
    shape = (pairs, backbone.codec.latent_channels, *size)
    x0_w, x0_l = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    cond = backbone.encode(["a red square"] * pairs)

    def step() -> None:
        pair = noise_pair(backbone.process, x0_w, x0_l, generator=g)
        out = objective(predict_pair(policies["policy"], policies.reference, pair, cond), pair)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()

    def reference_forward() -> None:
        pair = noise_pair(backbone.process, x0_w, x0_l, generator=g)
        x_t, t = pair.stacked()
        policies.reference(x_t, t, cond.repeat(2))

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return {
        **counts,
        "step_s": timed(step),
        "ref_fwd_s": timed(reference_forward),
        "image_size": size[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# toy backbones: one full-fine-tuning DPO step on {args.pairs} pairs "
        f"({2 * args.pairs} images), median of {args.repeats}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        "| kind | image | denoiser params | text-encoder params | step s | reference fwd s | step / fwd |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in ("toy", "toy-flux"):
        m = measure(kind, args.pairs, args.repeats)
        text = sum(v for k, v in m.items() if k.startswith("text_encoder"))
        denoiser = m.get("unet", m.get("transformer"))
        print(
            f"| {kind} | {m['image_size']}² | {denoiser:,} | {text:,} | {m['step_s']:.3f} | "
            f"{m['ref_fwd_s']:.3f} | {m['step_s'] / m['ref_fwd_s']:.1f}× |"
        )


if __name__ == "__main__":
    main()
