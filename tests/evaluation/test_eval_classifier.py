"""The project's classifier: a tiny real training run, accuracy on real test images vs noise, save/load, cache."""


import numpy as np
import pytest

from groupdiff.evaluation import classifier as classifier_module
from groupdiff.evaluation.classifier import (
    ClassifierConfig,
    accuracy,
    classify,
    load_classifier,
    save_classifier,
    train_classifier,
    trained_classifier,
)
from groupdiff.evaluation.reference import load_reference
from groupdiff.training.data import FASHION_MNIST_DIR, load_fashion_mnist


def arrays(split: str, limit: int):
    data = load_fashion_mnist(split=split, limit=limit)
    return data.images.permute(0, 2, 3, 1).contiguous().numpy(), data.labels.numpy()


@pytest.fixture(scope="module")
def tiny_classifier():
    images, labels = arrays("train", 600)
    return train_classifier(images, labels, ClassifierConfig(), steps=60, batch_size=64, seed=0)


def test_tiny_classifier_is_accurate_on_real_images_and_at_chance_on_noise(tiny_classifier):
    test = load_reference(FASHION_MNIST_DIR, "test", 500)
    assert accuracy(tiny_classifier, test.images, test.labels) > 0.6
    noise = np.random.default_rng(0).integers(0, 256, size=test.images.shape, dtype=np.uint8)
    assert accuracy(tiny_classifier, noise, test.labels) < 0.3
    predictions, features = classify(tiny_classifier, test.images[:10])
    assert predictions.shape == (10,) and features.shape == (10, 128)


def test_save_load_round_trip_and_shape_check(tiny_classifier, tmp_path):
    test = load_reference(FASHION_MNIST_DIR, "test", 50)
    folder = save_classifier(tmp_path / "clf", tiny_classifier, {"test_accuracy": 0.5})
    loaded, record = load_classifier(folder)
    assert record["test_accuracy"] == 0.5 and record["config"]["feature_dim"] == 128
    np.testing.assert_array_equal(classify(loaded, test.images)[1], classify(tiny_classifier, test.images)[1])
    with pytest.raises(ValueError, match="do not fit the classifier"):
        classify(loaded, np.zeros((2, 32, 32, 1), np.uint8))
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing")


def test_trained_classifier_is_cached_by_its_settings(tmp_path, monkeypatch):
    train, test = arrays("train", 200), arrays("test", 100)
    model, record = trained_classifier(train, test, "toy", tmp_path, steps=3, progress=False)
    assert record["train_images"] == 200 and record["test_images"] == 100 and 0 <= record["test_accuracy"] <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    again, cached = trained_classifier(train, test, "toy", tmp_path, steps=3, progress=False)
    assert cached["path"] == record["path"] and cached["test_accuracy"] == record["test_accuracy"]
    with pytest.raises(AssertionError, match="cached"):
        trained_classifier(train, test, "toy", tmp_path, steps=4, progress=False)  # other settings: retrains
