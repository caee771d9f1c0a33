"""``groupdiff loadtest``: open- or closed-loop traffic against a running server, swept over rates or
concurrencies, written as JSON, per-request lines, a markdown report and plots (clients/report.py).

A text model gets prompts (a file's or the built-in Fashion-MNIST vocabulary, drawn by a Zipf law) in place of
class ids. The server's /metrics, read before and after every level, add what only the server knows: the share
of images served in full groups and the prompt cache's hit rate."""

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
    p.add_argument("--mix", default="uniform", help="class models' condition mix: uniform, zipf[:S], class:K, "
                                                    "weights:W0,W1,...")
    p.add_argument("--condition", choices=["class", "text"], help="send class ids or prompts (default: the model's, "
                                                                  "from GET /v1/model; with --grpc / --triton-http: "
                                                                  "text if --prompts is given, else class)")
    p.add_argument("--prompts", metavar="FILE", help="text models: prompts, one per line, most popular first "
                                                     "(default: a built-in Fashion-MNIST vocabulary of 40)")
    p.add_argument("--zipf", type=float, metavar="S", help="text models: prompt r of the list is drawn with "
                                                           "probability ~ r^-S (default 0: uniform)")
    p.add_argument("--metrics-url", help="the server's groupdiff_* metrics, read before and after each level "
                                         "(default: REST's /metrics; Triton: port 9464 of --server's host)")
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


def metrics_url(args: argparse.Namespace) -> str:
    if args.metrics_url:
        return args.metrics_url
    if args.protocol == "rest":
        return f"{(args.server or 'http://127.0.0.1:3000').rstrip('/')}/metrics"
    host = (args.server or "127.0.0.1").rsplit(":", 1)[0]
    return f"http://{host}:9464/metrics"  # `groupdiff serve --frontend triton`'s --scheduler-metrics-port


def scrape(url: str) -> str | None:
    """The server's metrics text, or None (with a note) when it cannot be read: the load test still runs."""
    import httpx

    try:
        response = httpx.get(url, timeout=10)
        response.raise_for_status()
        return response.text
    except httpx.HTTPError as error:
        print(f"note: could not read {url} ({error}); group fill and cache hit rate not reported", flush=True)
        return None


def prompt_mix(args: argparse.Namespace, condition: str) -> tuple[list[str] | None, float, str | None]:
    """(prompts, Zipf exponent, where the prompts came from); no prompts for a class model."""
    from groupdiff.clients.prompts import FASHION_MNIST_PROMPTS, read_prompts

    if condition == "class":
        if args.prompts or args.zipf is not None:
            raise ValueError("--prompts and --zipf are for a text model; this model takes class ids (--mix)")
        return None, 0.0, None
    if args.mix != "uniform":
        raise ValueError("--mix is for class models; a text model's prompts are drawn by --zipf")
    if args.prompts:
        return read_prompts(args.prompts), args.zipf or 0.0, args.prompts
    return list(FASHION_MNIST_PROMPTS), args.zipf or 0.0, "built-in Fashion-MNIST vocabulary"


async def measure(args: argparse.Namespace) -> None:
    from groupdiff.clients.errors import GroupDiffError, InvalidRequest
    from groupdiff.clients.loadgen import Workload, sweep
    from groupdiff.clients.report import write_loadtest_report
    from groupdiff.clients.reporting import serving_figures

    levels = args.rates if args.mode == "open" else args.concurrency
    if min(levels) <= 0 or args.warmup < 0:
        raise ValueError("rates and concurrencies must be positive, --warmup non-negative")
    duration_s = args.duration_s if args.duration_s or args.requests else 30.0
    params = {k: v for k, v in request_options(args).items() if v is not None}
    if args.protocol == "rest" and args.timeout_s is not None:
        params["timeout_s"] = args.timeout_s
    async with async_client(args) as client:
        model_version, num_classes, condition = None, args.num_classes, args.condition
        try:
            if args.protocol == "rest":
                info = await client.model_info()
                model_version, num_classes = info.model_version, num_classes or info.num_classes
                condition = condition or info.condition
            condition = condition or ("text" if args.prompts else "class")
            if condition == "class" and num_classes is None:
                raise ValueError("--num-classes is required with --grpc / --triton-http")
            prompts, zipf, prompt_source = prompt_mix(args, condition)
            workload = Workload(num_classes or 0, args.mix, args.num_images, args.seed, params, prompts, zipf)

            async def send(request):
                return await client.generate(request.class_id, request.num_images, prompt=request.prompt,
                                             seed=request.seed, **request.params)

            warm = workload.stream()
            for index in range(args.warmup):
                await send(warm(index))
        except InvalidRequest as error:
            raise ValueError(f"the server refused the request: {error.message}") from None
        except GroupDiffError as error:
            raise SystemExit(f"groupdiff loadtest: error: {error}") from None

        url = metrics_url(args)
        before = scrape(url)  # after the warm-up: each level's figures are the change over that level alone

        def progress(run) -> None:
            nonlocal before
            # the load test shares the machine with the server (and, on a shared box, with others): record it
            run.settings["host_load_1m"] = round(os.getloadavg()[0], 2)
            after = scrape(url) if before is not None else None
            if after is not None:
                run.settings["server"] = serving_figures(before, after)
            before = after
            s, server = run.summary(), run.settings.get("server", {})
            print(f"{run.mode} {run.level:g}: {s['requests']} requests, {s['ok']} ok, {s['rejected']} rejected, "
                  f"{s['error'] + s['deadline']} failed; {s['images_per_s']:.2f} images/s, "
                  f"p50 {s['latency_p50_s']:.3f} s, p99 {s['latency_p99_s']:.3f} s"
                  + "".join(f"; {name} {server[key]:.3f}" for key, name in (("full_group_share", "full groups"),
                                                                          ("cache_hit_rate", "cache hits"))
                            if server.get(key) is not None), flush=True)

        runs = await sweep(send, workload, args.mode, levels, duration_s, args.requests, seed=args.seed,
                           on_run=progress)
    target = args.server or {"rest": "http://127.0.0.1:3000", "grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}[
        args.protocol]
    settings = {"target": target, "protocol": args.protocol, "model_version": model_version, "mode": args.mode,
                "levels": levels, "duration_s": duration_s, "requests": args.requests, "mix": args.mix,
                "num_images": args.num_images, "num_classes": num_classes, "params": params, "seed": args.seed,
                "warmup": args.warmup, "condition": condition, "metrics_url": url}
    if prompts is not None:
        settings.update(prompt_source=prompt_source, prompt_count=len(prompts), zipf=zipf)
    paths = write_loadtest_report(args.out, runs, args.invocation, settings)
    print(f"wrote {paths['markdown']}, {paths['json'].name}, {paths['cdf'].name}, {paths['throughput'].name}")
