"""Idx reading and the idx-folder dataset, on tiny files written here."""

import gzip
import struct

import numpy as np
import pytest
import torch

from groupdiff.training.data import (
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
    load_idx_dataset,
    read_idx,
)


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_split(root, prefix, images, labels, compress=True):
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        data = idx_bytes(array)
        name = f"{prefix}-{kind}-ubyte" + (".gz" if compress else "")
        (root / name).write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    array = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    data = idx_bytes(array)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.array([1, -2, 70000], dtype=np.int32)
    (tmp_path / "y").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "y"), array)


def test_read_idx_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.idx"):
        read_idx(tmp_path / "missing.idx")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "text")
    good = idx_bytes(np.zeros((4, 2, 2), np.uint8))
    (tmp_path / "short").write_bytes(good[:-3])
    with pytest.raises(ValueError, match="promises"):
        read_idx(tmp_path / "short")
    (tmp_path / "badgz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "badgz")


def test_idx_dataset_splits_and_limit(tmp_path):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 5, 5), dtype=np.uint8)
    write_split(tmp_path, "train", train, np.array([0, 1, 2, 0, 1, 2], np.uint8))
    write_split(tmp_path, "t10k", test, np.array([2, 2, 1], np.uint8), compress=False)
    data = load_idx_dataset(tmp_path, "all")
    assert data.images.shape == (9, 1, 5, 5) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2, 2, 2, 1]
    assert data.class_names == ["0", "1", "2"]
    assert torch.equal(data.images[6:, 0], torch.from_numpy(test))
    limited = load_idx_dataset(tmp_path, "test", limit=2, class_names=["a", "b", "c"])
    assert len(limited) == 2 and limited.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="split"):
        load_idx_dataset(tmp_path, "valid")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_idx_dataset(tmp_path / "nowhere")


def test_idx_dataset_rejects_mismatched_lengths(tmp_path):
    write_split(tmp_path, "train", np.zeros((4, 2, 2), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="expected uint8 images"):
        load_idx_dataset(tmp_path, "train")


def test_fashion_mnist_from_debian():
    data = load_fashion_mnist(split="test")
    assert data.images.shape == (10_000, 1, 28, 28) and data.class_names == FASHION_MNIST_CLASSES
    assert torch.bincount(data.labels).tolist() == [1000] * 10
