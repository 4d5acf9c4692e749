"""Tiny, deterministic components for tests: small enough for a CPU, real enough to train."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pref_core.conditioning import Conditioning


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps → (B, dim) (Vaswani et al. 2017; as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(emb, (0, dim % 2))


class TinyDenoiser(nn.Module):
    """A few-thousand-parameter conditional denoiser satisfying
    :class:`~pref_core.protocols.Denoiser`.

    Input (B, C, H, W); the conditioning's ``prompt_embeds`` (B, L, D) is mean-pooled over L
    and, with the timestep embedding, modulates the hidden features (FiLM).
    """

    def __init__(
        self, channels: int = 4, cond_dim: int = 8, hidden: int = 16, time_dim: int = 16
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.film = nn.Linear(cond_dim + time_dim, 2 * hidden)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        # (B, L, D) → (B, D)
        pooled = cond["prompt_embeds"].float().mean(dim=1)
        temb = timestep_embedding(timesteps, self.time_dim)
        scale, shift = self.film(torch.cat([pooled, temb], dim=-1)).chunk(2, dim=-1)
        h = self.conv_in(x_t.float())
        h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.conv_out(nn.functional.silu(h)).to(x_t.dtype)


def random_conditioning(
    batch_size: int, *, tokens: int = 5, dim: int = 8, generator: torch.Generator | None = None
) -> Conditioning:
    """Random prompt embeddings (B, tokens, dim) with an all-ones attention mask."""
    embeds = torch.randn(batch_size, tokens, dim, generator=generator)
    mask = torch.ones(batch_size, tokens, dtype=torch.long)
    return Conditioning({"prompt_embeds": embeds, "attention_mask": mask})
