"""Sample files: ADM's ``.npz`` layout and folders of PNGs, read into one format.

Every metric takes images as **uint8 NHWC** arrays, the layout of ADM's evaluator
(`openai/guided-diffusion/evaluations`): ``arr_0`` holds the images ``(N, H, W, C)`` and, when the
samples are class-conditional, ``arr_1`` the labels ``(N,)``. Generated samples are quantised to
uint8 before any metric sees them, so a model's score is the score of the files it would write.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SUFFIXES = {".png"}


@dataclass
class SampleSet:
    """Images ``(N, H, W, C)`` uint8 and optional labels ``(N,)`` int64, with where they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        check_images(self.images, self.source)
        if self.labels is not None:
            self.labels = np.asarray(self.labels).astype(np.int64)
            if self.labels.shape != (len(self.images),):
                raise ValueError(f"{self.source}: labels have shape {self.labels.shape}, "
                                 f"expected ({len(self.images)},) for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)


def check_images(images: np.ndarray, source: str = "images") -> None:
    """Refuse anything but a non-empty uint8 ``(N, H, W, C)`` array with 1 or 3 channels."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"{source}: images must be a uint8 array, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"{source}: images must have shape (N, H, W, C) with N >= 1 and C in (1, 3), "
                         f"got {images.shape}")


def save_npz(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write ``arr_0`` (and ``arr_1`` when labels are given) uncompressed, as ADM's sampler does."""
    check_images(images, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": np.asarray(labels, np.int64)}
    tmp = path.with_name(path.name + ".tmp.npz")  # np.savez appends .npz to names without it
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_npz(path: str | os.PathLike) -> SampleSet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            images = data["arr_0"] if "arr_0" in files else None
            labels = data["arr_1"] if "arr_1" in files else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:  # not a zip, or pickled objects
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    if images is None:
        raise ValueError(f"{path}: no arr_0 (images) in the .npz; has {sorted(files)}")
    if images.ndim == 3:  # (N, H, W) grayscale
        images = images[..., None]
    return SampleSet(images, labels, f"npz:{path}")


def load_png_folder(path: str | os.PathLike) -> SampleSet:
    """PNG files in name order (no labels: a folder carries none). All must share one size and mode."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"sample folder not found: {path}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in PNG_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no .png files")
    arrays = []
    for file in files:
        with Image.open(file) as image:
            gray = image.mode in ("L", "LA", "I", "I;16", "1")
            array = np.asarray(image.convert("L" if gray else "RGB"))
        arrays.append(array[..., None] if array.ndim == 2 else array)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{path}: images differ in size or channels: {sorted(shapes)}")
    return SampleSet(np.stack(arrays), None, f"png:{path}")


def load_samples(path: str | os.PathLike) -> SampleSet:
    """A ``.npz`` file (ADM layout) or a folder of PNGs."""
    path = Path(path)
    if path.is_dir():
        return load_png_folder(path)
    if path.suffix != ".npz":
        if not path.exists():
            raise FileNotFoundError(f"samples not found: {path}")
        raise ValueError(f"{path}: samples must be a .npz file or a folder of PNGs")
    return load_npz(path)
