"""Image datasets for `groupdiff prepare`: idx files (Fashion-MNIST) and ImageNet-style folders.

Every dataset yields ``(image, label)`` with ``image`` a uint8 tensor ``(C, H, W)``, so the later
stages (autoencoder, encoders) see one format whatever the source. Idx data is small and lives in
memory; an image folder is read lazily, one file per item, so ImageNet never has to fit in RAM.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
IDX_PREFIXES = {"train": ("train",), "test": ("t10k",), "all": ("train", "t10k")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (gzip-compressed or raw; detected from the gzip magic, not the name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: corrupt gzip data ({error})") from None
    # header: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per dimension
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: idx header promises {shape} ({expected} bytes) but holds {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, prefix: str, kind: str) -> Path:
    for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no {prefix}-{kind}-ubyte[.gz] in {root}")


class TensorImages(Dataset):
    """Images held in memory: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str], source: str):
        self.images, self.labels, self.class_names, self.source = images, labels, class_names, source

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def load_idx_dataset(root: str | os.PathLike, split: str = "train", limit: int | None = None,
                     class_names: list[str] | None = None) -> TensorImages:
    """Images and labels from a folder in the MNIST layout (``train-*``, ``t10k-*``); ``all`` = train then test."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"idx data folder not found: {root}")
    if split not in IDX_PREFIXES:
        raise ValueError(f"split must be one of {list(IDX_PREFIXES)}, got {split!r}")
    images, labels = [], []
    for prefix in IDX_PREFIXES[split]:
        x = read_idx(_find_idx(root, prefix, "images-idx3"))
        y = read_idx(_find_idx(root, prefix, "labels-idx1"))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
            raise ValueError(f"{root}: expected uint8 images (N, H, W) and labels (N,), got {x.shape} and {y.shape}")
        images.append(x)
        labels.append(y)
    x = torch.from_numpy(np.concatenate(images))[:limit].unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    y = torch.from_numpy(np.concatenate(labels).astype(np.int64))[:limit]
    num_classes = int(y.max()) + 1 if len(y) else 0
    names = class_names or [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise ValueError(f"{root}: {len(names)} class names for {num_classes} classes")
    return TensorImages(x, y, list(names), f"idx:{root}:{split}")


def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_DIR, split: str = "train",
                       limit: int | None = None) -> TensorImages:
    """Fashion-MNIST (60k train + 10k test, 28x28 grayscale, 10 classes) from Debian's idx files."""
    return load_idx_dataset(root, split, limit, FASHION_MNIST_CLASSES)


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop (guided-diffusion): halve with BOX while the short side is at least 2*size,
    resize the short side to ``size`` with BICUBIC, then cut the centre square. Halving first keeps
    large photos from aliasing, which one bicubic step would cause."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageFolder(Dataset):
    """``root/<class_name>/<image>``; class ids follow the sorted folder names (ImageNet convention).

    Items are RGB uint8 ``(3, size, size)`` after `center_crop_arr`, read from disk on access.
    """

    def __init__(self, root: str | os.PathLike, size: int = 256, limit: int | None = None):
        self.root, self.size = Path(root), size
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.class_names = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not self.class_names:
            raise ValueError(f"{self.root}: no class folders (expected root/<class_name>/<image>)")
        self.files: list[Path] = []
        labels = []
        for class_id, name in enumerate(self.class_names):
            files = sorted(p for p in (self.root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.files += files
            labels += [class_id] * len(files)
        if not self.files:
            raise ValueError(f"{self.root}: no image files with suffixes {sorted(IMAGE_SUFFIXES)}")
        self.files = self.files[:limit]
        self.labels = torch.tensor(labels[:limit], dtype=torch.int64)
        self.source = f"image-folder:{self.root}"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = center_crop_arr(image.convert("RGB"), self.size)
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
        array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
        return torch.from_numpy(array.copy()).permute(2, 0, 1), int(self.labels[index])  # -> (3, H, W)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)


def batches(dataset: Dataset, batch_size: int, num_workers: int = 0):
    """Yield ``(images (B, C, H, W) uint8, labels (B,))`` in dataset order: slices for in-memory data,
    a DataLoader (optionally with worker processes decoding files) otherwise."""
    if isinstance(dataset, TensorImages):
        for start in range(0, len(dataset), batch_size):
            yield dataset.images[start : start + batch_size], dataset.labels[start : start + batch_size]
        return
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div(127.5).sub(1.0)
