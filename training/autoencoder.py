"""Training the autoencoder between pixels and the latent space the GroupDiT trains in (loading and decoding
one is the model's: groupdiff.model.autoencoder).

No autoencoder weights install offline, so for Fashion-MNIST we train a small
`diffusers.AutoencoderKL` ourselves (MSE + a light KL term; no LPIPS/GAN, which need weights or
far more compute). On a cluster a pre-trained VAE in diffusers layout (e.g. SD's ``sd-vae-ft-ema``)
loads from a local folder. Either way the dataset is encoded to posterior means and the latents
are scaled by ``1 / std`` so the diffusion model sees unit-variance inputs (SD's 0.18215 is the
same idea, measured once on its own data).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from .data import batches, to_model_range


@dataclass
class AutoencoderConfig:
    """``source``: ``train`` a small AutoencoderKL here, or load a ``pretrained`` one from ``path``.

    The default architecture has two levels (one 2x downsampling): 28x28x1 -> 14x14x4 latents, so a
    patch-2 GroupDiT sees 7x7 = 49 tokens."""

    source: Literal["train", "pretrained"] = "train"
    path: str | None = None
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (32, 32)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    mid_block_attention: bool = False  # 196-token self-attention: +15% step time on the CPU, skipped by default
    steps: int = 800
    batch_size: int = 64
    learning_rate: float = 1e-3
    kl_weight: float = 1e-4
    holdout: int = 1000
    scale_factor: float | None = None
    encode_batch_size: int = 256
    seed: int = 0


def build_autoencoder(config: AutoencoderConfig, in_channels: int, image_size: int):
    """A fresh AutoencoderKL with ``len(block_out_channels) - 1`` downsamplings."""
    from diffusers import AutoencoderKL

    levels = len(config.block_out_channels)
    if levels < 1 or any(c % config.norm_num_groups for c in config.block_out_channels):
        raise ValueError(f"block_out_channels {config.block_out_channels} must be non-empty multiples of "
                         f"norm_num_groups={config.norm_num_groups}")
    return AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels, latent_channels=config.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups, mid_block_add_attention=config.mid_block_attention,
        sample_size=image_size,
    )


def _split(n: int, holdout: int) -> tuple[range, range]:
    """Train on the first items, hold the last ``holdout`` out (at most a fifth of a small set)."""
    holdout = min(holdout, n // 5)
    return range(0, n - holdout), range(n - holdout, n)


def train_autoencoder(config: AutoencoderConfig, dataset: Dataset, device: str = "cpu", num_workers: int = 0):
    """Train on all but the held-out items; returns the model (eval mode) and a report with the
    held-out reconstruction error."""
    torch.manual_seed(config.seed)
    channels, height, _ = dataset.image_shape
    vae = build_autoencoder(config, channels, height).to(device).train()
    train_ids, held_ids = _split(len(dataset), config.holdout)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(Subset(dataset, train_ids), batch_size=config.batch_size, shuffle=True, drop_last=True,
                        generator=generator, num_workers=num_workers)
    if len(loader) == 0:
        raise ValueError(f"{len(train_ids)} training images are fewer than one batch of {config.batch_size}")
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=config.steps,
                                                   pct_start=0.05)
    start, step, epoch = time.perf_counter(), 0, iter(loader)
    with tqdm(total=config.steps, desc="autoencoder", unit="step", dynamic_ncols=True) as bar:
        while step < config.steps:
            try:
                images, _ = next(epoch)
            except StopIteration:
                epoch = iter(loader)
                continue
            x = to_model_range(images).to(device)  # (B, C, H, W) in [-1, 1]
            posterior = vae.encode(x).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
            mse = torch.nn.functional.mse_loss(reconstruction, x)
            kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
            loss = mse + config.kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.2f}")
    vae.eval()
    report = {"steps": config.steps, "train_images": len(train_ids), "train_seconds": time.perf_counter() - start,
              **reconstruction_error(vae, Subset(dataset, held_ids), config.encode_batch_size, device)}
    return vae, report


@torch.no_grad()
def reconstruction_error(vae, dataset: Dataset, batch_size: int = 256, device: str = "cpu") -> dict[str, float]:
    """Held-out MSE in [-1, 1] and PSNR in dB on [0, 1] pixels, from the posterior mean."""
    if len(dataset) == 0:
        return {"heldout_images": 0}
    total, count = 0.0, 0
    for images, _ in DataLoader(dataset, batch_size=batch_size):
        x = to_model_range(images).to(device)
        reconstruction = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        total += torch.nn.functional.mse_loss(reconstruction, x, reduction="sum").item()
        count += x.numel()
    mse = total / count
    return {"heldout_images": len(dataset), "heldout_mse": mse, "heldout_psnr_db": 10 * math.log10(4.0 / mse)}


@torch.no_grad()
def encode_latents(vae, dataset: Dataset, batch_size: int = 256, device: str = "cpu",
                   num_workers: int = 0) -> torch.Tensor:
    """Posterior means (N, c, h, w) float32 of the whole dataset, in order."""
    if vae.config.in_channels != dataset.image_shape[0]:
        raise ValueError(f"the autoencoder takes {vae.config.in_channels} channels, the data has "
                         f"{dataset.image_shape[0]}")
    parts = []
    with tqdm(total=len(dataset), desc="encode latents", unit="img", dynamic_ncols=True) as bar:
        for images, _ in batches(dataset, batch_size, num_workers):
            parts.append(vae.encode(to_model_range(images).to(device)).latent_dist.mean.float().cpu())
            bar.update(len(images))
    return torch.cat(parts)


def latent_scale_factor(latents: torch.Tensor) -> float:
    """1 / std over all latent elements, so the model's inputs have unit variance."""
    return float(1.0 / latents.float().std())
