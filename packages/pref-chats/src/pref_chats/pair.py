"""Saving, loading and sampling a trained CHATS pair.

A CHATS result is two networks and a sampler. On disk (what ``pref-train`` writes to
``RUN/final``, and what :func:`save_pair` writes)::

    final/
      model_index.json, unet/ (or transformer/), text_encoder/, ...   the preferred model θ⁺
                                                                       as a stock diffusers
                                                                       pipeline
      dispreferred/unet/ (or transformer/)                              θ⁻, a diffusers model
      pref_model.json                                                   {"method": "chats",
                                                                       "sampler": {...}, ...}

Any diffusers tool loads ``final/`` as the preferred model alone; :func:`load_pair` (or
``pref-sample --model final/``) loads both and samples with the CHATS rule. LoRA runs also
write ``RUN/lora/``: each policy's adapter in diffusers' LoRA format
(``preferred/pytorch_lora_weights.safetensors``, ``dispreferred/...``) and a manifest naming the
base; :func:`load_pair` on that folder puts both adapters on one copy of the base, and the
sampler evaluates both policies in one mixed-adapter forward per step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pref_chats.guidance import chats_guidance
from pref_chats.objective import CHATS, POLICIES
from pref_core.backbones.guided import GuidedModel, read_manifest, write_manifest

__all__ = [
    "finalize_export",
    "guided_from_policies",
    "load_pair",
    "save_lora_pair",
    "save_pair",
]

METHOD = "chats"
DEFAULT_SAMPLER = {"rule": "proxy", "scale": 5.0, "alpha": 0.5, "null": "empty"}


def _guidance(sampler: Mapping[str, Any]):
    settings = {**DEFAULT_SAMPLER, **dict(sampler)}
    rule = settings.pop("rule")
    return chats_guidance(rule, **settings)


def guided_from_policies(policies: Any, objective: CHATS) -> GuidedModel:
    """The pair being trained (a :class:`~pref_core.backbones.training.PolicySet` with policies
    ``preferred`` and ``dispreferred``) as a sampleable model with the objective's sampler."""
    return GuidedModel(
        policies.backbone,
        {name: policies[name] for name in POLICIES},
        objective.guidance(),
        method=METHOD,
        settings=objective.sampler_settings(),
    )


def _training_fields(objective: CHATS | None) -> dict[str, Any]:
    if objective is None:
        return {}
    return {
        "training": {
            "temperature": objective.temperature,
            "p_uncond": objective.p_uncond,
            "null": objective.null,
            "reference": objective.reference,
        }
    }


def finalize_export(
    policies: Any,
    objective: CHATS,
    out_dir: str | os.PathLike[str],
    *,
    lora_dir: str | os.PathLike[str] | None = None,
    base: str | None = None,
) -> None:
    """The recipe's ``finalize``: ``out_dir`` already holds θ⁺ as a pipeline (the trainer wrote
    the first policy); add θ⁻ as ``dispreferred/<denoiser>/`` and the manifest. LoRA runs also
    get both adapters and their manifest in ``lora_dir`` (:func:`save_lora_pair`)."""
    from pref_core.backbones.export import export_denoiser

    if lora_dir is not None:
        if base is None:
            raise ValueError("a LoRA pair needs the base it was trained on (base=...)")
        save_lora_pair(policies, objective, lora_dir, base)
    out = Path(out_dir)
    component = policies.backbone.denoiser_name
    export_denoiser(policies, "dispreferred", out / "dispreferred" / component)
    write_manifest(
        out,
        METHOD,
        preferred=component,
        dispreferred=f"dispreferred/{component}",
        sampler=objective.sampler_settings(),
        **_training_fields(objective),
    )


def save_lora_pair(
    policies: Any, objective: CHATS | None, out_dir: str | os.PathLike[str], base: str
) -> Path:
    """Write both LoRA adapters of a LoRA :class:`PolicySet` in diffusers' format plus a
    manifest naming ``base`` (hub id or folder): ``load_pair(out_dir)`` rebuilds the pair."""
    from pref_core.backbones.export import export_lora

    if policies.mode != "lora":
        raise ValueError("save_lora_pair needs LoRA policies; use save_pair for full copies")
    out = Path(out_dir)
    config = policies.backbone.model.peft_config[POLICIES[0]]
    for name in POLICIES:
        export_lora(policies, name, out / name)
    sampler = objective.sampler_settings() if objective is not None else DEFAULT_SAMPLER
    write_manifest(
        out,
        METHOD,
        base=str(base),
        adapters={name: name for name in POLICIES},
        lora={
            "rank": int(config.r),
            "alpha": float(config.lora_alpha),
            "target_modules": sorted(config.target_modules),
        },
        sampler=sampler,
        **_training_fields(objective),
    )
    return out


def save_pair(
    backbone: Any,
    dispreferred: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    base: str | None = None,
    sampler: Mapping[str, Any] | None = None,
) -> Path:
    """Write a pair from plain networks: ``backbone`` (its denoiser is θ⁺) and the dispreferred
    denoiser (a pref denoiser wrapper or the diffusers model itself).

    Toy backbones are written with :func:`pref_core.backbones.toy.save_toy`; real ones need
    ``base`` (the pipeline they came from) for the components that did not train.
    """
    from pref_core.backbones.toy import TOY_KINDS, save_toy

    out = Path(out_dir)
    component = backbone.denoiser_name
    if backbone.kind in TOY_KINDS:
        save_toy(backbone, out)
    else:
        if base is None:
            raise ValueError("save_pair needs base= (hub id or folder) for a real backbone")
        import diffusers

        pipeline_class = getattr(diffusers, backbone.pipeline_class)
        pipe = pipeline_class.from_pretrained(str(base), **{component: backbone.model})
        pipe.save_pretrained(out)
    model = getattr(dispreferred, "model", dispreferred)
    model.save_pretrained(out / "dispreferred" / component)
    write_manifest(
        out,
        METHOD,
        preferred=component,
        dispreferred=f"dispreferred/{component}",
        sampler={**DEFAULT_SAMPLER, **dict(sampler or {})},
    )
    return out


def _load_full(folder: Path, manifest: Mapping[str, Any], options: dict[str, Any]) -> GuidedModel:
    from pref_core.backbones.loading import load_backbone

    backbone = load_backbone(str(folder), **options)
    path = folder / manifest.get("dispreferred", f"dispreferred/{backbone.denoiser_name}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is a CHATS pair but {path} holds no diffusers model (config.json); "
            "re-export the run"
        )
    dtype = options.get("dtype", torch.float32)
    model = type(backbone.model).from_pretrained(str(path), torch_dtype=dtype)
    model.to(options.get("device", "cpu"))
    model.requires_grad_(False)
    model.eval()
    dispreferred = type(backbone.denoiser)(model)
    return GuidedModel(
        backbone,
        {"preferred": backbone.denoiser, "dispreferred": dispreferred},
        _guidance(manifest.get("sampler", {})),
        method=METHOD,
        source=str(folder),
        settings=dict(manifest.get("sampler", {})),
    )


def _load_lora(folder: Path, manifest: Mapping[str, Any], options: dict[str, Any]) -> GuidedModel:
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors.torch import load_file

    from pref_core.backbones.export import LORA_WEIGHT_NAME
    from pref_core.backbones.loading import load_backbone
    from pref_core.backbones.training import LoraSettings, PolicySet

    backbone = load_backbone(str(manifest["base"]), **options)
    lora = manifest.get("lora", {})
    policies = PolicySet(
        backbone,
        mode="lora",
        names=POLICIES,
        lora=LoraSettings(
            rank=int(lora.get("rank", 16)),
            alpha=lora.get("alpha"),
            target_modules=lora.get("target_modules"),
        ),
    )
    prefix = f"{backbone.denoiser_name}."
    for name in POLICIES:
        path = folder / manifest["adapters"][name] / LORA_WEIGHT_NAME
        if not path.is_file():
            raise FileNotFoundError(f"CHATS LoRA pair {folder}: missing {path}")
        state = load_file(str(path))
        state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
        policies.load_trainable_state_dict(name, convert_unet_state_dict_to_peft(state))
    for p in policies.trainable_parameters():
        p.requires_grad_(False)
    policies.eval()
    return GuidedModel(
        backbone,
        {name: policies[name] for name in POLICIES},
        _guidance(manifest.get("sampler", {})),
        method=METHOD,
        source=str(folder),
        settings=dict(manifest.get("sampler", {})),
    )


def load_pair(
    folder: str | os.PathLike[str],
    manifest: Mapping[str, Any] | None = None,
    **options: Any,
) -> GuidedModel:
    """Load a CHATS pair saved by the trainer, :func:`save_pair` or :func:`save_lora_pair`.

    Args:
        folder: a ``final/`` folder (two full networks) or a ``lora/`` folder (two adapters on
            a base named in its manifest).
        manifest: the folder's ``pref_model.json`` (read when omitted).
        **options: ``dtype``, ``device`` and other :func:`~pref_core.backbones.loading.load_backbone`
            arguments.

    Returns:
        a :class:`~pref_core.backbones.guided.GuidedModel` with denoisers ``preferred`` and
        ``dispreferred`` and the saved sampler (``model.with_guidance(alpha=...)`` changes it).
    """
    folder = Path(folder)
    if manifest is None:
        manifest = read_manifest(folder)
        if manifest is None:
            raise FileNotFoundError(f"{folder} has no pref_model.json: not a saved CHATS pair")
    if manifest.get("method") != METHOD:
        raise ValueError(f"{folder} holds a {manifest.get('method')!r} model, not a CHATS pair")
    if "adapters" in manifest:
        return _load_lora(folder, manifest, options)
    return _load_full(folder, manifest, options)
