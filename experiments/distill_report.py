"""Tables of `groupdiff bench distill`: per-model summaries over evaluation seeds and the paired
group-vs-single differences.

A "pair" is a group model and its single-image counterpart drawn from the same noise: the teacher in
groups against the teacher with every image alone, and the group student against the size-1 student at
each step count. Differences are taken seed by seed (same noise, so most of the sampling noise cancels)
and the sign is called consistent only when every seed agrees — the test the issue's "the group student
better than the size-1 student" needs before it can be claimed.
"""

from __future__ import annotations

import math
import statistics

METRICS = ["fid", "fid_vs_teacher", "fd_classifier", "accuracy", "diversity_ratio"]
LOWER_IS_BETTER = {"fid": True, "fd_classifier": True, "accuracy": False}


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per model, in first-seen order: mean, min and max of each metric over its seeds; the
    timing fields (measured once per model) as they are."""
    models: dict[str, list[dict]] = {}
    for row in rows:
        models.setdefault(row["model"], []).append(row)
    summary = []
    for members in models.values():
        entry = {key: members[0][key] for key in ("model", "steps", "sampler", "forwards_per_image", "s_per_group",
                                                   "speedup")}
        entry["seeds"] = [row["seed"] for row in members]
        for metric in METRICS:
            values = [row[metric] for row in members if metric in row]
            if values:
                entry[metric] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
        summary.append(entry)
    return summary


def paired_differences(rows: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Per pair (group model, single model): per seed, group minus single for each metric, and whether
    the group model is better on every seed."""
    by_key = {(row["model"], row["seed"]): row for row in rows}
    seeds = sorted({row["seed"] for row in rows})
    out = []
    for group, single in pairs:
        entry = {"group": group, "single": single, "seeds": seeds}
        for metric, lower_is_better in LOWER_IS_BETTER.items():
            if metric not in by_key[(group, seeds[0])]:
                continue
            deltas = [by_key[(group, s)][metric] - by_key[(single, s)][metric] for s in seeds]
            gains = [-d if lower_is_better else d for d in deltas]  # > 0: the group model is better
            entry[metric] = {"deltas": deltas, "mean": statistics.fmean(deltas),
                             "group_better_on_every_seed": all(g > 0 for g in gains),
                             "group_worse_on_every_seed": all(g < 0 for g in gains)}
        out.append(entry)
    return out


def markdown_tables(summary: list[dict], paired: list[dict], num_samples: int, fid_samples: int) -> str:
    """The model table (``mean (min–max)`` over seeds when there are several), then the paired table."""
    several = len(summary[0]["seeds"]) > 1

    def cell(entry: dict, metric: str, digits: int) -> str:
        value = entry.get(metric)
        if value is None or math.isnan(value["mean"]):
            return "–"
        text = f"{value['mean']:.{digits}f}"
        return f"{text} ({value['min']:.{digits}f}–{value['max']:.{digits}f})" if several else text

    head = ["model", "forwards/image", "s/group (CPU)", "speed-up", f"FID (N={fid_samples})", "FID/teacher",
            f"fd_classifier (N={num_samples})", "accuracy", "diversity ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for entry in summary:
        cells = [entry["model"], entry["forwards_per_image"], f"{entry['s_per_group']:.4f}",
                 f"{entry['speedup']:.1f}×", cell(entry, "fid", 1), cell(entry, "fid_vs_teacher", 2),
                 cell(entry, "fd_classifier", 2), cell(entry, "accuracy", 3), cell(entry, "diversity_ratio", 3)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    if several:
        lines.insert(0, f"Mean (min–max) over evaluation seeds {summary[0]['seeds']}.\n")
    if paired:
        lines += ["", "Group minus single, seed by seed on the same noise (✓ the group model better on every seed, "
                  "✗ worse on every seed):", "",
                  "| group model | single model | ΔFID | Δfd_classifier | Δaccuracy |", "|" + " --- |" * 5]
        for entry in paired:
            lines.append(f"| {entry['group']} | {entry['single']} | " + " | ".join(
                _delta_cell(entry.get(metric)) for metric in LOWER_IS_BETTER) + " |")
    return "\n".join(lines)


def _delta_cell(delta: dict | None) -> str:
    if delta is None:
        return "–"
    mark = " ✓" if delta["group_better_on_every_seed"] else " ✗" if delta["group_worse_on_every_seed"] else ""
    return " / ".join(f"{d:+.3g}" for d in delta["deltas"]) + mark
