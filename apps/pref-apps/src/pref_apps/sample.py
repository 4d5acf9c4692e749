"""pref-sample: generate images from a model, a trained run or a pipeline folder.

    pref-sample MODEL_SPEC --prompt TEXT [--prompt TEXT ...] [options]
    pref-sample MODEL_SPEC --prompts-file FILE [options]

MODEL_SPEC is a run directory (its ``final/`` pipeline), a pipeline folder, a hub id or a kind
(``toy``, ``toy-flux``, ``sd15``, ``sdxl``, ``flux``); see
:func:`pref_apps.models.load_for_sampling`. Writes one PNG per image, ``grid.png`` and
``samples.jsonl`` (file, prompt, seed per image) into ``--out``. Bad input exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pref_apps import __version__

PROG = "pref-sample"
USAGE_ERROR = 2


class _UsageError(Exception):
    """Bad command-line input: printed as one message, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate images from a (preference-aligned) text-to-image model with pref's "
        "sampler (per-image seeds: the same seed gives the same image in any batch).",
        epilog="MODEL_SPEC: a run directory (its final/ pipeline), a pipeline folder "
        "(model_index.json), a hub id, or a kind (toy, toy-flux, sd15, sdxl, flux).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("model", metavar="MODEL_SPEC", help="the model to sample")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prompt", action="append", metavar="TEXT", help="a prompt (repeat for more)"
    )
    source.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="a .txt (one prompt per line), .jsonl or .csv (prompt column) file, or toy:N",
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the first image; image i uses S + i",
    )
    seeds.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="S",
        help="one seed per prompt (overrides --seed)",
    )
    parser.add_argument("--steps", type=int, default=30, metavar="N", help="sampling steps")
    parser.add_argument(
        "--guidance-scale",
        type=float,
        metavar="W",
        help="guidance in diffusers' convention (CFG w = 1 + s; FLUX.1-dev: distilled guidance); "
        "default: the model's",
    )
    parser.add_argument(
        "--guidance-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting of a multi-network model's own sampler (a CHATS pair: "
        "scale=S, alpha=A, null=empty|zeros|pipeline); repeatable",
    )
    parser.add_argument(
        "--scheduler", default="default", help="default, ddim, euler, dpm-solver or flow-euler"
    )
    parser.add_argument("--negative-prompt", metavar="TEXT", help="negative prompt for all images")
    parser.add_argument("--height", type=int, help="image height (default: the model's)")
    parser.add_argument("--width", type=int, help="image width (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="B", help="images per batch")
    parser.add_argument("--out", default="samples", metavar="DIR", help="output folder")
    parser.add_argument("--nrow", type=int, help="images per grid row (default ⌈√N⌉)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--dtype", help="float32 (default), bfloat16 or float16")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _err(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _settings(items: list[str]) -> dict[str, object]:
    """``["alpha=0.25", "null=zeros"]`` → ``{"alpha": 0.25, "null": "zeros"}``."""
    settings: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"--guidance-set takes KEY=VALUE, got {item!r}")
        try:
            settings[key] = float(text)
        except ValueError:
            settings[key] = text
    return settings


def _sample(args: argparse.Namespace) -> int:
    from pref_apps import models
    from pref_apps.evaluation import PromptSpecError, load_prompts, resolve_guidance

    for name in ("steps", "batch_size", "nrow"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise _UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.prompt is not None:
        prompts = [p for p in args.prompt if p.strip()]
        if len(prompts) != len(args.prompt):
            raise _UsageError("--prompt must not be empty")
    else:
        try:
            prompts = list(load_prompts(args.prompts_file).texts)
        except PromptSpecError as exc:
            raise _UsageError(str(exc)) from None
    if args.seeds is not None:
        if len(args.seeds) != len(prompts):
            raise _UsageError(
                f"--seeds got {len(args.seeds)} seeds for {len(prompts)} prompts; pass one per "
                "prompt, or --seed S for S, S+1, ..."
            )
        seeds = list(args.seeds)
    else:
        seeds = list(range(args.seed, args.seed + len(prompts)))

    try:
        backbone = models.load_for_sampling(
            args.model, dtype=models.parse_dtype(args.dtype), device=args.device
        )
    except models.ModelSpecError as exc:
        raise _UsageError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise _UsageError(f"could not load {args.model!r}: {exc}") from None

    from pref_core.backbones.guided import GuidedModel
    from pref_core.backbones.sampling import make_scheduler, sample

    denoisers = None
    sampler = None  # a model that samples itself (IMG)
    try:
        if models.samples_itself(backbone):
            if args.guidance_set:
                backbone = backbone.with_settings(**_settings(args.guidance_set))
            sampler = backbone.sample
            backbone = backbone.backbone
            guidance = resolve_guidance(backbone, guidance_scale=args.guidance_scale)
        elif isinstance(backbone, GuidedModel):
            if args.guidance_scale is not None:
                raise _UsageError(
                    f"{args.model} is a {backbone.method} model that samples with its own rule "
                    f"({backbone.guidance!r}); change its scale with --guidance-set scale=S"
                )
            backbone = backbone.with_guidance(**_settings(args.guidance_set))
            guidance, denoisers = backbone.guidance, dict(backbone.denoisers)
            backbone = backbone.backbone
        elif args.guidance_set:
            raise _UsageError(
                "--guidance-set changes the sampler of a multi-network model (a CHATS pair); "
                f"{args.model} is a single model: use --guidance-scale"
            )
        else:
            guidance = resolve_guidance(backbone, guidance_scale=args.guidance_scale)
        make_scheduler(backbone, args.scheduler)
    except (TypeError, ValueError) as exc:
        raise _UsageError(str(exc)) from None
    common = {
        "guidance": guidance,
        "scheduler": args.scheduler,
        "num_inference_steps": args.steps,
        "height": args.height,
        "width": args.width,
        "seeds": seeds,
        "batch_size": args.batch_size,
        "progress": not args.no_progress,
        "output_type": "pil",
    }
    if sampler is not None:
        if args.negative_prompt:
            raise _UsageError(f"{args.model} samples itself and takes no --negative-prompt")
        result = sampler(prompts, **common)
    else:
        result = sample(
            backbone,
            prompts,
            denoisers=denoisers,
            negative_prompts=args.negative_prompt,
            **common,
        )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (image, prompt, seed) in enumerate(
        zip(result.images, result.prompts, result.seeds, strict=True)
    ):
        name = f"{index:04d}-seed{seed}.png"
        image.save(out / name, format="PNG")
        records.append({"file": name, "prompt": prompt, "seed": seed})
    grid = result.save_grid(out / "grid.png", nrow=args.nrow)
    manifest = out / "samples.jsonl"
    manifest.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    print(f"wrote {len(records)} images, {grid.name} and {manifest.name} to {out}")
    print(f"guidance: {guidance!r}; scheduler: {args.scheduler}; steps: {args.steps}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run pref-sample on ``argv`` (``sys.argv[1:]`` by default); return the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _sample(args)
    except _UsageError as exc:
        _err(str(exc))
        return USAGE_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
