"""Group attention: tokens of all members of a group attend to each other.

A batch is group-major, ``B = G·N``. Around the attention call only, tokens are regrouped
``(G·N, L, C) -> (G, N·L, C)``; everything else in a block stays per image. Groups never see each
other, and a group of one member is exactly per-image attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GroupLayout:
    """How the batch is grouped for one forward pass.

    ``mask`` is ``None`` when every group attends jointly; otherwise it is a boolean
    ``(G, 1, N·L, N·L)`` mask that is block-diagonal (per image) for the groups whose group attention
    is switched off at their timestep, and full for the others.
    """

    group_size: int
    mask: torch.Tensor | None = None


def to_groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(G·N, H, L, Dh) -> (G, H, N·L, Dh), members' tokens concatenated in member order."""
    batch, heads, tokens, head_dim = x.shape
    x = x.view(batch // group_size, group_size, heads, tokens, head_dim).transpose(1, 2)  # (G, H, N, L, Dh)
    return x.reshape(batch // group_size, heads, group_size * tokens, head_dim)


def from_groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(G, H, N·L, Dh) -> (G·N, H, L, Dh), the inverse of `to_groups`."""
    groups, heads, group_tokens, head_dim = x.shape
    x = x.view(groups, heads, group_size, group_tokens // group_size, head_dim).transpose(1, 2)
    return x.reshape(groups * group_size, heads, group_tokens // group_size, head_dim)


def per_image_mask(active: torch.Tensor, group_size: int, tokens_per_image: int) -> torch.Tensor:
    """Boolean mask (G, 1, N·L, N·L): full attention for active groups, block-diagonal for the rest."""
    member = torch.arange(group_size, device=active.device).repeat_interleave(tokens_per_image)  # (N·L,)
    same_member = member[:, None] == member[None, :]  # (N·L, N·L)
    return (active[:, None, None] | same_member[None]).unsqueeze(1)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention probabilities by explicit math, for the capture path: (..., Lq, Lk)."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1)


class GroupAttention(nn.Module):
    """Multi-head self-attention over one image, or over all images of its group.

    Parameter names (``qkv``, ``proj``) match timm's `Attention`, as in DiT checkpoints.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, layout: GroupLayout | None, capture: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``layout=None`` attends per image. With ``capture`` a list, the attention probabilities
        (``(G, H, N·L, N·L)`` grouped, ``(B, H, L, L)`` per image) are appended to it."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, Dh)
        grouped = layout is not None and layout.group_size > 1
        mask = None
        if grouped:
            q, k, v = (to_groups(z, layout.group_size) for z in (q, k, v))  # (G, H, N·L, Dh)
            mask = layout.mask
        if capture is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            weights = attention_weights(q, k, mask)
            capture.append(weights)
            out = weights @ v
        if grouped:
            out = from_groups(out, layout.group_size)  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))
