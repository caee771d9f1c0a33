"""Generate groups of samples from a model: noise, a guided velocity, a sampler."""

from __future__ import annotations

import torch

from .dit import GroupDiT
from .guidance import Guidance, velocity_function
from .samplers import sample
from .schedule import GroupAttentionSchedule


@torch.no_grad()
def generate(
    model: GroupDiT,
    class_labels: torch.Tensor,
    group_size: int,
    steps: int = 50,
    method: str = "heun",
    guidance: Guidance | None = None,
    seed: int = 0,
    schedule: GroupAttentionSchedule | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Samples (G·N, C, H, W), group-major: group ``g`` holds ``N`` images of class ``class_labels[g]``.

    All randomness (initial noise, SDE noise) comes from one generator seeded with ``seed``.
    """
    cfg = model.config
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = class_labels.to(device).repeat_interleave(group_size)  # (G·N,)
    shape = (labels.shape[0], cfg.in_channels, cfg.input_size, cfg.input_size)
    noise = torch.randn(shape, generator=generator, device=device)
    velocity = velocity_function(model, labels, group_size, guidance or Guidance(), schedule=schedule)
    return sample(velocity, noise, steps, method=method, generator=generator, progress=progress)
