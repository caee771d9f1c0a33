"""TensorRT: engines built from the ONNX export, one optimisation profile per served group size.

The ONNX graph has dynamic ``G`` and ``N`` axes; an engine fixes ranges for them. We build one profile
per group size ``N`` (``N`` fixed, ``G`` from 1 to ``max_groups``, tuned for ``opt_groups``), so the
runtime picks a profile by ``N`` and any ``G`` in range runs; anything else is a `RuntimeShapeError`.
Engines are tied to the GPU's compute capability and the TensorRT version, so the engine cache key
holds both (with the precision and the profiles) and a hand-given engine is refused unless its
sidecar matches this machine. ``cuda_graphs`` captures one CUDA graph per (G, N) shape after its first
call and replays it (fixed shapes only; the inputs are copied into static buffers).

TensorRT is imported only when an engine is built or loaded; without it every entry point raises a
`ValueError` that says so. Everything else here (profiles, keys, checks) works without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from groupdiff.model.checkpoint import preferred_weights
from groupdiff.model.spec import DenoiserSpec, spec_from_checkpoint

from .denoiser import DEFAULT_MAX_GROUPS, OUTPUT_NAME, check_velocity_inputs, denoiser_inputs, input_names
from .engine_cache import EngineCache, EngineKey, EngineMismatchError, check_sidecar, read_sidecar
from .export import ONNX_PRECISIONS, OPSET, read_onnx_metadata
from .runtime import RuntimeShapeError

ENGINE_FILE = "denoiser.plan"
DEFAULT_OPT_GROUPS = 8
WORKSPACE_BYTES = 4 << 30
TORCH_DTYPES = {"x": torch.float32, "t": torch.float32, "y": torch.int64, "guidance_scale": torch.float32,
                "tokens": torch.float32, "mask": torch.bool, "pooled": torch.float32}


def import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as error:  # OSError: the wheel is there but libnvinfer is not
        raise ValueError(f"TensorRT is not installed or cannot load ({error}); install the tensorrt wheels from "
                         "NVIDIA's index on a GPU machine, or serve with the onnxruntime or torch runtime") from None
    return tensorrt


@dataclass(frozen=True)
class EngineProfile:
    """One optimisation profile: group size fixed, group count from ``min_groups`` to ``max_groups``."""

    group_size: int
    min_groups: int
    opt_groups: int
    max_groups: int

    def input_shapes(self, spec: DenoiserSpec, text: tuple[int, int] | None = None
                     ) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Input name -> (min, opt, max) shape, in `input_names` order. ``text`` is a text model's (most tokens,
        token width): its token count ranges over 1..most, optimised for the encoder's context length."""
        sample = (spec.channels, spec.size, spec.size)
        counts = (self.min_groups, self.opt_groups, self.max_groups)
        member = tuple((g, self.group_size) for g in counts)
        if spec.text_encoder is None:
            condition = {"y": member}
        else:
            most, width = text
            lengths = (1, min(spec.text_encoder.context_length, most), most)
            condition = {"tokens": tuple((*m, n, width) for m, n in zip(member, lengths, strict=True)),
                         "mask": tuple((*m, n) for m, n in zip(member, lengths, strict=True)),
                         "pooled": tuple((*m, width) for m in member)}
        return {"x": tuple((*m, *sample) for m in member), "t": member, **condition,
                "guidance_scale": tuple((g,) for g in counts)}

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def engine_profiles(
    spec: DenoiserSpec, group_sizes: tuple[int, ...] | None = None, max_groups: int = DEFAULT_MAX_GROUPS,
    opt_groups: int = DEFAULT_OPT_GROUPS,
) -> tuple[EngineProfile, ...]:
    group_sizes = tuple(sorted(set(group_sizes))) if group_sizes else tuple(range(1, spec.max_group_size + 1))
    bad = [n for n in group_sizes if not 1 <= n <= spec.max_group_size]
    if bad:
        raise ValueError(f"group sizes {bad} outside the model's 1..{spec.max_group_size}")
    if max_groups < 1:
        raise ValueError(f"max groups must be at least 1, got {max_groups}")
    opt_groups = min(max(opt_groups, 1), max_groups)
    return tuple(EngineProfile(n, 1, opt_groups, max_groups) for n in group_sizes)


def profile_index(profiles: tuple[EngineProfile, ...], groups: int, group_size: int) -> int:
    for index, profile in enumerate(profiles):
        if profile.group_size == group_size:
            if not profile.min_groups <= groups <= profile.max_groups:
                raise RuntimeShapeError(f"{groups} groups outside the engine profile's range "
                                        f"{profile.min_groups}..{profile.max_groups} for group size {group_size}")
            return index
    raise RuntimeShapeError(f"group size {group_size} has no engine profile (built for "
                            f"{[p.group_size for p in profiles]})")


def gpu_compute_capability(device: str | torch.device = "cuda") -> str:
    if not torch.cuda.is_available():
        raise ValueError("TensorRT engines need a CUDA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return f"sm{major}{minor}"


def engine_key(
    spec: DenoiserSpec, precision: str, profiles: tuple[EngineProfile, ...], tensorrt_version: str,
    compute_capability: str,
) -> EngineKey:
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"a TensorRT engine is built from an ONNX export: precision must be one of "
                         f"{ONNX_PRECISIONS}, got {precision!r} (bf16: the torch-tensorrt runtime)")
    return EngineKey(spec.model_hash, "tensorrt-denoiser", {
        "tensorrt": tensorrt_version, "compute_capability": compute_capability, "precision": precision,
        "profiles": [p.to_dict() for p in profiles], "opset": OPSET, "graph": spec.graph_digest,
    })


def check_engine_target(engine: str | os.PathLike, spec: DenoiserSpec, tensorrt_version: str,
                        compute_capability: str) -> tuple[EngineProfile, ...]:
    """Refuse an engine whose sidecar names other weights, another GPU architecture or TensorRT version;
    return the profiles it was built with."""
    found = read_sidecar(engine)
    target = found.target
    try:
        expected = engine_key(spec, target["precision"], tuple(EngineProfile(**p) for p in target["profiles"]),
                              tensorrt_version, compute_capability)
    except (KeyError, TypeError) as error:
        raise EngineMismatchError(f"{engine}: sidecar lacks the engine target ({error})") from None
    check_sidecar(engine, expected)
    return tuple(EngineProfile(**p) for p in target["profiles"])


def build_engine(
    onnx_path: str | os.PathLike, engine_path: str | os.PathLike, spec: DenoiserSpec,
    profiles: tuple[EngineProfile, ...], precision: str, timing_cache: str | os.PathLike | None = None,
) -> None:
    """Parse the ONNX export and build a serialised engine with one profile per group size.

    The network is strongly typed (TensorRT 11 has no other kind; 10 has the flag): the precision is the ONNX
    graph's own, exported at ``precision`` (`cached_denoiser_onnx`), never a builder flag. An input the graph
    does not read may be pruned by the parser, so profiles set shapes only for the inputs the network kept."""
    trt = import_tensorrt()
    exported = read_onnx_metadata(onnx_path, "denoiser").get("precision", "fp32")
    if exported != precision:
        raise ValueError(f"{onnx_path} was exported in {exported}, not the engine's {precision}: export it again")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # the default in 11
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}")
    kept = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    text = _text_dims(onnx_path, kept) if spec.text_encoder is not None else None
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    for profile in profiles:
        optimization = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.input_shapes(spec, text).items():
            if name in kept:
                optimization.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimization)
    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    Path(engine_path).write_bytes(bytes(serialized))
    if cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def _text_dims(onnx_path: str | os.PathLike, inputs: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """A text graph's (most tokens, token width): the export's dynamic token range and ``pooled``'s static width."""
    most = read_onnx_metadata(onnx_path, "denoiser")["dynamic_axes"]["tokens"][1]
    return int(most), int(inputs["pooled"][-1])


def tensorrt_engine(
    checkpoint: str | os.PathLike,
    weights: str | None = None,
    precision: str = "fp16",
    group_sizes: tuple[int, ...] | None = None,
    max_groups: int = DEFAULT_MAX_GROUPS,
    opt_groups: int = DEFAULT_OPT_GROUPS,
    device: str | torch.device = "cuda",
    cache_dir: str | os.PathLike | None = None,
    onnx_file: str | os.PathLike | None = None,
) -> Path:
    """The cached engine for this checkpoint, GPU, TensorRT version, precision and profiles (built when
    missing, from ``onnx_file`` or from an export at ``precision`` into the same cache)."""
    from .onnx_runtime import cached_denoiser_onnx

    trt = import_tensorrt()
    weights = weights or preferred_weights(checkpoint)
    spec = spec_from_checkpoint(checkpoint, weights)
    profiles = engine_profiles(spec, group_sizes, max_groups, opt_groups)
    capability = gpu_compute_capability(device)
    key = engine_key(spec, precision, profiles, trt.__version__, capability)
    cache = EngineCache(cache_dir)
    if onnx_file is not None and read_onnx_metadata(onnx_file, "denoiser")["model_hash"] != spec.model_hash:
        raise ValueError(f"{onnx_file} was exported from other weights than {checkpoint}")
    onnx_path = onnx_file or cached_denoiser_onnx(checkpoint, weights, max_groups, cache, precision)
    timing = cache.root / "timing" / f"trt{trt.__version__}-{capability}.cache"
    return cache.get_or_build(key, ENGINE_FILE,
                              lambda path: build_engine(onnx_path, path, spec, profiles, precision, timing))


class TensorRTRuntime:
    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, spec: DenoiserSpec, device: str | torch.device = "cuda",
                 cuda_graphs: bool = False):
        trt = import_tensorrt()
        self.device = torch.device(device)
        self.spec = spec
        self.profiles = check_engine_target(engine_path, spec, trt.__version__, gpu_compute_capability(self.device))
        self.group_sizes = tuple(p.group_size for p in self.profiles)
        self.max_groups = min(p.max_groups for p in self.profiles)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise ValueError(f"TensorRT cannot deserialise {engine_path}: the file is corrupt or truncated")
        declared = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        self.input_names = tuple(name for name in input_names(spec) if name in declared)  # pruned ones are not fed
        self._stream = torch.cuda.Stream(self.device)
        self._contexts = []
        for index in range(len(self.profiles)):
            context = self._engine.create_execution_context()
            context.set_optimization_profile_async(index, self._stream.cuda_stream)
            self._contexts.append(context)
        self._stream.synchronize()
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, model_file: str | os.PathLike | None = None,
                        weights: str | None = None, device: str | torch.device = "cuda", precision: str = "fp16",
                        max_groups: int = DEFAULT_MAX_GROUPS, cache_dir: str | os.PathLike | None = None,
                        group_sizes: tuple[int, ...] | None = None, cuda_graphs: bool = False) -> TensorRTRuntime:
        """``model_file``: a serialised engine (with its sidecar) or an ONNX export to build from."""
        weights = weights or preferred_weights(checkpoint)
        engine = model_file
        if model_file is None or Path(model_file).suffix == ".onnx":
            engine = tensorrt_engine(checkpoint, weights, precision, group_sizes, max_groups, device=device,
                                     cache_dir=cache_dir, onnx_file=model_file)
        return cls(engine, spec_from_checkpoint(checkpoint, weights), device, cuda_graphs)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y,
                 guidance_scale: torch.Tensor) -> torch.Tensor:  # (G, N, C, H, W) float32 on self.device
        """``y``: (G, N) class ids, or a text model's `TextCondition` of G·N rows, fed by name (tokens, mask,
        pooled). The text path is written for TensorRT's API but has not run on a GPU yet."""
        check_velocity_inputs(self.spec, self.max_groups, self.group_sizes, x, t, y, guidance_scale)
        groups, group_size = x.shape[:2]
        index = profile_index(self.profiles, groups, group_size)
        given = denoiser_inputs(x, t, y, guidance_scale)
        inputs = {name: given[name].to(self.device, TORCH_DTYPES[name]).contiguous() for name in self.input_names}
        if not self.cuda_graphs:
            output = torch.empty(x.shape, dtype=torch.float32, device=self.device)
            self._enqueue(index, inputs, output)
            self._stream.synchronize()
            return output
        return self._replay(index, inputs)

    def _enqueue(self, index: int, inputs: dict[str, torch.Tensor], output: torch.Tensor) -> None:
        context = self._contexts[index]
        for name, tensor in inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        context.set_tensor_address(OUTPUT_NAME, output.data_ptr())
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see its log)")

    def _replay(self, index: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        shape = tuple(tuple(tensor.shape) for tensor in inputs.values())  # (G, N) and a text model's token count
        if shape not in self._graphs:
            static = {name: tensor.clone() for name, tensor in inputs.items()}
            static[OUTPUT_NAME] = torch.empty(inputs["x"].shape, dtype=torch.float32, device=self.device)
            self._enqueue(index, {k: v for k, v in static.items() if k != OUTPUT_NAME}, static[OUTPUT_NAME])
            self._stream.synchronize()  # one plain run first: TensorRT settles its state before capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._contexts[index].execute_async_v3(self._stream.cuda_stream)
            self._graphs[shape] = (graph, static)
        graph, static = self._graphs[shape]
        for name, tensor in inputs.items():
            static[name].copy_(tensor)
        graph.replay()  # on the current stream, after the copies
        return static[OUTPUT_NAME].clone()

    def close(self) -> None:
        self._graphs.clear()
        self._contexts = []
        self._engine = None
