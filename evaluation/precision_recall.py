"""Improved precision and recall (Kynkäänniemi et al. 2019) on k-NN manifolds of features.

Each set's manifold is the union of balls around its points, a ball's radius being the distance to
the point's k-th nearest neighbour in the same set (k = 3, as in the paper and ADM's evaluator).
Precision: the share of generated points inside the real manifold (fidelity). Recall: the share of
real points inside the generated manifold (coverage). Both sets should have similar sizes, since
radii shrink as a set grows.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 1024  # rows of the distance matrix held at once: 1024 × M floats


def knn_radii(features: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(N,) distance of every point to its k-th nearest other point."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {len(features)}")
    radii = []
    for block in features.split(BLOCK):
        distances = torch.cdist(block, features)  # (b, N); self distance ~0 is the smallest
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def inside_manifold(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """(Q,) bool: whether each query lies in at least one ball (centre ``manifold[i]``, radius ``radii[i]``)."""
    inside = []
    for block in queries.split(BLOCK):
        inside.append((torch.cdist(block, manifold) <= radii[None, :]).any(dim=1))  # (b, M) -> (b,)
    return torch.cat(inside)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if real_t.ndim != 2 or fake_t.ndim != 2 or real_t.shape[1] != fake_t.shape[1]:
        raise ValueError(f"features must be (N, D) with one D, got {tuple(real_t.shape)} and {tuple(fake_t.shape)}")
    precision = inside_manifold(real_t, knn_radii(real_t, k), fake_t).double().mean().item()
    recall = inside_manifold(fake_t, knn_radii(fake_t, k), real_t).double().mean().item()
    return precision, recall
