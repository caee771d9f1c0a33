"""Group diversity: are the members of a group as different as independent samples?

Group attention lets members see each other, which can help (shared structure) or collapse a group
into near-copies. We compare the mean pairwise feature distance **inside** groups with the mean
distance between members of **different** groups of the same class (when labels are given; any
two groups otherwise). The ratio is ≈ 1 when members are as diverse as independent draws and → 0
when a group collapses to duplicates.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BLOCK = 1024


def group_diversity(features: np.ndarray, group_size: int, labels: np.ndarray | None = None) -> dict[str, float]:
    """``within``, ``across`` (mean L2 distances) and ``ratio = within / across`` of group-major (G·N, D) features."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if group_size < 2:
        raise ValueError(f"group diversity needs groups of at least 2 members, got group size {group_size}")
    if x.ndim != 2 or len(x) % group_size or len(x) == 0:
        raise ValueError(f"features {tuple(x.shape)} are not whole groups of {group_size} (group-major (G·N, D))")
    groups = torch.arange(len(x)) // group_size  # (B,)
    label = torch.as_tensor(labels, dtype=torch.int64) if labels is not None else torch.zeros(len(x), dtype=torch.int64)
    if label.shape != groups.shape:
        raise ValueError(f"labels {tuple(label.shape)} do not match {len(x)} features")
    within_sum = across_sum = 0.0
    within_count = across_count = 0
    for start in range(0, len(x), BLOCK):
        rows = slice(start, start + BLOCK)
        distances = torch.cdist(x[rows], x)  # (b, B)
        same_group = groups[rows, None] == groups[None, :]
        not_self = torch.arange(start, start + len(distances))[:, None] != torch.arange(len(x))[None, :]
        within = same_group & not_self
        across = ~same_group & (label[rows, None] == label[None, :])
        within_sum += distances[within].sum().item()
        within_count += int(within.sum())
        across_sum += distances[across].sum().item()
        across_count += int(across.sum())
    within_mean = within_sum / within_count
    across_mean = across_sum / across_count if across_count else math.nan  # one group per class: undefined
    ratio = within_mean / across_mean if across_count and across_mean > 0 else math.nan
    return {"within": within_mean, "across": across_mean, "ratio": ratio}
