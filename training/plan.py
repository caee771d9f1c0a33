"""The group batch plan: which images each training step sees, and in which groups.

GroupDiff trains on groups of related images (paper Section 3.2). Two modes:

- **GroupDiff-l**: a share of each step's samples (default 10 %) forms unconditional groups of size
  N with labels nulled; the rest are conditional singles. The unconditional model is learned only
  from groups, as in the released code (no extra label dropout on singles).
- **GroupDiff-f**: every sample is in a group of size N, labels kept; a share of groups (default
  10 %) has its labels nulled for classifier-free guidance.

Each group is an *anchor* plus ``N − 1`` members drawn at random from the anchor's candidates (its
neighbours with similarity ≥ τ, its class, or any image, depending on the query). The plan of an
epoch is a pure function of ``(seed, epoch)``: every DDP rank builds the same plan and takes its own
disjoint slice of every step, and a resumed run finds its place from the step number alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch


class NeighbourSource(Protocol):
    tau: float

    def candidates(self, i: int) -> torch.Tensor: ...

    def counts_above_tau(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class PlanConfig:
    mode: Literal["groupdiff-l", "groupdiff-f"] = "groupdiff-l"
    group_size: int = 4
    group_share: float = 0.1  # GroupDiff-l: share of samples in (unconditional) groups
    label_dropout: float = 0.1  # GroupDiff-f: share of groups trained unconditionally
    query: str = "efficientnet"  # neighbour index to draw members from: an encoder, "class" or "random"
    noise_variation: float = 0.0  # paper's "Noise Var.", in 1/1000 of the time axis (50 = ±0.05)

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"plan.group_size must be >= 1, got {self.group_size}")
        if not 0.0 <= self.group_share <= 1.0 or not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError("plan.group_share and plan.label_dropout must lie in [0, 1]")
        if not 0.0 <= self.noise_variation <= 1000.0:
            raise ValueError(f"plan.noise_variation must lie in [0, 1000], got {self.noise_variation}")


@dataclass
class StepBatch:
    """One rank's share of one step."""

    groups: torch.Tensor  # (G, N) dataset indices, anchor first
    null_groups: torch.Tensor  # (G,) bool: train this group with the null label
    singles: torch.Tensor  # (S,) dataset indices, conditional

    @property
    def num_images(self) -> int:
        return self.groups.numel() + self.singles.numel()


def split_batch(config: PlanConfig, batch_size: int) -> tuple[int, int]:
    """(groups, singles) per rank and step for ``batch_size`` images per rank."""
    n = config.group_size
    if config.mode == "groupdiff-f":
        if batch_size % n:
            raise ValueError(f"GroupDiff-f needs a per-rank batch divisible by the group size {n}, got {batch_size}")
        return batch_size // n, 0
    groups = round(batch_size * config.group_share / n)
    if config.group_share > 0 and groups == 0:
        raise ValueError(
            f"a per-rank batch of {batch_size} is too small for a {config.group_share:.0%} share of groups of {n}"
        )
    return groups, batch_size - groups * n


def draw_members(rng: np.random.Generator, candidates: np.ndarray, anchor: int, count: int) -> np.ndarray:
    """``count`` distinct candidates other than the anchor, uniformly at random.

    Large candidate sets (a class, the whole data set) are sampled by rejection, which avoids a pass
    over the whole set for every group.
    """
    if len(candidates) <= 4 * count + 1:
        pool = candidates[candidates != anchor]
        if len(pool) < count:
            raise ValueError(f"image {anchor} has {len(pool)} candidates, fewer than the {count} members needed")
        return rng.choice(pool, size=count, replace=False)
    while True:
        picks = candidates[rng.integers(len(candidates), size=count)]
        if anchor not in picks and len(np.unique(picks)) == count:
            return picks


class GroupBatchPlan:
    """Deterministic per-epoch plan of group and single batches for ``world_size`` ranks."""

    def __init__(
        self,
        config: PlanConfig,
        neighbours: NeighbourSource,
        num_items: int,
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
    ):
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} ranks")
        self.config = config
        self.neighbours = neighbours
        self.world_size = world_size
        self.seed = seed
        self.groups_per_rank, self.singles_per_rank = split_batch(config, batch_size // world_size)
        self.eligible = self._eligible_anchors(num_items)
        self.num_items = num_items
        per_step_singles = self.singles_per_rank * world_size
        per_step_anchors = self.groups_per_rank * world_size
        # an epoch visits every image once, as a single (GroupDiff-l) or as an anchor (GroupDiff-f)
        if per_step_singles:
            self.steps_per_epoch = num_items // per_step_singles
        else:
            self.steps_per_epoch = len(self.eligible) // per_step_anchors
        if self.steps_per_epoch == 0:
            raise ValueError(f"{num_items} images are fewer than one global batch of {batch_size}")
        self._cached_epoch: int | None = None
        self._cached: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _eligible_anchors(self, num_items: int) -> np.ndarray:
        needed = self.config.group_size - 1
        if self.groups_per_rank == 0 or needed == 0:
            return np.arange(num_items)
        counts = self.neighbours.counts_above_tau().numpy()
        eligible = np.flatnonzero(counts >= needed)
        if len(eligible) == 0:
            raise ValueError(
                f"no image has {needed} neighbours with similarity >= tau={self.neighbours.tau} in the "
                f"'{self.config.query}' index: lower tau or the group size {self.config.group_size}"
            )
        return eligible

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, 0x6D7])

    def _build_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Arrays for the whole epoch: groups (steps, W·G, N), null flags (steps, W·G), singles (steps, W·S)."""
        rng = self._rng(epoch)
        steps, world = self.steps_per_epoch, self.world_size
        n, g, s = self.config.group_size, self.groups_per_rank, self.singles_per_rank
        singles = rng.permutation(self.num_items)[: steps * world * s].reshape(steps, world * s)
        anchor_count = steps * world * g
        anchors = rng.permutation(self.eligible)
        anchors = np.resize(anchors, anchor_count)  # cycles through the eligible anchors if needed
        groups = np.empty((anchor_count, n), dtype=np.int64)
        groups[:, 0] = anchors
        if n > 1:
            for row, anchor in enumerate(anchors):
                groups[row, 1:] = draw_members(rng, self.neighbours.candidates(int(anchor)).numpy(), anchor, n - 1)
        if self.config.mode == "groupdiff-l":
            null = np.ones(anchor_count, dtype=bool)
        else:
            null = rng.random(anchor_count) < self.config.label_dropout
        return groups.reshape(steps, world * g, n), null.reshape(steps, world * g), singles

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._cached_epoch != epoch:
            self._cached, self._cached_epoch = self._build_epoch(epoch), epoch
        return self._cached

    def batch(self, global_step: int, rank: int = 0) -> StepBatch:
        """Rank ``rank``'s share of step ``global_step`` (counting from 0 over all epochs)."""
        epoch, index = divmod(global_step, self.steps_per_epoch)
        groups, null, singles = self._epoch(epoch)
        g, s = self.groups_per_rank, self.singles_per_rank
        return StepBatch(
            groups=torch.from_numpy(groups[index, rank * g : (rank + 1) * g].copy()),
            null_groups=torch.from_numpy(null[index, rank * g : (rank + 1) * g].copy()),
            singles=torch.from_numpy(singles[index, rank * s : (rank + 1) * s].copy()),
        )


def group_timesteps(
    groups: int, group_size: int, noise_variation: float, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample times (G·N,): a uniform base time per group, given to the anchor; the other members
    draw within ``±noise_variation/1000`` of it, clipped to [0, 1] (paper "Noise Var.")."""
    base = torch.rand(groups, 1, generator=generator)  # (G, 1)
    offsets = (torch.rand(groups, group_size, generator=generator) * 2 - 1) * (noise_variation / 1000.0)
    offsets[:, 0] = 0.0
    return (base + offsets).clamp(0.0, 1.0).reshape(-1)
