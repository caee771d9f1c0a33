"""``groupdiff bench serve``: the serving engine under load, against its runtime's peak and a stock
diffusers + BentoML peer at equal work. Every server runs in its own process; load comes from this one.

1. **Runtime curve.** Direct full-group calls (`pipeline.generate_direct`, decode included, no server) at
   1, 2, 4, ... groups per call: images/s by call size, median and spread of ``repeats`` runs. The
   runtime's peak is the best median. The peer's pipeline gets the same treatment.
   The engine alone (in this process, no HTTP) with a full queue shows how much of the peak the
   scheduler and executor keep before any frontend cost.
2. **Closed loop.** `groupdiff serve` (REST, no latency budget) and the peer (`bench/serve_peer.py`)
   both up; for each repeat and each user count, ours then the peer's, so slow drifts of a shared
   machine hit both alike. Images/s over the runtime's peak, p50/p99 latency.
3. **Capacity.** The closed-loop level with the most images/s (median over repeats), and its p99.
4. **Open loop (overload).** `groupdiff serve --latency-budget B` (B: the p50 at capacity unless given: a
   request may wait behind others as long as a typical request takes at capacity),
   Poisson arrivals at 1x, 2x and 3x the capacity's request rate. Goodput (images/s of answered
   requests), p50/p99 of accepted requests, counts per status, the server's own count of finished
   requests (each must be answered exactly once) and its resident memory before and after.

Goals (issue 28): goodput at 3x >= 90 % of capacity; p99 of accepted at 3x <= 2x the p99 at
capacity; every request answered once; memory flat; closed loop >= 90 % of the runtime's peak at
16 and 32 users and >= 60 % at 4; >= 1.5x the peer's images/s at its best level.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from groupdiff.bench import serve_peer, server_process
from groupdiff.clients.loadgen import Workload, closed_loop, open_loop
from groupdiff.clients.reporting import format_table, json_ready, new_figure, save_figure, write_report
from groupdiff.clients.rest import condition
from groupdiff.serving.serve_config import check_checkpoint

ROW_COLUMNS = ["server", "mode", "level", "repeat", "offered_rate", "requests", "ok", "rejected", "deadline", "error",
               "images_per_s", "peak_fraction", "latency_p50_s", "latency_p99_s"]
CLOSED_COLUMNS = ["server", "level", "repeats", "images_per_s", "images_per_s_min", "images_per_s_max", "peak_fraction",
                  "latency_p50_s", "latency_p99_s", "ok", "rejected", "deadline", "error"]
OPEN_COLUMNS = ["overload", "level", "requests", "ok", "rejected", "deadline", "error", "server_counted",
                "images_per_s", "latency_p50_s", "latency_p99_s", "rss_mb_before", "rss_mb_after"]
READY_TIMEOUT_S = 300.0  # a first start exports the ONNX model into the engine cache


@dataclass(frozen=True)
class Settings:
    checkpoint: str
    runtime: str
    device: str | None
    concurrencies: tuple[int, ...]
    overload_factors: tuple[float, ...]
    duration_s: float
    repeats: int
    num_images: int
    latency_budget_s: float | None
    seed: int
    request_timeout_s: float
    peer: bool
    serve_args: tuple[str, ...] = ()  # more `groupdiff serve` options, e.g. ("--cuda-graphs",)


# ---- 1. runtime curves --------------------------------------------------------------------------------------------

def runtime_curve(settings: Settings, group_size: int, steps: int) -> list[dict]:
    """Images/s of direct calls by groups per call, on one dedicated thread (as the server runs them)."""

    def measure() -> list[dict]:
        from groupdiff.serving.pipeline import generate_direct
        from groupdiff.serving.runtimes import load_decoder, load_runtime

        runtime = load_runtime(settings.runtime, settings.checkpoint, device=settings.device)
        decoder = load_decoder(settings.checkpoint, runtime="onnxruntime" if settings.runtime == "onnxruntime"
                               else "torch", device=settings.device)
        classes = runtime.spec.num_classes
        rows = []
        groups = 1
        while groups <= runtime.max_groups:
            def call(g: int = groups) -> float:
                began = time.perf_counter()
                generate_direct(runtime, decoder, [i % classes for i in range(g)], list(range(g * group_size)),
                                group_size, steps, runtime.spec.guidance_scale)
                return time.perf_counter() - began

            call()  # the first call of a shape is slower
            rates = [groups * group_size / call() for _ in range(settings.repeats)]
            rows.append({"server": "groupdiff", "images_per_call": groups * group_size, "repeats": settings.repeats,
                         "images_per_s_median": statistics.median(rates), "images_per_s_min": min(rates),
                         "images_per_s_max": max(rates)})
            groups *= 2
        runtime.close()
        return rows

    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(measure).result()


def engine_full_queue(settings: Settings, params: dict, num_classes: int, peak: float) -> dict:
    """The engine alone, in this process, no HTTP: a full queue of requests submitted at once (PNGs
    encoded). Set beside the served closed loop, it separates the engine's own efficiency from what the
    HTTP frontend and the load generator cost on the same cores."""
    from groupdiff.serving.requests import resolve
    from groupdiff.serving.serve_config import ServeConfig, build_engine

    count = max(16, math.ceil(4 * peak / settings.num_images))  # about 4 s of work
    engine = build_engine(ServeConfig(checkpoint=settings.checkpoint, runtime=settings.runtime, device=settings.device,
                                      max_queue=count * settings.num_images, max_images=settings.num_images)).start()
    engine.wait_ready(READY_TIMEOUT_S)
    rates = []
    try:
        for repeat in range(settings.repeats):
            requests = [resolve({"class_id": i % num_classes, "num_images": settings.num_images, "seed": i + repeat,
                                 **params}, engine.served, engine.config.limits) for i in range(count)]
            began = time.perf_counter()
            concurrent.futures.wait([engine.submit_future(r) for r in requests])
            rates.append(count * settings.num_images / (time.perf_counter() - began))
        stats = engine.stats()  # the model thread's time outside runtime and decoder calls
    finally:
        engine.close()
    return {"requests": count, "repeats": settings.repeats, "images_per_s_median": statistics.median(rates),
            "images_per_s_min": min(rates), "images_per_s_max": max(rates),
            "peak_fraction": statistics.median(rates) / peak, "overhead_fraction": stats["overhead_fraction"]}


def peer_curve(sizes: list[int], repeats: int) -> list[dict]:
    rows = serve_peer.measure_direct_peak(sizes, repeats)
    return [{"server": "peer", "images_per_call": r["images_per_call"], "repeats": r["repeats"],
             "images_per_s_median": r["images_per_s_median"], "images_per_s_min": r["images_per_s_min"],
             "images_per_s_max": r["images_per_s_max"]} for r in rows]


# ---- servers and load -----------------------------------------------------------------------------------------------

class GroupDiffSend:
    """The load generator's ``send`` for `groupdiff serve`: one POST, the images counted (as the peer's
    send does, so both clients cost the same), 429/503 counted as rejected and 504 as a deadline.

    aiohttp rather than the SDK's httpx: it costs the shared CPU a fifth as much per request. One session
    per event loop: make it inside the loop that uses it, ``await send.aclose()`` after."""

    def __init__(self, url: str, params: dict):
        import aiohttp

        self.endpoint = f"{url}/v1/generate"
        self.params = params
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10.0),
                                             connector=aiohttp.TCPConnector(limit=0))

    async def __call__(self, request) -> int:
        body = {**condition(request.class_id, request.prompt), "num_images": request.num_images, "seed": request.seed,
                **self.params}
        async with self.session.post(self.endpoint, json=body) as response:
            if response.status != 200:
                raise ServerAnswer(response.status, await response.text())
            return len((await response.json())["images"])

    async def aclose(self) -> None:
        await self.session.close()


class ServerAnswer(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.outcome = {429: "rejected", 503: "rejected", 504: "deadline"}.get(status, "error")


def start_groupdiff(settings: Settings, folder: Path, name: str, budget_s: float | None) -> tuple:
    port = server_process.free_port()
    command = [sys.executable, "-m", "groupdiff", "serve", "--checkpoint", settings.checkpoint, "--runtime",
               settings.runtime, "--port", str(port), "--max-images", str(max(64, settings.num_images))]
    if settings.device:
        command += ["--device", settings.device]
    if budget_s is not None:
        command += ["--latency-budget", f"{budget_s:.4f}"]
    command += list(settings.serve_args)
    log = folder / f"{name}.log"
    process = server_process.start(command, log, {"BENTOML_HOME": str(folder / f"bentoml-{name}")})
    url = f"http://127.0.0.1:{port}"
    server_process.wait_ready(url, READY_TIMEOUT_S, process, log)
    return process, url


def start_peer(folder: Path) -> tuple:
    port = server_process.free_port()
    log = folder / "peer.log"
    process = serve_peer.start_peer(port, log_path=log)
    url = f"http://127.0.0.1:{port}"
    server_process.wait_ready(url, READY_TIMEOUT_S, process, log)
    return process, url


def finished_requests(url: str) -> float:
    """The server's own count of finished requests (every outcome), from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "groupdiff_requests" for sample in family.samples
               if sample.name == "groupdiff_requests_total")


def drive(make_send, mode: str, level: float, settings: Settings, num_classes: int, repeat: int,
          prompts: list[str] | None = None, zipf: float = 0.0):
    """One level of load; with ``prompts`` (a text model) they are drawn by a Zipf law of exponent ``zipf``."""
    workload = Workload(num_classes, "uniform", (settings.num_images,), settings.seed + repeat, prompts=prompts,
                        zipf=zipf)

    async def go():
        send = make_send()
        try:
            if mode == "open":
                return await open_loop(send, workload, level, duration_s=settings.duration_s,
                                       timeout_s=settings.request_timeout_s, seed=settings.seed + repeat)
            return await closed_loop(send, workload, int(level), duration_s=settings.duration_s,
                                     timeout_s=settings.request_timeout_s)
        finally:
            await send.aclose()

    return asyncio.run(go())


def row_of(server: str, run, repeat: int, peak: float) -> dict:
    summary = run.summary()
    keep = {k: summary[k] for k in ROW_COLUMNS if k in summary}
    return {"server": server, "repeat": repeat, **keep, "peak_fraction": summary["images_per_s"] / peak,
            "latency_mean_s": summary["latency_mean_s"]}


# ---- 2.-4. the load phases ------------------------------------------------------------------------------------------

def closed_phase(settings: Settings, folder: Path, params: dict, num_classes: int, peaks: dict) -> list[dict]:
    ours, ours_url = start_groupdiff(settings, folder, "closed", None)
    peer = start_peer(folder) if settings.peer else None
    rows = []
    try:
        for repeat in range(settings.repeats):
            for users in settings.concurrencies:
                run = drive(lambda: GroupDiffSend(ours_url, params), "closed", users, settings, num_classes, repeat)
                rows.append(row_of("groupdiff", run, repeat, peaks["groupdiff"]))
                print(format_table([rows[-1]], ROW_COLUMNS).splitlines()[-1], flush=True)
                if peer is not None:
                    run = drive(lambda: serve_peer.make_send(peer[1]), "closed", users, settings, num_classes, repeat)
                    rows.append(row_of("peer", run, repeat, peaks["peer"]))
                    print(format_table([rows[-1]], ROW_COLUMNS).splitlines()[-1], flush=True)
    finally:
        server_process.stop(ours)
        if peer is not None:
            server_process.stop(peer[0])
    return rows


def open_phase(settings: Settings, folder: Path, params: dict, num_classes: int, peaks: dict, capacity: dict,
               budget_s: float) -> list[dict]:
    process, url = start_groupdiff(settings, folder, "open", budget_s)
    rows = []
    try:
        # a first pass, so the measured levels start from a warm server
        drive(lambda: GroupDiffSend(url, params), "closed", 4, dataclasses.replace(settings, duration_s=2.0),
              num_classes, 0)
        for factor in settings.overload_factors:
            rate = factor * capacity["images_per_s"] / settings.num_images
            rss_before, counted_before = server_process.resident_bytes(process), finished_requests(url)
            run = drive(lambda: GroupDiffSend(url, params), "open", rate, settings, num_classes, 0)
            counted = finished_requests(url) - counted_before
            row = {**row_of("groupdiff", run, 0, peaks["groupdiff"]), "overload": factor,
                   "server_counted": counted, "rss_mb_before": rss_before / 2**20,
                   "rss_mb_after": server_process.resident_bytes(process) / 2**20}
            rows.append(row)
            print(format_table([row], ROW_COLUMNS).splitlines()[-1], flush=True)
    finally:
        server_process.stop(process)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Median (and spread) over repeats per server, mode and level."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["server"], row["mode"], row["level"]), []).append(row)
    out = []
    for (server, mode, level), members in groups.items():
        rates = [r["images_per_s"] for r in members]
        entry = {"server": server, "mode": mode, "level": level, "repeats": len(members),
                 "images_per_s": statistics.median(rates), "images_per_s_min": min(rates),
                 "images_per_s_max": max(rates),
                 "peak_fraction": statistics.median(r["peak_fraction"] for r in members),
                 "latency_p50_s": statistics.median(r["latency_p50_s"] for r in members),
                 "latency_p99_s": statistics.median(r["latency_p99_s"] for r in members)}
        for key in ("ok", "rejected", "deadline", "error", "requests", "server_counted", "rss_mb_before",
                    "rss_mb_after", "overload"):
            if key in members[0]:
                entry[key] = sum(r[key] for r in members) if key not in ("rss_mb_before", "rss_mb_after",
                                                                          "overload") else members[0][key]
        out.append(entry)
    return out


def capacity_of(summary: list[dict]) -> dict:
    closed = [s for s in summary if s["server"] == "groupdiff" and s["mode"] == "closed"]
    return max(closed, key=lambda s: s["images_per_s"])


def goals(summary: list[dict], capacity: dict) -> dict:
    def closed(server: str, users: int) -> dict | None:
        return next((s for s in summary if s["server"] == server and s["mode"] == "closed" and s["level"] == users),
                    None)

    result: dict = {"capacity_users": capacity["level"], "capacity_images_per_s": capacity["images_per_s"],
                    "capacity_p99_s": capacity["latency_p99_s"]}
    for users, floor in ((4, 0.6), (16, 0.9), (32, 0.9)):
        level = closed("groupdiff", users)
        if level is not None:
            result[f"peak_fraction_{users}_users"] = level["peak_fraction"]
            result[f"peak_fraction_{users}_users_met"] = level["peak_fraction"] >= floor
    peer = [s for s in summary if s["server"] == "peer" and s["mode"] == "closed"]
    if peer:
        best_peer = max(peer, key=lambda s: s["images_per_s"])
        result["peer_best_images_per_s"] = best_peer["images_per_s"]
        result["over_peer"] = capacity["images_per_s"] / best_peer["images_per_s"]
        result["over_peer_met"] = result["over_peer"] >= 1.5
    overload = [s for s in summary if s["mode"] == "open"]
    if overload:
        worst = max(overload, key=lambda s: s["overload"])
        result["overload_factor"] = worst["overload"]
        result["overload_goodput_fraction"] = worst["images_per_s"] / capacity["images_per_s"]
        result["overload_goodput_met"] = result["overload_goodput_fraction"] >= 0.9
        result["overload_p99_over_capacity_p99"] = worst["latency_p99_s"] / capacity["latency_p99_s"]
        result["overload_p99_met"] = result["overload_p99_over_capacity_p99"] <= 2.0
        result["answered_exactly_once"] = all(s["server_counted"] == s["requests"] and s["error"] == 0
                                              for s in overload)
        growth = max(s["rss_mb_after"] for s in overload) / min(s["rss_mb_before"] for s in overload)
        result["memory_growth"] = growth
        result["memory_flat"] = growth <= 1.1
    return result


def plot(curves: list[dict], summary: list[dict], path: Path) -> None:
    figure, (curve_axis, closed_axis, open_axis) = new_figure(1, 3, figsize=(15, 4))
    for server, style in (("groupdiff", "-o"), ("peer", "--s")):
        points = [c for c in curves if c["server"] == server]
        if points:
            curve_axis.errorbar([c["images_per_call"] for c in points], [c["images_per_s_median"] for c in points],
                                yerr=[[c["images_per_s_median"] - c["images_per_s_min"] for c in points],
                                      [c["images_per_s_max"] - c["images_per_s_median"] for c in points]],
                                fmt=style, label=server, capsize=3)
        levels = sorted((s for s in summary if s["server"] == server and s["mode"] == "closed"),
                        key=lambda s: s["level"])
        if levels:
            closed_axis.errorbar([s["level"] for s in levels], [s["images_per_s"] for s in levels],
                                 yerr=[[s["images_per_s"] - s["images_per_s_min"] for s in levels],
                                       [s["images_per_s_max"] - s["images_per_s"] for s in levels]],
                                 fmt=style, label=server, capsize=3)
    overload = sorted((s for s in summary if s["mode"] == "open"), key=lambda s: s["overload"])
    open_axis.plot([s["overload"] for s in overload], [s["images_per_s"] for s in overload], "-o", label="goodput")
    open_axis.axhline(capacity_of(summary)["images_per_s"], color="grey", linestyle=":", label="closed-loop capacity")
    curve_axis.set(xscale="log", xlabel="images per call", ylabel="images/s", title="runtime, direct calls")
    closed_axis.set(xscale="log", xlabel="closed-loop users", ylabel="images/s", title="served, closed loop")
    open_axis.set(xlabel="offered load / capacity", ylabel="images/s answered", title="open loop (Poisson)",
                  ylim=(0, None))
    for axis in (curve_axis, closed_axis, open_axis):
        axis.legend(fontsize=7)
    save_figure(figure, path)


def run(checkpoint: str, runtime: str, out: str, invocation: str, duration_s: float, concurrencies: list[int],
        overload_factors: list[float], repeats: int, num_images: int, latency_budget_s: float | None,
        device: str | None, seed: int, request_timeout_s: float, peer: bool, serve_args: tuple[str, ...] = ()) -> dict:
    spec = check_checkpoint(checkpoint)
    settings = Settings(str(Path(checkpoint).resolve()), runtime, device, tuple(concurrencies), tuple(overload_factors),
                        duration_s, repeats, num_images, latency_budget_s, seed, request_timeout_s, peer,
                        tuple(serve_args))
    group_size, steps = spec.default_group_size, spec.default_steps
    params = {"group_size": group_size, "steps": steps}
    curves = runtime_curve(settings, group_size, steps)
    if peer:
        curves += peer_curve(sorted({c["images_per_call"] for c in curves}), repeats)
    peaks = {server: max((c["images_per_s_median"] for c in curves if c["server"] == server), default=math.nan)
             for server in ("groupdiff", "peer")}
    print(format_table(curves, list(curves[0])), flush=True)
    engine = engine_full_queue(settings, params, spec.num_classes, peaks["groupdiff"])
    print(f"engine alone, full queue: {engine['images_per_s_median']:.1f} images/s "
          f"({engine['peak_fraction']:.2f} of the runtime's peak)", flush=True)
    with tempfile.TemporaryDirectory(prefix="groupdiff-bench-serve-") as tmp:
        folder = Path(tmp)
        rows = closed_phase(settings, folder, params, spec.num_classes, peaks)
        capacity = capacity_of(summarize(rows))
        budget = latency_budget_s if latency_budget_s is not None else capacity["latency_p50_s"]
        rows += open_phase(settings, folder, params, spec.num_classes, peaks, capacity, budget)
    summary = summarize(rows)
    result = {"latency_budget_s": budget, "engine_full_queue_peak_fraction": engine["peak_fraction"],
              **goals(summary, capacity)}
    report_settings = {**settings.__dict__, "model_version": spec.model_version, "kind": spec.kind,
                       "group_size": group_size, "steps": steps, "peaks_images_per_s": peaks}
    out_dir = Path(out)
    write_report(out_dir / "serve.json", "serve", invocation, json_ready(rows), json_ready(report_settings),
                 {"curves": json_ready(curves), "engine_full_queue": json_ready(engine), "summary": json_ready(summary),
                  "goals": json_ready(result)})
    table = (format_table([s for s in summary if s["mode"] == "closed"], CLOSED_COLUMNS) + "\n\n"
             + format_table([s for s in summary if s["mode"] == "open"], OPEN_COLUMNS))
    curve_table = format_table(curves, ["server", "images_per_call", "repeats", "images_per_s_median",
                                        "images_per_s_min", "images_per_s_max"])
    lines = [f"# groupdiff bench serve\n\n`{invocation}`\n",
             f"Model {spec.model_version} ({spec.kind}), runtime {runtime}, group size {group_size}, {steps} steps, "
             f"{num_images} images per request, {duration_s:g} s per level, {repeats} repeats (closed loop, "
             f"interleaved with the peer), seed {seed}. Peer: diffusers DiTPipeline behind BentoML adaptive "
             "batching at equal work (bench/serve_peer.py).\n",
             "Runtime curves (direct calls, decode included):\n\n```\n" + curve_table + "\n```\n",
             f"Engine alone in-process (no HTTP), a full queue of {engine['requests']} requests: "
             f"{engine['images_per_s_median']:.1f} images/s (median of {engine['repeats']}, "
             f"{engine['images_per_s_min']:.1f}-{engine['images_per_s_max']:.1f}), "
             f"{engine['peak_fraction']:.2f} of the runtime's peak; the model thread spent "
             f"{engine['overhead_fraction']:.1%} of its busy time outside runtime and decoder calls.\n",
             "Served, closed loop (medians and spread over repeats) and open loop (one run per level; the server "
             f"started with --latency-budget {budget:.3f}; level = offered requests/s):\n\n```\n" + table
             + "\n```\n",
             "Goals: " + ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}"
                                   for k, v in result.items()) + "\n",
             "![runtime curve, closed loop, open loop](serve.png)\n"]
    (out_dir / "serve.md").write_text("\n".join(lines))
    plot(curves, summary, out_dir / "serve.png")
    print(table)
    print("goals:", result)
    return result
