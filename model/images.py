"""PNG grids with one group per row, so members made together sit side by side."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def group_grid(images: torch.Tensor, group_size: int, padding: int = 2, upscale: int = 1) -> Image.Image:
    """Tile group-major images (G·N, C, H, W) in [-1, 1]: G rows of N images."""
    pixels = to_uint8(images)  # (B, H, W, C)
    batch, height, width, channels = pixels.shape
    rows, cols = batch // group_size, group_size
    canvas = np.full(
        (rows * (height + padding) + padding, cols * (width + padding) + padding, channels), 255, np.uint8
    )
    for index, image in enumerate(pixels):
        r, c = divmod(index, cols)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        canvas[top : top + height, left : left + width] = image
    grid = Image.fromarray(canvas[..., 0] if channels == 1 else canvas)
    if upscale > 1:
        grid = grid.resize((grid.width * upscale, grid.height * upscale), Image.NEAREST)
    return grid


def save_group_grid(path: str | os.PathLike, images: torch.Tensor, group_size: int, upscale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    group_grid(images, group_size, upscale=upscale).save(path)
    return path
