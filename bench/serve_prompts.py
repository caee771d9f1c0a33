"""``groupdiff bench serve`` with a text checkpoint: the server's throughput under a Zipf mix of prompts.

What a prompt mix changes is what the server can share: a popular prompt's encoding stays in the prompt cache,
and under the ``shared`` policy requests of one prompt meet to fill groups (different prompts never share one).
For each Zipf exponent a fresh `groupdiff serve` (REST, its own process, so every exponent starts alike) gets a
warm-up pass of the same mix, which brings its prompt cache to that mix's steady state, then closed-loop levels
(users back to back, repeated as the class benchmark's are). Per level: images/s, p50/p99 latency, the distinct
prompts sent, and from the server's /metrics read before and after it, the share of images served in full
groups and the prompt cache's hit rate.

Requests ask for ``num_images`` images (default 1, fewer than a group) with the ``shared`` policy by default: with
``isolated``, or with a group's worth per request, every group's fill is set by the request alone and the mix
could not change it.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path

import httpx

from groupdiff.bench import server_process
from groupdiff.bench.serve import GroupDiffSend, Settings, drive, start_groupdiff
from groupdiff.clients.prompts import FASHION_MNIST_PROMPTS, read_prompts
from groupdiff.clients.reporting import format_table, json_ready, serving_figures, write_report
from groupdiff.serving.serve_config import check_checkpoint

ROW_COLUMNS = ["zipf", "users", "repeat", "requests", "ok", "rejected", "deadline", "error", "distinct_prompts",
               "images_per_s", "full_group_share", "cache_hit_rate", "latency_p50_s", "latency_p99_s"]
SUMMARY_COLUMNS = ["zipf", "users", "repeats", "requests", "ok", "error", "distinct_prompts", "images_per_s",
                   "images_per_s_min", "images_per_s_max", "full_group_share", "cache_hit_rate", "cache_evictions",
                   "latency_p50_s", "latency_p99_s"]
WARMUP_S = 2.0


def metrics_text(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def exponent_runs(settings: Settings, folder: Path, params: dict, prompts: list[str], zipf: float) -> list[dict]:
    """Every level and repeat of one Zipf exponent, on a server of its own."""
    process, url = start_groupdiff(settings, folder, f"zipf-{zipf:g}", None)
    rows = []
    try:
        def make_send():
            return GroupDiffSend(url, params)

        warmup = dataclasses.replace(settings, duration_s=min(WARMUP_S, settings.duration_s))
        drive(make_send, "closed", max(settings.concurrencies), warmup, 0, settings.repeats, prompts, zipf)
        for repeat in range(settings.repeats):
            for users in settings.concurrencies:
                before = metrics_text(url)
                run = drive(make_send, "closed", users, settings, 0, repeat, prompts, zipf)
                summary = run.summary()
                row = {"zipf": zipf, "users": users, "repeat": repeat,
                       **{k: summary[k] for k in ROW_COLUMNS if k in summary},
                       **serving_figures(before, metrics_text(url))}
                rows.append(row)
                print(format_table([row], ROW_COLUMNS).splitlines()[-1], flush=True)
    finally:
        server_process.stop(process)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Medians (and the spread of images/s) over repeats per exponent and user count; counts are summed."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["zipf"], row["users"]), []).append(row)

    def median(members: list[dict], key: str) -> float | None:
        values = [m[key] for m in members if m[key] is not None]
        return statistics.median(values) if values else None

    out = []
    for (zipf, users), members in groups.items():
        rates = [m["images_per_s"] for m in members]
        out.append({"zipf": zipf, "users": users, "repeats": len(members),
                    **{k: sum(m[k] for m in members) for k in ("requests", "ok", "rejected", "deadline", "error",
                                                               "cache_evictions")},
                    "distinct_prompts": max(m["distinct_prompts"] for m in members),
                    "images_per_s": statistics.median(rates), "images_per_s_min": min(rates),
                    "images_per_s_max": max(rates),
                    **{k: median(members, k) for k in ("full_group_share", "cache_hit_rate", "latency_p50_s",
                                                        "latency_p99_s")}})
    return out


def run(checkpoint: str, runtime: str, out: str, invocation: str, duration_s: float, concurrencies: list[int],
        repeats: int, zipfs: list[float], prompts_file: str | None, num_images: int, group_policy: str,
        device: str | None, seed: int, request_timeout_s: float, serve_args: tuple[str, ...] = ()) -> list[dict]:
    spec = check_checkpoint(checkpoint)
    if spec.text_encoder is None:
        raise ValueError(f"{checkpoint} is class-conditioned: the prompt scenario needs a text checkpoint")
    prompts = read_prompts(prompts_file) if prompts_file else list(FASHION_MNIST_PROMPTS)
    settings = Settings(str(Path(checkpoint).resolve()), runtime, device, tuple(concurrencies), (), duration_s,
                        repeats, num_images, None, seed, request_timeout_s, False, tuple(serve_args))
    params = {"group_size": spec.default_group_size, "steps": spec.default_steps, "group_policy": group_policy}
    with tempfile.TemporaryDirectory(prefix="groupdiff-bench-serve-prompts-") as tmp:
        rows = [row for zipf in zipfs for row in exponent_runs(settings, Path(tmp), params, prompts, zipf)]
    summary = summarize(rows)
    source = prompts_file or "built-in Fashion-MNIST vocabulary"
    report_settings = {**settings.__dict__, "model_version": spec.model_version, "kind": spec.kind,
                       "zipf_exponents": list(zipfs), "prompt_source": source, "prompt_count": len(prompts),
                       "warmup_s": min(WARMUP_S, duration_s), **params}
    out_dir = Path(out)
    write_report(out_dir / "serve_prompts.json", "serve-prompts", invocation, json_ready(rows),
                 json_ready(report_settings), {"summary": json_ready(summary)})
    table = format_table([{k: float("nan") if v is None else v for k, v in s.items()} for s in summary],
                         SUMMARY_COLUMNS)
    (out_dir / "serve_prompts.md").write_text("\n".join([
        f"# groupdiff bench serve: a Zipf mix of prompts\n\n`{invocation}`\n",
        f"Model {spec.model_version} ({spec.kind}), runtime {runtime}, group size {params['group_size']}, "
        f"{params['steps']} steps, {num_images} images per request, policy {group_policy}; {len(prompts)} prompts "
        f"from the {source}, prompt r drawn with probability ~ r^-S; a fresh server per exponent S, warmed up with "
        f"{report_settings['warmup_s']:g} s of the same mix; closed loop, {duration_s:g} s per level, {repeats} "
        f"repeats (medians), seed {seed}.\n",
        "full_group_share: images (real group members) started in full groups; cache_hit_rate: the prompt cache's "
        "hits over lookups; both from the server's /metrics around each level.\n",
        "```\n" + table + "\n```\n"]))
    print(table)
    return summary
