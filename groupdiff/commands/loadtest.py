"""``groupdiff loadtest``: open- or closed-loop traffic against a running server, swept over rates or
concurrencies, written as JSON, per-request lines, a markdown report and plots (clients/report.py)."""

from __future__ import annotations

import argparse
import asyncio
import os

from .generate import add_request_arguments, add_server_arguments, request_options


def register(subparsers) -> None:
    p = subparsers.add_parser("loadtest", help="load-test a running server: latency and throughput against load")
    add_server_arguments(p)
    p.add_argument("--mode", choices=["open", "closed"], default="closed",
                   help="open: Poisson arrivals at --rates; closed: --concurrency users back to back")
    p.add_argument("--rates", type=float, nargs="+", default=[1.0], help="open loop: requests/s per level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1], help="closed loop: users per level")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, dest="duration_s", help="seconds of traffic per level (default 30)")
    bound.add_argument("--requests", type=int, help="requests per level")
    p.add_argument("--mix", default="uniform", help="condition mix: uniform, zipf[:S], class:K, weights:W0,W1,...")
    p.add_argument("--num-images", type=int, nargs="+", default=[1], help="images per request, drawn uniformly")
    p.add_argument("--num-classes", type=int, help="classes of the model (default: from GET /v1/model; "
                                                   "required with --grpc / --triton-http)")
    add_request_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seeds the request stream and the arrivals")
    p.add_argument("--warmup", type=int, default=2, help="requests sent before measuring (not counted)")
    p.add_argument("--timeout", type=float, dest="timeout_s", help="per-request deadline in seconds (REST: sent "
                                                                    "as timeout_s; Triton: the client's timeout)")
    p.add_argument("--out", default="outputs/loadtest", help="report folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    asyncio.run(measure(args))


def async_client(args: argparse.Namespace):
    """The asyncio SDK client with retries off: a 429 is a measurement, not something to hide."""
    from groupdiff.clients.rest import AsyncGroupDiffClient, RetryPolicy
    from groupdiff.clients.triton import AsyncTritonClient

    retry = RetryPolicy(retries=0)
    if args.protocol == "rest":
        return AsyncGroupDiffClient(args.server or "http://127.0.0.1:3000", token=args.token, retry=retry,
                                    max_connections=1000)
    return AsyncTritonClient(args.server, protocol=args.protocol, token=args.token, retry=retry,
                             timeout_s=args.timeout_s or 70.0)


async def measure(args: argparse.Namespace) -> None:
    from groupdiff.clients.errors import GroupDiffError, InvalidRequest
    from groupdiff.clients.loadgen import Workload, sweep
    from groupdiff.clients.report import write_loadtest_report

    levels = args.rates if args.mode == "open" else args.concurrency
    if min(levels) <= 0 or args.warmup < 0:
        raise ValueError("rates and concurrencies must be positive, --warmup non-negative")
    duration_s = args.duration_s if args.duration_s or args.requests else 30.0
    params = {k: v for k, v in request_options(args).items() if v is not None}
    if args.protocol == "rest" and args.timeout_s is not None:
        params["timeout_s"] = args.timeout_s
    async with async_client(args) as client:
        model_version, num_classes = None, args.num_classes
        try:
            if args.protocol == "rest":
                info = await client.model_info()
                model_version, num_classes = info.model_version, num_classes or info.num_classes
            elif num_classes is None:
                raise ValueError("--num-classes is required with --grpc / --triton-http")
            workload = Workload(num_classes, args.mix, args.num_images, args.seed, params)

            async def send(request):
                return await client.generate(request.class_id, request.num_images, seed=request.seed,
                                             **request.params)

            warm = workload.stream()
            for index in range(args.warmup):
                await send(warm(index))
        except InvalidRequest as error:
            raise ValueError(f"the server refused the request: {error.message}") from None
        except GroupDiffError as error:
            raise SystemExit(f"groupdiff loadtest: error: {error}") from None

        def progress(run) -> None:
            # the load test shares the machine with the server (and, on a shared box, with others): record it
            run.settings["host_load_1m"] = round(os.getloadavg()[0], 2)
            s = run.summary()
            print(f"{run.mode} {run.level:g}: {s['requests']} requests, {s['ok']} ok, {s['rejected']} rejected, "
                  f"{s['error'] + s['deadline']} failed; {s['images_per_s']:.2f} images/s, "
                  f"p50 {s['latency_p50_s']:.3f} s, p99 {s['latency_p99_s']:.3f} s", flush=True)

        runs = await sweep(send, workload, args.mode, levels, duration_s, args.requests, seed=args.seed,
                           on_run=progress)
    target = args.server or {"rest": "http://127.0.0.1:3000", "grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}[
        args.protocol]
    settings = {"target": target, "protocol": args.protocol, "model_version": model_version, "mode": args.mode,
                "levels": levels, "duration_s": duration_s, "requests": args.requests, "mix": args.mix,
                "num_images": args.num_images, "num_classes": num_classes, "params": params, "seed": args.seed,
                "warmup": args.warmup}
    paths = write_loadtest_report(args.out, runs, args.invocation, settings)
    print(f"wrote {paths['markdown']}, {paths['json'].name}, {paths['cdf'].name}, {paths['throughput'].name}")
