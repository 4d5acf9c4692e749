"""Export trained policies in formats stock diffusers loads.

- Full fine-tuning: the denoiser as a diffusers model folder
  (``UNet2DConditionModel.from_pretrained(out)`` / ``FluxTransformer2DModel.from_pretrained(out)``),
  or a whole pipeline folder with the trained denoiser in place.
- LoRA: ``pytorch_lora_weights.safetensors`` in diffusers' format with the adapter's config
  (rank, alpha, targets) as metadata, so ``pipe.load_lora_weights(out)`` reproduces the policy.
"""

from __future__ import annotations

import copy
from pathlib import Path

from peft.utils import get_peft_model_state_dict

from pref_core.backbones.training import PolicySet

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _pipeline_class(name: str):
    import diffusers

    try:
        return getattr(diffusers, name)
    except AttributeError:
        raise ValueError(f"diffusers has no pipeline class {name!r}") from None


def export_lora(policies: PolicySet, name: str, out_dir: str | Path) -> Path:
    """Write policy ``name``'s LoRA as diffusers LoRA weights; returns the weights file.

    Load it with ``Pipeline.from_pretrained(base).load_lora_weights(out_dir)``.
    """
    if policies.mode != "lora":
        raise ValueError("export_lora needs a LoRA-trained PolicySet; use export_denoiser")
    policies.policy(name)
    from diffusers.utils import convert_state_dict_to_diffusers

    model = policies.backbone.model
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(model, adapter_name=name))
    metadata = model.peft_config[name].to_dict()
    component = policies.backbone.denoiser_name  # "unet" or "transformer"
    pipeline_class = _pipeline_class(policies.backbone.pipeline_class)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(
        out,
        **{f"{component}_lora_layers": state, f"{component}_lora_adapter_metadata": metadata},
        weight_name=LORA_WEIGHT_NAME,
    )
    return out / LORA_WEIGHT_NAME


def export_denoiser(policies: PolicySet, name: str, out_dir: str | Path) -> Path:
    """Write policy ``name``'s full denoiser as a diffusers model folder.

    For a LoRA policy the adapter is merged into a copy of the base weights first, so the folder
    loads with plain ``from_pretrained`` and no peft.
    """
    policies.policy(name)
    out = Path(out_dir)
    if policies.mode == "full":
        policies.denoiser_module(name).model.save_pretrained(out)
        return out
    model = copy.deepcopy(policies.backbone.model)
    _merge_adapter(model, name)
    model.save_pretrained(out)
    return out


def _merge_adapter(model, name: str) -> None:
    """Fold adapter ``name`` into the base weights of ``model`` and drop every adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[name])
    # Replace every tuner layer by its (merged) base layer.
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, child_name, child.get_base_layer())
    # The model is plain again: no adapter config to save alongside the weights.
    model.__dict__.pop("peft_config", None)
    model._hf_peft_config_loaded = False


def export_pipeline(policies: PolicySet, name: str, base: str | Path, out_dir: str | Path) -> Path:
    """A whole diffusers pipeline folder: ``base``'s components with policy ``name``'s denoiser.

    ``base`` is the pipeline the backbone was loaded from (hub id or directory).
    """
    pipeline_class = _pipeline_class(policies.backbone.pipeline_class)
    denoiser_dir = Path(out_dir) / policies.backbone.denoiser_name
    export_denoiser(policies, name, denoiser_dir)
    model_class = type(policies.backbone.model)
    denoiser = model_class.from_pretrained(denoiser_dir)
    pipe = pipeline_class.from_pretrained(str(base), **{policies.backbone.denoiser_name: denoiser})
    pipe.save_pretrained(out_dir)
    return Path(out_dir)
