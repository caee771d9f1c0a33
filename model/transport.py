"""Linear flow matching in the REPA / GroupDiff-SiT convention.

``x_t = (1 − t)·x₀ + t·ε`` with ``t ∈ [0, 1]`` and ``t = 1`` pure noise; the network predicts the
velocity ``dx_t/dt = ε − x₀``. Times are per sample, so members of a group may sit at different noise
levels (the paper's noise-level variation).

This is the transport of a model with ``transport="flow"`` (the default). DiT's ε-prediction with learned σ
on DDPM steps (``transport="ddpm"``) is `groupdiff.model.ddpm`.
"""

from __future__ import annotations

import torch

from .text_condition import Condition


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))  # (B,) -> (B, 1, 1, 1)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The noisy sample ``x_t`` for per-sample times ``t`` (B,)."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_matching_loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    t: torch.Tensor,
    y: Condition,  # class ids (B,) or a TextCondition of B prompts
    noise: torch.Tensor,
    group_size: int = 1,
    sample_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample mean squared velocity error (B,); the paper's ``L_Group`` summed over a group."""
    prediction = model(interpolate(x0, noise, t), t, y, group_size=group_size, sample_ids=sample_ids)
    return (prediction.float() - velocity_target(x0, noise).float()).pow(2).flatten(1).mean(dim=1)


def velocity_to_x0(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean-sample estimate ``x₀ = x_t − t·v``."""
    return x_t - _per_sample(t, x_t) * velocity


def velocity_to_score(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Score ``∇ log p_t(x_t) = −E[ε | x_t] / t`` with ``E[ε | x_t] = x_t + (1 − t)·v``; needs ``t > 0``."""
    t = _per_sample(t, x_t)
    return -(x_t + (1 - t) * velocity) / t
