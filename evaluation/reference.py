"""Real-image reference sets and their cached Inception statistics.

Inception runs at a handful of images per second on a CPU, so the reference features (and their
mean and covariance) are computed once and stored under the cache folder as safetensors, keyed by
the data set (name and a hash of the exact images), split, sample count and the network's hash.
A cached file whose stored key differs from the request is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from groupdiff.training.data import load_idx_dataset

from .cache import cached_tensors
from .frechet import gaussian_stats


@dataclass
class ReferenceImages:
    images: np.ndarray  # (M, H, W, C) uint8
    labels: np.ndarray  # (M,) int64
    name: str  # e.g. "fashion-mnist"
    split: str
    sha256: str  # of the image bytes, so two folders of the same name cannot share a cache entry

    @property
    def key(self) -> dict[str, str]:
        return {"dataset": self.name, "split": self.split, "count": str(len(self.images)), "data_sha256": self.sha256}


def load_reference(root: str | os.PathLike, split: str = "test", count: int | None = None) -> ReferenceImages:
    """The first ``count`` images of an idx data set's split (Fashion-MNIST's test split is the reference)."""
    if count is not None and count < 1:
        raise ValueError(f"reference count must be at least 1, got {count}")
    dataset = load_idx_dataset(root, split, limit=count)
    if count is not None and len(dataset) < count:
        raise ValueError(f"{root}: the {split} split has {len(dataset)} images, fewer than the {count} asked for")
    images = dataset.images.permute(0, 2, 3, 1).contiguous().numpy()  # (M, 1, H, W) -> (M, H, W, 1)
    name = Path(root).name or str(root)
    return ReferenceImages(images, dataset.labels.numpy(), name, split, hashlib.sha256(images.tobytes()).hexdigest())


@dataclass
class FeatureStats:
    features: np.ndarray  # (M, D) float32
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64


def cached_features(cache: Path, kind: str, key: dict[str, str], compute: Callable[[], np.ndarray]) -> FeatureStats:
    """Features of a reference set and their statistics from ``cache/<kind>/``, computed on a miss."""

    def features_and_stats() -> dict[str, torch.Tensor]:
        features = np.asarray(compute(), np.float32)
        mu, sigma = gaussian_stats(features)
        return {"features": torch.from_numpy(features), "mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)}

    prefix = f"{key.get('dataset', 'data')}-{key.get('split', '')}-n{key.get('count', '')}"
    stored, _ = cached_tensors(cache, kind, prefix, key, features_and_stats)
    return FeatureStats(*(stored[name].numpy() for name in ("features", "mu", "sigma")))
