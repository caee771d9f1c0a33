"""Distribution matching (DMD2, ``tianweiy/DMD2``) for a 1-step group generator, without the GAN head.

The generator ``G`` makes a whole group in one step: ``x₀ = z − F(z, 1)``. Its update follows the
difference between two denoisers at a re-noised copy ``x_t`` of that group: the *real* one is the
teacher's guided velocity (the distribution the student must match, guidance included) and the *fake*
one a critic trained by flow matching on the generator's own groups. Where the two agree, the
generator's groups already look like the teacher's, and the gradient vanishes.

Both denoisers see the group at once: the critic is a `GroupDiT` with group attention, so it models
the joint distribution of a group, and a generator that copies one image across its group is pushed
away even when every member is a plausible image (REFERENCES §4, GroupDiff pitfall 5). Velocities are
turned into ``x₀`` predictions before they are compared (a velocity-space difference collapses,
DMD2#33). Time convention as everywhere here: ``x_t = (1 − t)·x₀ + t·ε``, t = 1 is noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from groupdiff.model import interpolate, velocity_target

from .config import DMDConfig
from .facm import per_sample

DenoiserFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # v(x_t (B, C, H, W), t (B,)) -> (B, C, H, W)


def renoise_times(groups: int, group_size: int, config: DMDConfig, generator: torch.Generator) -> torch.Tensor:
    """Per-sample times (G·N,) uniform on ``[t_min, t_max]``, one per group (a group is denoised as one)."""
    t = config.t_min + (config.t_max - config.t_min) * torch.rand(groups, generator=generator)  # (G,)
    return t.repeat_interleave(group_size)


def predicted_x0(x_t: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    return x_t - per_sample(t, x_t) * velocity


def distribution_matching_loss(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss whose gradient in ``x0`` is DMD2's normalised ``(fake − real)``, and that direction.

    Each sample's direction is divided by the mean distance between its ``x0`` and the teacher's
    denoised estimate, so the step size does not depend on how far the re-noising time is from 0.
    """
    x0_detached = x0.detach().float()
    scale = (x0_detached - real_x0.float()).abs().flatten(1).mean(dim=1).clamp(min=1e-6)  # (B,)
    direction = torch.nan_to_num((fake_x0.float() - real_x0.float()) / per_sample(scale, x0_detached))
    loss = 0.5 * (x0.float() - (x0_detached - direction)).pow(2).mean()
    return loss, direction


def generator_loss(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, real: DenoiserFn, fake: DenoiserFn
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """DMD2's generator loss for generated groups ``x0`` (G·N, C, H, W) re-noised to ``t`` with ``noise``."""
    with torch.no_grad():
        x_t = interpolate(x0.detach(), noise, t)
        real_x0 = predicted_x0(x_t, t, real(x_t, t))
        fake_x0 = predicted_x0(x_t, t, fake(x_t, t))
    loss, direction = distribution_matching_loss(x0, real_x0, fake_x0)
    return loss, {"dm_direction": direction.abs().mean().item()}


def critic_loss(critic: DenoiserFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Flow matching on the generator's groups: the critic learns the velocity field of *their* distribution."""
    x_t = interpolate(x0.detach(), noise, t)
    return (critic(x_t, t).float() - velocity_target(x0.detach(), noise).float()).pow(2).mean()
