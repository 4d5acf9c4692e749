"""IMG inference: initial generation → MLLM guidance → aligned image-prompt tokens → re-generation.

For each prompt and seed (IMG-main-method.md, "What it does"; supplementary A.4):

1. the base model generates the initial image x⁰ (the IP-Adapter is installed but its scale is
   0, which is exactly the base model: the IP attention adds ``0 · attention``);
2. the finetuned MLLM reads x⁰ with the question "how to make it match <prompt>" and its last
   hidden layer over all tokens is the guidance h (one forward pass, nothing decoded);
3. the IP-Adapter embeds x⁰ into projected tokens c_I; the Implicit Aligner maps (h, c_I) to
   aligned tokens, applied ``aligner_repeats`` times in a row (3, as the public code does);
4. the model re-generates with the **same seed**, conditioned on the prompt and the aligned
   tokens at IP scale 0.2 (the negative branch of CFG gets the black-image tokens).

Multi-round IMG feeds the re-generated image back as the next x⁰ (``rounds``).

:class:`IMGModel` is what ``pref-sample``/``pref-eval`` load from an exported run
(``pref_model.json`` with ``"method": "img"``, through the ``pref.samplers`` entry point
:func:`load_img`): its :meth:`IMGModel.sample` returns the last round's images, so comparing
the base model with an IMG model on the same seeds compares initial and re-generated images.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "IMGModel",
    "IMGResult",
    "IMGSettings",
    "load_img",
    "save_img",
]

ALIGNER_FOLDER = "aligner"


@dataclass(frozen=True)
class IMGSettings:
    """IMG's inference settings (paper and public code defaults).

    Attributes:
        rounds: re-generation rounds (1 = IMG; 2 = the two-round variant of Fig. 7).
        aligner_repeats: times the aligner is applied to the tokens in a row.
        ip_scale: IP-Adapter scale of the re-generation.
    """

    rounds: int = 1
    aligner_repeats: int = 3
    ip_scale: float = 0.2

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if self.aligner_repeats < 0:
            raise ValueError(f"aligner_repeats must be ≥ 0, got {self.aligner_repeats}")


@dataclass
class IMGResult:
    """Images of every stage, each (N, 3, H, W) float32 in [0, 1] on the CPU.

    Attributes:
        initial: the base model's images.
        rounds: the re-generated images of each round (``rounds[-1]`` is IMG's output).
        prompts, seeds: per image.
    """

    initial: Tensor
    rounds: list[Tensor]
    prompts: list[str]
    seeds: list[int]

    @property
    def final(self) -> Tensor:
        return self.rounds[-1]


@dataclass
class IMGModel:
    """The three IMG components around a base model.

    Attributes:
        image_prompt: the base model with its IP-Adapter
            (:class:`~pref_img.image_prompt.ImagePromptModel`).
        detector: the finetuned MLLM (:class:`~pref_img.detector.MisalignmentDetector`).
        aligner: the trained :class:`~pref_img.aligner.ImplicitAligner`.
        settings: the inference settings.
        source: where it was loaded from.
    """

    image_prompt: Any
    detector: Any
    aligner: Any
    settings: IMGSettings = field(default_factory=IMGSettings)
    source: str | None = None
    method: str = "img"

    @property
    def backbone(self) -> Any:
        return self.image_prompt.backbone

    @property
    def kind(self) -> str:
        return self.backbone.kind

    @property
    def sample_size(self) -> tuple[int, int]:
        return self.backbone.sample_size

    def with_settings(self, **changes: Any) -> IMGModel:
        """A copy with :class:`IMGSettings` fields changed (``rounds=2``, ``ip_scale=0.3``);
        ``pref-sample --guidance-set`` calls this."""
        names = {f.name for f in dataclasses.fields(IMGSettings)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"IMG has no settings {unknown}; it has {sorted(names)}")
        counts = ("rounds", "aligner_repeats")  # from the command line they arrive as floats
        changes = {k: int(v) if k in counts else float(v) for k, v in changes.items()}
        return dataclasses.replace(self, settings=dataclasses.replace(self.settings, **changes))

    def to(self, *args: Any, **kwargs: Any) -> IMGModel:
        self.image_prompt.to(*args, **kwargs)
        self.detector.model.to(*args, **kwargs)
        self.aligner.to(*args, **kwargs)
        return self

    # ------------------------------------------------------------------ the stages
    @torch.no_grad()
    def align(self, images: Tensor, prompts: Sequence[str], repeats: int | None = None) -> Tensor:
        """Aligned IP tokens of ``images`` (N, 3, H, W) in [0, 1] for their ``prompts``:
        (N, S, D) — stages 2 and 3. ``repeats=0`` returns the images' own tokens (the MLLM is
        not run): re-generation without alignment, the control of the ablations."""
        repeats = self.settings.aligner_repeats if repeats is None else repeats
        x = images * 2 - 1  # the detector and the image encoder take [-1, 1]
        guidance, mask = self.detector.guidance_features(x, list(prompts))
        tokens = self.image_prompt.encode(x)
        if repeats == 0:  # the control: re-generate from the initial image's own tokens
            return tokens
        p = next(self.aligner.parameters())
        aligned = self.aligner.align(
            tokens.to(device=p.device, dtype=p.dtype),
            guidance.to(device=p.device, dtype=p.dtype),
            mask.to(p.device),
            repeats=repeats,
        )
        return aligned.to(tokens.dtype)

    def run(
        self,
        prompts: str | Sequence[str],
        *,
        seeds: int | Sequence[int] | None = None,
        rounds: int | None = None,
        guidance: Any = None,
        scheduler: str | Any = "default",
        num_inference_steps: int = 30,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 4,
        progress: bool = False,
        initial: Tensor | None = None,
    ) -> IMGResult:
        """Initial generation and ``rounds`` re-generations with the same seeds.

        Args:
            prompts: N prompts.
            seeds: one per image (or the first of N consecutive seeds); default 0 … N−1.
            rounds: default ``settings.rounds``.
            guidance: the text guidance rule of both generations (default: the backbone's).
            initial: (N, 3, H, W) in [0, 1]: start from these images instead of generating.
            scheduler, num_inference_steps, height, width, batch_size, progress: as in
                :func:`pref_core.backbones.sampling.sample`.
        """
        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        n = len(prompt_list)
        if seeds is None:
            seed_list = list(range(n))
        elif isinstance(seeds, int):
            seed_list = list(range(seeds, seeds + n))
        else:
            seed_list = [int(s) for s in seeds]
            if len(seed_list) != n:
                raise ValueError(f"got {len(seed_list)} seeds for {n} prompts; pass one per prompt")
        rounds = self.settings.rounds if rounds is None else int(rounds)
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        kwargs = {
            "seeds": seed_list,
            "guidance": guidance,
            "scheduler": scheduler,
            "num_inference_steps": num_inference_steps,
            "height": height,
            "width": width,
            "batch_size": batch_size,
            "progress": progress,
        }
        ip = self.image_prompt
        if initial is None:
            # Scale 0: the IP branch adds exactly nothing, so this is the base model's image.
            initial = ip.generate(prompt_list, ip.negative_tokens(n), scale=0.0, **kwargs).images
        elif initial.shape[0] != n:
            raise ValueError(f"initial has {initial.shape[0]} images for {n} prompts")
        current = initial
        outputs: list[Tensor] = []
        for _ in range(rounds):
            tokens = torch.cat(
                [
                    self.align(current[i : i + batch_size], prompt_list[i : i + batch_size])
                    for i in range(0, n, batch_size)
                ]
            )
            current = ip.generate(
                prompt_list, tokens, scale=self.settings.ip_scale, **kwargs
            ).images
            outputs.append(current)
        return IMGResult(initial=initial, rounds=outputs, prompts=prompt_list, seeds=seed_list)

    def sample(self, prompts: str | Sequence[str], **kwargs: Any):
        """IMG's images as a :class:`~pref_core.backbones.sampling.SampleResult` (what
        ``pref-sample`` and ``pref-eval`` call); arguments as in :meth:`run` (``output_type``
        ``"pt"`` or ``"pil"``; ``denoisers`` and ``negative_prompts`` are not supported)."""
        from PIL import Image

        from pref_core.backbones.sampling import SampleResult

        output_type = kwargs.pop("output_type", "pt")
        for unsupported in ("denoisers", "negative_prompts"):
            if kwargs.get(unsupported) is not None:
                raise TypeError(f"IMGModel.sample does not take {unsupported}")
            kwargs.pop(unsupported, None)
        result = self.run(prompts, **kwargs)
        images: Any = result.final
        if output_type == "pil":
            images = [
                Image.fromarray((im.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
                for im in images
            ]
        elif output_type != "pt":
            raise ValueError(f"IMGModel.sample makes 'pt' or 'pil' images, not {output_type!r}")
        return SampleResult(images=images, seeds=result.seeds, prompts=result.prompts)


# ---------------------------------------------------------------------------------- on disk
def save_img(
    out_dir: str | os.PathLike[str],
    aligner: Any,
    *,
    base: str,
    ip_adapter: Mapping[str, Any],
    detector: str,
    settings: IMGSettings | None = None,
    denoiser: str | None = None,
    denoiser_subfolder: str | None = None,
) -> Path:
    """Write an IMG model: ``aligner/`` (the trained aligner) and ``pref_model.json`` naming the
    frozen parts by source (hub id or path), which :func:`load_img` loads.

    Args:
        out_dir: the folder (created).
        aligner: the :class:`~pref_img.aligner.ImplicitAligner`.
        base: the diffusion model's source.
        ip_adapter: ``{"source": ..., "weight_name": ..., "subfolder": ..., "image_encoder":
            ..., "image_encoder_subfolder": ...}`` (keys of
            :func:`~pref_img.image_prompt.load_image_prompt_model`; ``None`` values allowed).
        detector: the MLLM's source.
        settings: inference defaults saved with the model.
        denoiser, denoiser_subfolder: a UNet / transformer replacing the base pipeline's own
            (SDXL-DPO on SDXL), as :func:`pref_core.backbones.loading.load_backbone` takes it.
    """
    from pref_core.backbones.guided import write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    aligner.save_pretrained(out / ALIGNER_FOLDER)
    write_manifest(
        out,
        "img",
        base=_portable(base),
        ip_adapter={
            k: _portable(v) if k in ("source", "image_encoder") else v
            for k, v in ip_adapter.items()
        },
        detector=_portable(detector),
        aligner=ALIGNER_FOLDER,
        settings=dataclasses.asdict(settings or IMGSettings()),
        denoiser=_portable(denoiser),
        denoiser_subfolder=denoiser_subfolder,
    )
    return out


def _portable(source: Any) -> Any:
    """A local path as an absolute path (the model folder may be read from elsewhere); a hub
    id unchanged."""
    if source is None:
        return None
    path = Path(str(source))
    return str(path.resolve()) if path.exists() else str(source)


def load_img(
    folder: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    *,
    dtype: torch.dtype | None = None,
    device: Any = None,
    **settings: Any,
) -> IMGModel:
    """Load an IMG model saved by :func:`save_img` (the ``pref.samplers`` loader of ``"img"``).

    Keyword arguments beyond ``dtype`` and ``device`` override the saved
    :class:`IMGSettings` (``rounds=2``); others (a toy ``seed``) are ignored.
    """
    from pref_core.backbones.loading import load_backbone
    from pref_img.aligner import ImplicitAligner
    from pref_img.detector import load_detector
    from pref_img.image_prompt import load_image_prompt_model

    folder = Path(folder)
    dtype = dtype or torch.float32
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    missing = [k for k in ("base", "ip_adapter", "detector") if not manifest.get(k)]
    if missing:
        raise ValueError(f"{folder / 'pref_model.json'} lacks {missing}; re-export the IMG model")
    backbone = load_backbone(
        str(manifest["base"]),
        dtype=dtype,
        device=device,
        denoiser=manifest.get("denoiser"),
        denoiser_subfolder=manifest.get("denoiser_subfolder"),
    )
    ip_spec = dict(manifest["ip_adapter"])
    source = ip_spec.pop("source", None)
    if not source:
        raise ValueError(
            f"{folder / 'pref_model.json'}: ip_adapter has no 'source'; re-export the IMG model"
        )
    image_prompt = load_image_prompt_model(backbone, source, dtype=dtype, device=device, **ip_spec)
    detector = load_detector(str(manifest["detector"]), dtype=dtype, device=device)
    aligner = ImplicitAligner.from_pretrained(
        folder / manifest.get("aligner", ALIGNER_FOLDER), device=device, dtype=dtype
    )
    known = {f.name for f in dataclasses.fields(IMGSettings)}
    saved = {k: v for k, v in dict(manifest.get("settings", {})).items() if k in known}
    saved.update({k: v for k, v in settings.items() if k in known})
    return IMGModel(
        image_prompt=image_prompt,
        detector=detector,
        aligner=aligner.eval(),
        settings=IMGSettings(**saved),
        source=str(folder),
    )
