"""Classifier-free guidance in the three GroupDiff modes.

``v = v_cond + s·(v_cond − v_uncond)`` (paper Eq. 2, 5, 6): scale ``s = 0`` is the conditional model
alone. DiT/SiT/REPA scripts write the same rule as ``v_u + w·(v_c − v_u)``; their ``cfg_scale`` ``w``
is ``1 + s`` here (DiT's 1.5 is ``s = 0.5``, GroupDiff's released SiT-XL 2.585 is ``s = 1.585``).

=============  ======================  ========================
mode           conditional branch      unconditional branch
=============  ======================  ========================
plain          group size 1            group size 1
groupdiff-l    group size 1            group size N (same latents)
groupdiff-f    group size N            group size N
=============  ======================  ========================

The unconditional branch's condition is the model's `GroupDiT.null_condition` of ``y``: the null class
for a class model, the null prompt ``""`` for a text model, so the recipe reads the same for both.
Guidance applies to all channels, and only to samples whose ``t`` lies in the guidance interval;
outside it only the conditional branch runs. `guided_velocity` is the one implementation of this
recipe: samplers and the distillation teacher both call it. `guided_velocity_per_sample` is the same
recipe with a scale per sample and no data-dependent branching, which the served (and exported)
teacher graph uses; `guided_velocity` calls it once its shortcuts do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dit import GroupDiT
from .samplers import VelocityFn
from .schedule import GroupAttentionSchedule
from .text_condition import Condition, cat_conditions

GUIDANCE_MODES = ("plain", "groupdiff-l", "groupdiff-f")


@dataclass(frozen=True)
class Guidance:
    scale: float = 0.0
    mode: str = "groupdiff-l"
    interval: tuple[float, float] = (0.0, 1.0)  # t range (1 = noise) in which guidance applies

    def __post_init__(self) -> None:
        if self.mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance mode must be one of {GUIDANCE_MODES}, got {self.mode!r}")
        if not self.scale >= 0.0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")
        low, high = self.interval
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"guidance interval must satisfy 0 <= low <= high <= 1, got {self.interval}")

    def branch_group_sizes(self, group_size: int) -> tuple[int, int]:
        """Group sizes of the (conditional, unconditional) forward passes."""
        return {
            "plain": (1, 1),
            "groupdiff-l": (1, group_size),
            "groupdiff-f": (group_size, group_size),
        }[self.mode]

    def group_attention_pass(self, group_size: int) -> str:
        """``"conditional"`` or ``"unconditional"``: the pass in which members attend to each other, for
        attention capture (maps, served attention mass); ValueError with the reason when no pass does.

        GroupDiff-f groups its conditional pass; GroupDiff-l only its unconditional one, which runs only
        with a scale above 0; plain guidance never groups. A student has its guidance baked into one
        conditional forward at group size N: describe it as GroupDiff-f."""
        if group_size < 2:
            raise ValueError(f"a group of {group_size} has no other member to attend to: ask for group_size >= 2")
        conditional, unconditional = self.branch_group_sizes(group_size)
        if conditional == group_size:
            return "conditional"
        if unconditional == group_size and self.scale > 0:
            return "unconditional"
        reason = ("its unconditional pass, the only one at group size N, runs only with a guidance scale above 0"
                  if unconditional == group_size else "no pass of this guidance mode groups the members")
        raise ValueError(f"{self.mode} guidance at scale {self.scale:g} has no group attention to report: {reason}")


@torch.no_grad()
def guided_velocity(
    model: GroupDiT,
    x: torch.Tensor,
    t: torch.Tensor,
    y: Condition,
    group_size: int,
    guidance: Guidance,
    sample_ids: torch.Tensor | None = None,
    schedule: GroupAttentionSchedule | None = None,
) -> torch.Tensor:
    """The guided velocity the sampler integrates, for group-major ``x`` (G·N, C, H, W).

    Skips the unconditional branch when the scale is 0 or no sample is inside the interval; otherwise
    it is `guided_velocity_per_sample` with the recipe's scale.
    """
    if guidance.scale == 0.0 or not bool(_inside_interval(t, guidance.interval).any()):
        cond_size, _ = guidance.branch_group_sizes(group_size)
        return _branch(model, x, t, y, cond_size, group_size, sample_ids, schedule)
    return guided_velocity_per_sample(model, x, t, y, group_size, guidance, guidance.scale, sample_ids, schedule)


def guided_velocity_per_sample(
    model: GroupDiT,
    x: torch.Tensor,
    t: torch.Tensor,
    y: Condition,
    group_size: int,
    guidance: Guidance,
    scale: torch.Tensor | float,
    sample_ids: torch.Tensor | None = None,
    schedule: GroupAttentionSchedule | None = None,
) -> torch.Tensor:
    """The recipe with a scale per sample (``(B,)`` tensor, or one float); ``guidance.scale`` is unused.

    Both branches always run and the interval is a `torch.where`, with no branching on data, so the
    function traces into an exported graph that serves groups at different scales and steps in one batch.
    """
    cond_size, uncond_size = guidance.branch_group_sizes(group_size)
    null = model.null_condition(y)
    if cond_size == uncond_size:  # both branches in one forward of 2B samples, still group-major
        ids = None if sample_ids is None else torch.cat([sample_ids, sample_ids])
        both = _branch(model, torch.cat([x, x]), torch.cat([t, t]), cat_conditions(y, null), cond_size, group_size,
                       ids, schedule)
        v_cond, v_uncond = both.chunk(2)
    else:
        v_cond = _branch(model, x, t, y, cond_size, group_size, sample_ids, schedule)
        v_uncond = _branch(model, x, t, null, uncond_size, group_size, sample_ids, schedule)
    if isinstance(scale, torch.Tensor):
        scale = scale.to(v_cond.dtype).view(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1)
    guided = v_cond + scale * (v_cond - v_uncond)
    inside = _inside_interval(t, guidance.interval)  # (B,)
    return torch.where(inside.view(-1, *([1] * (x.ndim - 1))), guided, v_cond)


def _inside_interval(t: torch.Tensor, interval: tuple[float, float]) -> torch.Tensor:
    low, high = interval
    return (t >= low) & (t <= high)


def _branch(model, x, t, labels, branch_group_size, group_size, sample_ids, schedule):
    """One forward pass; a branch run at group size 1 uses the default ids, not the group's."""
    ids = sample_ids if branch_group_size == group_size else None
    return model(x, t, labels, group_size=branch_group_size, sample_ids=ids, schedule=schedule)


def velocity_function(
    model: GroupDiT,
    y: Condition,
    group_size: int,
    guidance: Guidance,
    sample_ids: torch.Tensor | None = None,
    schedule: GroupAttentionSchedule | None = None,
) -> VelocityFn:
    """Bind conditions and the guidance recipe, giving the ``v(x, t)`` a sampler integrates."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_velocity(model, x, t, y, group_size, guidance, sample_ids, schedule)

    return velocity
