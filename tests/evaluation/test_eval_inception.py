"""The real TF Inception TorchScript: preprocessing as the TF port does it, FID on tiny real sets, the cache."""


import numpy as np
import pytest
import torch

from groupdiff.evaluation.frechet import frechet_distance_of
from groupdiff.evaluation.inception import InceptionFeatures, preprocess, tf_bilinear_matrix
from groupdiff.evaluation.reference import cached_features, load_reference
from groupdiff.training.data import FASHION_MNIST_DIR


def reference_resize(images: torch.Tensor, size: int = 299) -> torch.Tensor:
    """The reference definition (StyleGAN2-ADA's TF-FID port) of TF1's legacy bilinear resize of square
    (B, C, H, H) images: an affine grid shifted so that output pixel i samples input coordinate i * in / out,
    bilinear, border-clamped."""
    shift = 1 / images.shape[-1] - 1 / size
    theta = torch.tensor([[1.0, 0.0, shift], [0.0, 1.0, shift]]).expand(len(images), 2, 3)
    grid = torch.nn.functional.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_resize_is_tf1_legacy_bilinear():
    image = torch.rand(1, 1, 28, 28) * 255
    size = 299
    expected = reference_resize(image, size)
    matrix = tf_bilinear_matrix(28, size)
    torch.testing.assert_close(matrix @ image[0, 0] @ matrix.T, expected[0, 0], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(size))


def test_preprocess_gives_three_channels_at_299_in_the_tf_range():
    images = np.stack([np.full((28, 28, 1), v, np.uint8) for v in (0, 128, 255)])
    x = preprocess(images)
    assert x.shape == (3, 3, 299, 299)
    assert x[0].max().item() == pytest.approx(-1.0) and x[1].abs().max().item() < 1e-5
    assert x[2].min().item() == pytest.approx(127 / 128)


def test_real_inception_fid_is_zero_on_itself_and_positive_on_other_images():
    network = InceptionFeatures()
    reference = load_reference(FASHION_MNIST_DIR, "test", 200)
    tops = reference.images[reference.labels == 0][:12]  # T-shirts
    trousers = reference.images[reference.labels == 1][:12]
    features = network(np.concatenate([tops, trousers, 255 - tops]), batch_size=12)  # (36, 2048)
    assert features.shape == (36, 2048) and np.isfinite(features).all() and (features >= 0).all()  # pooled ReLUs
    a, b, inverted = features[:12], features[12:24], features[24:]
    # the whole pipeline against the reference one: gray to RGB, the reference resize, (x − 128) / 128, the
    # TorchScript network itself; three images alone, in another order, so batch composition cannot matter either
    picked = [5, 0, 17]
    pixels = torch.from_numpy(np.concatenate([tops, trousers])[picked]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        direct = network.network((reference_resize(pixels.expand(-1, 3, -1, -1)) - 128) / 128).numpy()
    np.testing.assert_allclose(features[picked], direct, rtol=1e-3, atol=1e-3)
    # two halves of the T-shirts are closer to each other than to trousers (207 against 320: with 6 images in 2048
    # dimensions the covariance terms weigh as much as the means)
    assert frechet_distance_of(a[:6], a[6:]) < frechet_distance_of(a[:6], b[:6])
    assert frechet_distance_of(a, b) > 10.0 and frechet_distance_of(a, inverted) > 10.0


def test_reference_statistics_are_cached_by_key(tmp_path):
    rng = np.random.default_rng(0)
    calls = []

    def compute():
        calls.append(1)
        return rng.normal(size=(10, 4)).astype(np.float32)

    key = {"dataset": "toy", "split": "test", "count": "10", "network_sha256": "abc"}
    first = cached_features(tmp_path, "fid-reference", key, compute)
    again = cached_features(tmp_path, "fid-reference", dict(key), compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_allclose(again.mu, first.features.astype(np.float64).mean(axis=0))
    assert again.sigma.shape == (4, 4)
    cached_features(tmp_path, "fid-reference", {**key, "network_sha256": "other"}, compute)
    assert len(calls) == 2  # another network is another entry


def test_reference_keys_name_the_exact_images():
    a = load_reference(FASHION_MNIST_DIR, "test", 50)
    b = load_reference(FASHION_MNIST_DIR, "test", 60)
    assert a.key["count"] == "50" and a.key["data_sha256"] != b.key["data_sha256"]
    assert a.images.shape == (50, 28, 28, 1) and a.images.dtype == np.uint8
    with pytest.raises(ValueError, match="fewer than"):
        load_reference(FASHION_MNIST_DIR, "test", 10_001)
