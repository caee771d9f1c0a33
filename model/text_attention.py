"""Cross-attention from an image's tokens to its own prompt's tokens (DiT's "cross-attention block").

It is per image: the batch is never regrouped here, so an image attends only to the prompt of its
own sample, and a prompt reaches the other members of a group only through group self-attention.
Padding tokens of the prompt are masked out as keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextCrossAttention(nn.Module):
    """Multi-head attention with queries from the image and keys/values from the (projected) prompt."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)  # zero-initialised by GroupDiT: a fresh block adds nothing

    def forward(
        self,
        x: torch.Tensor,  # (B, L, D) image tokens
        context: torch.Tensor,  # (B, T, D) prompt tokens
        mask: torch.Tensor,  # (B, T) bool, True = a real token
    ) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).view(batch, tokens, self.num_heads, head_dim).transpose(1, 2)  # (B, H, L, Dh)
        kv = self.kv(context).view(batch, context.shape[1], 2, self.num_heads, head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))
