"""A small CNN trained here on the data set: class accuracy and fast features for generated samples.

Inception is slow on a CPU and blind to what Fashion-MNIST classes look like; a classifier trained
on the train split in a couple of minutes gives (a) the accuracy of generated samples against the
class they were conditioned on and (b) penultimate features for a Fréchet distance
(``fd_classifier``, not comparable with FID) and for group diversity. It is saved as safetensors
plus a JSON record (architecture, data hash, steps, seed, test accuracy, training time), cached by
those settings so every evaluation uses the same network.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

CONFIG_FILE, WEIGHTS_FILE = "classifier.json", "classifier.safetensors"


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 28
    channels: int = 1
    num_classes: int = 10
    width: int = 32  # channels of the first stage; the second has 2x
    feature_dim: int = 128  # penultimate layer: the features of fd_classifier and diversity


class SmallCNN(nn.Module):
    """Two stages of a 3×3 conv, ReLU and 2× max-pool, a dense feature layer, logits.

    No batch norm and one conv per stage: on the 2-core CPU a training step at batch 128 costs
    0.065 s this way, against 0.2-1.1 s with batch norm or two convs per stage."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if config.image_size % 4:
            raise ValueError(f"classifier image_size must be a multiple of 4, got {config.image_size}")
        self.config = config
        w, side = config.width, config.image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(config.channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            nn.Flatten(), nn.Linear(2 * w * side * side, config.feature_dim), nn.ReLU(),  # (B, feature_dim)
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(config.feature_dim, config.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, num_classes) logits


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [-1, 1], the generator's pixel range."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def check_input(model: SmallCNN, images: np.ndarray, source: str = "samples") -> None:
    c = model.config
    if images.shape[1:] != (c.image_size, c.image_size, c.channels):
        raise ValueError(f"{source}: images of shape {images.shape[1:]} do not fit the classifier, which was "
                         f"trained on ({c.image_size}, {c.image_size}, {c.channels})")


@torch.no_grad()
def classify(model: SmallCNN, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels (N,) and penultimate features (N, feature_dim) of uint8 NHWC images."""
    check_input(model, images)
    model.eval()
    predictions, features = [], []
    for start in range(0, len(images), batch_size):
        f = model.features(to_input(images[start : start + batch_size]))
        features.append(f.numpy())
        predictions.append(model.head(f).argmax(dim=1).numpy())
    return np.concatenate(predictions), np.concatenate(features)


def accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray) -> float:
    return float((classify(model, images)[0] == np.asarray(labels)).mean())


def train_classifier(images: np.ndarray, labels: np.ndarray, config: ClassifierConfig, steps: int = 1500,
                     batch_size: int = 128, lr: float = 3e-3, seed: int = 0, progress: bool = False) -> SmallCNN:
    """AdamW with a one-cycle schedule on uint8 NHWC images; random batches from a seeded generator."""
    if steps < 1 or len(images) < 2:
        raise ValueError(f"classifier training needs steps >= 1 and at least 2 images (got {steps}, {len(images)})")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # initialisation and dropout
        model = SmallCNN(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
        x_all, y_all = to_input(images), torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        model.train()
        for _ in tqdm(range(steps), desc="classifier", unit="step", disable=not progress):
            index = torch.randint(len(x_all), (min(batch_size, len(x_all)),), generator=generator)
            loss = nn.functional.cross_entropy(model(x_all[index]), y_all[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def save_classifier(folder: str | os.PathLike, model: SmallCNN, record: dict) -> Path:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps({"config": asdict(model.config), **record}, indent=2) + "\n")
    if folder.exists():
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
    tmp.replace(folder)
    return folder


def load_classifier(folder: str | os.PathLike) -> tuple[SmallCNN, dict]:
    """The model (eval mode) and its JSON record."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no classifier ({CONFIG_FILE} + {WEIGHTS_FILE}) in {folder}")
    record = json.loads((folder / CONFIG_FILE).read_text())
    model = SmallCNN(ClassifierConfig(**record["config"]))
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    except RuntimeError as error:
        raise ValueError(f"{folder}: classifier weights do not match its config: {error}") from None
    return model.eval(), record


def trained_classifier(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], name: str,
                       cache: Path, steps: int = 1500, seed: int = 0, progress: bool = True) -> tuple[SmallCNN, dict]:
    """The cached classifier for this training data and settings, trained (and tested) on a miss."""
    (x_train, y_train), (x_test, y_test) = train, test
    _, height, width, channels = x_train.shape
    if height != width:
        raise ValueError(f"the classifier needs square images, got {height}x{width}")
    config = ClassifierConfig(height, channels, int(y_train.max()) + 1)
    settings = {"config": asdict(config), "steps": steps, "seed": seed,
                "train_sha256": hashlib.sha256(x_train.tobytes() + y_train.astype(np.int64).tobytes()).hexdigest()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache / "classifier" / f"{name}-{digest}"
    if (folder / CONFIG_FILE).is_file():
        model, record = load_classifier(folder)
        return model, {**record, "path": str(folder)}
    start = time.perf_counter()
    model = train_classifier(x_train, y_train, config, steps=steps, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    record = {**settings, "dataset": name, "train_images": len(x_train), "train_seconds": round(seconds, 1),
              "test_images": len(x_test), "test_accuracy": accuracy(model, x_test, y_test),
              "torch_threads": torch.get_num_threads()}
    save_classifier(folder, model, record)
    return model, {"config": asdict(config), **record, "path": str(folder)}
