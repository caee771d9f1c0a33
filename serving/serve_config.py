"""What `groupdiff serve` starts: the checkpoint, the runtime and the engine's limits.

Both frontends build their engine from a `ServeConfig`. The BentoML worker is a separate process
started by BentoML's arbiter, so the config travels to it as JSON in ``GROUPDIFF_SERVE_CONFIG``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from groupdiff.model.checkpoint import check_loads, load_text_encoder, preferred_weights, verify_text_encoder
from groupdiff.model.spec import DenoiserSpec, spec_from_checkpoint

from .attention import AttentionCapture
from .decoders import autoencoder_folder, verify_autoencoder
from .defaults import BUNDLED_STUDENT
from .engine import Engine, EngineConfig
from .metrics import ServingMetrics
from .prompt_cache import DEFAULT_PROMPT_CACHE_SIZE
from .requests import ServerLimits

ENV_CONFIG = "GROUPDIFF_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str = str(BUNDLED_STUDENT)
    runtime: str = "onnxruntime"
    device: str | None = None  # None: the runtime's default (cpu, or cuda for TensorRT)
    precision: str = "fp32"  # torch and TensorRT: fp32, bf16 or fp16
    compile: bool = False  # torch: torch.compile the denoiser
    cuda_graphs: bool = False  # torch and TensorRT on a GPU: replay a captured graph per call shape
    max_queue: int = 256  # queued groups before 429
    max_images: int = 64  # num_images limit per request
    max_batch_groups: int | None = None  # groups per runtime call (None: the knee of the measured curve)
    batch_wait_ms: float = 5.0  # how long `shared` remainders wait for members of other requests
    latency_budget_s: float | None = None  # most predicted waiting behind other work before 429 (None: deadlines)
    naive: bool = False  # the benchmark's baseline: one request at a time
    drain_timeout_s: float = 20.0  # graceful shutdown: how long in-flight work may take to finish
    cache_dir: str | None = None  # engine cache (ONNX / TensorRT)
    prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE  # a text model's cached prompt encodings (0: none)
    attention_capture: bool = False  # beside onnxruntime / TensorRT: a torch copy for return_attention

    def __post_init__(self) -> None:
        self.limits  # noqa: B018 - checks the limits when the config is made, not when the server starts
        if self.prompt_cache_size < 0:
            raise ValueError(f"prompt_cache_size must not be negative, got {self.prompt_cache_size}")

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        raw = os.environ.get(ENV_CONFIG)
        if raw is None:
            raise RuntimeError(f"{ENV_CONFIG} is not set: the GroupDiff service is started by `groupdiff serve`")
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def limits(self) -> ServerLimits:
        return ServerLimits(max_images=self.max_images, max_queue_groups=self.max_queue)


def check_checkpoint(path: str | os.PathLike, verify: bool = True) -> DenoiserSpec:
    """The served spec, once everything serving reads is shown intact: the served weights (their bytes
    against the sha256 in ``config.json``, their tensors against the model config) and, for a latent model,
    the autoencoder, and for a text model its own text encoder (``text_encoder/``, its weights against the sha256 the
    checkpoint records). `groupdiff serve` calls this before it starts a server, so a corrupt checkpoint exits
    with one line (`CheckpointError`) instead of starting.

    ``verify=False`` reads ``config.json`` alone, for a Triton GPU repository's copy of the checkpoint,
    which holds no weights (they are inside its TensorRT plans). A missing folder is a FileNotFoundError
    that says how to get the bundled student.
    """
    folder = Path(path)
    if not folder.is_dir():
        hint = ("the bundled student is made by `groupdiff distill --teacher <teacher checkpoint> --config "
                "fmnist --export-to groupdiff/assets/fmnist-student` (docs/distill.md), or pass --checkpoint PATH"
                if folder.resolve() == BUNDLED_STUDENT else "pass --checkpoint with a checkpoint folder")
        raise FileNotFoundError(f"checkpoint folder not found: {folder}; {hint}")
    weights = preferred_weights(folder)
    spec = spec_from_checkpoint(folder, weights, verify)
    if verify:
        check_loads(folder, weights)
        autoencoder = autoencoder_folder(folder)
        if autoencoder is not None:
            verify_autoencoder(autoencoder)
        if spec.text_encoder is not None:
            verify_text_encoder(folder)  # CheckpointError: missing, or not the encoder the model was trained with
    return spec


def build_engine(config: ServeConfig, metrics: ServingMetrics | None = None) -> Engine:
    """An engine whose model thread loads the runtime and decoder named by ``config``, the torch model that
    captures attention (`AttentionCapture.for_runtime`: the torch runtime's own, else a copy of the checkpoint
    when ``config.attention_capture``, else none) and, for a text model, the checkpoint's own text encoder
    (verified against its recorded sha256)."""
    check_checkpoint(config.checkpoint)

    def load():
        from .runtimes import load_decoder, load_runtime

        options = {"device": config.device, "cache_dir": config.cache_dir}
        if config.precision != "fp32" or config.compile or config.cuda_graphs:  # onnxruntime refuses them
            options.update(precision=config.precision, compile=config.compile, cuda_graphs=config.cuda_graphs)
        if config.max_batch_groups:
            options["max_groups"] = config.max_batch_groups
        runtime = load_runtime(config.runtime, config.checkpoint, **options)
        decoder_runtime = "onnxruntime" if config.runtime == "onnxruntime" else "torch"
        decoder_device = config.device or (runtime.device if decoder_runtime == "torch" else None)  # beside it
        decoder = load_decoder(config.checkpoint, runtime=decoder_runtime, device=decoder_device,
                               cache_dir=config.cache_dir)
        return runtime, decoder

    engine_config = EngineConfig(
        limits=config.limits, max_batch_groups=config.max_batch_groups, batch_wait_ms=config.batch_wait_ms,
        latency_budget_s=config.latency_budget_s, naive=config.naive, prompt_cache_size=config.prompt_cache_size,
    )
    return Engine(load, engine_config, metrics,
                  capture=lambda runtime: AttentionCapture.for_runtime(
                      runtime, config.checkpoint, copy=config.attention_capture),
                  text_encoder=lambda runtime: load_text_encoder(config.checkpoint))
