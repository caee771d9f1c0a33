"""``groupdiff serve``: the serving engine (group scheduler + executor) behind BentoML (REST) or PyTriton
(KServe v2 gRPC/HTTP)."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

RUNTIME_CHOICES = ("onnxruntime", "torch", "tensorrt", "torch-tensorrt")


def register(subparsers) -> None:
    from groupdiff.serving.defaults import BUNDLED_STUDENT, ENV_TOKEN

    p = subparsers.add_parser("serve", help="serve a checkpoint: REST (BentoML) or Triton (gRPC/HTTP) on CPU or GPU",
                              description=f"Bearer token: set {ENV_TOKEN} to require one on the REST API.")
    p.add_argument("--checkpoint", default=str(BUNDLED_STUDENT),
                   help="teacher or student checkpoint folder (default: the bundled Fashion-MNIST student)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="onnxruntime",
                   help="onnxruntime (CPU, exports into the engine cache on first use), torch, or the GPU "
                        "runtimes tensorrt / torch-tensorrt")
    p.add_argument("--device", help="cpu or cuda[:N] (default: the runtime's)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="torch and TensorRT")
    p.add_argument("--compile", action="store_true", help="torch: torch.compile the denoiser")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="torch and TensorRT on a GPU: replay one captured graph per call shape")
    p.add_argument("--frontend", choices=["rest", "triton"], default="rest")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000, help="REST port")
    p.add_argument("--header-timeout", type=int, default=10, metavar="SECONDS",
                   help="REST: a connection must send a complete request head within this many seconds of opening "
                        "or of its previous response, else it is closed (idle keep-alive connections too)")
    p.add_argument("--http-port", type=int, default=8000, help="Triton HTTP port")
    p.add_argument("--grpc-port", type=int, default=8001, help="Triton gRPC port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Triton's own nv_* metrics port")
    p.add_argument("--scheduler-metrics-port", type=int, default=9464,
                   help="groupdiff_* metrics of the Triton frontend (REST serves them on /metrics)")
    p.add_argument("--triton-instances", type=int, default=8,
                   help="Triton model instances: requests in flight at once over gRPC/HTTP (each waits on the "
                        "one scheduler, which batches them)")
    p.add_argument("--max-queue", type=int, default=256, help="queued groups before requests get 429")
    p.add_argument("--max-images", type=int, default=64, help="largest num_images per request")
    p.add_argument("--max-batch-groups", type=int,
                   help="groups per runtime call (default: the knee of the runtime's throughput curve, measured "
                        "at start-up)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a `shared` request's partial group waits for members of other requests")
    p.add_argument("--latency-budget", type=float, metavar="SECONDS",
                   help="refuse (429) a request predicted to wait longer than this behind other work (default: "
                        "only when it would miss its timeout_s)")
    p.add_argument("--drain-timeout", type=float, default=20.0,
                   help="seconds in-flight work may take to finish on SIGTERM/SIGINT")
    p.add_argument("--naive", action="store_true",
                   help="baseline scheduling: one request at a time, no cross-request batching (benchmarks)")
    p.add_argument("--cache-dir", help="engine cache (default $GROUPDIFF_CACHE/engines)")
    p.add_argument("--prompt-cache-size", type=int, metavar="ENTRIES",
                   help="text models: prompt encodings kept, least recently used out (default 1024; 0: none)")
    p.add_argument("--attention-capture", action="store_true",
                   help="onnxruntime and TensorRT: load a torch fp32 copy of the checkpoint at start-up so requests "
                        "may ask for return_attention (the torch runtime always can, with its own model)")
    p.add_argument("--workspace", help="PyTriton workspace (default: a temporary folder)")
    p.set_defaults(run=run)


def serve_config(args: argparse.Namespace):
    from groupdiff.serving.serve_config import ServeConfig, check_checkpoint

    for name in ("max_queue", "max_images", "port", "header_timeout", "http_port", "grpc_port", "metrics_port",
                 "triton_instances"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.max_batch_groups is not None and args.max_batch_groups < 1:
        raise ValueError("--max-batch-groups must be positive")
    if args.batch_wait_ms < 0 or args.drain_timeout < 0:
        raise ValueError("--batch-wait-ms and --drain-timeout must not be negative")
    if args.prompt_cache_size is not None and args.prompt_cache_size < 0:
        raise ValueError("--prompt-cache-size must not be negative")
    if args.latency_budget is not None and not args.latency_budget > 0:
        raise ValueError("--latency-budget must be positive")
    if args.runtime == "onnxruntime" and (args.precision != "fp32" or args.compile or args.cuda_graphs):
        raise ValueError("--precision, --compile and --cuda-graphs apply to the torch and TensorRT runtimes; "
                         "onnxruntime serves the fp32 export")
    check_checkpoint(args.checkpoint)
    return ServeConfig(
        checkpoint=str(Path(args.checkpoint).resolve()), runtime=args.runtime, device=args.device,
        precision=args.precision, compile=args.compile, cuda_graphs=args.cuda_graphs, max_queue=args.max_queue,
        max_images=args.max_images, max_batch_groups=args.max_batch_groups,
        batch_wait_ms=args.batch_wait_ms, latency_budget_s=args.latency_budget, naive=args.naive,
        drain_timeout_s=args.drain_timeout, cache_dir=args.cache_dir, attention_capture=args.attention_capture,
        **({} if args.prompt_cache_size is None else {"prompt_cache_size": args.prompt_cache_size}),
    )


def run(args: argparse.Namespace) -> None:
    config = serve_config(args)
    if args.frontend == "triton":
        from groupdiff.serving.triton import serve_triton

        serve_triton(config, args.host, args.http_port, args.grpc_port, args.metrics_port,
                     args.scheduler_metrics_port, args.workspace, args.triton_instances)
    else:
        serve_rest(config, args.host, args.port, args.header_timeout)


def serve_rest(config, host: str, port: int, header_timeout_s: int = 10) -> None:
    """Run BentoML's production server (one worker process) until SIGTERM/SIGINT."""
    from groupdiff.serving.serve_config import ENV_CONFIG

    os.environ[ENV_CONFIG] = config.to_env()
    os.environ.setdefault("BENTOML_HOME", str(Path(os.environ.get("GROUPDIFF_CACHE", Path.home() / ".cache" /
                                                                  "groupdiff")) / "bentoml"))
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    from _bentoml_impl.server import serve_http

    import groupdiff
    from groupdiff.serving.service import GroupDiffService

    GroupDiffService.inject_config()  # as `bentoml serve` does: applies the service's traffic settings
    # The worker imports the service from the service's working directory (the current one when it was defined),
    # where a source checkout's groupdiff/ folder would shadow the installed package: import from where it is.
    GroupDiffService.working_dir = str(Path(groupdiff.__file__).resolve().parents[1])
    with own_metrics_directory():
        # uvicorn's keep-alive timeout is also the request-head deadline (serving/service.py: ContractH11Protocol)
        serve_http(GroupDiffService, host=host, port=port, timeout_keep_alive=header_timeout_s,
                   timeout_graceful_shutdown=int(config.drain_timeout_s) + 5)


@contextlib.contextmanager
def own_metrics_directory():
    """A Prometheus multiprocess directory for this server alone, removed when it exits.

    BentoML keeps it at ``$BENTOML_HOME/prometheus_multiproc_dir`` and empties it when a server starts, so a
    second server sharing the home (the default) would reset the first one's counters. The workers of this
    server still share the one directory, which is what multiprocess mode needs."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    home = Path(os.environ["BENTOML_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prometheus-", dir=home) as directory:
        BentoMLContainer.prometheus_multiproc_dir.set(directory)
        yield directory
