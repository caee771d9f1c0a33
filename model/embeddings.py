"""Embedding layers of the DiT backbone: patches, fixed 2D positions, timesteps, classes, prompts, samples."""

from __future__ import annotations

import math

import torch
from torch import nn

from .text_condition import TextCondition


def sincos_position_embedding(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding of MAE/DiT, shape ``(grid_size**2, dim)``.

    Half of the channels encode the row, half the column, so every image in a group gets the same
    positions and only the sample embedding tells members apart.
    """
    if dim % 4:
        raise ValueError(f"position embedding dim must be divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # (L, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (L, dim/2)

    # MAE orders the halves (column, row); kept so DiT checkpoints see the positions they were trained with.
    return torch.cat([encode(cols), encode(rows)], dim=1).float()  # (L, dim)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches to tokens: (B, C, H, W) -> (B, L, D)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, H/p, W/p) -> (B, L, D)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of a scalar time, then an MLP (DiT/GLIDE)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        half = frequency_size // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None]  # (B, F/2)
        features = torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, F)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # (B, D)


class LabelEmbedder(nn.Module):
    """A learned table with one row per class plus a null row for classifier-free guidance.

    Label dropout is the training plan's job (it decides which samples are unconditional), so this
    module never drops labels by itself.
    """

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class TextEmbedder(nn.Module):
    """A frozen text encoder's output in the model's width: the tokens (one linear map) are the context
    every block cross-attends to; the pooled embedding (a small MLP) takes the label embedding's place in
    adaLN, so the whole block is modulated by the prompt as it is by a class."""

    def __init__(self, text_dim: int, hidden_size: int):
        super().__init__()
        self.tokens = nn.Linear(text_dim, hidden_size)
        self.pooled = nn.Sequential(nn.Linear(text_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, condition: TextCondition) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.tokens.weight.dtype
        context = self.tokens(condition.tokens.to(dtype))  # (B, T, C) -> (B, T, D)
        return context, self.pooled(condition.pooled.to(dtype))  # (B, D)


class SampleEmbedder(nn.Module):
    """A learned vector per sample slot in a group, so attention can tell the members apart."""

    def __init__(self, max_group_size: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(max_group_size, hidden_size)

    def forward(self, sample_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(sample_ids)
