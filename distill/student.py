"""The few-step student: a `GroupDiT` whose plain forward at group size N is the guided flow map.

A student ``F(x_t, t)`` predicts the *average* velocity from ``t`` to 0, so ``x₀ = x_t − t·F``. It samples
with the ``consistency`` rule of `model.samplers` on the uniform grid: jump to ``x₀``, then re-noise to
the next time with fresh noise (FACM's and sCM's multi-step sampler). Re-noising with the noise implied
by ``x_t`` would be an Euler step with ``F``, which is wrong for a flow map unless the paths are straight
(tests/model/test_samplers.py shows it doubling a Gaussian's covariance in 2 steps); on the Fashion-MNIST size-1
student it raised the 4-step FID from 100.2 to 135.1 (experiments/notes/distill.md). Students exported before
this rule record ``euler`` and keep it. The guidance is baked in: one forward per step, at the group
size it serves, with fixed sample ids, which is guidance-free GroupDiff-f in `model.guidance` terms.
"""

from __future__ import annotations

import torch

from groupdiff.model import GroupDiT, Guidance, fixed_sample_ids, velocity_function
from groupdiff.model.checkpoint import load_model, preferred_weights
from groupdiff.model.samplers import VelocityFn, sample

STUDENT_SAMPLER = "consistency"
STUDENT_GUIDANCE = Guidance(0.0, "groupdiff-f")  # one forward at the group size, no second branch


class AnchoredStudent(GroupDiT):
    """A `GroupDiT` that also takes ``t ∈ [−1, 0)`` while it is distilled.

    FACM's *expanded time interval*: the flow-matching anchor task (instantaneous teacher velocity) is
    asked at time ``−t``, the consistency task (average velocity to 0) at ``t``, so one network learns
    both without an extra input. Checkpoints hold a plain `GroupDiT`; it is only ever served at ``t ≥ 0``.
    """

    def _check_inputs(self, x, t, y, group_size, sample_ids) -> None:
        super()._check_inputs(x, t.abs(), y, group_size, sample_ids)


def load_anchored(path: str, weights: str | None = None) -> AnchoredStudent:
    """A student checkpoint (saved as a plain `GroupDiT`) that can be asked for its anchor again;
    ``weights`` defaults to the EMA weights when the checkpoint has them."""
    student = load_model(path, weights=weights or preferred_weights(path))
    anchored = AnchoredStudent(student.config)
    anchored.load_state_dict(student.state_dict())
    return anchored.eval()


def anchor_time(t: torch.Tensor) -> torch.Tensor:
    """The time at which the student is asked for the instantaneous (flow-matching) velocity."""
    return -t


def student_velocity(model: GroupDiT, y: torch.Tensor, group_size: int) -> VelocityFn:
    """``v(x, t)`` of a student for group-major labels ``y`` (G·N,): what the server integrates."""
    ids = fixed_sample_ids(len(y), group_size, y.device)
    return velocity_function(model, y, group_size, STUDENT_GUIDANCE, sample_ids=ids)


@torch.no_grad()
def generate_student(
    model: GroupDiT, noise: torch.Tensor, y: torch.Tensor, group_size: int, steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Samples (G·N, C, H, W) in ``steps`` consistency steps from ``noise`` at t = 1; ``generator`` draws
    the fresh noise between steps."""
    return sample(student_velocity(model, y, group_size), noise, steps, STUDENT_SAMPLER, generator=generator)
