"""Training modes: which parameters train, and what the reference model is.

One API, :class:`PolicySet`, serves both modes:

- ``mode="lora"``: LoRA adapters (peft) on the backbone's frozen network, one per policy name.
  The reference is the *same* network with its adapters disabled — no second copy in memory
  (the diffusers Diffusion-DPO LoRA design). Two names give two adapters on one base, selected
  per forward call (CHATS trains a preferred and a dispreferred model this way).
- ``mode="full"``: every policy is an independent trainable copy of the denoiser; the reference
  is the original, frozen.

Mixed precision: with ``mixed_precision="bf16"`` (or ``"fp16"``) frozen weights are cast to that
dtype, trainable weights (LoRA matrices, full copies) stay float32, and forwards run under
``torch.autocast``. Gradient checkpointing and ``torch.compile`` are switches. Attention uses
PyTorch's scaled-dot-product attention, diffusers' default processor.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pref_core._optional import import_optional
from pref_core.backbones.base import Backbone
from pref_core.conditioning import Conditioning

import_optional("peft", extra="peft", purpose="LoRA training (pref_core.backbones.training)")

from peft import LoraConfig  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict  # noqa: E402

Mode = Literal["lora", "full"]
MIXED_PRECISION = {None: None, "no": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Attention projections: the modules LoRA adapts by default, per network.
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FLUX_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (Hu et al. 2022): ΔW = (alpha / rank) · B A.

    Attributes:
        rank: r, the inner dimension.
        alpha: scale numerator; ``None`` means ``alpha = rank`` (scale 1).
        target_modules: module names to adapt; ``None`` picks the attention projections of the
            network (``UNET_LORA_TARGETS`` / ``FLUX_LORA_TARGETS``).
        init: peft's ``init_lora_weights``: ``True`` (Kaiming A, zero B), ``"gaussian"``, or
            another peft scheme. B starts at zero in every standard scheme, so a fresh adapter
            predicts exactly what the base does.
        dropout: LoRA dropout.
    """

    rank: int = 16
    alpha: float | None = None
    target_modules: Sequence[str] | None = None
    init: bool | str = "gaussian"
    dropout: float = 0.0

    def config(self, default_targets: Sequence[str]) -> LoraConfig:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha if self.alpha is not None else self.rank,
            target_modules=list(self.target_modules or default_targets),
            init_lora_weights=self.init,
            lora_dropout=self.dropout,
        )


class _Policy(nn.Module):
    """A named policy: a :class:`~pref_core.protocols.Denoiser` that trains."""

    def __init__(self, owner: PolicySet, name: str) -> None:
        super().__init__()
        self._owner = [owner]  # a list: not a registered submodule (no parameter double count)
        self.name = name

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        return self._owner[0]._forward(self.name, x_t, timesteps, cond)

    def _first_parameter(self) -> Tensor:
        module = self._owner[0]._denoisers[self.name]
        return next(p for p in module.parameters() if p.is_floating_point())

    @property
    def device(self) -> torch.device:
        """Where the policy's network lives (it holds no parameters itself)."""
        return self._first_parameter().device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the policy's network weights (the frozen base's under LoRA)."""
        return self._first_parameter().dtype

    @property
    def joint_group(self) -> PolicySet:
        """The set this policy belongs to: policies of one set can run in one mixed forward
        (:meth:`PolicySet.mixed_forward`, used by :func:`pref_core.backbones.joint.run_jointly`)."""
        return self._owner[0]

    @property
    def joint_name(self) -> str:
        return self.name

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class _Reference(nn.Module):
    """The frozen reference as a :class:`~pref_core.protocols.Denoiser` (runs without grad)."""

    def __init__(self, owner: PolicySet) -> None:
        super().__init__()
        self._owner = [owner]

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        return self._owner[0]._forward_reference(x_t, timesteps, cond)


class PolicySet:
    """Trainable policies on one backbone, and the frozen reference they are measured against.

    Args:
        backbone: the loaded backbone; its denoiser becomes the reference (full mode) or the
            frozen base of the adapters (LoRA mode). Its text encoders and codec stay frozen.
        mode: ``"lora"`` or ``"full"``.
        names: one name per policy (``("policy",)``; CHATS: ``("preferred", "dispreferred")``).
        lora: LoRA settings (LoRA mode).
        mixed_precision: ``None``, ``"bf16"`` or ``"fp16"``.
        gradient_checkpointing: recompute activations in backward (diffusers' switch).
        compile: ``False``, ``True``, or keyword arguments for ``torch.compile`` applied to the
            denoiser forward.

    Use ``policies["name"]`` (or :meth:`policy`) and :attr:`reference` wherever pref expects a
    :class:`~pref_core.protocols.Denoiser`, e.g. ``predict_pair(policies["policy"],
    policies.reference, pair, cond)``.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        mode: Mode = "lora",
        names: Sequence[str] = ("policy",),
        lora: LoraSettings = LoraSettings(),
        mixed_precision: str | None = None,
        gradient_checkpointing: bool = False,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        if mode not in ("lora", "full"):
            raise ValueError(f"unknown training mode {mode!r}; use 'lora' or 'full'")
        names = tuple(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"policy names must be non-empty and distinct, got {names}")
        if mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"unknown mixed_precision {mixed_precision!r}; use None, 'bf16' or 'fp16'"
            )
        self.backbone = backbone
        self.mode: Mode = mode
        self.names = names
        self.lora = lora
        self.autocast_dtype = MIXED_PRECISION[mixed_precision]
        self._compile = dict(compile) if isinstance(compile, Mapping) else ({} if compile else None)

        # Text encoders and codec never train here.
        for part in (backbone.encoder, backbone.codec):
            if isinstance(part, nn.Module):
                part.requires_grad_(False)

        base = backbone.denoiser
        base.requires_grad_(False)
        self._denoisers: dict[str, nn.Module] = {}
        self._trainable: dict[str, list[nn.Parameter]] = {}
        if mode == "lora":
            self._setup_lora(base)
        else:
            self._setup_full(base)
        if gradient_checkpointing:
            for module in {id(m): m for m in self._denoisers.values()}.values():
                module.model.enable_gradient_checkpointing()
        self._policies = {name: _Policy(self, name) for name in names}
        self.reference = _Reference(self)

    # ------------------------------------------------------------------ setup
    def _setup_lora(self, base: nn.Module) -> None:
        model = base.model
        if getattr(model, "peft_config", None):
            existing = sorted(model.peft_config)
            raise ValueError(
                f"the denoiser already carries adapters {existing}; load a fresh backbone"
            )
        targets = (
            FLUX_LORA_TARGETS if self.backbone.denoiser_name == "transformer" else UNET_LORA_TARGETS
        )
        if self.autocast_dtype is not None:
            base.to(self.autocast_dtype)
        for name in self.names:
            model.add_adapter(self.lora.config(targets), adapter_name=name)
        self._tuner_layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        # Mixed-adapter forwards: every tuner layer reads the per-sample adapter names from
        # here (None: the active adapter as usual). The names stay set until the next forward,
        # so a backward that recomputes activations (gradient checkpointing) sees them too.
        self._mixed_names: list[str] | None = None
        for layer in self._tuner_layers:
            layer.register_forward_pre_hook(self._inject_adapter_names, with_kwargs=True)
        for name in self.names:
            params = [
                p
                for pname, p in model.named_parameters()
                if "lora_" in pname and f".{name}." in pname
            ]
            for p in params:
                p.data = p.data.float()  # LoRA weights train in fp32 whatever the base dtype
            self._trainable[name] = params
            self._denoisers[name] = base
        self._active: str | None = None
        self._activate(self.names[0])

    def _setup_full(self, base: nn.Module) -> None:
        for name in self.names:
            policy = copy.deepcopy(base).float() if self.autocast_dtype else copy.deepcopy(base)
            policy.requires_grad_(True)
            self._denoisers[name] = policy
            self._trainable[name] = list(policy.parameters())
        if self.autocast_dtype is not None:
            base.to(self.autocast_dtype)

    # ------------------------------------------------------------------ adapter switching
    def _restore_trainable(self) -> None:
        # peft marks only the active adapter trainable; every policy here trains.
        for params in self._trainable.values():
            for p in params:
                p.requires_grad_(True)

    def _inject_adapter_names(self, module: nn.Module, args: tuple, kwargs: dict):
        names = self._mixed_names
        if names is None:
            return None
        return args, {**kwargs, "adapter_names": names}

    def _activate(self, name: str) -> None:
        self._mixed_names = None
        if self._active == name:
            return
        for layer in self._tuner_layers:
            layer.set_adapter(name)
        self._active = name
        self._restore_trainable()

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Inside: the LoRA network computes the base model (the reference)."""
        if self.mode != "lora":
            yield
            return
        for layer in self._tuner_layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self._tuner_layers:
                layer.enable_adapters(True)
                layer.set_adapter(self._active)
            self._restore_trainable()

    # ------------------------------------------------------------------ forwards
    def _autocast(self, x: Tensor):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def _call(self, module: nn.Module, x_t: Tensor, timesteps: Tensor, cond: Conditioning):
        if self._compile is not None:
            compiled = getattr(module, "_pref_compiled", None)
            if compiled is None:
                compiled = torch.compile(module, **self._compile)
                object.__setattr__(module, "_pref_compiled", compiled)
            module = compiled
        with self._autocast(x_t):
            return module(x_t, timesteps, cond)

    def _forward(self, name: str, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        if self.mode == "lora":
            self._activate(name)
        return self._call(self._denoisers[name], x_t, timesteps, cond)

    def mixed_forward(
        self, names: Sequence[str], x_t: Tensor, timesteps: Tensor, cond: Conditioning
    ) -> Tensor:
        """Sample i through policy ``names[i]``, (B, ...) from x_t (B, ...), in one call where the
        mode allows.

        LoRA: one forward of the shared network with per-sample adapters (peft's mixed-batch
        LoRA path): two policies cost one batched call instead of two. Because the names stay
        set until the next forward, gradient checkpointing recomputes with the right adapters.
        Full copies: one call per policy on its samples, reassembled in order.
        """
        names = list(names)
        if len(names) != x_t.shape[0]:
            raise ValueError(f"got {len(names)} policy names for a batch of {x_t.shape[0]}")
        unique = list(dict.fromkeys(names))
        for name in unique:
            self.policy(name)
        if len(unique) == 1:
            return self._forward(unique[0], x_t, timesteps, cond)
        if self.mode == "lora":
            self._restore_trainable()
            self._mixed_names = names
            return self._call(self.backbone.denoiser, x_t, timesteps, cond)
        out: Tensor | None = None
        for name in unique:
            index = torch.tensor([i for i, n in enumerate(names) if n == name], device=x_t.device)
            part = self._forward(name, x_t[index], timesteps[index], cond.index(index))
            if out is None:
                out = part.new_zeros((x_t.shape[0], *part.shape[1:]))
            out = out.index_copy(0, index, part)
        assert out is not None
        return out

    def _forward_reference(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        with torch.no_grad(), self.adapters_disabled():
            # adapters are disabled: LoRA layers ignore any mixed names
            return self._call(self.backbone.denoiser, x_t, timesteps, cond)

    # ------------------------------------------------------------------ access
    def policy(self, name: str = "policy") -> nn.Module:
        try:
            return self._policies[name]
        except KeyError:
            raise KeyError(f"no policy named {name!r}; policies: {list(self.names)}") from None

    def __getitem__(self, name: str) -> nn.Module:
        return self.policy(name)

    def denoiser_module(self, name: str) -> nn.Module:
        """The adapter module that computes policy ``name`` (shared by all LoRA policies)."""
        return self._denoisers[self.policy(name).name]

    def trainable_parameters(self, name: str | None = None) -> list[nn.Parameter]:
        """Parameters that train: of one policy, or of all (for one optimizer)."""
        if name is not None:
            self.policy(name)
            return list(self._trainable[name])
        return [p for n in self.names for p in self._trainable[n]]

    def train(self, mode: bool = True) -> PolicySet:
        for module in {id(m): m for m in self._denoisers.values()}.values():
            module.train(mode)
        if self.mode == "full":
            self.backbone.denoiser.eval()
        return self

    def eval(self) -> PolicySet:
        return self.train(False)

    # ------------------------------------------------------------------ state (resume)
    def trainable_state_dict(self, name: str) -> dict[str, Tensor]:
        """What resuming policy ``name`` needs: its LoRA weights, or its full state dict."""
        self.policy(name)
        if self.mode == "lora":
            sd = get_peft_model_state_dict(self.backbone.model, adapter_name=name)
        else:
            sd = self._denoisers[name].model.state_dict()
        return {k: v.detach().clone() for k, v in sd.items()}

    def load_trainable_state_dict(self, name: str, state: Mapping[str, Tensor]) -> None:
        self.policy(name)
        if self.mode == "lora":
            result = set_peft_model_state_dict(self.backbone.model, dict(state), adapter_name=name)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ValueError(f"state for policy {name!r} has unexpected keys: {unexpected[:5]}")
        else:
            self._denoisers[name].model.load_state_dict(dict(state))
        self._restore_trainable()

    def __repr__(self) -> str:
        count = sum(p.numel() for p in self.trainable_parameters())
        return (
            f"PolicySet(kind={self.backbone.kind!r}, mode={self.mode!r}, names={list(self.names)}, "
            f"trainable={count:,})"
        )
