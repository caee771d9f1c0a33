"""The interface every engine implements, so the scheduler and pipeline never know which one runs.

A runtime evaluates the served denoiser on a batch of whole groups. Groups in one call share the
group size ``N`` (it is a shape axis), but each member has its own time, condition and, for teachers,
guidance scale, so groups at different sampling steps and from different requests share a batch.
Implementations: torch (eager / ``torch.compile``), ONNX Runtime, TensorRT and torch-tensorrt.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from groupdiff.model.spec import DenoiserSpec
from groupdiff.model.text_condition import Condition


class RuntimeShapeError(ValueError):
    """A call outside the shapes the engine was built for (group count or group size)."""


class Runtime(Protocol):
    name: str  # "torch", "onnxruntime", "tensorrt", "torch-tensorrt"
    spec: DenoiserSpec
    device: torch.device  # where `velocity` expects and returns tensors
    max_groups: int  # the largest G one call accepts (the engine profile's maximum)
    group_sizes: tuple[int, ...]  # the N values one call accepts

    def velocity(
        self,
        x: torch.Tensor,  # (G, N, C, H, W) float32, model-space samples at time t
        t: torch.Tensor,  # (G, N) float32 in [0, 1], 1 = noise
        y: Condition,  # (G, N) int64 class ids, or for a text model a TextCondition of G·N rows (group-major)
        guidance_scale: torch.Tensor,  # (G,) float32; ignored by students (baked in)
    ) -> torch.Tensor:  # (G, N, C, H, W) float32: the velocity the sampler integrates
        ...

    def close(self) -> None: ...


class Decoder(Protocol):
    """Model-space samples to images: identity for pixel models, the autoencoder for latent ones."""

    name: str

    def decode(self, samples: torch.Tensor) -> np.ndarray:  # (B, C, h, w) -> (B, H, W, channels) uint8
        ...
