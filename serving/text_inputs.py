"""A text model's condition as graph inputs and back: the thin adapter between `TextCondition` and exports.

The sampler and the scheduler hold a `TextCondition` with one row per member (G·N rows, group-major); an exported
graph takes plain tensors laid out like ``x``, with the group axes first: ``tokens`` (G, N, T, C), ``mask``
(G, N, T) bool and ``pooled`` (G, N, C). ``T`` is a dynamic axis of the graph (1 .. the model's ``text_tokens``):
inside, `text_condition` pads the tokens (masked) to the model's full length with a pad whose size is a shape
expression, not a Python branch, so the traced graph stays valid for every ``T`` (the model's own padding in
`TextCondition.cat` branches on the length, which `torch.export` would specialise).

`groupdiff.model.text_condition` could offer both directions itself (``TextCondition.unflatten(groups)`` and a
trace-safe ``padded``); until it does, serving keeps them here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from groupdiff.model.text_condition import TextCondition

TEXT_INPUTS = ("tokens", "mask", "pooled")
TOKEN_AXIS = -1  # the dynamic token count T in `member_layout`'s shapes (-1: how ONNX and Triton write "any")


def member_layout(width: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Each text input's dtype and shape after its (G, N) axes, in `TEXT_INPUTS` order, for ``width``-wide token
    features: what a model configuration written outside torch (Triton's ``config.pbtxt``) declares for the graph."""
    return {"tokens": (torch.float32, (TOKEN_AXIS, width)),  # (G, N) + (T, C)
            "mask": (torch.bool, (TOKEN_AXIS,)),  # (G, N) + (T,)
            "pooled": (torch.float32, (width,))}  # (G, N) + (C,)


def group_text_inputs(condition: TextCondition, groups: int, group_size: int) -> dict[str, torch.Tensor]:
    """A condition of G·N rows -> the graph's text inputs by name, each with leading (G, N) axes."""
    return {"tokens": condition.tokens.reshape(groups, group_size, *condition.tokens.shape[1:]),  # (G, N, T, C)
            "mask": condition.mask.reshape(groups, group_size, -1),  # (G, N, T)
            "pooled": condition.pooled.reshape(groups, group_size, -1)}  # (G, N, C)


def text_condition(tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor, length: int) -> TextCondition:
    """The graph's text inputs -> a `TextCondition` of G·N rows padded to ``length`` tokens (trace-safe)."""
    extra = length - tokens.shape[2]
    flat_tokens = F.pad(tokens.flatten(0, 1), (0, 0, 0, extra))  # (G·N, length, C)
    flat_mask = F.pad(mask.flatten(0, 1), (0, extra))  # (G·N, length)
    return TextCondition(flat_tokens, flat_mask, pooled.flatten(0, 1))  # pooled (G·N, C)
