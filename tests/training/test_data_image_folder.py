"""Image folders with ADM's centre crop, on PNG/JPEG files of odd sizes written here."""

import numpy as np
import pytest
from PIL import Image

from groupdiff.training.data import ImageFolder, center_crop_arr


def test_center_crop_halves_then_resizes_and_keeps_the_centre():
    # 400x100: red, with a green 100x100 square in the middle. At size 50 the image is halved once
    # (short side 100 >= 2*50) to 200x50, whose centre 50x50 is exactly the green square.
    array = np.zeros((100, 400, 3), np.uint8)
    array[..., 0] = 255
    array[:, 150:250] = (0, 255, 0)
    out = np.asarray(center_crop_arr(Image.fromarray(array), 50)).astype(float)
    assert out.shape == (50, 50, 3)
    assert out[..., 1].mean() > 250 and out[..., 0].mean() < 5


@pytest.mark.parametrize("size", [(37, 53), (301, 129), (64, 64), (1000, 333)])
def test_center_crop_output_is_square(size):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    assert center_crop_arr(image, 32).size == (32, 32)


def test_image_folder_classes_and_items(tmp_path):
    rng = np.random.default_rng(0)
    for name, sizes in {"zebra": [(70, 45)], "ant": [(33, 90), (128, 128)], "empty_class": []}.items():
        (tmp_path / name).mkdir()
        for j, (w, h) in enumerate(sizes):
            mode = "L" if j else "RGB"
            pixels = rng.integers(0, 256, (h, w) if mode == "L" else (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels, mode).save(tmp_path / name / f"{j}.{'png' if j else 'jpg'}")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    data = ImageFolder(tmp_path, size=24)
    assert data.class_names == ["ant", "empty_class", "zebra"]
    assert data.labels.tolist() == [0, 0, 2]
    image, label = data[2]
    assert image.shape == (3, 24, 24) and str(image.dtype) == "torch.uint8" and label == 2
    assert data[1][0].shape == (3, 24, 24)  # grayscale converted to RGB
    assert len(ImageFolder(tmp_path, size=24, limit=1)) == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        ImageFolder(tmp_path)[0]
