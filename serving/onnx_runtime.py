"""ONNX Runtime: the exported denoiser (and latent decoder) on the CPU execution provider, or the CUDA
and TensorRT providers where the installed build has them.

On the CPU a call of several groups is split into shards of whole groups, each run concurrently on
its own core by a single-threaded session (ONNX Runtime sessions take concurrent ``run`` calls). On a
2-core machine two shards were faster than one two-threaded call of the same batch (docs/results/serve), and,
more important for a server, a thread descheduled by other work (HTTP, PNG encoding) then delays only
its own shard instead of stalling every operator at the thread barrier. Calls of one group use a
multi-threaded session. The velocities are bit-identical either way (checked in tests/serving/test_runtimes.py),
so sharding never changes an image.

Without a file, `OnnxRuntime.from_checkpoint` exports the checkpoint into the engine cache (keyed by
the verified weights' hash and the export settings) and reuses it on the next start. A file that was
exported from other weights, or that is corrupt, is refused with a clear error.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np
import torch

from groupdiff.model.checkpoint import preferred_weights
from groupdiff.model.images import to_uint8
from groupdiff.model.spec import DenoiserSpec, spec_from_checkpoint

from .decoders import autoencoder_folder, verify_autoencoder
from .denoiser import DEFAULT_MAX_GROUPS, check_velocity_inputs, denoiser_inputs, load_denoiser
from .engine_cache import EngineCache, EngineKey
from .export import (
    DECODER_INPUT,
    OPSET,
    create_session,
    declared_inputs,
    export_decoder,
    export_served_denoiser,
    read_onnx_metadata,
)

DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def providers_for(device: str | torch.device, providers: list[str] | None = None) -> list[str]:
    """The execution providers to ask for: given ones must all be installed; for ``cuda`` the GPU ones
    this build has (at least CUDA), then the CPU fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is not None:
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"ONNX Runtime execution providers {missing} are not in this build (has {available}); "
                             "install onnxruntime-gpu for CUDA/TensorRT")
        return providers
    kind = torch.device(device).type
    if kind not in DEVICE_PROVIDERS:
        raise ValueError(f"onnxruntime runs on cpu or cuda, got {device}")
    if kind == "cuda" and "CUDAExecutionProvider" not in available:
        raise ValueError(f"this ONNX Runtime build has no CUDA execution provider (has {available}); "
                         "install onnxruntime-gpu, or run onnxruntime on the cpu")
    return [p for p in DEVICE_PROVIDERS[kind] if p in available]


def cached_denoiser_onnx(
    checkpoint: str | os.PathLike, weights: str, max_groups: int, cache: EngineCache, precision: str = "fp32"
) -> Path:
    """The checkpoint's denoiser exported into the cache at ``precision`` (exported now when missing)."""
    spec = spec_from_checkpoint(checkpoint, weights)
    settings = {"max_groups": max_groups, "max_group_size": spec.max_group_size, "opset": OPSET,
                "graph": spec.graph_digest, "precision": precision}
    key = EngineKey(spec.model_hash, "onnx-denoiser", settings)

    def build(path: Path) -> None:
        denoiser = load_denoiser(checkpoint, weights, precision=precision)
        export_served_denoiser(denoiser, path, weights, max_groups=max_groups)

    return cache.get_or_build(key, "denoiser.onnx", build)


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(
        self,
        model_file: str | os.PathLike,
        spec: DenoiserSpec,
        device: str | torch.device = "cpu",
        providers: list[str] | None = None,
        threads: int | None = None,
        shards: int | None = None,
    ):
        metadata = read_onnx_metadata(model_file, graph="denoiser")
        if metadata["model_hash"] != spec.model_hash:
            raise ValueError(f"{model_file} was exported from other weights (model hash "
                             f"{metadata['model_hash'][:12]}, checkpoint {spec.model_hash[:12]}): export it again")
        self.spec = spec
        self.device = torch.device(device)
        self.model_file = Path(model_file)
        low, high = metadata["group_sizes"]
        self.group_sizes = tuple(range(low, high + 1))
        self.max_groups = int(metadata["max_groups"])
        providers = providers_for(self.device, providers)
        threads = threads or torch.get_num_threads()
        self.session = create_session(model_file, providers, threads)
        # shards: one per thread on the CPU provider (GPU providers take the whole batch at once)
        self.shards = (shards or threads) if providers == ["CPUExecutionProvider"] else 1
        self._shard_session = create_session(model_file, providers, threads=1) if self.shards > 1 else None
        self._shard_pool = (concurrent.futures.ThreadPoolExecutor(self.shards - 1, "groupdiff-onnx-shard")
                            if self.shards > 1 else None)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        model_file: str | os.PathLike | None = None,
        weights: str | None = None,
        device: str | torch.device = "cpu",
        max_groups: int = DEFAULT_MAX_GROUPS,
        cache_dir: str | os.PathLike | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
        shards: int | None = None,
    ) -> OnnxRuntime:
        weights = weights or preferred_weights(checkpoint)
        if model_file is None:
            model_file = cached_denoiser_onnx(checkpoint, weights, max_groups, EngineCache(cache_dir))
        return cls(model_file, spec_from_checkpoint(checkpoint, weights), device, providers, threads, shards)

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, y, guidance_scale: torch.Tensor
    ) -> torch.Tensor:  # (G, N, C, H, W) float32 on self.device
        """``y``: (G, N) class ids, or a text model's `TextCondition` of G·N rows (fed as tokens, mask, pooled)."""
        check_velocity_inputs(self.spec, self.max_groups, self.group_sizes, x, t, y, guidance_scale)
        feeds = declared_inputs(self.session, {
            name: np.ascontiguousarray((z.float() if z.is_floating_point() else z).detach().cpu().numpy())
            for name, z in denoiser_inputs(x, t, y, guidance_scale).items()})
        groups = x.shape[0]
        if self.shards == 1 or groups == 1:
            (velocity,) = self.session.run(None, feeds)
            return torch.from_numpy(velocity).to(self.device)
        bounds = np.linspace(0, groups, min(self.shards, groups) + 1).round().astype(int)  # whole groups per shard
        shards = [{name: value[a:b] for name, value in feeds.items()}
                  for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        others = [self._shard_pool.submit(self._shard_session.run, None, shard) for shard in shards[:-1]]
        (last,) = self._shard_session.run(None, shards[-1])  # the calling thread takes a shard too
        velocity = np.concatenate([future.result()[0] for future in others] + [last])  # (G, N, C, H, W)
        return torch.from_numpy(velocity).to(self.device)

    def close(self) -> None:
        if self._shard_pool is not None:
            self._shard_pool.shutdown(wait=True)
        self.session = self._shard_session = None


class OnnxLatentDecoder:
    name = "onnxruntime"

    def __init__(self, model_file: str | os.PathLike, model_hash: str, providers: list[str] | None = None,
                 threads: int | None = None):
        metadata = read_onnx_metadata(model_file, graph="decoder")
        if metadata["model_hash"] != model_hash:
            raise ValueError(f"{model_file} is the decoder of another checkpoint (model hash "
                             f"{metadata['model_hash'][:12]}, expected {model_hash[:12]})")
        self.session = create_session(model_file, providers, threads)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        autoencoder: str | os.PathLike | None = None,
        model_file: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        providers: list[str] | None = None,
    ) -> OnnxLatentDecoder:
        model_hash = spec_from_checkpoint(checkpoint, "model").model_hash
        if model_file is None:
            folder = autoencoder_folder(checkpoint, autoencoder)
            if folder is None:
                raise ValueError(f"{checkpoint} is a pixel-space model: it needs no decoder")
            key = EngineKey(model_hash, "onnx-decoder", {"autoencoder": verify_autoencoder(folder), "opset": OPSET})
            model_file = EngineCache(cache_dir).get_or_build(
                key, "decoder.onnx", lambda path: export_decoder(checkpoint, path, autoencoder))
        return cls(model_file, model_hash, providers)

    def decode(self, samples: torch.Tensor) -> np.ndarray:  # (B, c, h, w) -> (B, H, W, C) uint8
        (images,) = self.session.run(None, {DECODER_INPUT: samples.detach().float().cpu().numpy()})
        return to_uint8(torch.from_numpy(images))
