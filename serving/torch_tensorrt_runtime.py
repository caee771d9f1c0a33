"""torch-tensorrt (dynamo path): the served denoiser exported with `torch.export` and compiled to
TensorRT inside torch, one compiled module per served group size with a dynamic group count.

Compiled in the serving process at start-up (no engine file: the cache and sidecar checks of the
TensorRT runtime apply to standalone engines). The precision is the denoiser's own dtype (`load_denoiser`'s
``precision``), compiled with explicit typing: torch-tensorrt's ``enabled_precisions`` is deprecated and
TensorRT 11 builds strongly typed networks only. ``torch_tensorrt`` is imported lazily; without it
(or without TensorRT's libraries) the constructor raises a `ValueError` that says so.
"""

from __future__ import annotations

import os

import torch

from .denoiser import DEFAULT_MAX_GROUPS, ServedDenoiser, check_velocity_inputs, denoiser_inputs, load_denoiser
from .export import example_inputs
from .tensorrt_runtime import DEFAULT_OPT_GROUPS, TORCH_DTYPES, EngineProfile, engine_profiles, profile_index


def import_torch_tensorrt():
    try:
        import torch_tensorrt
    except (ImportError, OSError) as error:  # OSError: libnvinfer missing behind an installed wheel
        raise ValueError(f"torch-tensorrt is not installed or cannot load TensorRT ({error}); install "
                         "torch-tensorrt matching this torch on a GPU machine, or use the tensorrt, onnxruntime "
                         "or torch runtime") from None
    return torch_tensorrt


def compile_profile(denoiser: ServedDenoiser, profile: EngineProfile, device: torch.device):
    """One compiled module for group size ``profile.group_size`` and G in the profile's range (and a text model's
    token count in 1..text_tokens; that path is written for torch-tensorrt's API but has not run on a GPU yet)."""
    from torch.export import Dim

    torch_tensorrt = import_torch_tensorrt()
    spec = denoiser.spec
    named = example_inputs(denoiser, profile.opt_groups, profile.group_size)
    example = tuple(z.to(device) for z in named.values())
    groups = Dim("groups", min=profile.min_groups, max=profile.max_groups)
    dynamic = {name: {0: groups} for name in named}
    text = None
    if spec.text_encoder is not None:
        config = denoiser.model.config
        text = (config.text_tokens, config.text_dim)
        tokens = Dim("tokens", min=1, max=config.text_tokens)
        dynamic |= {"tokens": {0: groups, 2: tokens}, "mask": {0: groups, 2: tokens}}
    with torch.no_grad():
        program = torch.export.export(denoiser, example, dynamic_shapes=dynamic, strict=True)
    inputs = [torch_tensorrt.Input(min_shape=low, opt_shape=opt, max_shape=high, dtype=TORCH_DTYPES[name])
              for name, (low, opt, high) in profile.input_shapes(spec, text).items()]
    return torch_tensorrt.dynamo.compile(program, inputs=inputs, use_explicit_typing=True, device=device,
                                         min_block_size=1)


class TorchTensorRTRuntime:
    name = "torch-tensorrt"

    def __init__(self, denoiser: ServedDenoiser, device: str | torch.device = "cuda",
                 group_sizes: tuple[int, ...] | None = None, max_groups: int = DEFAULT_MAX_GROUPS,
                 opt_groups: int = DEFAULT_OPT_GROUPS):
        """``denoiser``: loaded at the precision to compile (`load_denoiser(..., precision=)`)."""
        import_torch_tensorrt()
        self.device = torch.device(device)
        self.spec = denoiser.spec
        self.profiles = engine_profiles(self.spec, group_sizes, max_groups, opt_groups)
        self.group_sizes = tuple(p.group_size for p in self.profiles)
        self.max_groups = max_groups
        denoiser = denoiser.to(self.device).eval()
        self._modules = [compile_profile(denoiser, p, self.device) for p in self.profiles]

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, weights: str | None = None,
                        device: str | torch.device = "cuda", precision: str = "fp16",
                        max_groups: int = DEFAULT_MAX_GROUPS,
                        group_sizes: tuple[int, ...] | None = None) -> TorchTensorRTRuntime:
        return cls(load_denoiser(checkpoint, weights, precision=precision), device, group_sizes, max_groups)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y,
                 guidance_scale: torch.Tensor) -> torch.Tensor:  # (G, N, C, H, W) float32 on self.device
        """``y``: (G, N) class ids, or a text model's `TextCondition` of G·N rows (fed as tokens, mask, pooled)."""
        check_velocity_inputs(self.spec, self.max_groups, self.group_sizes, x, t, y, guidance_scale)
        module = self._modules[profile_index(self.profiles, x.shape[0], x.shape[1])]
        inputs = denoiser_inputs(x, t, y, guidance_scale)
        with torch.inference_mode():
            return module(*(z.to(self.device, TORCH_DTYPES[name]) for name, z in inputs.items())).float()

    def close(self) -> None:
        self._modules = []
