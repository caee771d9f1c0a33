"""``groupdiff bench serve``: the group scheduler under load, against a naive baseline and the runtime's peak.

All in one process, on one runtime kind: first the runtime's peak images/s (direct calls with full
batches of ``max_groups`` groups, decode included) and the latency of a single group; then, for each
scheduling (``group``: the group scheduler; ``naive``: each request alone, its groups batched, no
cross-request batching) and each condition mix, closed-loop runs at several concurrencies and
open-loop (Poisson) runs at several fractions of the peak request rate, driven by
`groupdiff.clients.loadgen` calling the scheduler in-process (PNG encoding included, no HTTP).

Goals checked: at saturation >= 90 % of the peak images/s; at half load p99 latency <= 2x the single
group's latency; scheduler overhead (worker time outside model calls) <= 5 % of model time. The queue
holds the server default of 256 groups, so overload is shed with 429s (`rejected`) instead of queueing
until the client timeout (`deadline`). On a GPU the model time counts kernel launches only (CUDA runs
asynchronously), so the overhead column there also holds time spent waiting for the device.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import statistics
import time
from pathlib import Path

import numpy as np

from groupdiff.bench.report import format_table, json_ready, new_figure, save_figure, write_report
from groupdiff.clients.loadgen import Workload, closed_loop, open_loop
from groupdiff.serving.pipeline import generate_direct
from groupdiff.serving.requests import resolve
from groupdiff.serving.serve_config import ServeConfig, build_scheduler, check_checkpoint, default_group_size

SCHEDULINGS = ("group", "naive")
COLUMNS = ["scheduling", "mix", "mode", "level", "offered_rate", "ok", "rejected", "deadline", "images_per_s",
           "peak_fraction", "latency_p50_s", "latency_p95_s", "latency_p99_s", "group_fill", "batch_groups", "overhead"]


def measure_peak(config: ServeConfig, group_size: int, steps: int, repeats: int) -> dict:
    """Direct full-batch calls on a fresh runtime, on one dedicated thread (as the server runs them)."""

    def measure() -> dict:
        from groupdiff.serving.runtimes import load_decoder, load_runtime

        options = {"device": config.device, "cache_dir": config.cache_dir, "max_groups": config.max_batch_groups}
        runtime = load_runtime(config.runtime, config.checkpoint, **options)
        decoder = load_decoder(config.checkpoint, runtime="onnxruntime" if config.runtime == "onnxruntime"
                               else "torch", device=config.device, cache_dir=config.cache_dir)
        groups = runtime.max_groups
        guidance = runtime.spec.guidance_scale

        def timed(g: int) -> float:
            began = time.perf_counter()
            generate_direct(runtime, decoder, [i % runtime.spec.num_classes for i in range(g)],
                            list(range(g * group_size)), group_size, steps, guidance)
            return time.perf_counter() - began

        timed(groups), timed(1)  # warm-up of both shapes
        # the best of the repeats: the runtime's capacity, robust to a moment of foreign load on the machine
        full = min(timed(groups) for _ in range(repeats))
        single = statistics.median(timed(1) for _ in range(repeats))
        runtime.close()
        return {"max_groups": groups, "batch_seconds": full, "peak_images_per_s": groups * group_size / full,
                "single_group_latency_s": single}

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(measure).result()


def histogram_totals(metric) -> tuple[float, float]:
    family = metric.collect()[0]
    samples = {s.name: s.value for s in family.samples}
    return samples[f"{family.name}_sum"], samples[f"{family.name}_count"]


async def drive(scheduler, mode: str, level: float, workload: Workload, duration_s: float, seed: int,
                timeout_s: float):
    limits = scheduler.config.limits

    async def send(request):
        body = {"class_id": request.class_id, "num_images": request.num_images, "seed": request.seed,
                **request.params}
        return await scheduler.submit(resolve(body, scheduler.served, limits))

    if mode == "open":
        return await open_loop(send, workload, level, duration_s=duration_s, timeout_s=timeout_s, seed=seed)
    return await closed_loop(send, workload, int(level), duration_s=duration_s, timeout_s=timeout_s)


async def repeatability(scheduler, params: dict, copies: int = 3, traffic: int = 16) -> bool:
    """Isolated requests under concurrent mixed traffic return the same PNG bytes as alone."""
    limits, served = scheduler.config.limits, scheduler.served

    def reference():
        return resolve({"class_id": 3, "num_images": 6, "seed": 12345, **params}, served, limits)

    alone = await scheduler.submit(reference())
    rng = np.random.default_rng(1)
    others = [resolve({"class_id": int(rng.integers(served.spec.num_classes)), "num_images": int(rng.integers(1, 9)),
                       "group_policy": "shared" if i % 2 else "isolated",
                       **{k: v for k, v in params.items() if k != "group_policy"}}, served, limits)
              for i in range(traffic)]
    mixed = others[:traffic // 2] + [reference() for _ in range(copies)] + others[traffic // 2:]
    results = await asyncio.gather(*(scheduler.submit(r) for r in mixed))
    return all(r.pngs == alone.pngs for r in results[traffic // 2: traffic // 2 + copies])


def run_levels(config: ServeConfig, scheduling: str, mixes: list[str], params: dict, num_images: list[int],
               concurrencies: list[int], rates: list[float], duration_s: float, peak: dict, seed: int,
               timeout_s: float) -> list[dict]:
    scheduler = build_scheduler(dataclasses.replace(config, naive=scheduling == "naive")).start()
    served = scheduler.wait_ready()
    rows = []
    try:
        if scheduling == "group" and params["group_policy"] == "isolated":
            repeatable = asyncio.run(repeatability(scheduler, params))
            print(f"isolated results repeatable under mixed concurrent traffic: {repeatable}", flush=True)
            peak["isolated_repeatable_under_load"] = repeatable
        for mix in mixes:
            workload = Workload(served.spec.num_classes, mix, num_images, seed, params)
            levels = [("closed", c) for c in concurrencies] + [("open", r) for r in rates]
            for mode, level in levels:
                fill_before = histogram_totals(scheduler.metrics.group_fill)
                batch_before = histogram_totals(scheduler.metrics.batch_groups)
                model_before, busy_before = scheduler.model_seconds, scheduler.busy_seconds
                run = asyncio.run(drive(scheduler, mode, level, workload, duration_s, seed, timeout_s))
                fill_sum, fill_count = (a - b for a, b in zip(histogram_totals(scheduler.metrics.group_fill),
                                                               fill_before, strict=True))
                batch_sum, batch_count = (a - b for a, b in zip(histogram_totals(scheduler.metrics.batch_groups),
                                                                 batch_before, strict=True))
                model = scheduler.model_seconds - model_before
                busy = scheduler.busy_seconds - busy_before
                summary = run.summary()
                row = {"scheduling": scheduling, "mix": mix, **summary,
                       "peak_fraction": summary["images_per_s"] / peak["peak_images_per_s"],
                       "group_fill": fill_sum / fill_count if fill_count else math.nan,
                       "batch_groups": batch_sum / batch_count if batch_count else math.nan,
                       "overhead": (busy - model) / model if model else math.nan}
                rows.append(row)
                print(format_table([row], COLUMNS).splitlines()[-1], flush=True)
    finally:
        scheduler.close()
    return rows


def goals(rows: list[dict], peak: dict, half_rate: float) -> dict:
    group = [r for r in rows if r["scheduling"] == "group"]
    saturation = max(r["images_per_s"] for r in group)
    half = [r for r in group if r["mode"] == "open" and math.isclose(r["level"], half_rate)]
    half_p99 = max((r["latency_p99_s"] for r in half), default=math.nan)
    overhead = max(r["overhead"] for r in group if not math.isnan(r["overhead"]))
    return {
        "saturation_images_per_s": saturation,
        "saturation_fraction_of_peak": saturation / peak["peak_images_per_s"],
        "saturation_goal_met": saturation >= 0.9 * peak["peak_images_per_s"],
        "half_load_p99_s": half_p99,
        "half_load_p99_over_single_group": half_p99 / peak["single_group_latency_s"],
        "half_load_goal_met": half_p99 <= 2 * peak["single_group_latency_s"],
        "max_overhead_fraction_of_model_time": overhead,
        "overhead_goal_met": overhead <= 0.05,
        "isolated_repeatable_under_load": peak.get("isolated_repeatable_under_load"),
    }


def plot(rows: list[dict], peak: dict, path: Path) -> None:
    figure, (throughput, latency) = new_figure(1, 2, figsize=(11, 4))
    for (scheduling, mix) in dict.fromkeys((r["scheduling"], r["mix"]) for r in rows):
        series = sorted((r for r in rows if r["scheduling"] == scheduling and r["mix"] == mix
                         and r["mode"] == "open"), key=lambda r: r["level"])
        rates = [r["level"] for r in series]
        style = "-o" if scheduling == "group" else "--s"
        throughput.plot(rates, [r["images_per_s"] for r in series], style, label=f"{scheduling}, {mix}")
        latency.plot(rates, [r["latency_p99_s"] for r in series], style, label=f"{scheduling}, {mix}")
    throughput.axhline(peak["peak_images_per_s"], color="grey", linestyle=":", label="runtime peak")
    latency.axhline(2 * peak["single_group_latency_s"], color="grey", linestyle=":", label="2x single group")
    throughput.set(xlabel="offered requests/s (Poisson)", ylabel="images/s", title="throughput")
    latency.set(xlabel="offered requests/s (Poisson)", ylabel="p99 latency (s)", title="p99 latency", yscale="log")
    throughput.legend(fontsize=7)
    latency.legend(fontsize=7)
    save_figure(figure, path)


def run(checkpoint: str, runtime: str, out: str, invocation: str, duration_s: float, concurrencies: list[int],
        rate_fractions: list[float], mixes: list[str], num_images: list[int], steps: int | None,
        group_size: int | None, max_batch_groups: int, batch_wait_ms: float, policy: str, device: str | None,
        cache_dir: str | None, seed: int, timeout_s: float = 10.0, repeats: int = 5) -> dict:
    spec = check_checkpoint(checkpoint)
    config = ServeConfig(checkpoint=str(Path(checkpoint).resolve()), runtime=runtime, device=device,
                         max_images=max(64, max(num_images)), max_batch_groups=max_batch_groups,
                         batch_wait_ms=batch_wait_ms, cache_dir=cache_dir)
    group_size = group_size or default_group_size(checkpoint, spec)
    steps = steps or spec.default_steps
    params = {"group_size": group_size, "steps": steps, "group_policy": policy}
    peak = measure_peak(config, group_size, steps, repeats)
    print(f"runtime peak {peak['peak_images_per_s']:.1f} images/s ({peak['max_groups']} groups of {group_size}, "
          f"{steps} steps); single group {peak['single_group_latency_s'] * 1000:.1f} ms", flush=True)
    peak_request_rate = peak["peak_images_per_s"] / float(np.mean(num_images))
    rates = [round(f * peak_request_rate, 3) for f in rate_fractions]
    rows = []
    for scheduling in SCHEDULINGS:
        rows += run_levels(config, scheduling, mixes, params, num_images, concurrencies, rates, duration_s, peak,
                           seed, timeout_s)
    half_rate = rates[min(range(len(rates)), key=lambda i: abs(rate_fractions[i] - 0.5))]
    summary = goals(rows, peak, half_rate)
    settings = {"checkpoint": checkpoint, "model_version": spec.model_version, "kind": spec.kind,
                "runtime": runtime, "device": device or "cpu", "group_size": group_size, "steps": steps,
                "policy": policy, "num_images": num_images, "mixes": mixes, "duration_s": duration_s,
                "concurrencies": concurrencies, "rate_fractions": rate_fractions, "rates": rates,
                "max_batch_groups": max_batch_groups, "batch_wait_ms": batch_wait_ms, "request_timeout_s": timeout_s,
                "peak": peak, "goals": summary}
    out_dir = Path(out)
    write_report(out_dir / "serve.json", "serve", invocation, json_ready(rows), json_ready(settings))
    table = format_table(rows, COLUMNS)
    lines = [f"# groupdiff bench serve\n\n`{invocation}`\n",
             f"Model {spec.model_version} ({spec.kind}), runtime {runtime}, group size {group_size}, {steps} steps, "
             f"policy {policy}, images per request {num_images}.\n",
             f"Runtime peak: {peak['peak_images_per_s']:.1f} images/s ({peak['max_groups']} groups per call); "
             f"single group: {peak['single_group_latency_s'] * 1000:.1f} ms.\n",
             "Goals: " + ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}"
                                   for k, v in summary.items()) + "\n",
             "```\n" + table + "\n```\n", "![throughput and p99 vs offered rate](serve.png)\n"]
    (out_dir / "serve.md").write_text("\n".join(lines))
    plot(rows, peak, out_dir / "serve.png")
    print(table)
    print("goals:", summary)
    return summary
