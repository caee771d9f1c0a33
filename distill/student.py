"""The few-step student: a `GroupDiT` whose plain forward at group size N is the guided flow map.

A student ``F(x_t, t)`` predicts the *average* velocity from ``t`` to 0, so ``x₀ = x_t − t·F``. Predicting
``x₀`` and re-noising to ``t_next`` with the implied noise ``ε = x_t + (1 − t)·F`` is exactly an Euler
step with ``F``, so the student samples with the existing ``euler`` rule on the uniform grid and needs
no sampler of its own. Its guidance is baked in: it runs one forward per step, at the group size it
serves, with fixed sample ids, which is guidance-free GroupDiff-f in `model.guidance` terms.
"""

from __future__ import annotations

import torch

from groupdiff.model import GroupDiT, Guidance, fixed_sample_ids, velocity_function
from groupdiff.model.samplers import VelocityFn, sample

STUDENT_SAMPLER = "euler"
STUDENT_GUIDANCE = Guidance(0.0, "groupdiff-f")  # one forward at the group size, no second branch


class AnchoredStudent(GroupDiT):
    """A `GroupDiT` that also takes ``t ∈ [−1, 0)`` while it is distilled.

    FACM's *expanded time interval*: the flow-matching anchor task (instantaneous teacher velocity) is
    asked at time ``−t``, the consistency task (average velocity to 0) at ``t``, so one network learns
    both without an extra input. Checkpoints hold a plain `GroupDiT`; it is only ever served at ``t ≥ 0``.
    """

    def _check_inputs(self, x, t, y, group_size, sample_ids) -> None:
        super()._check_inputs(x, t.abs(), y, group_size, sample_ids)


def anchor_time(t: torch.Tensor) -> torch.Tensor:
    """The time at which the student is asked for the instantaneous (flow-matching) velocity."""
    return -t


def student_velocity(model: GroupDiT, y: torch.Tensor, group_size: int) -> VelocityFn:
    """``v(x, t)`` of a student for group-major labels ``y`` (G·N,): what the server integrates."""
    ids = fixed_sample_ids(len(y), group_size, y.device)
    return velocity_function(model, y, group_size, STUDENT_GUIDANCE, sample_ids=ids)


@torch.no_grad()
def generate_student(
    model: GroupDiT, noise: torch.Tensor, y: torch.Tensor, group_size: int, steps: int
) -> torch.Tensor:
    """Samples (G·N, C, H, W) in ``steps`` Euler steps of the student from ``noise`` at t = 1."""
    return sample(student_velocity(model, y, group_size), noise, steps, STUDENT_SAMPLER)
