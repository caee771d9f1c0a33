"""The condition of a text-conditioned GroupDiT: a frozen text encoder's output for a batch of prompts.

A class model is conditioned on an integer tensor ``y`` (B,); a text model on a `TextCondition`, the
token features, their padding mask and the pooled embedding of one prompt per sample. Samplers,
guidance and generation only ever concatenate, repeat, move and index conditions: a `TextCondition`
answers ``len``, indexing, ``repeat_interleave`` and ``to(device)`` as a tensor of class ids does, and
`cat_conditions` concatenates either kind, so nothing else needs to know which one it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NULL_PROMPT = ""  # the unconditional branch of a text model: the encoding of the empty prompt


@dataclass(frozen=True)
class TextCondition:
    """One encoded prompt per sample.

    ``tokens`` are the encoder's final-layer token features, ``mask`` marks real tokens (True) against
    padding, ``pooled`` is the prompt's pooled (end-of-text) embedding.
    """

    tokens: torch.Tensor  # (B, T, C) float
    mask: torch.Tensor  # (B, T) bool, True = a real token
    pooled: torch.Tensor  # (B, C) float

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(f"tokens must have shape (B, T, C), got {tuple(self.tokens.shape)}")
        batch, length, width = self.tokens.shape
        if self.mask.shape != (batch, length) or self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape ({batch}, {length}), got "
                             f"{self.mask.dtype} {tuple(self.mask.shape)}")
        if self.pooled.shape != (batch, width):
            raise ValueError(f"pooled must have shape ({batch}, {width}), got {tuple(self.pooled.shape)}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, rows: torch.Tensor | slice | int) -> TextCondition:
        """The conditions of some rows: a row-index tensor, a bool row mask, a slice, or one int (kept 2-D)."""
        if isinstance(rows, int):
            rows = [rows]
        return TextCondition(self.tokens[rows], self.mask[rows], self.pooled[rows])

    def repeat_interleave(self, repeats: int) -> TextCondition:
        """Each row ``repeats`` times in place: one condition per group -> one per member (G -> G·N)."""
        return TextCondition(self.tokens.repeat_interleave(repeats, dim=0),
                             self.mask.repeat_interleave(repeats, dim=0),
                             self.pooled.repeat_interleave(repeats, dim=0))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextCondition:
        """Move to ``device``; ``dtype`` casts the features only (the mask stays bool)."""
        return TextCondition(self.tokens.to(device=device, dtype=dtype), self.mask.to(device=device),
                             self.pooled.to(device=device, dtype=dtype))

    def padded(self, length: int) -> TextCondition:
        """Pad with masked zero tokens to ``length`` tokens (cross-attention never sees padding)."""
        extra = length - self.tokens.shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad {self.tokens.shape[1]} tokens down to {length}")
        if extra == 0:
            return self
        return TextCondition(F.pad(self.tokens, (0, 0, 0, extra)), F.pad(self.mask, (0, extra)), self.pooled)

    def where(self, keep: torch.Tensor, other: TextCondition) -> TextCondition:
        """Row ``i`` from ``self`` where ``keep[i]``, else from ``other`` (prompt dropout for CFG training)."""
        a, b = _common_length(self, other)
        return TextCondition(torch.where(keep[:, None, None], a.tokens, b.tokens),
                             torch.where(keep[:, None], a.mask, b.mask),
                             torch.where(keep[:, None], a.pooled, b.pooled))

    @staticmethod
    def cat(*parts: TextCondition) -> TextCondition:
        """Rows of all ``parts`` in order; shorter token sequences are padded (masked) to the longest."""
        parts = _common_length(*parts)
        return TextCondition(torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts]),
                             torch.cat([p.pooled for p in parts]))


def _common_length(*parts: TextCondition) -> tuple[TextCondition, ...]:
    length = max(p.tokens.shape[1] for p in parts)
    return tuple(p.padded(length) for p in parts)


Condition = torch.Tensor | TextCondition  # class ids (B,) or encoded prompts


def cat_conditions(*parts: Condition) -> Condition:
    """Concatenate rows of class ids or of text conditions (guidance: both branches in one forward).

    Indexing, ``len``, ``repeat_interleave`` and ``to(device)`` already read the same on both kinds."""
    if all(isinstance(p, TextCondition) for p in parts):
        return TextCondition.cat(*parts)
    if any(isinstance(p, TextCondition) for p in parts):
        raise TypeError("cannot concatenate class ids with text conditions")
    return torch.cat(parts)
