"""The torch runtime: the served denoiser in eager mode or under `torch.compile`, on CPU or GPU.

It is the reference every other runtime is checked against (parity tests) and the baseline of
``groupdiff bench runtime``. ``precision="bf16"`` runs under CUDA autocast; outputs are float32.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .denoiser import DEFAULT_MAX_GROUPS, ServedDenoiser, check_velocity_inputs, load_denoiser

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchRuntime:
    name = "torch"

    def __init__(
        self,
        denoiser: ServedDenoiser,
        device: str | torch.device = "cpu",
        compile: bool = False,
        precision: str = "fp32",
        max_groups: int = DEFAULT_MAX_GROUPS,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"precision {precision} needs a CUDA device (got {self.device}); use fp32 on the CPU")
        self.denoiser = denoiser.to(self.device).eval()
        self.spec = denoiser.spec
        self.precision = precision
        self.max_groups = max_groups
        self.group_sizes = tuple(range(1, self.spec.max_group_size + 1))
        self._forward = torch.compile(self.denoiser, dynamic=True) if compile else self.denoiser
        if compile:
            self.name = "torch-compile"

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        compile: bool = False,
        weights: str | None = None,
        precision: str = "fp32",
        max_groups: int = DEFAULT_MAX_GROUPS,
    ) -> TorchRuntime:
        return cls(load_denoiser(path, weights), device, compile, precision, max_groups)

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance_scale: torch.Tensor
    ) -> torch.Tensor:  # (G, N, C, H, W) float32 on self.device
        check_velocity_inputs(self.spec, self.max_groups, self.group_sizes, x, t, y, guidance_scale)
        inputs = (z.to(self.device) for z in (x, t, y, guidance_scale))
        with torch.inference_mode(), self._autocast():
            return self._forward(*inputs).float()

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def close(self) -> None:
        self._forward = self.denoiser = None
