"""One factory for every runtime and decoder, so the server picks an engine by name.

How the server calls it::

    from groupdiff.serving.runtimes import load_runtime, load_decoder

    runtime = load_runtime("torch", "runs/x/checkpoints/step-1000")          # eager torch on the CPU
    runtime = load_runtime("torch", ckpt, device="cuda", precision="bf16", compile=True)
    runtime = load_runtime("onnxruntime", ckpt)                # exports into the engine cache if needed
    runtime = load_runtime("onnxruntime", ckpt, model_file="denoiser.onnx")  # a file from `groupdiff export onnx`
    runtime = load_runtime("tensorrt", ckpt, device="cuda", precision="fp16")  # GPU machines with TensorRT
    v = runtime.velocity(x, t, y, guidance_scale)   # (G, N, C, H, W), see serving/runtime.py
    decoder = load_decoder(ckpt)                     # pixel models: clamp and quantise
    decoder = load_decoder(ckpt, runtime="onnxruntime", autoencoder="data/fmnist-latent/autoencoder")
    images = decoder.decode(samples)                 # (B, C, h, w) -> (B, H, W, C) uint8

Every keyword is optional and keyword-only. ``weights`` defaults to ``ema`` when present. The engine
cache lives in ``cache_dir``, else ``$GROUPDIFF_CACHE/engines``, else ``~/.cache/groupdiff/engines``.
Unknown names, missing packages and files that do not match the checkpoint are `ValueError`s with
a one-line reason. Weights are verified against the sha256 in the checkpoint's ``config.json`` before
any runtime, decoder or cached engine uses them; a missing, corrupt or non-safetensors file is a
`CheckpointError` (a `ValueError`) naming the file.
"""

from __future__ import annotations

import os

import torch

from .decoders import PixelDecoder, TorchLatentDecoder, autoencoder_folder, latent_decoder_module
from .denoiser import DEFAULT_MAX_GROUPS
from .runtime import Decoder, Runtime
from .torch_runtime import TorchRuntime

RUNTIMES = ("torch", "onnxruntime", "tensorrt", "torch-tensorrt")
DECODER_RUNTIMES = ("torch", "onnxruntime")


def load_runtime(
    name: str,
    checkpoint: str | os.PathLike,
    *,
    weights: str | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    compile: bool = False,
    max_groups: int = DEFAULT_MAX_GROUPS,
    model_file: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    group_sizes: tuple[int, ...] | None = None,
    cuda_graphs: bool = False,
) -> Runtime:
    """The served denoiser of ``checkpoint`` on runtime ``name`` (one of `RUNTIMES`).

    ``device`` defaults to ``cpu`` (``cuda`` for tensorrt and torch-tensorrt); ``compile`` applies to
    torch; ``model_file`` is an ONNX file (onnxruntime, tensorrt) or a serialised engine (tensorrt, with its
    ``.json`` sidecar). ``group_sizes`` limits the engine profiles built (tensorrt, torch-tensorrt; default:
    all of the model's); ``cuda_graphs`` replays captured graphs per fixed shape (torch, tensorrt).
    """
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; choose from {RUNTIMES}")
    if name == "torch":
        return TorchRuntime.from_checkpoint(checkpoint, device or "cpu", compile, weights, precision, max_groups,
                                            cuda_graphs)
    if name == "onnxruntime":
        if precision != "fp32" or compile:
            raise ValueError("onnxruntime serves the fp32 export; precision and compile apply to torch/tensorrt")
        from .onnx_runtime import OnnxRuntime

        return OnnxRuntime.from_checkpoint(checkpoint, model_file, weights, device or "cpu", max_groups, cache_dir)
    if name == "tensorrt":
        from .tensorrt_runtime import TensorRTRuntime

        return TensorRTRuntime.from_checkpoint(checkpoint, model_file, weights, device or "cuda", precision,
                                               max_groups, cache_dir, group_sizes, cuda_graphs)
    from .torch_tensorrt_runtime import TorchTensorRTRuntime

    return TorchTensorRTRuntime.from_checkpoint(checkpoint, weights, device or "cuda", precision, max_groups,
                                                group_sizes)


def load_decoder(
    checkpoint: str | os.PathLike,
    *,
    runtime: str = "torch",
    autoencoder: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    model_file: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Decoder:
    """The decoder after sampling: `PixelDecoder` for pixel models, the autoencoder's decoder for latent
    ones (``autoencoder`` defaults to the folder recorded in the checkpoint's data metadata)."""
    if runtime not in DECODER_RUNTIMES:
        raise ValueError(f"decoders run on {DECODER_RUNTIMES}, got {runtime!r}")
    if autoencoder_folder(checkpoint, autoencoder) is None:
        return PixelDecoder()
    if runtime == "onnxruntime":
        from .onnx_runtime import OnnxLatentDecoder, providers_for

        return OnnxLatentDecoder.from_checkpoint(checkpoint, autoencoder, model_file, cache_dir,
                                                 providers_for(device or "cpu"))
    return TorchLatentDecoder(latent_decoder_module(checkpoint, autoencoder), device or "cpu")
