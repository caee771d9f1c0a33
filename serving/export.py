"""ONNX export of the served denoiser and the latent decoder, with the metadata a runtime checks.

The denoiser graph has inputs ``x`` (G, N, C, H, W) float32, ``t`` (G, N) float32, ``y`` (G, N) int64,
``guidance_scale`` (G,) float32 and output ``velocity`` (G, N, C, H, W). Both the group count ``G``
(1..max_groups) and the group size ``N`` (1..max_group_size) are dynamic axes (the Dynamo exporter,
``torch.export`` in strict mode, REFERENCES §5). Everything that does not change between sampling
calls is a constant of the graph: the weights, the guidance mode and interval, the null class (or a text model's
stored null prompt), the position embedding; the exporter's optimiser folds what it can.

A text model's graph takes ``tokens`` (G, N, T, C_text) float32, ``mask`` (G, N, T) bool and ``pooled``
(G, N, C_text) float32 in place of ``y``, the prompt's encoding (`text_inputs`), with the token count ``T``
(1..the model's ``text_tokens``) a third dynamic axis; the text encoder itself is not in the graph (the
executor runs it once per distinct prompt and caches the result). ``simplify`` also runs ONNX Runtime's
portable (basic-level) graph optimisations offline and saves the result.

Metadata (``metadata_props["groupdiff"]``, JSON) records the model hash, the spec, the group-size and
group-count limits, the guidance recipe and the dynamic axes, so a runtime can refuse a file made from
other weights. Every file is written atomically and passes `onnx.checker` before it is renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groupdiff.model.checkpoint import preferred_weights

from .decoders import latent_decoder_module
from .denoiser import DEFAULT_MAX_GROUPS, OUTPUT_NAME, PRECISION_DTYPES, ServedDenoiser, input_names, load_denoiser

ONNX_FORMAT = "groupdiff-onnx"
ONNX_FORMAT_VERSION = 1
METADATA_KEY = "groupdiff"
OPSET = 20
EXPORT_TOLERANCE = 1e-3  # max abs difference between ONNX Runtime and torch checked right after export
REDUCED_PRECISION_TOLERANCE = 5e-2  # the same check for a float16 graph (both sides round)
# precisions an ONNX export (and so a TensorRT engine) can carry: opset 20 has no bfloat16 convolution, which the
# patch embedding needs (torch-tensorrt compiles bf16 without ONNX)
ONNX_PRECISIONS = ("fp32", "fp16")
DECODER_INPUT, DECODER_OUTPUT = "latents", "images"


class OnnxFileError(ValueError):
    """An ONNX file that is missing, corrupt, truncated, or not a GroupDiff export of the expected kind."""


def export_denoiser(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    weights: str | None = None,
    max_group_size: int | None = None,
    max_groups: int = DEFAULT_MAX_GROUPS,
    simplify: bool = False,
) -> dict[str, Any]:
    """Export a teacher (guided) or student denoiser to ``out``; returns the metadata written into it."""
    weights = weights or preferred_weights(checkpoint)
    return export_served_denoiser(load_denoiser(checkpoint, weights), out, weights, max_group_size, max_groups,
                                  simplify)


def export_served_denoiser(
    denoiser: ServedDenoiser,
    out: str | os.PathLike,
    weights: str,
    max_group_size: int | None = None,
    max_groups: int = DEFAULT_MAX_GROUPS,
    simplify: bool = False,
) -> dict[str, Any]:
    spec = denoiser.spec
    if precision_name(denoiser.dtype) not in ONNX_PRECISIONS:
        raise ValueError(f"an ONNX export is {' or '.join(ONNX_PRECISIONS)}, not {precision_name(denoiser.dtype)} "
                         f"(opset {OPSET} has no bfloat16 convolution); use the torch-tensorrt runtime for bf16")
    max_group_size = spec.max_group_size if max_group_size is None else max_group_size
    program, example, dynamic = export_program(denoiser, max_group_size, max_groups)
    metadata = {
        "format": ONNX_FORMAT, "format_version": ONNX_FORMAT_VERSION, "graph": "denoiser",
        "model_hash": spec.model_hash, "model_version": spec.model_version, "weights": weights,
        "spec": spec.to_dict(), "group_sizes": [1, max_group_size], "max_groups": max_groups,
        "guidance": {"kind": spec.kind, "mode": spec.guidance_mode, "interval": list(spec.guidance_interval),
                     "default_scale": spec.guidance_scale,
                     "scale_input": "per group" if spec.kind == "teacher" else "ignored (baked into the student)"},
        "dynamic_axes": {"groups": [1, max_groups], "group_size": [1, max_group_size], **_token_axis(denoiser)},
        "condition": "text" if spec.text_encoder is not None else "class",
        "opset": OPSET, "torch": torch.__version__, "precision": precision_name(denoiser.dtype),
    }
    reference = denoiser(*example).detach().numpy()
    _write_onnx(program, example, dynamic, input_names(spec), [OUTPUT_NAME], metadata, Path(out), simplify, reference)
    return metadata


def _token_axis(denoiser: ServedDenoiser) -> dict[str, list[int]]:
    text_tokens = denoiser.model.config.text_tokens
    return {"tokens": [1, text_tokens]} if denoiser.spec.text_encoder is not None else {}


def export_program(denoiser: ServedDenoiser, max_group_size: int, max_groups: int):
    """``torch.export`` (strict) of the denoiser with dynamic G in 1..max_groups and N in 1..max_group_size (and a
    text model's token count T in 1..text_tokens): (program, example inputs, dynamic shapes). The ONNX export and
    the CUDA-graph torch runtime start here."""
    from torch.export import Dim

    spec = denoiser.spec
    if not 1 <= max_group_size <= spec.max_group_size:
        raise ValueError(f"max group size must lie in 1..{spec.max_group_size} (the model's), got {max_group_size}")
    if max_groups < 1:
        raise ValueError(f"max groups must be at least 1, got {max_groups}")
    window = tuple(denoiser.model.config.group_attention_window)
    if window != (0.0, 1.0):
        raise ValueError(f"group attention window {window} switches attention per call on data; only the full "
                         "window (0, 1) exports to a static graph (serve this model with the torch runtime)")
    device = next(denoiser.parameters()).device
    named = example_inputs(denoiser, min(2, max_groups), min(2, max_group_size))
    example = tuple(z.to(device) for z in named.values())
    groups = Dim("groups", min=1, max=max_groups)
    group_size = Dim("group_size", min=1, max=max_group_size) if max_group_size > 1 else None
    per_member = {0: groups, 1: group_size} if group_size is not None else {0: groups}
    dynamic = {name: per_member for name in named} | {"guidance_scale": {0: groups}}
    if "tokens" in named:  # a text model: T is dynamic too
        tokens = Dim("tokens", min=1, max=denoiser.model.config.text_tokens)
        dynamic |= {"tokens": {**per_member, 2: tokens}, "mask": {**per_member, 2: tokens}}
    with torch.no_grad():
        program = torch.export.export(denoiser.eval(), example, dynamic_shapes=dynamic, strict=True)
    return program, example, dynamic


def export_decoder(
    checkpoint: str | os.PathLike, out: str | os.PathLike, autoencoder: str | os.PathLike | None = None,
    simplify: bool = False,
) -> dict[str, Any]:
    """Export the autoencoder decoder of a latent checkpoint, scale factor folded in, dynamic batch."""
    from torch.export import Dim

    from groupdiff.model.spec import spec_from_checkpoint

    module = latent_decoder_module(checkpoint, autoencoder)
    if module is None:
        raise ValueError(f"{checkpoint} is a pixel-space model: it needs no decoder (images are clamped samples)")
    spec = spec_from_checkpoint(checkpoint, "model")
    example = (torch.randn(2, spec.channels, spec.size, spec.size),)
    dynamic = {"latents": {0: Dim.DYNAMIC}}
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes=dynamic, strict=True)
        reference = module(*example).numpy()
    metadata = {
        "format": ONNX_FORMAT, "format_version": ONNX_FORMAT_VERSION, "graph": "decoder",
        "model_hash": spec.model_hash, "scale_factor": module.scale_factor,
        "latent_shape": [spec.channels, spec.size, spec.size], "image_shape": list(reference.shape[1:]),
        "dynamic_axes": {"batch": "any"}, "opset": OPSET, "torch": torch.__version__,
    }
    _write_onnx(program, example, dynamic, (DECODER_INPUT,), [DECODER_OUTPUT], metadata, Path(out), simplify, reference)
    return metadata


def example_inputs(denoiser: ServedDenoiser, groups: int, group_size: int) -> dict[str, torch.Tensor]:
    """Inputs of every kind the denoiser takes, by name in `input_names` order, for tracing and checks."""
    spec = denoiser.spec
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(groups, group_size, spec.channels, spec.size, spec.size, generator=generator)
    t = torch.rand(groups, group_size, generator=generator)
    scale = torch.full((groups,), 1.5)
    if spec.text_encoder is None:
        y = torch.randint(0, spec.num_classes, (groups, group_size), generator=generator)
        return {"x": x, "t": t, "y": y, "guidance_scale": scale}
    config = denoiser.model.config
    length = max(2, config.text_tokens // 2)  # inside 1..text_tokens, so tracing keeps T dynamic
    tokens = torch.randn(groups, group_size, length, config.text_dim, generator=generator)
    real = torch.randint(1, length + 1, (groups, group_size, 1), generator=generator)  # prompt lengths
    mask = torch.arange(length) < real  # (G, N, T)
    pooled = torch.randn(groups, group_size, config.text_dim, generator=generator)
    return {"x": x, "t": t, "tokens": tokens, "mask": mask, "pooled": pooled, "guidance_scale": scale}


def _write_onnx(program, example, dynamic, input_names, output_names, metadata, out: Path, simplify, reference) -> None:
    import onnx

    with warnings.catch_warnings():  # torch notes that axes sharing one Dim share its name: expected
        warnings.filterwarnings("ignore", message=".*The axis name.*will not be used")
        onnx_program = torch.onnx.export(program, example, dynamic_shapes=dynamic, input_names=list(input_names),
                                         output_names=output_names, dynamo=True, opset_version=OPSET,
                                         optimize=True, verbose=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        path = Path(tmp) / out.name
        onnx_program.save(str(path))
        if simplify:
            _ort_basic_optimize(path)
        model = onnx.load(str(path))
        metadata = {**metadata, "simplified": simplify}
        onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata, sort_keys=True)})
        model.doc_string = f"GroupDiff {metadata['graph']} ({metadata['model_hash'][:12]})"
        onnx.save(model, str(path))
        onnx.checker.check_model(str(path), full_check=True)
        session = create_session(path)
        feeds = {name: z.numpy() for name, z in zip(input_names, example, strict=True)}
        got = session.run(None, declared_inputs(session, feeds))[0]
        error = float(np.abs(got - reference).max())
        tolerance = EXPORT_TOLERANCE if metadata.get("precision", "fp32") == "fp32" else REDUCED_PRECISION_TOLERANCE
        if not error <= tolerance:
            raise RuntimeError(f"exported graph differs from torch by {error:.2e} (> {tolerance}); not saved")
        os.replace(path, out)


def declared_inputs(session, feeds: dict[str, Any]) -> dict[str, Any]:
    """The feeds a graph declares: an exporter or optimiser may prune an input nothing reads (a student's
    ``guidance_scale``), and ONNX Runtime refuses feeds it does not know."""
    names = {graph_input.name for graph_input in session.get_inputs()}
    return {name: value for name, value in feeds.items() if name in names}


def precision_name(dtype: torch.dtype) -> str:
    return next(name for name, known in PRECISION_DTYPES.items() if known == dtype)


def _ort_basic_optimize(path: Path) -> None:
    """Constant folding and redundant-node removal that keep the graph standard ONNX (any runtime)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    simplified = path.with_name(path.stem + ".simplified.onnx")
    options.optimized_model_filepath = str(simplified)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    os.replace(simplified, path)


def read_onnx_metadata(path: str | os.PathLike, graph: str | None = None) -> dict[str, Any]:
    """The GroupDiff metadata of an exported file, checked: clear errors for missing, corrupt or foreign files."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as error:  # protobuf DecodeError, checker ValidationError, ...: all mean a bad file
        raise OnnxFileError(f"{path} is not a valid ONNX model (corrupt or truncated?): "
                            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    props = {prop.key: prop.value for prop in model.metadata_props}
    try:
        metadata = json.loads(props[METADATA_KEY])
    except (KeyError, json.JSONDecodeError):
        raise OnnxFileError(f"{path} has no GroupDiff metadata: export it with `groupdiff export onnx`") from None
    if metadata.get("format") != ONNX_FORMAT or metadata.get("format_version") != ONNX_FORMAT_VERSION:
        raise OnnxFileError(f"{path}: unsupported GroupDiff ONNX format {metadata.get('format')!r} "
                            f"v{metadata.get('format_version')!r}")
    if graph is not None and metadata.get("graph") != graph:
        raise OnnxFileError(f"{path} holds a {metadata.get('graph')!r} graph, expected a {graph!r} graph")
    return metadata


def create_session(path: str | os.PathLike, providers: list | None = None, threads: int | None = None):
    """An ONNX Runtime session tuned for one caller at a time: all graph optimisations, sequential
    execution, ``threads`` intra-op threads (default: torch's count, so comparisons are like for like)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: constant-folding notes are not actionable
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise OnnxFileError(f"ONNX Runtime cannot load {path}: {str(error).splitlines()[0]}") from None

