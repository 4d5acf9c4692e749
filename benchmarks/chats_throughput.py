"""CHATS sampling throughput against plain CFG, in the same run (the paper's Table 6 analogue).

Configurations, all through pref's sampling loop with the same scheduler and steps:

- ``cfg``              the base with classifier-free guidance: one batched call on [∅; c]
- ``chats-full``       two full networks, proxy prompt (Eq. 17): two calls per step (on CUDA
                       the two calls run on two streams)
- ``chats-lora``       two LoRA adapters on one network, proxy prompt: one mixed-adapter call
                       per step on [c; ĉ]
- ``chats-lora-3term`` two LoRA adapters, the exact three-term rule (Eq. 16): one call on 3B

The paper reports CHATS at −11% (batch 1) and −3% (batch 4) of CFG's images/s on SDXL (A100,
bf16, 50 steps, two full networks run one after the other). Prints images/s (median of
``--repeats``) and each ratio to CFG at the same batch size.

    python benchmarks/chats_throughput.py                                  # toy model, CPU
    python benchmarks/chats_throughput.py --model sdxl --device cuda --dtype bfloat16 \\
        --steps 50 --height 1024 --width 1024                              # the paper's setting
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="toy", help="kind, hub id or folder (default: toy)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--lora-rank", type=int, default=64)
    args = parser.parse_args(argv)

    from pref_chats import ProxyPromptGuidance, ThreeTermGuidance
    from pref_core.backbones.guidance import ClassifierFreeGuidance
    from pref_core.backbones.loading import load_backbone
    from pref_core.backbones.sampling import sample
    from pref_core.backbones.training import LoraSettings, PolicySet

    dtype = getattr(torch, args.dtype)
    backbone = load_backbone(args.model, dtype=dtype, device=args.device)
    backbone.denoiser.requires_grad_(False)
    second = copy.deepcopy(backbone.denoiser)  # θ⁻ as a full copy (same cost as a trained one)
    lora_backbone = load_backbone(args.model, dtype=dtype, device=args.device)
    policies = PolicySet(
        lora_backbone,
        mode="lora",
        names=("preferred", "dispreferred"),
        lora=LoraSettings(rank=args.lora_rank),
    )
    for p in policies.trainable_parameters():
        p.requires_grad_(False)
        p.data = p.data.to(dtype)
    policies.eval()
    lora = {n: policies[n] for n in ("preferred", "dispreferred")}
    full = {"preferred": backbone.denoiser, "dispreferred": second}
    configs = {
        "cfg": (backbone, ClassifierFreeGuidance(5.0), None),
        "chats-full": (backbone, ProxyPromptGuidance(5.0, 0.5), full),
        "chats-lora": (lora_backbone, ProxyPromptGuidance(5.0, 0.5), lora),
        "chats-lora-3term": (lora_backbone, ThreeTermGuidance(5.0, 0.5), lora),
    }
    scheduler = "flow-euler" if backbone.kind in ("flux", "toy-flux") else "ddim"
    prompts = ["a photo of a red apple on a wooden table"] * max(args.batch_sizes)
    print(
        f"model {args.model} ({backbone.kind}), {args.device}, {args.dtype}, {args.steps} steps, "
        f"{torch.get_num_threads()} CPU threads, LoRA rank {args.lora_rank}"
    )
    print("\n| configuration | batch | images/s | ratio to CFG |")
    print("| --- | --- | --- | --- |")
    for batch in args.batch_sizes:
        rates = {}
        for name, (model, guidance, denoisers) in configs.items():
            runs = []
            for repeat in range(args.repeats + 1):  # the first run warms up
                _sync(args.device)
                started = time.perf_counter()
                sample(
                    model,
                    prompts[:batch],
                    guidance=guidance,
                    denoisers=denoisers,
                    scheduler=scheduler,
                    num_inference_steps=args.steps,
                    height=args.height,
                    width=args.width,
                    batch_size=batch,
                    progress=False,
                    output_type="latent",
                )
                _sync(args.device)
                if repeat:
                    runs.append(batch / (time.perf_counter() - started))
            rates[name] = statistics.median(runs)
            ratio = rates[name] / rates["cfg"]
            print(f"| {name} | {batch} | {rates[name]:.3f} | {ratio:.3f} ({ratio - 1:+.1%}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
