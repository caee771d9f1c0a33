"""Flow-anchored consistency distillation (FACM, ``ali-vilab/FACM:losses.py``) for group students.

Time convention here: ``x_t = (1 − t)·x₀ + t·ε``, t = 1 is noise. The student ``F(x_t, t)`` is the
average velocity to ``t = 0``; it is consistent when ``x_t − t·F`` is constant along the teacher's
guided flow ``dx/dt = v``, i.e. ``F = v − t·dF/dt`` with ``dF/dt = ∂ₓF·v + ∂ₜF``. The loss pulls ``F``
towards that target (clamped and relaxed near the data end, weighted towards the noise end, with an
adaptive L2), and the *flow-matching anchor* asks the same network for ``v`` itself at time ``−t``.

The derivative ``dF/dt`` is a forward-mode JVP (`torch.func.jvp`, on the math attention kernel: fused
kernels have no forward-mode rule) or a one-sided finite difference (one extra forward without
gradients). Both are tested to agree; the CPU recipes use the finite difference, which is cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import FACMConfig
from .student import anchor_time

StudentFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # F(x (B, C, H, W), t (B,)) -> (B, C, H, W)


def serve_times(serve_steps: tuple[int, ...]) -> torch.Tensor:
    """The distinct times (> 0) a student visits when sampled with the uniform grids of ``serve_steps``."""
    times = {round(1.0 - i / steps, 6) for steps in serve_steps for i in range(steps)}
    return torch.tensor(sorted(times), dtype=torch.float32)


def sample_times(groups: int, group_size: int, config: FACMConfig, serve_steps: tuple[int, ...],
                 generator: torch.Generator) -> torch.Tensor:
    """Per-sample times (G·N,), one per group (a served group advances as one): FACM's arctan-lognormal
    draw, with a share of groups at the times the student will be asked at."""
    normal = torch.randn(groups, generator=generator)
    t = torch.atan(torch.exp(normal * config.time_std - config.time_mean)) * (2 / math.pi)  # (G,)
    grid = serve_times(serve_steps)
    on_grid = torch.rand(groups, generator=generator) < config.grid_share
    picks = grid[torch.randint(len(grid), (groups,), generator=generator)]
    return torch.where(on_grid, picks, t).repeat_interleave(group_size)


def per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))  # (B,) -> (B, 1, 1, 1)


def time_derivative(student: StudentFn, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor, method: str,
                    step: float = 1e-3, value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F(x, t), dF/dt)`` along the flow ``dx/dt = v``; the derivative carries no gradient.

    ``"jvp"`` returns ``F`` with its gradient graph; ``"fd"`` steps ``step`` back along the flow, towards
    the data (forwards where ``t < step``), and returns ``value`` (computed without gradients when not given).
    """
    if method == "jvp":
        with sdpa_kernel(SDPBackend.MATH):
            value, tangent = torch.func.jvp(student, (x, t), (v, torch.ones_like(t)))
        return value, tangent.detach()
    if method != "fd":
        raise ValueError(f"derivative must be 'fd' or 'jvp', got {method!r}")
    with torch.no_grad():
        if value is None:
            value = student(x, t)
        h = torch.where(t >= step, -step, step).to(t.dtype)  # (B,)
        shifted = student(x + per_sample(h, x) * v, t + h)
        return value, (shifted.float() - value.detach().float()) / per_sample(h, x)


def adaptive_l2(prediction: torch.Tensor, target: torch.Tensor, c: float, power: float) -> torch.Tensor:
    """Per-sample ``e / sg(e + c)^power`` with ``e`` the mean squared error (FACM's norm_l2_loss)."""
    e = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return e / (e + c).pow(power).detach()


def tangent_scale(config: FACMConfig, step: int) -> float:
    return min(1.0, step / config.tangent_warmup) if config.tangent_warmup else 1.0


def facm_loss(student: StudentFn, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, config: FACMConfig,
              step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean FACM loss over the batch and its parts; ``v`` is the teacher's guided velocity at ``(x_t, t)``,
    ``step`` the optimizer step (for the tangent warm-up)."""
    if config.derivative == "fd":  # anchor and consistency outputs in one forward of 2B samples, group-major
        f_anchor, f = student(torch.cat([x_t, x_t]), torch.cat([anchor_time(t), t])).chunk(2)
        f, df_dt = time_derivative(student, x_t, t, v, "fd", config.fd_step, value=f)
    else:
        f_anchor = student(x_t, anchor_time(t))
        f, df_dt = time_derivative(student, x_t, t, v, "jvp")
    f_sg = f.detach().float()
    tb = per_sample(t, f_sg)  # (B, 1, 1, 1)
    consistent = v.float() - tangent_scale(config, step) * tb * df_dt  # the F keeping x_t − t·F constant on the flow
    gap = (f_sg - consistent).clamp(-config.gap_clamp, config.gap_clamp)
    relax = 1 - (1 - tb).clamp(min=0).pow(config.relax_power)
    target = f_sg - relax * gap
    weight = torch.sin(t.float() * (math.pi / 2))  # FACM's cos of its data-time: 0 at data, 1 at noise
    consistency = adaptive_l2(f, target, config.loss_c, config.loss_power) * weight
    anchor = (f_anchor.float() - v.float()).pow(2).flatten(1).mean(dim=1)
    loss = consistency.mean() + config.anchor_weight * anchor.mean()
    return loss, {"consistency": consistency.mean().item(), "anchor": anchor.mean().item()}
