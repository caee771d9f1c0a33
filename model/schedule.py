"""Where group attention is switched on: a set of layers and a timestep window (paper Tables 2, 3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import GroupDiTConfig


@dataclass(frozen=True)
class GroupAttentionSchedule:
    """Group attention runs in ``layers`` (``None`` = every layer) for groups whose time lies in ``window``.

    Time is the flow-matching ``t`` (1 = noise), so the paper's "group attention in the first 20% of
    denoising" is ``window=(0.8, 1.0)``. A group's time is the mean of its members' times, so groups
    trained with noise-level variation switch as one.
    """

    layers: tuple[int, ...] | None = None
    window: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        low, high = self.window
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"group attention window must satisfy 0 <= low <= high <= 1, got {self.window}")

    @classmethod
    def from_config(cls, config: GroupDiTConfig) -> GroupAttentionSchedule:
        return cls(layers=config.group_attention_layers, window=config.group_attention_window)

    def layer_enabled(self, index: int) -> bool:
        return self.layers is None or index in self.layers

    def active_groups(self, t: torch.Tensor, group_size: int) -> torch.Tensor | None:
        """Boolean (G,) of groups with group attention on, or ``None`` when the window is [0, 1]."""
        low, high = self.window
        if (low, high) == (0.0, 1.0):
            return None
        group_t = t.view(-1, group_size).mean(dim=1)  # (G,)
        return (group_t >= low) & (group_t <= high)
