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

from groupdiff.model.checkpoint import CheckpointError, cached_file_sha256, check_safetensors, read_checkpoint_info
from groupdiff.model.images import to_uint8

AUTOENCODER_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what diffusers' save_pretrained writes


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


def verify_autoencoder(folder: str | os.PathLike) -> str:
    """The SHA-256 over the autoencoder folder's files, which keys its cached decoder exports, once its
    weights are shown to be one complete safetensors file.

    The check refuses a missing, truncated, emptied or pickled weights file before diffusers sees the
    folder (diffusers would fall back to a ``.bin`` pickle when the safetensors file is missing). No
    checkpoint records its autoencoder's hash, so a change that keeps the format is not refused; it changes
    the key, though, so an export of the original autoencoder is never reused for it.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no autoencoder in {folder}: its config.json is missing")
    check_safetensors(folder / AUTOENCODER_WEIGHTS)
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + bytes.fromhex(cached_file_sha256(path)))
    return digest.hexdigest()


def latent_decoder_module(checkpoint: str | os.PathLike, autoencoder: str | os.PathLike | None = None):
    """The decoder module of a latent checkpoint (scale factor folded in), or ``None`` for a pixel one."""
    from groupdiff.model.autoencoder import load_pretrained

    folder = autoencoder_folder(checkpoint, autoencoder)
    if folder is None:
        return None
    verify_autoencoder(folder)
    scale_factor = float(read_checkpoint_info(checkpoint)["metadata"]["data"]["scale_factor"])
    return LatentDecoderModule(load_pretrained(folder), scale_factor)
