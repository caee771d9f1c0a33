"""The generation pipeline the scheduler drives: per-image seeds -> noise, one sampler step for a batch
of groups on a runtime, decode, PNG encoding.

Every step here treats a batch as independent groups: each member carries its own time, so groups
that joined the running batch at different moments advance together in one runtime call. The step
rules themselves come from `groupdiff.model.samplers`; this module only adapts a runtime to the
``v(x, t)`` those rules integrate. Every random draw (initial noise, the consistency rule's fresh
noise after each step) comes from a generator of the member's own seed (and step), so an image
depends on its seed only, never on what it was batched with.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from groupdiff.model import samplers
from groupdiff.model.text_condition import Condition, TextCondition

from .runtime import Decoder, Runtime

# (velocity, x, t, t_next, noise) -> x at t_next; noise is None for the deterministic rules
StepRule = Callable[[samplers.VelocityFn, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
                    torch.Tensor]
STOCHASTIC_SAMPLERS = ("consistency",)


def member_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """(N, C, H, W) initial noise, one generator per member, so a member's noise depends on its seed only."""
    return _noise([np.random.SeedSequence(seed) for seed in seeds], shape)


def step_noise(sampler: str, keys: Sequence[tuple[int, int]], shape: tuple[int, int, int]) -> torch.Tensor | None:
    """(N, C, H, W) fresh noise for the members ``(seed, step)`` of a stochastic rule; None for the others.

    Each member's generator is seeded from its seed and the index of the step it takes, so the draw is
    the same whether the member runs alone, in a direct batch or in the scheduler's mixed batches."""
    if sampler not in STOCHASTIC_SAMPLERS:
        return None
    # the spawn key puts step draws in their own stream: no (seed, step) draws another seed's initial noise
    return _noise([np.random.SeedSequence(seed, spawn_key=(step,)) for seed, step in keys], shape)


def _noise(seeds: Sequence[np.random.SeedSequence], shape: tuple[int, int, int]) -> torch.Tensor:
    """One standard normal draw per seed sequence. NumPy's PCG64 takes every bit of a 63-bit seed; a
    torch CPU generator keeps only the low 32, so seeds s and s + 2**32 would draw one image."""
    draws = [np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) for seed in seeds]
    return torch.from_numpy(np.stack(draws))  # (N, C, H, W)


def step_rule(sampler: str) -> StepRule:
    """The `groupdiff.model.samplers` step a served model's sampler names."""
    rules = {"euler": _deterministic(samplers.euler_step), "heun": _deterministic(samplers.heun_step),
             "consistency": samplers.consistency_step}
    if sampler not in rules:
        raise ValueError(f"the serving pipeline has no step rule for sampler {sampler!r} (has: {sorted(rules)})")
    return rules[sampler]


def _deterministic(step) -> StepRule:
    def rule(velocity, x, t, t_next, noise):
        return step(velocity, x, t, t_next)

    return rule


def time_grid(steps: int, sampler: str) -> torch.Tensor:
    """(steps + 1,) float32 times from 1 to 0 that a group visits."""
    return samplers.time_grid(steps, sampler).to(torch.float32)


def batch_velocity(runtime: Runtime, y: Condition, guidance: torch.Tensor, group_size: int) -> samplers.VelocityFn:
    """``v(x, t)`` over a flat group-major batch (G·N, C, H, W), evaluated by the runtime on (G, N, ...); a text
    model's condition stays a `TextCondition` of G·N rows (the runtime lays it out for its graph)."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        groups = x.shape[0] // group_size
        out = runtime.velocity(
            x.view(groups, group_size, *x.shape[1:]),  # (G, N, C, H, W)
            t.view(groups, group_size), y if isinstance(y, TextCondition) else y.view(groups, group_size), guidance,
        )
        return out.reshape(x.shape)  # (G·N, C, H, W)

    return velocity


def denoise_step(runtime: Runtime, rule: StepRule, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                 y: Condition, guidance: torch.Tensor, group_size: int,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """One sampler step for G groups: x and noise (G·N, C, H, W), t / t_next / y (G·N,; a text model's: a
    `TextCondition` of G·N rows), guidance (G,)."""
    return rule(batch_velocity(runtime, y, guidance, group_size), x, t, t_next,
                None if noise is None else noise.to(x.device))


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, C) uint8 -> PNG bytes (grayscale for one channel); deterministic for equal pixels."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def generate_direct(runtime: Runtime, decoder: Decoder, class_ids: Sequence[int], seeds: Sequence[int],
                    group_size: int, steps: int, guidance_scale: float) -> np.ndarray:
    """Sample whole groups in one batch without a scheduler: (G·N, H, W, C) uint8.

    Group ``g`` holds members ``g·N .. g·N + N - 1`` of ``seeds`` with class ``class_ids[g]``. The
    benchmark's peak throughput and the scheduler's reference results come from here.
    """
    spec = runtime.spec
    if len(seeds) != len(class_ids) * group_size:
        raise ValueError(f"{len(class_ids)} groups of {group_size} need {len(class_ids) * group_size} seeds")
    device = runtime.device
    x = member_noise(seeds, (spec.channels, spec.size, spec.size)).to(device)  # (G·N, C, H, W)
    y = torch.tensor(class_ids, dtype=torch.int64, device=device).repeat_interleave(group_size)  # (G·N,)
    guidance = torch.full((len(class_ids),), guidance_scale, dtype=torch.float32, device=device)  # (G,)
    grid = time_grid(steps, spec.sampler).to(device)
    rule = step_rule(spec.sampler)
    for i in range(steps):
        t, t_next = grid[i].expand(x.shape[0]), grid[i + 1].expand(x.shape[0])
        noise = step_noise(spec.sampler, [(seed, i) for seed in seeds], x.shape[1:])
        x = denoise_step(runtime, rule, x, t, t_next, y, guidance, group_size, noise)
    return decoder.decode(x)
