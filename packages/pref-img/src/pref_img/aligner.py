"""The Implicit Aligner of IMG (Guo et al. 2025, Sec. 3.3; supplementary Fig. 9 and Fig. 10).

The aligner reads the image-prompt tokens c_I of an initial image, (B, S1, D1), and the MLLM's
guidance features h about how that image misses its prompt, (B, S2, D2), and returns aligned
image-prompt tokens of the same shape as c_I. Following Fig. 10:

1. ``guidance_proj`` (linear layer 1) projects h from the MLLM width D2 to the image-token width
   D1.
2. ``num_layers`` (paper: 4) cross-attention blocks update the running image tokens: queries are
   the image tokens, keys and values the projected guidance. Each block is pre-LayerNorm
   multi-head attention with a residual, then LayerNorm + GELU feed-forward with a residual.
3. ``out`` (linear layer 2) maps the result back, and its output is *added* to the input tokens:
   ``f(c_I, h) = c_I + out(blocks(c_I, proj(h)))``. ``out`` starts at zero (weight and bias), as
   in the public inference code, so an untrained aligner is exactly the identity and training
   starts from "keep the initial image".

At inference the public code applies the aligner three times in a row, each time to its own
output with the same guidance (:meth:`ImplicitAligner.align`).

Widths in the paper's settings: SDXL's IP-Adapter-Plus gives 16 tokens of D1 = 2048 and
LLaVA-1.5-13B gives D2 = 5120; FLUX's XLabs IP-Adapter gives 4 tokens of D1 = 4096 and
Qwen2.5-VL-7B gives D2 = 3584.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = ["ALIGNER_CONFIG_NAME", "ALIGNER_WEIGHTS_NAME", "AlignerConfig", "ImplicitAligner"]

ALIGNER_CONFIG_NAME = "config.json"
ALIGNER_WEIGHTS_NAME = "aligner.safetensors"
_FORMAT = "pref-img/implicit-aligner"


@dataclass(frozen=True)
class AlignerConfig:
    """Sizes of an :class:`ImplicitAligner`.

    Attributes:
        ip_dim: D1, the width of the image-prompt tokens (SDXL IP-Adapter-Plus 2048, FLUX XLabs
            IP-Adapter 4096). The aligner works at this width throughout.
        guidance_dim: D2, the MLLM hidden size (LLaVA-1.5-13B 5120, Qwen2.5-VL-7B 3584).
        num_layers: cross-attention blocks (paper: 4).
        num_heads: attention heads; must divide ``ip_dim``.
        ff_mult: hidden width of each feed-forward as a multiple of ``ip_dim``.
    """

    ip_dim: int
    guidance_dim: int
    num_layers: int = 4
    num_heads: int = 8
    ff_mult: int = 4

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"AlignerConfig.{f.name} must be a positive integer, got {value!r}"
                )
        if self.ip_dim % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} does not divide ip_dim={self.ip_dim}; choose a head "
                f"count that divides it (e.g. {_divisors_hint(self.ip_dim)})"
            )

    def to_dict(self) -> dict[str, int]:
        """The fields as a JSON-ready dict (what ``config.json`` stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignerConfig:
        """Inverse of :meth:`to_dict`; keys starting with ``_`` (file metadata) are ignored.

        Raises:
            ValueError: when a key is unknown or a required one is missing.
        """
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if not k.startswith("_")}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown AlignerConfig fields {unknown}; expected a subset of {sorted(names)}"
            )
        missing = [n for n in ("ip_dim", "guidance_dim") if n not in values]
        if missing:
            raise ValueError(f"AlignerConfig needs {missing}; got fields {sorted(values)}")
        return cls(**values)


def _divisors_hint(n: int) -> str:
    return ", ".join(str(h) for h in (1, 2, 4, 8, 16, 32) if n % h == 0)


class _CrossAttentionBlock(nn.Module):
    """One aligner block: x ← x + Attn(LN(x), LN(g)); x ← x + FF(LN(x)).

    Queries come from the image tokens x (B, S1, D), keys and values from the projected guidance
    g (B, S2, D).
    """

    def __init__(self, dim: int, num_heads: int, ff_mult: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(self, x: Tensor, g: Tensor, key_mask: Tensor, has_keys: Tensor) -> Tensor:
        """Args: x (B, S1, D); g (B, S2, D); key_mask (B, S2) bool, True = attend; has_keys
        (B,) bool, False for a sample without any real guidance token."""
        b, s1, d = x.shape
        h = self.num_heads
        q = self.to_q(self.norm_q(x)).view(b, s1, h, d // h).transpose(1, 2)  # (B, H, S1, d/H)
        kv = self.norm_kv(g)
        k = self.to_k(kv).view(b, -1, h, d // h).transpose(1, 2)  # (B, H, S2, d/H)
        v = self.to_v(kv).view(b, -1, h, d // h).transpose(1, 2)
        if k.shape[2] == 0:
            attn = x.new_zeros(b, s1, d)
        else:
            # A row with every key masked makes softmax 0/0 = NaN on some backends: let such a
            # sample attend to its (zeroed) padding and drop the whole attention branch below.
            mask = (key_mask | ~has_keys[:, None])[:, None, None, :]  # (B, 1, 1, S2)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            attn = self.to_out(attn.transpose(1, 2).reshape(b, s1, d))
            attn = attn * has_keys[:, None, None].to(attn.dtype)
        x = x + attn
        return x + self.ff(self.norm_ff(x))


class ImplicitAligner(nn.Module):
    """IMG's Implicit Aligner (supplementary Fig. 9/10): f(c_I, h) = c_I + out(blocks(c_I, proj(h))).

    Parameters are initialised by torch's default initialisers (seed with ``torch.manual_seed``
    before constructing), except ``out``, which is zero so that the untrained aligner is the
    identity.

    Args:
        config: the sizes (:class:`AlignerConfig`).
    """

    def __init__(self, config: AlignerConfig) -> None:
        super().__init__()
        if not isinstance(config, AlignerConfig):
            raise TypeError(f"ImplicitAligner takes an AlignerConfig, got {type(config).__name__}")
        self.config = config
        d1 = config.ip_dim
        self.guidance_proj = nn.Linear(config.guidance_dim, d1)
        self.blocks = nn.ModuleList(
            _CrossAttentionBlock(d1, config.num_heads, config.ff_mult)
            for _ in range(config.num_layers)
        )
        self.out = nn.Linear(d1, d1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    # ------------------------------------------------------------------ forward
    def _check_inputs(
        self, ip_tokens: Tensor, guidance: Tensor, guidance_mask: Tensor | None
    ) -> Tensor:
        cfg = self.config
        if ip_tokens.ndim != 3 or ip_tokens.shape[-1] != cfg.ip_dim:
            raise ValueError(
                f"ip_tokens must be (B, S1, ip_dim={cfg.ip_dim}), got {tuple(ip_tokens.shape)}"
            )
        if guidance.ndim != 3 or guidance.shape[-1] != cfg.guidance_dim:
            raise ValueError(
                f"guidance must be (B, S2, guidance_dim={cfg.guidance_dim}), got "
                f"{tuple(guidance.shape)}; pass the MLLM's last hidden states"
            )
        if guidance.shape[0] != ip_tokens.shape[0]:
            raise ValueError(
                f"batch sizes differ: ip_tokens {ip_tokens.shape[0]}, guidance {guidance.shape[0]}"
            )
        if guidance_mask is None:
            return torch.ones(guidance.shape[:2], dtype=torch.bool, device=guidance.device)
        if tuple(guidance_mask.shape) != tuple(guidance.shape[:2]):
            raise ValueError(
                f"guidance_mask must be (B, S2) = {tuple(guidance.shape[:2])}, got "
                f"{tuple(guidance_mask.shape)}"
            )
        # Accepts bool or 0/1 integer masks (a tokenizer's attention_mask): nonzero = real token.
        return guidance_mask if guidance_mask.dtype == torch.bool else guidance_mask != 0

    def forward(
        self, ip_tokens: Tensor, guidance: Tensor, guidance_mask: Tensor | None = None
    ) -> Tensor:
        """One application of the aligner.

        Args:
            ip_tokens: image-prompt tokens c_I, (B, S1, D1).
            guidance: MLLM guidance features h, (B, S2, D2), right- or left-padded.
            guidance_mask: (B, S2), True (or nonzero) at real guidance tokens; ``None`` means
                all are real. Padded positions never influence the output; a sample with no
                real token gets no attention update (its output is c_I + out(FF path) only).

        Returns:
            Aligned tokens c_I + out(hidden), (B, S1, D1), in ``ip_tokens``' dtype on the
            parameters' device. The network itself runs in the parameters' dtype.
        """
        mask = self._check_inputs(ip_tokens, guidance, guidance_mask)
        ref = self.out.weight
        device, dtype = ref.device, ref.dtype
        mask = mask.to(device)
        has_keys = mask.any(dim=1)  # (B,)
        # Zero the padding before projecting: padded slots may hold anything (even inf), and
        # 0-weight × inf would still be NaN inside the attention.
        g = guidance.to(device=device, dtype=dtype).masked_fill(~mask[..., None], 0.0)
        g = self.guidance_proj(g)  # (B, S2, D1)
        x = ip_tokens.to(device=device, dtype=dtype)
        for block in self.blocks:
            x = block(x, g, mask, has_keys)
        delta = self.out(x)
        # The residual is taken in the input's dtype so the zero-initialised aligner returns
        # c_I bit for bit whatever dtype the parameters are in.
        return ip_tokens.to(device) + delta.to(ip_tokens.dtype)

    def align(
        self,
        ip_tokens: Tensor,
        guidance: Tensor,
        guidance_mask: Tensor | None = None,
        repeats: int = 3,
    ) -> Tensor:
        """Inference: apply the aligner ``repeats`` times, feeding each output back as c_I.

        The public IMG inference code uses 3. Shapes as in :meth:`forward`.
        """
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
        out = ip_tokens
        for _ in range(repeats):
            out = self(out, guidance, guidance_mask)
        return out

    # ------------------------------------------------------------------ IO
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``aligner.safetensors`` (weights in their current dtype)
        into ``folder`` (created if needed) and return the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"_format": _FORMAT, "_class_name": type(self).__name__}
        config |= self.config.to_dict()
        (folder / ALIGNER_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / ALIGNER_WEIGHTS_NAME), metadata={"format": _FORMAT})
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ImplicitAligner:
        """Load an aligner written by :meth:`save_pretrained`.

        Args:
            folder: the folder holding ``config.json`` and ``aligner.safetensors``.
            device: where to put the weights (default CPU).
            dtype: cast the weights to this dtype (default: the stored dtype).

        Raises:
            FileNotFoundError: when the folder or one of the two files is missing.
            ValueError: when the weights do not match the config.
        """
        folder = Path(folder)
        config_path, weights_path = folder / ALIGNER_CONFIG_NAME, folder / ALIGNER_WEIGHTS_NAME
        missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a saved ImplicitAligner: missing {missing}; save one with "
                "ImplicitAligner.save_pretrained(folder)"
            )
        data = json.loads(config_path.read_text(encoding="utf-8"))
        fmt = data.get("_format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"{config_path} describes a {fmt!r}, not an {_FORMAT!r}")
        config = AlignerConfig.from_dict(data)
        state = load_file(str(weights_path))
        # Build on the meta device: no time spent initialising weights that are overwritten.
        with torch.device("meta"):
            model = cls(config)
        expected = set(model.state_dict())
        absent, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if absent or extra:
            raise ValueError(
                f"{weights_path} does not match {config_path}: missing {absent[:5]}, "
                f"unexpected {extra[:5]}; was it saved from another aligner configuration?"
            )
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device=device or "cpu", dtype=dtype)
