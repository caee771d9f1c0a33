"""Sample files: ADM .npz round trip, PNG folders, and the errors bad files get."""

import numpy as np
import pytest
from PIL import Image

from groupdiff.evaluation import load_npz, load_png_folder, load_samples, save_npz


def test_npz_round_trip_keeps_adm_layout(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28, 1), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 2, 2])
    path = save_npz(tmp_path / "samples.npz", images, labels)
    with np.load(path) as raw:  # what ADM's evaluator reads
        assert sorted(raw.files) == ["arr_0", "arr_1"] and raw["arr_0"].dtype == np.uint8
    loaded = load_samples(path)
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.labels, labels)
    unlabelled = load_npz(save_npz(tmp_path / "nolabels.npz", images))
    assert unlabelled.labels is None and not list(tmp_path.glob("*.tmp*"))


def test_png_folder_reads_in_name_order(tmp_path):
    for index, value in enumerate([10, 200, 90]):
        Image.fromarray(np.full((28, 28), value, np.uint8)).save(tmp_path / f"{index:03d}.png")
    samples = load_png_folder(tmp_path)
    assert samples.images.shape == (3, 28, 28, 1) and samples.labels is None
    assert samples.images[:, 0, 0, 0].tolist() == [10, 200, 90]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "004.png")
    with pytest.raises(ValueError, match="differ in size"):
        load_png_folder(tmp_path)


def test_bad_sample_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_samples(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_samples(tmp_path / "junk.npz")
    np.savez(tmp_path / "floats.npz", arr_0=np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_samples(tmp_path / "floats.npz")
    np.savez(tmp_path / "shape.npz", arr_0=np.zeros((2, 28, 28, 2), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        load_samples(tmp_path / "shape.npz")
    np.savez(tmp_path / "labels.npz", arr_0=np.zeros((2, 28, 28, 1), np.uint8), arr_1=np.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        load_samples(tmp_path / "labels.npz")
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 28, 28, 1), np.uint8))
    with pytest.raises(ValueError, match="no arr_0"):
        load_samples(tmp_path / "other.npz")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=".npz file or a folder"):
        load_samples(tmp_path / "a.txt")
