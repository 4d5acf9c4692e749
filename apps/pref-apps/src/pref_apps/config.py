"""Typed training configuration: dataclasses with help text, YAML files and ``key=value`` overrides.

A run's configuration is built in layers, each validated as it is applied:

1. the trainer's defaults (the dataclasses below);
2. the recipe's :attr:`~pref_core.recipes.Recipe.defaults`;
3. a YAML file (``--config FILE``, as written by ``pref-train cp``);
4. ``key=value`` overrides from the command line (``optim.lr=1e-5 train.steps=100``).

Every key is checked against the dataclass fields (an unknown key is an error that lists the
valid keys and the closest match) and every value is converted to the field's type (a value that
does not convert is an error naming the key, the expected type and the value). The free-form
``objective`` section is checked against the signature of the recipe's objective.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message says which and how to fix it."""


def _help(text: str, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"help": text}
    if choices:
        meta["choices"] = choices
    return meta


@dataclass
class ModelConfig:
    base: str = field(
        default="toy-pretrained:toy",
        metadata=_help(
            "model to start from: a hub id, a local pipeline folder, a toy kind ('toy', "
            "'toy-flux': fresh random weights) or 'toy-pretrained:KIND' (the toy base trained "
            "by the toy-pretrain recipe, trained on first use and cached)"
        ),
    )
    revision: str | None = field(default=None, metadata=_help("hub revision (branch, tag, sha)"))
    variant: str | None = field(default=None, metadata=_help("weights variant, e.g. 'fp16'"))
    dtype: str = field(
        default="float32",
        metadata=_help(
            "dtype of the frozen parts (text encoders, VAE, the reference)",
            ("float32", "bfloat16", "float16"),
        ),
    )
    mode: str = field(
        default="full",
        metadata=_help("what trains: LoRA adapters or all weights", ("lora", "full")),
    )
    lora_rank: int = field(default=16, metadata=_help("LoRA rank r"))
    lora_alpha: float | None = field(default=None, metadata=_help("LoRA alpha (default: r)"))
    lora_dropout: float = field(default=0.0, metadata=_help("LoRA dropout"))
    mixed_precision: str = field(
        default="no",
        metadata=_help("autocast dtype of the trainable forward", ("no", "bf16", "fp16")),
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute activations in backward to save memory")
    )
    train_text_encoder: bool = field(
        default=False,
        metadata=_help(
            "also train the text encoder(s); for toy bases trained from scratch, whose random "
            "text encoder would otherwise give the denoiser only fixed random prompt features"
        ),
    )
    flow_density: str | None = field(
        default=None,
        metadata=_help(
            "flow models: timestep density for training ('logit_normal', 'uniform'); "
            "default: the backbone's"
        ),
    )


@dataclass
class DataConfig:
    source: str = field(
        default="toy-pairs",
        metadata=_help(
            "training data: 'toy-pairs', 'toy-pretrain', 'toy-winners', 'toy-pair-images' (the toy world), or a "
            "pref_data source spec: 'pickapic:PATH_OR_ID', 'oip:PATH_OR_ID', 'hpdv2:PATH', "
            "'wds:GLOB', a .jsonl/.csv manifest or a folder (see docs/data.md)"
        ),
    )
    split: str = field(default="train", metadata=_help("dataset split"))
    size: int = field(default=8192, metadata=_help("toy world: number of items"))
    seed: int = field(default=0, metadata=_help("toy world: data seed"))
    flip_rate: float = field(
        default=0.1, metadata=_help("toy pairs: share of pairs whose labels are flipped (noise)")
    )
    defect_rate: float = field(
        default=0.3, metadata=_help("toy pretraining data: share of defective images")
    )
    resolution: int | None = field(
        default=None, metadata=_help("training image size (default: the model's sample size)")
    )
    crop: str = field(default="random", metadata=_help("crop of real images", ("random", "center")))
    flip_prob: float = field(
        default=0.5, metadata=_help("horizontal flip probability (real images)")
    )
    prompt_dropout: float = field(
        default=0.0,
        metadata=_help("share of prompts replaced by the empty prompt (Diffusion-DPO: 0.2)"),
    )
    cache: str | None = field(
        default=None,
        metadata=_help(
            "folder of a latent/text cache to build on first use and then read memory-mapped"
        ),
    )


@dataclass
class OptimConfig:
    optimizer: str = field(default="adamw", metadata=_help("optimiser", ("adamw", "adafactor")))
    lr: float = field(default=1e-4, metadata=_help("learning rate (before scaling)"))
    scale_lr: bool = field(
        default=False,
        metadata=_help(
            "multiply lr by the total batch (processes × batch × accumulation), as the papers do"
        ),
    )
    weight_decay: float = field(default=0.0, metadata=_help("decoupled weight decay"))
    beta1: float = field(default=0.9, metadata=_help("AdamW β1"))
    beta2: float = field(default=0.999, metadata=_help("AdamW β2"))
    eps: float = field(default=1e-8, metadata=_help("AdamW ε"))
    max_grad_norm: float | None = field(
        default=1.0, metadata=_help("clip the gradient norm (null: no clipping)")
    )
    schedule: str = field(
        default="constant",
        metadata=_help("LR schedule after warmup", ("constant", "linear", "cosine")),
    )
    warmup_steps: int = field(default=0, metadata=_help("linear warmup steps"))


@dataclass
class TrainLoopConfig:
    steps: int = field(default=200, metadata=_help("optimiser steps"))
    batch_size: int = field(
        default=8, metadata=_help("pairs (or images) per process per micro-batch")
    )
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimiser step"))
    seed: int = field(default=0, metadata=_help("seed of initialisation, data order and noise"))


@dataclass
class LogConfig:
    output_dir: str | None = field(
        default=None, metadata=_help("run directory (default: runs/RECIPE-DATE-TIME)")
    )
    every: int = field(default=10, metadata=_help("log metrics every N steps"))
    sample_every: int = field(
        default=0, metadata=_help("write a sample grid every N steps (0: start and end only)")
    )
    sample_prompts: list[str] = field(
        default_factory=list,
        metadata=_help(
            "prompts of the sample grids (default: the recipe's or 8 from the eval set)"
        ),
    )
    sample_steps: int = field(default=20, metadata=_help("sampling steps of the grids"))
    checkpoint_every: int = field(
        default=0, metadata=_help("checkpoint every N steps (0: end only)")
    )
    keep_last: int = field(default=2, metadata=_help("checkpoints to keep"))
    tensorboard: bool = field(default=True, metadata=_help("write TensorBoard logs to RUN/tb"))
    progress: bool = field(default=True, metadata=_help("show progress bars"))


@dataclass
class EvalConfig:
    prompts: str | None = field(
        default=None,
        metadata=_help(
            "prompt set to evaluate at the end ('toy:200', a .txt/.jsonl file; null: skip)"
        ),
    )
    scorer: str = field(default="toy-oracle", metadata=_help("scorer name (pref-eval ls)"))
    steps: int = field(default=20, metadata=_help("sampling steps"))
    guidance_scale: float | None = field(
        default=None,
        metadata=_help(
            "guidance scale w as in diffusers (CFG s = w - 1; FLUX.1-dev: distilled guidance), "
            "also used for the sample grids (default: the model's)"
        ),
    )
    scheduler: str = field(
        default="default",
        metadata=_help(
            "sampler of the evaluation and the sample grids: 'default' (the model's own), 'auto' "
            "(DDIM for models shipping the ancestral DDPM sampler, else their own), 'ddim', "
            "'euler', 'dpm-solver', 'flow-euler' or a diffusers scheduler class name"
        ),
    )
    batch_size: int = field(default=50, metadata=_help("images per sampling batch"))
    seed: int = field(
        default=0, metadata=_help("first sampling seed (the same for base and tuned)")
    )


@dataclass
class RunConfig:
    recipe: str = field(default="", metadata=_help("the recipe (pref-train ls)"))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: dict[str, Any] = field(
        default_factory=dict, metadata=_help("arguments of the recipe's objective (e.g. beta)")
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resume: str | None = field(
        default=None, metadata=_help("'latest' or a checkpoint folder to continue from")
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("model", "data", "objective", "optim", "train", "log", "eval")


# ------------------------------------------------------------------------------ conversion
def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    inner, optional = _strip_optional(tp)
    name = getattr(inner, "__name__", str(inner))
    if typing.get_origin(inner) is list:
        name = "list of " + getattr(typing.get_args(inner)[0], "__name__", "values")
    return f"{name} or null" if optional else name


def parse_value(text: str) -> Any:
    """A command-line value as YAML (``1e-5`` → float, ``true`` → bool, ``null`` → None)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads '1e-5' as a string; accept the usual float spellings.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def convert(key: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (a field annotation), or :class:`ConfigError`."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} cannot be null; it expects a {_type_name(tp)}")
    bad = ConfigError(f"{key} expects a {_type_name(tp)}, got {value!r}")
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if inner is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if inner is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if inner is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if "," in value else [value]
        if not isinstance(value, list):
            raise bad
        return [convert(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if typing.get_origin(inner) is dict or inner is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _section_fields(section: str) -> tuple[type, dict[str, dataclasses.Field]]:
    cls = _hints(RunConfig)[section]
    return cls, {f.name: f for f in fields(cls)}


def valid_keys() -> list[str]:
    keys = ["recipe", "resume"]
    for section in SECTIONS:
        if section == "objective":
            keys.append("objective.*")
            continue
        _, section_fields = _section_fields(section)
        keys += [f"{section}.{name}" for name in section_fields]
    return keys


def set_key(
    config: RunConfig, key: str, value: Any, *, objective_params: Mapping[str, Any] | None = None
) -> None:
    """Set dotted ``key`` (``optim.lr``) to ``value``, converted and checked."""
    parts = key.split(".")
    if len(parts) == 1:
        if key in ("recipe", "resume"):
            setattr(config, key, convert(key, value, _hints(RunConfig)[key]))
            return
        if key in SECTIONS:
            raise ConfigError(
                f"{key!r} is a section; set its keys one by one ({key}.NAME=VALUE) or in a "
                "config file"
            )
        raise ConfigError(
            f"unknown setting {key!r}.{_suggest(key, valid_keys())} Valid keys: {', '.join(valid_keys())}"
        )
    section, name = parts[0], ".".join(parts[1:])
    if section not in SECTIONS:
        raise ConfigError(
            f"unknown section {section!r} in {key!r}; sections are: {', '.join(SECTIONS)}."
            f"{_suggest(section, list(SECTIONS))}"
        )
    if section == "objective":
        if objective_params is not None and name not in objective_params:
            listed = ", ".join(sorted(objective_params)) or "none"
            raise ConfigError(
                f"unknown objective setting {key!r}; the recipe's objective takes: {listed}."
                f"{_suggest(name, list(objective_params))}"
            )
        annotation = objective_params.get(name) if objective_params else None
        config.objective[name] = (
            convert(key, value, annotation)
            if annotation not in (None, inspect.Parameter.empty)
            else value
        )
        return
    cls, section_fields = _section_fields(section)
    if name not in section_fields:
        valid = list(section_fields)
        raise ConfigError(
            f"unknown setting {key!r}.{_suggest(name, valid)} Valid {section}.* keys: "
            f"{', '.join(valid)}"
        )
    choices = section_fields[name].metadata.get("choices")
    if choices and isinstance(value, bool):
        # YAML 1.1 reads no/off/false (yes/on/true) as booleans: take the choice spelled so.
        spellings = ("yes", "on", "true") if value else ("no", "off", "false")
        value = next((c for c in choices if c.lower() in spellings), value)
    value = convert(key, value, _hints(cls)[name])
    if choices and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    setattr(getattr(config, section), name, value)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping → dotted keys (the objective section stays one level deep)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and (prefix == "" and key in SECTIONS):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-5", ...]`` → ``{"optim.lr": 1e-5}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"cannot read {item!r}: overrides are KEY=VALUE (e.g. optim.lr=1e-5 "
                "train.steps=100); `pref-train cp RECIPE FILE` writes every key with its help"
            )
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has no key before '='")
        out[key] = parse_value(text)
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}"
        )
    return flatten(data)


def objective_parameters(factory: Any) -> dict[str, Any]:
    """Keyword parameters of an objective factory, with their annotations."""
    if factory is None:
        return {}
    signature = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:
        hints = {}
    return {
        name: hints.get(name, inspect.Parameter.empty)
        for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self"
    }


def objective_defaults(factory: Any) -> dict[str, Any]:
    if factory is None:
        return {}
    return {
        name: p.default
        for name, p in inspect.signature(factory).parameters.items()
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_config(recipe: Any, layers: list[tuple[str, Mapping[str, Any]]]) -> RunConfig:
    """The trainer defaults, then the recipe's defaults, then each (origin, dotted mapping)."""
    config = RunConfig(recipe=recipe.name)
    params = objective_parameters(recipe.settings_factory)
    config.objective.update(
        {
            k: v
            for k, v in objective_defaults(recipe.settings_factory).items()
            if k != "kernel_backend"
        }
    )
    for origin, mapping in [("recipe " + recipe.name, recipe.defaults), *layers]:
        for key, value in mapping.items():
            if key == "recipe":
                if value != recipe.name:
                    raise ConfigError(
                        f"{origin} is for recipe {value!r} but --recipe is {recipe.name!r}"
                    )
                continue
            try:
                set_key(config, key, value, objective_params=params)
            except ConfigError as exc:
                raise ConfigError(f"{origin}: {exc}") from None
    check(config)
    return config


def check(config: RunConfig) -> None:
    """Cross-field checks that need no model or data."""
    positive = {
        "train.steps": config.train.steps,
        "train.batch_size": config.train.batch_size,
        "train.grad_accum": config.train.grad_accum,
        "log.every": config.log.every,
        "log.keep_last": config.log.keep_last,
        "log.sample_steps": config.log.sample_steps,
        "eval.steps": config.eval.steps,
        "eval.batch_size": config.eval.batch_size,
        "data.size": config.data.size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    for key, value in {
        "data.flip_rate": config.data.flip_rate,
        "data.defect_rate": config.data.defect_rate,
        "data.flip_prob": config.data.flip_prob,
        "data.prompt_dropout": config.data.prompt_dropout,
    }.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must be within [0, 1], got {value}")
    if config.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {config.optim.lr}")
    if config.optim.warmup_steps < 0:
        raise ConfigError("optim.warmup_steps must be >= 0")
    if config.model.mode == "lora" and config.model.lora_rank < 1:
        raise ConfigError("model.lora_rank must be at least 1")


def to_yaml(config: RunConfig, *, with_help: bool = False) -> str:
    """The config as YAML; with help comments above each key when ``with_help``."""
    data = config.to_dict()
    if not with_help:
        return yaml.safe_dump(data, sort_keys=False)
    lines = [
        f"# pref-train configuration for recipe {config.recipe!r}.",
        "# Run it: pref-train --config THIS_FILE [key=value ...]",
        f"recipe: {config.recipe}",
    ]
    for section in SECTIONS:
        lines.append("")
        if section == "objective":
            lines.append("# arguments of the recipe's objective")
            lines.append(yaml.safe_dump({"objective": data["objective"]}, sort_keys=False).rstrip())
            continue
        _, section_fields = _section_fields(section)
        lines.append(f"{section}:")
        for name, f in section_fields.items():
            meta = f.metadata
            text = meta.get("help", "")
            if meta.get("choices"):
                text += f" [{' | '.join(meta['choices'])}]"
            lines.append(f"  # {text}")
            dumped = yaml.safe_dump(
                {name: data[section][name]}, sort_keys=False, width=1000
            ).rstrip()
            lines += ["  " + line for line in dumped.splitlines()]
    lines += [
        "",
        "# 'latest' or a checkpoint folder",
        yaml.safe_dump({"resume": data["resume"]}).rstrip(),
    ]
    return "\n".join(lines) + "\n"
