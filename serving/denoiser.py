"""The served denoiser: the one torch module every runtime runs or is exported from.

It takes whole groups, ``x`` (G, N, C, H, W), with a time and condition per member and a guidance scale per
group, and returns the velocity the sampler integrates. A *teacher* applies its GroupDiff guidance
recipe inside (`guided_velocity_per_sample`: both branches always, the interval as a `torch.where`,
so the graph has no data-dependent branching and exports); a *student* has guidance baked in and is
the plain forward at group size N, its ``guidance_scale`` input accepted and ignored so that both
kinds have the same inputs (an exported student graph may therefore lose that input: runtimes feed only the
inputs a graph declares). Members get the fixed sample ids ``0..N-1``.

A class model's condition is ``y`` (G, N) int64; a text model's (`ServedTextDenoiser`) is its encoded prompt as
``tokens``, ``mask`` and ``pooled`` (`text_inputs`), and its unconditional branch is the null prompt the model
stores in its weights. `denoiser_inputs` names a runtime call's tensors for either kind, so every runtime feeds
graphs by name.

The precision lives in the module, not in a runtime flag: with ``dtype`` float16 or bfloat16 the weights and the
computation are in that type while the inputs and the velocity stay float32, so an exported graph is strongly
typed (what TensorRT 11 and torch-tensorrt's explicit typing build from).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from groupdiff.model.checkpoint import load_model, preferred_weights
from groupdiff.model.dit import GroupDiT, fixed_sample_ids
from groupdiff.model.guidance import Guidance, guided_velocity_per_sample
from groupdiff.model.spec import DenoiserSpec, spec_from_checkpoint
from groupdiff.model.text_condition import Condition, TextCondition

from .runtime import RuntimeShapeError
from .text_inputs import TEXT_INPUTS, group_text_inputs, text_condition

INPUT_NAMES = ("x", "t", "y", "guidance_scale")  # a class model's graph
TEXT_INPUT_NAMES = ("x", "t", *TEXT_INPUTS, "guidance_scale")  # a text model's graph
PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OUTPUT_NAME = "velocity"
DEFAULT_MAX_GROUPS = 64  # the largest G one call accepts unless a runtime is told otherwise


class ServedDenoiser(nn.Module):
    def __init__(self, model: GroupDiT, spec: DenoiserSpec, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model.to(dtype).eval()
        self.dtype = dtype
        self.spec = spec
        self.guidance = Guidance(mode=spec.guidance_mode, interval=spec.guidance_interval)

    def forward(
        self,
        x: torch.Tensor,  # (G, N, C, H, W)
        t: torch.Tensor,  # (G, N)
        y: torch.Tensor,  # (G, N) int64
        guidance_scale: torch.Tensor,  # (G,)
    ) -> torch.Tensor:  # (G, N, C, H, W)
        return self._velocity(x, t, y.flatten(), guidance_scale)  # y (G·N,)

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, flat_y: Condition,
                  guidance_scale: torch.Tensor) -> torch.Tensor:
        """Both kinds, with the condition already one row per member (G·N rows)."""
        groups, group_size = x.shape[0], x.shape[1]
        x, t = x.to(self.dtype), t.to(self.dtype)
        flat_x, flat_t = x.flatten(0, 1), t.flatten()  # (G·N, C, H, W), (G·N,)
        ids = fixed_sample_ids(flat_x.shape[0], group_size, x.device)
        if self.spec.kind == "student":
            v = self.model(flat_x, flat_t, flat_y, group_size=group_size, sample_ids=ids)
        else:
            scale = guidance_scale.to(self.dtype)[:, None].expand(groups, group_size).reshape(-1)  # (G·N,)
            v = guided_velocity_per_sample(self.model, flat_x, flat_t, flat_y, group_size, self.guidance, scale, ids)
        return v.float().view(x.shape)


class ServedTextDenoiser(ServedDenoiser):
    """A text model's denoiser: the prompt's encoding in place of class ids (`text_inputs`)."""

    def forward(
        self,
        x: torch.Tensor,  # (G, N, C, H, W)
        t: torch.Tensor,  # (G, N)
        tokens: torch.Tensor,  # (G, N, T, C_text), T <= the model's text_tokens
        mask: torch.Tensor,  # (G, N, T) bool
        pooled: torch.Tensor,  # (G, N, C_text)
        guidance_scale: torch.Tensor,  # (G,)
    ) -> torch.Tensor:  # (G, N, C, H, W)
        y = text_condition(tokens, mask, pooled, self.model.config.text_tokens)  # G·N rows
        return self._velocity(x, t, y.to(dtype=self.dtype), guidance_scale)


def input_names(spec: DenoiserSpec) -> tuple[str, ...]:
    """The served denoiser's inputs, in order (an exported graph may have pruned some: `export.declared_inputs`)."""
    return TEXT_INPUT_NAMES if spec.text_encoder is not None else INPUT_NAMES


def denoiser_inputs(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | TextCondition,
                    guidance_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """A runtime call's tensors by input name, in `input_names` order: ``y`` (G, N) class ids, or a
    `TextCondition` of G·N rows, which becomes ``tokens``, ``mask`` and ``pooled`` with (G, N) axes first."""
    if isinstance(y, TextCondition):
        return {"x": x, "t": t, **group_text_inputs(y, *x.shape[:2]), "guidance_scale": guidance_scale}
    return {"x": x, "t": t, "y": y, "guidance_scale": guidance_scale}


def load_denoiser(
    checkpoint: str | os.PathLike, weights: str | None = None, device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> ServedDenoiser:
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {tuple(PRECISION_DTYPES)}, got {precision!r}")
    weights = weights or preferred_weights(checkpoint)
    spec = spec_from_checkpoint(checkpoint, weights)
    served = ServedTextDenoiser if spec.text_encoder is not None else ServedDenoiser
    return served(load_model(checkpoint, weights, device), spec, PRECISION_DTYPES[precision]).eval()


def check_velocity_inputs(
    spec: DenoiserSpec,
    max_groups: int,
    group_sizes: tuple[int, ...],
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor | TextCondition,
    guidance_scale: torch.Tensor,
) -> None:
    """Every runtime's boundary check: wrong shapes or dtypes are ValueError, shapes outside what the
    engine serves are `RuntimeShapeError` (a ValueError too). ``y``: (G, N) int64 class ids, or for a text
    model a `TextCondition` of G·N rows (the member's prompts, group-major)."""
    sample = (spec.channels, spec.size, spec.size)
    if x.ndim != 5 or tuple(x.shape[2:]) != sample:
        raise ValueError(f"x must have shape (G, N, {', '.join(map(str, sample))}), got {tuple(x.shape)}")
    groups, group_size = x.shape[:2]
    if t.shape != (groups, group_size):
        raise ValueError(f"t must have shape ({groups}, {group_size}), got {tuple(t.shape)}")
    if guidance_scale.shape != (groups,):
        raise ValueError(f"guidance_scale must have shape ({groups},), got {tuple(guidance_scale.shape)}")
    if spec.text_encoder is not None:
        if not isinstance(y, TextCondition) or len(y) != groups * group_size:
            raise ValueError(f"a text model takes y as a TextCondition of {groups * group_size} rows (one per member)")
        if y.tokens.shape[1] > spec.text_encoder.context_length:
            raise ValueError(f"prompts of {y.tokens.shape[1]} tokens exceed the encoder's "
                             f"{spec.text_encoder.context_length}")
    elif isinstance(y, TextCondition) or y.shape != (groups, group_size) or y.dtype != torch.int64:
        raise ValueError(f"y must be int64 class ids of shape ({groups}, {group_size})")
    if not 1 <= groups <= max_groups:
        raise RuntimeShapeError(f"{groups} groups outside this engine's range 1..{max_groups}")
    if group_size not in group_sizes:
        raise RuntimeShapeError(f"group size {group_size} not served by this engine (serves {list(group_sizes)})")
