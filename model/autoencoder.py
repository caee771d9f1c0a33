"""The autoencoder between pixels and the latent space: a model component, loaded and decoded here.

Weights are a diffusers `AutoencoderKL` folder (safetensors): the small one `groupdiff prepare` trains for
Fashion-MNIST (training/autoencoder.py) or a pre-trained VAE such as SD's ``sd-vae-ft-ema``. Latents are scaled by
the data's ``scale_factor`` (1 / std), so samples are divided by it before decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

MARKER = "groupdiff_autoencoder.json"  # written beside the diffusers files: what trained them


def load_pretrained(path: str | Path):
    """AutoencoderKL from a local diffusers folder (``config.json`` + weights); never downloads."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers autoencoder (config.json) in {path}")
    return AutoencoderKL.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False).eval()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Unscaled latents (N, c, h, w) -> images (N, C, H, W) clamped to [-1, 1]."""
    device = next(vae.parameters()).device
    parts = [vae.decode(chunk.to(device)).sample.clamp(-1, 1).cpu() for chunk in latents.split(batch_size)]
    return torch.cat(parts)


def save_autoencoder(vae, folder: str | Path, record: dict) -> Path:
    """diffusers folder (safetensors) plus a marker with the config and data it was trained on."""
    folder = Path(folder)
    vae.save_pretrained(folder, safe_serialization=True)
    (folder / MARKER).write_text(json.dumps(record, indent=2))
    return folder


def read_marker(folder: str | Path) -> dict | None:
    path = Path(folder) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def sample_decoder(space: str, scale_factor: float, autoencoder: str | Path | None):
    """Model-space samples -> images in [-1, 1]: identity in pixel space, AE decode of ``x / scale`` in latents."""
    if space == "pixel":
        return lambda samples: samples.clamp(-1, 1)
    if autoencoder is None:
        raise ValueError("latent-space samples need the autoencoder folder that made the latents")
    vae = load_pretrained(autoencoder)
    return lambda samples: decode_latents(vae, samples.float() / scale_factor)
