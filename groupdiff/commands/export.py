"""``groupdiff export``: build serving artefacts from a checkpoint.

Each target is a sub-command with its own parser (``onnx``, ``tensorrt``; more can be added beside
them by defining ``register_<target>(targets)`` and calling it from `register`).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint's denoiser (and decoder) for serving")
    targets = p.add_subparsers(dest="target", required=True)
    register_onnx(targets)
    register_tensorrt(targets)
    register_triton_repo(targets)


def register_onnx(targets) -> None:
    from groupdiff.serving.denoiser import DEFAULT_MAX_GROUPS

    p = targets.add_parser("onnx", help="ONNX with dynamic group-count and group-size axes, checked and tagged")
    p.add_argument("--checkpoint", required=True, help="teacher or student checkpoint folder")
    p.add_argument("--out", required=True, help="ONNX file to write (the denoiser)")
    p.add_argument("--weights", choices=["ema", "model"], help="default: ema when present, else model")
    p.add_argument("--max-group-size", type=int, help="largest group size N served (default: the model's)")
    p.add_argument("--max-groups", type=int, default=DEFAULT_MAX_GROUPS, help="largest group count G per call")
    p.add_argument("--simplify", action="store_true",
                   help="also run ONNX Runtime's portable graph optimisations offline (folding, dead nodes)")
    p.add_argument("--decoder-out", help="latent models: also export the autoencoder decoder to this file")
    p.add_argument("--autoencoder", help="autoencoder folder (default: the one recorded in the checkpoint)")
    p.set_defaults(run=run_onnx)


def run_onnx(args: argparse.Namespace) -> None:
    from groupdiff.serving.export import export_decoder, export_denoiser

    metadata = export_denoiser(args.checkpoint, args.out, args.weights, args.max_group_size, args.max_groups,
                               args.simplify)
    low, high = metadata["group_sizes"]
    print(f"wrote {args.out}: {metadata['guidance']['kind']} denoiser, weights {metadata['weights']}, "
          f"model {metadata['model_version']}, groups 1..{metadata['max_groups']}, group size {low}..{high}")
    if args.decoder_out:
        export_decoder(args.checkpoint, args.decoder_out, args.autoencoder, args.simplify)
        print(f"wrote {args.decoder_out}: autoencoder decoder, dynamic batch")


def register_tensorrt(targets) -> None:
    from groupdiff.serving.denoiser import DEFAULT_MAX_GROUPS, PRECISION_DTYPES
    from groupdiff.serving.tensorrt_runtime import DEFAULT_OPT_GROUPS

    p = targets.add_parser("tensorrt", help="a TensorRT engine for this GPU (cached, one profile per group size)")
    p.add_argument("--checkpoint", required=True, help="teacher or student checkpoint folder")
    p.add_argument("--onnx", help="ONNX export to build from (default: export into the cache)")
    p.add_argument("--weights", choices=["ema", "model"], help="default: ema when present, else model")
    p.add_argument("--precision", choices=tuple(PRECISION_DTYPES), default="fp16")
    p.add_argument("--group-sizes", type=int, nargs="+", help="group sizes to build profiles for (default: all)")
    p.add_argument("--max-groups", type=int, default=DEFAULT_MAX_GROUPS, help="largest group count per call")
    p.add_argument("--opt-groups", type=int, default=DEFAULT_OPT_GROUPS, help="group count the build tunes for")
    p.add_argument("--device", default="cuda", help="the GPU to build for (engines are tied to its architecture)")
    p.add_argument("--cache", help="engine cache folder (default $GROUPDIFF_CACHE/engines or "
                                   "~/.cache/groupdiff/engines)")
    p.set_defaults(run=run_tensorrt)


def run_tensorrt(args: argparse.Namespace) -> None:
    from groupdiff.serving.tensorrt_runtime import tensorrt_engine

    engine = tensorrt_engine(args.checkpoint, args.weights, args.precision, args.group_sizes, args.max_groups,
                             args.opt_groups, args.device, args.cache, args.onnx)
    print(f"engine {engine} (sidecar {engine.name}.json records model hash, GPU architecture, TensorRT version)")


def register_triton_repo(targets) -> None:
    p = targets.add_parser("triton-repo", help="a Triton model repository: the group scheduler as a Python model "
                                               "(gpu: + TensorRT denoiser/decoder via BLS; cpu: ONNX Runtime inside)")
    p.add_argument("--checkpoint", required=True, help="teacher or student checkpoint folder")
    p.add_argument("--out", required=True, help="repository folder to write (replaced atomically)")
    p.add_argument("--variant", choices=["gpu", "cpu"], default="gpu",
                   help="gpu: for NVIDIA's Triton container; cpu: runs in-process (also on PyTriton's tritonserver)")
    p.add_argument("--runtime", choices=["onnxruntime", "torch"], default="onnxruntime", help="cpu variant runtime")
    p.add_argument("--max-groups", type=int, default=16, help="groups per runtime call (the engine's batch axis)")
    p.add_argument("--pipeline-instances", type=int, default=1, help="instances of the groupdiff Python model")
    p.add_argument("--engine-instances", type=int, default=1, help="GPU instances of each TensorRT model")
    p.add_argument("--max-queue", type=int, default=256, help="queued groups (and Triton queue size) before refusal")
    p.add_argument("--max-images", type=int, default=64, help="largest num_images per request")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long an idle batch waits to fill")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="Triton dynamic batching delay of the engines")
    p.add_argument("--denoiser-plan", help="TensorRT engine to copy in (from `groupdiff export tensorrt`)")
    p.add_argument("--decoder-plan", help="latent models: the decoder engine to copy in")
    p.set_defaults(run=run_triton_repo)


def run_triton_repo(args: argparse.Namespace) -> None:
    from groupdiff.serving.triton_repository import missing_plans, write_triton_repository

    out = write_triton_repository(
        args.checkpoint, args.out, args.variant, args.runtime, args.max_groups, args.pipeline_instances,
        args.engine_instances, args.max_queue, args.max_images, args.batch_wait_ms, args.queue_delay_us,
        args.denoiser_plan, args.decoder_plan)
    print(f"wrote {out} ({args.variant} variant)")
    for model in missing_plans(out):
        print(f"  {model}/1/model.plan is missing: build it on the target GPU with `groupdiff export tensorrt` "
              f"and copy it there (or pass --{model}-plan)")
