"""Model-space samples to uint8 images, after sampling.

Pixel models need no network: clamp to [-1, 1] and quantise. Latent models run the autoencoder's
decoder on ``x / scale_factor``; `LatentDecoderModule` folds the scale factor and the clamp into one
module, which runs in torch here and is exported to ONNX for the other runtimes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from groupdiff.evaluation.grid import to_uint8
from groupdiff.model.checkpoint import file_sha256, read_checkpoint_info


class PixelDecoder:
    name = "pixel"

    def decode(self, samples: torch.Tensor) -> np.ndarray:  # (B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8
        return to_uint8(samples)


class LatentDecoderModule(nn.Module):
    """Scaled latents (B, c, h, w) -> images (B, C, H, W) in [-1, 1]: the served (and exported) decoder."""

    def __init__(self, vae: nn.Module, scale_factor: float):
        super().__init__()
        self.vae = vae.eval()
        self.scale_factor = float(scale_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale_factor).sample.clamp(-1, 1)


class TorchLatentDecoder:
    name = "torch"

    def __init__(self, module: LatentDecoderModule, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    def decode(self, samples: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return to_uint8(self.module(samples.to(self.device).float()))


def autoencoder_folder(checkpoint: str | os.PathLike, autoencoder: str | os.PathLike | None = None) -> Path | None:
    """The autoencoder a latent checkpoint decodes with, or ``None`` for a pixel one.

    ``autoencoder`` defaults to ``<data root>/autoencoder`` as recorded in the checkpoint's metadata.
    """
    data = read_checkpoint_info(checkpoint).get("metadata", {}).get("data", {})
    if data.get("space", "pixel") == "pixel":
        return None
    if "scale_factor" not in data:
        raise ValueError(f"{checkpoint} is a latent model but records no latent scale_factor in its metadata")
    if autoencoder is not None:
        return Path(autoencoder)
    if "root" not in data:
        raise ValueError(f"{checkpoint} is a latent model but records no data root: pass the autoencoder folder")
    return Path(data["root"]) / "autoencoder"


def autoencoder_hash(folder: str | os.PathLike) -> str:
    """SHA-256 over the autoencoder folder's files: keys its cached decoder exports."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def latent_decoder_module(checkpoint: str | os.PathLike, autoencoder: str | os.PathLike | None = None):
    """The decoder module of a latent checkpoint (scale factor folded in), or ``None`` for a pixel one."""
    from groupdiff.training.autoencoder import load_pretrained

    folder = autoencoder_folder(checkpoint, autoencoder)
    if folder is None:
        return None
    scale_factor = float(read_checkpoint_info(checkpoint)["metadata"]["data"]["scale_factor"])
    return LatentDecoderModule(load_pretrained(folder), scale_factor)
