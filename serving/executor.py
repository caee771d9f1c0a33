"""The executor: runs what the scheduler decided on the runtime, and decides nothing.

It owns the runtime, the decoder and the running groups' latents (by group id, as vLLM's model
runner owns its per-request state), and offers four operations to the engine: create new groups'
initial noise, take one batched sampler step for groups of one size (each group at its own time),
decode finished groups, and forget dropped ones. Before a step it runs the attention capture
(`attention.AttentionCapture`) on the groups that asked for it at their final step, and keeps each
one's mass until the engine takes it. `profile` measures the runtime's cost curve at
start-up, from which the engine picks the call size and seeds the admission estimate.

A text model's groups are conditioned on their prompt's encoding: when groups start, the executor asks the
prompt cache (`prompt_cache.PromptCache`) for the encodings of their distinct prompts, which runs the text
encoder once for those it does not hold, and keeps each group's encoding beside its latents until the group
leaves. The unconditional branch needs no encoder call: the denoiser takes the null prompt from the model.

Every random draw comes from the member's own seed (and step), so an image never depends on the
groups it was batched with; the step rules come from `groupdiff.model.samplers` via `pipeline`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from groupdiff.model.text_condition import NULL_PROMPT, Condition, TextCondition

from .admission import KNEE_TOLERANCE, CurvePoint
from .attention import AttentionCapture
from .pipeline import denoise_step, member_noise, step_noise, step_rule, time_grid
from .prompt_cache import PromptCache
from .runtime import Decoder, Runtime
from .scheduler import Group


class Executor:
    def __init__(self, runtime: Runtime, decoder: Decoder, capture: AttentionCapture | None = None,
                 prompts: PromptCache | None = None):
        self.runtime = runtime
        self.decoder = decoder
        self.capture = capture  # None: this server reports no attention (requests asking are refused)
        self.prompts = prompts  # a text model's prompt encodings; None for a class model
        self._encodings: dict[int, TextCondition] = {}  # group id -> its prompt's encoding (1, T, C), while it runs
        self._attention: dict[int, np.ndarray] = {}  # group id -> (N, N) mass, until the engine takes it
        spec = runtime.spec
        self.shape = (spec.channels, spec.size, spec.size)  # model-space sample shape
        self._rule = step_rule(spec.sampler)
        self._latents: dict[int, torch.Tensor] = {}  # group id -> (N, C, H, W) on the runtime device
        self._grids: dict[int, list[float]] = {}  # steps -> the float32 times a group visits, 1 -> 0
        self.image_shape: tuple[int, int, int] | None = None  # (H, W, C) of decoded images, known after `profile`

    def start(self, groups: list[Group]) -> None:
        """Initial noise for new groups, from each member's seed, in one host-to-device copy."""
        if not groups:
            return
        noise = member_noise([m.seed for g in groups for m in g.members], self.shape)  # (ΣN, C, H, W)
        noise = noise.to(self.runtime.device)
        if self.prompts is not None:  # one encoder call at most, for the prompts the cache does not hold
            encodings = self.prompts.conditions([g.request.prompt for g in groups])
            self._encodings.update((g.id, encodings[g.request.prompt]) for g in groups)
        offset = 0
        for group in groups:
            self._latents[group.id] = noise[offset:offset + group.size]  # (N, C, H, W)
            offset += group.size

    def step(self, groups: list[Group]) -> float:
        """One sampler step for groups of one size N, each at its own step; returns the call's seconds."""
        n = groups[0].size
        device = self.runtime.device
        x = torch.cat([self._latents[g.id] for g in groups])  # (G·N, C, H, W)
        times = [self._times(g.steps) for g in groups]
        # per-group values built on the host, one small copy each: (G·N,) times and labels, (G,) scales
        t = torch.tensor([ts[g.step] for g, ts in zip(groups, times, strict=True) for _ in range(n)],
                         dtype=torch.float32, device=device)
        t_next = torch.tensor([ts[g.step + 1] for g, ts in zip(groups, times, strict=True) for _ in range(n)],
                              dtype=torch.float32, device=device)
        y = self._condition(groups)
        guidance = torch.tensor([g.request.guidance_scale for g in groups], dtype=torch.float32, device=device)
        began = time.perf_counter()
        self._capture([i for i, g in enumerate(groups) if g.captures_attention], groups, x, t, y)
        noise = step_noise(self.runtime.spec.sampler, [(m.seed, g.step) for g in groups for m in g.members],
                           self.shape)
        x = denoise_step(self.runtime, self._rule, x, t, t_next, y, guidance, n, noise)
        self._synchronize()
        seconds = time.perf_counter() - began
        for i, group in enumerate(groups):
            self._latents[group.id] = x[i * n:(i + 1) * n]
        return seconds

    def _condition(self, groups: list[Group]) -> Condition:
        """Each member's condition, group-major: (G·N,) class ids, or a `TextCondition` of G·N rows."""
        device = self.runtime.device
        if self.prompts is None:
            return torch.tensor([g.request.member_class(m.index) for g in groups for m in g.members],
                                dtype=torch.int64, device=device)
        rows = TextCondition.cat(*(self._encodings[g.id] for g in groups))  # (G, T, C): one prompt per group
        return rows.repeat_interleave(groups[0].size).to(device)  # (G·N, T, C)

    def _capture(self, chosen: list[int], groups: list[Group], x: torch.Tensor, t: torch.Tensor,
                 y: Condition) -> None:
        """The attention mass of the groups at positions ``chosen`` of this step's batch, on the step's input."""
        if not chosen:
            return
        n = groups[0].size
        rows = torch.tensor([i * n + j for i in chosen for j in range(n)], device=x.device)
        masses = self.capture.mass(x[rows], t[rows], y[rows], [groups[i].request.guidance_scale for i in chosen], n)
        for i, mass in zip(chosen, masses, strict=True):
            self._attention[groups[i].id] = mass

    def take_attention(self, group: Group) -> np.ndarray | None:
        """The (N, N) mass captured for a finished group, if it asked for one."""
        return self._attention.pop(group.id, None)

    def decode(self, groups: list[Group]) -> tuple[list[np.ndarray], float]:
        """Decode finished groups together: ((N, H, W, C) uint8 per group, seconds); their latents go."""
        began = time.perf_counter()
        images = self.decoder.decode(torch.cat([self._latents.pop(g.id) for g in groups]))  # (ΣN, H, W, C)
        for group in groups:
            self._encodings.pop(group.id, None)
        seconds = time.perf_counter() - began
        bounds = np.cumsum([0] + [g.size for g in groups])
        return [images[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], seconds

    def free(self, groups: list[Group]) -> None:
        for group in groups:
            self._latents.pop(group.id, None)
            self._attention.pop(group.id, None)
            self._encodings.pop(group.id, None)

    def free_all(self) -> None:
        self._latents.clear()
        self._attention.clear()
        self._encodings.clear()

    def profile(self, group_size: int, max_groups: int, repeats: int = 5) -> list[CurvePoint]:
        """Seconds per step call at 1, 2, 4, ... groups of ``group_size`` (up to ``max_groups``); the
        decoder is warmed up too (and tells the images' shape).

        Each size is warmed up once (a runtime's first call of a shape is slow), then timed ``repeats``
        times; the fastest counts, as the least disturbed by other work on the machine. Sizes stop once
        two in a row fall well past the best throughput: bigger calls would only be slower here and take
        long to measure.
        """
        sizes = sorted({min(max_groups, 2 ** i) for i in range(max_groups.bit_length() + 1)})
        curve: list[CurvePoint] = []
        below = 0
        for groups in sizes:
            timed = self._timed_step(groups, group_size)
            timed()  # warm-up
            curve.append(CurvePoint(groups * group_size, min(timed() for _ in range(repeats))))
            best = max(p.members_per_s for p in curve)
            below = below + 1 if curve[-1].members_per_s < (1 - 2 * KNEE_TOLERANCE) * best else 0
            if below == 2:
                break
        best_members = max(curve, key=lambda p: p.members_per_s).members
        images = self.decoder.decode(member_noise(range(best_members), self.shape).to(self.runtime.device))
        self.image_shape = tuple(images.shape[1:])
        return curve

    def _timed_step(self, groups: int, group_size: int) -> Callable[[], float]:
        """A step call over ``groups`` groups of ``group_size`` fresh-noise members that returns its seconds."""
        members = groups * group_size
        device = self.runtime.device
        x = member_noise(range(members), self.shape).to(device)  # (G·N, C, H, W)
        t = torch.ones(members, device=device)
        if self.prompts is None:
            y = torch.zeros(members, dtype=torch.int64, device=device)
        else:  # any prompt costs the same; this one leaves the cache and its metrics alone
            y = self.prompts.encoder.encode([NULL_PROMPT]).repeat_interleave(members).to(device)
        guidance = torch.full((groups,), self.runtime.spec.guidance_scale, device=device)

        def call() -> float:
            began = time.perf_counter()
            noise = step_noise(self.runtime.spec.sampler, [(seed, 0) for seed in range(members)], self.shape)
            denoise_step(self.runtime, self._rule, x, t, t * 0.5, y, guidance, group_size, noise)
            self._synchronize()
            return time.perf_counter() - began

        return call

    def _times(self, steps: int) -> list[float]:
        grid = self._grids.get(steps)
        if grid is None:
            grid = self._grids[steps] = time_grid(steps, self.runtime.spec.sampler).tolist()
        return grid

    def _synchronize(self) -> None:
        """On a GPU, wait for the call, so its measured seconds are the device's (the cost model's input)."""
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(self.runtime.device)
