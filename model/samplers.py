"""Flow-matching samplers from ``t = 1`` (noise) to ``t = 0`` (data).

A checkpoint with ``transport="ddpm"`` (a DiT ε-model) samples with `DDPM_SAMPLERS` instead, whose
loops live in `groupdiff.model.ddpm`; `groupdiff.model.generate.generate` picks by the transport.

Each sampler is a *step* ``x(t) -> x(t_next)`` on per-sample time tensors, so a server can advance
groups that sit at different timesteps in one batch, plus a loop (`sample`) over a time grid. They
take a velocity function ``v(x, t)``; `guidance.velocity_function` builds one from a model with the
GroupDiff CFG recipe.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .transport import velocity_to_score

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS = ("euler", "heun", "euler-maruyama", "consistency")
DDPM_SAMPLERS = ("ddpm", "ddim")  # for transport="ddpm" checkpoints (DiT's ε-models): `groupdiff.model.ddpm`
SDE_LAST_TIME = 0.04  # the SDE stops here and takes one deterministic mean step to 0 (SiT / REPA)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))  # (B,) -> (B, 1, 1, 1)


def _dt(t: torch.Tensor, t_next: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return _per_sample(t_next - t, like)  # negative


def euler_step(velocity: VelocityFn, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    return x + _dt(t, t_next, x) * velocity(x, t)


def heun_step(velocity: VelocityFn, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """Second-order Heun (trapezoidal) step; two velocity evaluations."""
    dt = _dt(t, t_next, x)
    v = velocity(x, t)
    x_euler = x + dt * v
    return x + dt * 0.5 * (v + velocity(x_euler, t_next))


def sde_diffusion(t: torch.Tensor) -> torch.Tensor:
    """Diffusion coefficient ``w(t) = 2t`` of the reverse SDE (REPA's Euler–Maruyama sampler)."""
    return 2 * t


def euler_maruyama_step(
    velocity: VelocityFn,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One step of ``dx = [v − ½ w(t) ∇log p_t] dt + √w(t) dW̄``; ``noise=None`` takes the mean step."""
    dt = _dt(t, t_next, x)
    v = velocity(x, t)
    w = sde_diffusion(t).to(x.dtype).view_as(dt)
    drift = v - 0.5 * w * velocity_to_score(x, v, t)
    x_next = x + drift * dt
    if noise is not None:
        x_next = x_next + (w * dt.abs()).sqrt() * noise
    return x_next


def consistency_step(velocity: VelocityFn, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                     noise: torch.Tensor | None) -> torch.Tensor:
    """Jump to ``x₀ = x − t·F(x, t)`` and re-noise it to ``t_next`` with fresh ``noise`` (None: stay at x₀).

    The rule for a *flow map* ``F`` (a distilled student's average velocity to 0, FACM / sCM): if the
    prediction is exact, ``x₀`` follows the data distribution and a fresh draw puts the state exactly on
    the marginal at ``t_next``. Re-noising with the noise implied by ``x`` instead is an Euler step with
    ``F``, which keeps errors of the jump and leaves the marginals unless the paths are straight.
    """
    x0 = x - _per_sample(t, x) * velocity(x, t)
    if noise is None:
        return x0
    s = _per_sample(t_next, x)
    return (1 - s) * x0 + s * noise


def time_grid(steps: int, method: str) -> torch.Tensor:
    """The times a sampler visits, from 1 to 0: ``steps`` velocity steps (Heun: 2 evaluations each)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose from {SAMPLERS}")
    if method == "euler-maruyama":
        if steps == 1:
            return torch.tensor([1.0, 0.0], dtype=torch.float64)
        stochastic = torch.linspace(1.0, SDE_LAST_TIME, steps, dtype=torch.float64)
        return torch.cat([stochastic, torch.zeros(1, dtype=torch.float64)])
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    steps: int,
    method: str = "heun",
    generator: torch.Generator | None = None,
    progress: bool = False,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` at ``t = 1`` to a sample at ``t = 0``.

    ``generator`` draws the per-step noise of the stochastic rules (Euler–Maruyama, consistency).
    ``on_step(i, steps, x)`` is called after every step, for progress reporting.
    """
    grid = time_grid(steps, method)
    x = noise
    batch = noise.shape[0]
    for i in tqdm(range(steps), desc=f"sampling ({method})", disable=not progress, leave=False):
        t = grid[i].to(noise.dtype).expand(batch).to(noise.device)
        t_next = grid[i + 1].to(noise.dtype).expand(batch).to(noise.device)
        if method == "euler":
            x = euler_step(velocity, x, t, t_next)
        elif method == "heun":
            x = heun_step(velocity, x, t, t_next)
        else:
            last = i == steps - 1
            step_noise = None if last else torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
            step = euler_maruyama_step if method == "euler-maruyama" else consistency_step
            x = step(velocity, x, t, t_next, step_noise)
        if on_step is not None:
            on_step(i + 1, steps, x)
    return x
