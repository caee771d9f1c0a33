"""Real-image reference sets and their cached Inception statistics.

A reference is an idx data set's split (Fashion-MNIST's test split by default) or a captioned folder
(``images/`` + ``captions.jsonl``, e.g. COCO's val2017 converted by `groupdiff prepare --coco`), read with the
training side's reader, so a text model prompted with a validation set's captions is compared with its images.

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

from groupdiff.training.captions import CAPTIONS_FILE, CaptionedFolder
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


def captioned_root(path: str | os.PathLike) -> Path:
    """The folder of a captioned set named by the folder itself or by its captions.jsonl."""
    path = Path(path)
    return path.parent if path.name == CAPTIONS_FILE else path


def is_captioned(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a captioned folder (or its captions.jsonl) rather than an idx data folder."""
    return (captioned_root(path) / CAPTIONS_FILE).is_file()


def load_reference(root: str | os.PathLike, split: str = "test", count: int | None = None,
                   size: int | None = None) -> ReferenceImages:
    """The first ``count`` images of an idx data set's split (Fashion-MNIST's test split is the reference), or of
    a captioned folder: it has no splits (``split`` is not used), its images come in captions.jsonl order, RGB,
    centre-cropped to ``size`` (the samples' side) the way `groupdiff prepare` crops training images."""
    if count is not None and count < 1:
        raise ValueError(f"reference count must be at least 1, got {count}")
    if is_captioned(root):
        folder = captioned_root(root)
        images, labels = _captioned_images(folder, count, size)
        name, split = folder.name, "all"
    else:
        dataset = load_idx_dataset(root, split, limit=count)
        images, labels, name = dataset.images, dataset.labels, Path(root).name or str(root)
    if count is not None and len(images) < count:
        held = f"{len(images)} images" if split == "all" else f"the {split} split has {len(images)} images"
        raise ValueError(f"{root}: {held}, fewer than the {count} asked for")
    images = images.permute(0, 2, 3, 1).contiguous().numpy()  # (M, C, H, W) -> (M, H, W, C)
    return ReferenceImages(images, labels.numpy(), name, split, hashlib.sha256(images.tobytes()).hexdigest())


def _captioned_images(root: Path, count: int | None, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` images (M, 3, size, size) uint8 of a captioned folder and their labels (all 0), read
    by `CaptionedFolder`, which validates the folder."""
    if size is None:
        raise ValueError(f"{root}: a captioned-folder reference needs the samples' image size to crop to")
    folder = CaptionedFolder(root, size, limit=count)
    return torch.stack([folder[i][0] for i in range(len(folder))]), folder.labels


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
