"""The teacher's guided velocity: the target every distillation loss regresses on.

The student must learn the velocity the teacher *samples with*, not the raw network output. That is
GroupDiff's CFG recipe (conditional branch at group size 1 and unconditional branch at group size N
for GroupDiff-l; both at N for GroupDiff-f), the guidance scale and interval, and fixed sample ids
``0..N-1`` (REFERENCES §4, pitfalls 1 and 2). `Teacher.velocity` binds exactly the function the
sampler integrates (`model.guidance.velocity_function`), so the target and the teacher's own samples
cannot drift apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from groupdiff.model import GroupDiT, Guidance, fixed_sample_ids, load_model, velocity_function
from groupdiff.model.samplers import VelocityFn, sample
from groupdiff.model.spec import spec_from_checkpoint


@dataclass
class Teacher:
    model: GroupDiT  # frozen, eval mode
    guidance: Guidance
    sampler: str  # the teacher's full recipe: step rule and step count
    steps: int
    path: str
    model_hash: str  # the weights and config (`model.spec.weights_hash`): keys cached teacher samples

    def velocity(self, y: torch.Tensor, group_size: int) -> VelocityFn:
        """The guided ``v(x, t)`` the teacher samples with, for group-major labels ``y`` (G·N,)."""
        ids = fixed_sample_ids(len(y), group_size, y.device)
        return velocity_function(self.model, y, group_size, self.guidance, sample_ids=ids)

    def target(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, group_size: int) -> torch.Tensor:
        """The guided velocity at ``x`` (G·N, C, H, W), ``t`` (G·N,): no gradients (`guided_velocity`)."""
        return self.velocity(y, group_size)(x, t)

    @torch.no_grad()
    def generate(self, noise: torch.Tensor, y: torch.Tensor, group_size: int, steps: int | None = None) -> torch.Tensor:
        """Samples of the teacher's full recipe (or ``steps`` steps of its step rule) from ``noise``."""
        return sample(self.velocity(y, group_size), noise, steps or self.steps, self.sampler)

    @property
    def forwards_per_step(self) -> int:
        """Network evaluations per sampler step at full guidance (Heun: 2 velocities × 2 branches)."""
        branches = 2 if self.guidance.scale > 0 else 1
        return branches * (2 if self.sampler == "heun" else 1)


def load_teacher(path: str | os.PathLike, weights: str = "ema", guidance_scale: float | None = None,
                 device: str | torch.device = "cpu") -> Teacher:
    """A trained teacher with the guidance recipe and sampler recorded in its checkpoint.

    ``guidance_scale`` overrides the recorded scale (the mode and interval always come from training).
    """
    spec = spec_from_checkpoint(path, weights)
    if spec.kind != "teacher":
        raise ValueError(f"{path} is a distilled student, not a teacher")
    scale = spec.guidance_scale if guidance_scale is None else guidance_scale
    guidance = Guidance(scale, spec.guidance_mode, spec.guidance_interval)
    model = load_model(path, weights=weights, device=device).requires_grad_(False)
    return Teacher(model, guidance, spec.sampler, spec.default_steps, str(path), spec.model_hash)
