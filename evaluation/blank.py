"""Blank members: the share of near-constant images in a set of samples.

A guided sampler that overshoots can drive a member to a flat (usually black) image, which FID on a
few hundred samples barely sees and a grid shows at once. A real Fashion-MNIST image is never flat:
its per-image pixel standard deviation in [-1, 1] is at least 0.130 over all 70k train and test images
(1 in 10⁴ below 0.154), and the fmnist-tiny teacher's unguided samples stay above 0.15. The blank and
near-black members of its guided grids lie below 0.1 (experiments/notes/blank-members.md), so a
standard deviation under `BLANK_STD` marks a member as blank.
"""

from __future__ import annotations

import numpy as np
import torch

BLANK_STD = 0.1  # per-image pixel std (images in [-1, 1]) below which an image counts as blank


def _as_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A batch of images, float in [-1, 1] or uint8 in [0, 255], any layout -> float (B, pixels) in [-1, 1]."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"images must be a non-empty batch (B, C, H, W) or (B, H, W, C), got {tuple(x.shape)}")
    x = x.to(torch.float64) / 127.5 - 1.0 if x.dtype == torch.uint8 else x.to(torch.float64)
    return x.reshape(len(x), -1)  # (B, C·H·W): the standard deviation ignores the layout


def image_std(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-image pixel standard deviation, (B,), on the [-1, 1] scale."""
    return _as_images(images).std(dim=1)


def blank_mask(images: torch.Tensor | np.ndarray, threshold: float = BLANK_STD) -> torch.Tensor:
    """(B,) bool: images whose pixel standard deviation is below ``threshold`` (near-constant)."""
    return image_std(images) < threshold


def blank_share(images: torch.Tensor | np.ndarray, threshold: float = BLANK_STD) -> float:
    """Share of near-constant images in the batch."""
    return float(blank_mask(images, threshold).double().mean())


def blank_share_by_position(
    images: torch.Tensor | np.ndarray, group_size: int, threshold: float = BLANK_STD
) -> list[float]:
    """Share of blank images at each member position of group-major (G·N, …) images: N values.

    Members of a group differ only in their sample embedding id (attention is symmetric over members),
    so a blank share that depends on the position points at the sample embedding."""
    mask = blank_mask(images, threshold)  # (G·N,)
    if group_size < 1 or len(mask) % group_size:
        raise ValueError(f"{len(mask)} images are not whole groups of {group_size}")
    return mask.view(-1, group_size).double().mean(dim=0).tolist()
