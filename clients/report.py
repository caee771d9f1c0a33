"""The load test's report: ``loadtest.json`` (environment, settings and one summary row per level, with what the
server's /metrics said about the level: the share of images in full groups and, for a text model, the prompt
cache's hit rate),
``requests.jsonl`` (every request), ``report.md`` (the table and the plots) and two figures:
``latency_cdf.png`` (one curve per level) and ``throughput.png`` (images/s and p99 latency against
the offered load)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .loadgen import LoadRun
from .reporting import format_table, json_ready, new_figure, save_figure, write_report

COLUMNS = ["level", "offered_rate", "requests", "ok", "rejected", "deadline", "error", "images_per_s",
           "requests_per_s", "latency_p50_s", "latency_p95_s", "latency_p99_s", "full_group_share", "host_load_1m"]
PROMPT_COLUMNS = ["distinct_prompts", "cache_hit_rate", "cache_evictions"]  # a text model's levels
SERVER_FIGURES = ("full_group_share", "group_members", "cache_hit_rate", "cache_lookups", "cache_evictions")


def load_axis(mode: str) -> str:
    return "offered rate (requests/s)" if mode == "open" else "concurrency (closed-loop users)"


def plot_latency_cdf(runs: list[LoadRun], path: Path) -> Path:
    figure, axis = new_figure(figsize=(6, 4))
    for run in runs:
        latencies = np.sort([r.latency_s for r in run.records if r.outcome == "ok"])
        if len(latencies):
            label = f"{run.level:g} req/s" if run.mode == "open" else f"{run.level:g} users"
            axis.step(latencies, np.arange(1, len(latencies) + 1) / len(latencies), where="post", label=label)
    axis.set_xscale("log")  # overloaded levels reach seconds while the others stay near the service time
    axis.set_xlabel("latency of successful requests (s, log scale)")
    axis.set_ylabel("fraction of requests")
    axis.set_ylim(0, 1.01)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def plot_throughput(runs: list[LoadRun], path: Path) -> Path:
    summaries = [run.summary() for run in runs]
    levels = [s["level"] for s in summaries]
    figure, (left, right) = new_figure(1, 2, figsize=(10, 4))
    left.plot(levels, [s["images_per_s"] for s in summaries], "o-", label="images/s")
    left.plot(levels, [s["requests_per_s"] for s in summaries], "s--", label="successful requests/s")
    if runs and runs[0].mode == "open":
        left.plot(levels, levels, ":", color="grey", label="offered requests/s")
    left.set_ylabel("throughput (per s)")
    right.plot(levels, [s["latency_p99_s"] for s in summaries], "o-", color="tab:red", label="p99")
    right.plot(levels, [s["latency_p50_s"] for s in summaries], "s--", color="tab:orange", label="p50")
    right.set_yscale("log")
    right.set_ylabel("latency (s, log scale)")
    for axis in (left, right):
        axis.set_xlabel(load_axis(runs[0].mode if runs else "open"))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save_figure(figure, path)


def markdown(report: dict[str, Any], table: str) -> str:
    settings = report["settings"]
    machine = report["machine"]
    lines = [
        "# Load test", "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {machine['cpu']} ({machine['cpu_count']} CPUs), GPU: {machine['gpu'] or 'none'}",
        f"- target: {settings['target']} ({settings['protocol']}), model: {settings.get('model_version') or '?'}",
        f"- mode: {settings['mode']} loop, levels {settings['levels']}, bound per level: "
        + (f"{settings['duration_s']:g} s" if settings["duration_s"] else f"{settings['requests']} requests"),
        "- workload: "
        + (f"prompts from the {settings['prompt_source']} ({settings['prompt_count']}), Zipf exponent "
           f"{settings['zipf']:g} over their order" if settings.get("prompt_source") else f"mix {settings['mix']}")
        + f", images per request {settings['num_images']}, "
        f"request fields {settings['params'] or 'server defaults'}, seed {settings['seed']}, "
        f"warm-up {settings['warmup']} requests (not counted)",
        "",
        "Latency counts from the scheduled arrival (open loop) or the send (closed loop) to the answer; "
        "throughput counts successful requests over the level's wall time; host_load_1m is the machine's "
        "1-minute load average at the end of the level (client and server share the machine). From the server's "
        "/metrics, read before and after each level: full_group_share is the share of images (real group "
        "members) started in full groups, cache_hit_rate the prompt cache's hits over its lookups (a text model; "
        "empty where the metrics could not be read).",
        "", "```", table, "```", "",
        "![latency CDF](latency_cdf.png)", "",
        "![throughput and latency against load](throughput.png)", "",
    ]
    return "\n".join(lines)


def write_loadtest_report(out: str | os.PathLike, runs: list[LoadRun], command: str,
                          settings: dict[str, Any]) -> dict[str, Path]:
    """Write every file of the report into ``out``; returns their paths by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # host_load_1m: the machine's 1-minute load average when the level ended, where the caller recorded it
    # server figures: from /metrics around the level, where the caller could read them (else null)
    rows = [json_ready({**run.summary(), "host_load_1m": run.settings.get("host_load_1m"),
                        **{key: run.settings.get("server", {}).get(key) for key in SERVER_FIGURES}}) for run in runs]
    json_path = write_report(out / "loadtest.json", "loadtest", command, rows, json_ready(settings))
    with open(out / "requests.jsonl", "w") as requests:
        for run in runs:
            for record in run.records:
                requests.write(json.dumps(json_ready({"mode": run.mode, "level": run.level, **asdict(record)})) + "\n")
    columns = COLUMNS + (PROMPT_COLUMNS if settings.get("condition") == "text" else [])
    table_rows = [{c: (math.nan if row[c] is None else row[c]) for c in columns} for row in rows]
    table = format_table(table_rows, columns)
    report = json.loads(json_path.read_text())
    paths = {"json": json_path, "requests": out / "requests.jsonl",
             "cdf": plot_latency_cdf(runs, out / "latency_cdf.png"),
             "throughput": plot_throughput(runs, out / "throughput.png")}
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text(markdown(report, table))
    return paths
