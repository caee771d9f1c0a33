"""Generate groups of samples from a model: noise, a guided prediction, a sampler.

The model's ``transport`` picks the loop: a flow model integrates its guided velocity with a flow
sampler (`samplers`); a DDPM model (a DiT ε-model with learned σ) runs DiT's respaced ancestral loop or
DDIM on its guided ε (`ddpm`).
"""

from __future__ import annotations

import torch

from .ddpm import GaussianDiffusion, output_function
from .dit import GroupDiT
from .guidance import Guidance, velocity_function
from .samplers import DDPM_SAMPLERS, SAMPLERS, sample
from .schedule import GroupAttentionSchedule
from .text_condition import Condition

DEFAULT_SAMPLERS = {"flow": "heun", "ddpm": "ddpm"}


def samplers_for(transport: str) -> tuple[str, ...]:
    """The step rules a model of this transport samples with."""
    return DDPM_SAMPLERS if transport == "ddpm" else SAMPLERS


def check_sampler(transport: str, method: str) -> None:
    """Refuse a sampler of the other transport (a velocity rule on ε, or DDPM on a velocity model)."""
    allowed = samplers_for(transport)
    if method not in allowed:
        raise ValueError(f"a {transport} model samples with one of {allowed}, not {method!r}")


@torch.no_grad()
def generate(
    model: GroupDiT,
    condition: Condition,
    group_size: int,
    steps: int = 50,
    method: str | None = None,
    guidance: Guidance | None = None,
    seed: int = 0,
    schedule: GroupAttentionSchedule | None = None,
    progress: bool = False,
    per_member: bool = False,
) -> torch.Tensor:
    """Samples (G·N, C, H, W), group-major: group ``g`` holds ``N`` images of ``condition[g]``, a class id
    (G,) or, for a text model, a row of a `TextCondition` of G prompts.

    With ``per_member`` the condition has one row per member instead (G·N rows, group-major): an image set
    whose members have different classes or prompts, as the server's ``class_ids`` set is one group.

    ``method`` defaults to the transport's (Heun for flow, the ancestral sampler for DDPM). For DDPM,
    ``steps`` respaces DiT's 1000 steps as DiT's ``--num-sampling-steps`` does (``space_timesteps(1000,
    str(steps))``), for the ancestral sampler and DDIM alike. All randomness (initial noise, SDE or
    ancestral noise) comes from one generator seeded with ``seed``.
    """
    cfg = model.config
    method = method or DEFAULT_SAMPLERS[cfg.transport]
    check_sampler(cfg.transport, method)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    y = condition.to(device)
    if not per_member:
        y = y.repeat_interleave(group_size)  # (G,) -> (G·N,)
    elif len(y) % group_size:
        raise ValueError(f"{len(y)} per-member conditions do not fill groups of {group_size}")
    shape = (len(y), cfg.in_channels, cfg.input_size, cfg.input_size)
    noise = torch.randn(shape, generator=generator, device=device)
    guidance = guidance or Guidance()
    if cfg.transport == "ddpm":
        diffusion = GaussianDiffusion.create(str(steps), learn_sigma=cfg.learn_sigma)
        output = output_function(model, y, group_size, guidance, schedule=schedule)
        return diffusion.sample_loop(output, noise, method, generator=generator, progress=progress)
    velocity = velocity_function(model, y, group_size, guidance, schedule=schedule)
    return sample(velocity, noise, steps, method=method, generator=generator, progress=progress)
