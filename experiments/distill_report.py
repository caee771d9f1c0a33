"""Tables of `groupdiff bench distill`: per-model summaries over evaluation seeds and the paired
group-vs-single differences.

A "pair" is a group model and its single-image counterpart drawn from the same noise: the teacher in
groups against the teacher with every image alone, and the group student against the size-1 student at
each step count. Differences are taken seed by seed (same noise, so most of the sampling noise cancels)
and summarized by `experiments.paired` (mean ± sample std of the differences, their range, n and an exact
sign test); the sign is called consistent only when every seed agrees — the test the issue's "the group
student better than the size-1 student" needs before it can be claimed. The seeds here are *evaluation*
seeds: each model is one training run, so the spread is the sampling noise's, not the training's.

``python -m groupdiff.experiments.distill_report DIR...`` rewrites each DIR's table.md from its results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from .paired import Paired, paired

METRICS = ["fid", "fid_vs_teacher", "fd_classifier", "accuracy", "diversity_ratio"]
LOWER_IS_BETTER = {"fid": True, "fd_classifier": True, "accuracy": False}
DIGITS = {"fid": 2, "fd_classifier": 2, "accuracy": 3}  # of the paired cells


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
    """Per pair (group model, single model) and metric: group minus single seed by seed (``deltas``), the
    `paired` summary of them (mean, std, low, high, n, sign test, exceeds_spread) and whether the group
    model is better (worse) on every seed."""
    by_key = {(row["model"], row["seed"]): row for row in rows}
    seeds = sorted({row["seed"] for row in rows})
    out = []
    for group, single in pairs:
        entry = {"group": group, "single": single, "seeds": seeds}
        for metric, lower_is_better in LOWER_IS_BETTER.items():
            if metric not in by_key[(group, seeds[0])]:
                continue
            defined = [s for s in seeds if _defined(by_key[(group, s)].get(metric))
                       and _defined(by_key[(single, s)].get(metric))]  # a NaN score drops its seed, not the run
            if not defined:
                continue
            summary = paired({s: by_key[(group, s)][metric] for s in defined},
                             {s: by_key[(single, s)][metric] for s in defined})
            deltas = list(summary.differences)
            gains = [-d if lower_is_better else d for d in deltas]  # > 0: the group model is better
            entry[metric] = {"deltas": deltas, **summary.as_dict(),
                             "group_better_on_every_seed": all(g > 0 for g in gains),
                             "group_worse_on_every_seed": all(g < 0 for g in gains)}
            del entry[metric]["differences"]  # = deltas
        out.append(entry)
    return out


def _defined(value) -> bool:
    return value is not None and not math.isnan(value)


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
        seeds = paired[0]["seeds"]
        lines += ["", f"Group minus single, paired by evaluation seed {seeds} on the same noise (one training run "
                  "per model): mean ± sample std of the per-seed differences (range; n, how many seeds point the "
                  "mean's way, exact two-sided sign test; exceeds spread: |mean| > std). ✓ the group model "
                  "better on every seed, ✗ worse on every seed.", "",
                  "| group model | single model | ΔFID | Δfd_classifier | Δaccuracy |", "|" + " --- |" * 5]
        for entry in paired:
            lines.append(f"| {entry['group']} | {entry['single']} | " + " | ".join(
                _delta_cell(entry.get(metric), DIGITS[metric]) for metric in LOWER_IS_BETTER) + " |")
    return "\n".join(lines)


def _delta_cell(delta: dict | None, digits: int) -> str:
    if delta is None:
        return "–"
    mark = " ✓" if delta["group_better_on_every_seed"] else " ✗" if delta["group_worse_on_every_seed"] else ""
    return Paired(tuple(delta["deltas"])).describe(digits, show_range=True, verdict=True) + mark


def rewrite_table(folder: Path) -> bool:
    """Rewrite ``folder/table.md`` from ``folder/results.json`` with the current tables, keeping any text
    written under the generated tables by hand (everything after the last table row). False, and nothing
    written, for a results.json from before the bench recorded seeds per row (one evaluation seed, no pairs)."""
    report = json.loads((folder / "results.json").read_text())
    rows, settings = report["rows"], report["settings"]
    if any("seed" not in row for row in rows):
        return False
    pairs = [(entry["group"], entry["single"]) for entry in report.get("paired", [])]
    text = markdown_tables(summarize(rows), paired_differences(rows, pairs), settings["num_samples"],
                           settings["fid_samples"]) + "\n"
    table = folder / "table.md"
    if table.is_file():
        text += hand_written_tail(table.read_text())
    table.write_text(text)
    return True


def hand_written_tail(text: str) -> str:
    """What follows the last markdown table row of a generated table.md (a note added by hand), or ''."""
    lines = text.splitlines(keepends=True)
    last = max((i for i, line in enumerate(lines) if line.startswith("|")), default=len(lines) - 1)
    return "".join(lines[last + 1:])


def merged_pairs(folders: list[Path], runs: list[tuple[str, str]] | None = None) -> list[dict]:
    """Group − single paired over the evaluation seeds of several bench runs of the same models (seed 0
    in one folder, ``--seeds 1 2`` in another). Rows are matched by checkpoint, steps, rule and forward
    group size (their labels differ between runs), a results.json without per-row seeds by its settings'
    seed. Pairs as the bench makes them: a model in groups against the same checkpoint alone, and every
    group student against every size-1 student at the same steps and rule; or, with ``runs`` (pairs of
    run folder names, ``runs/<name>/checkpoints/step-*``), the first run's rows against the second's at the
    same steps and rule. Each pair on the seeds both have."""
    rows: dict[tuple, dict[int, dict]] = {}
    for folder in folders:
        report = json.loads((folder / "results.json").read_text())
        for row in report["rows"]:
            key = (row["checkpoint"], row["steps"], row["sampler"], row["forward_group_size"])
            rows.setdefault(key, {}).setdefault(row.get("seed", report["settings"].get("seed")), row)
    singles = [key for key in rows if key[3] == 1]
    if runs:
        def run_of(key: tuple) -> str:
            return Path(key[0]).parent.parent.name

        chosen = [(a, b) for first, second in runs for a in rows for b in rows
                  if run_of(a) == first and run_of(b) == second and a[1:3] == b[1:3]]
    else:
        chosen = [(group, single) for group in rows if group[3] > 1
                  for single in ([key for key in singles if key[0] == group[0]]
                                 or [key for key in singles if key[1:3] == group[1:3]])]
    out = []
    for group, single in chosen:
        seeds = sorted(rows[group].keys() & rows[single].keys())
        if not seeds:
            continue
        labels = [rows[key][seeds[0]]["model"] for key in (group, single)]
        if runs:  # two runs of one kind carry the same label: name the runs
            labels = [f"{label} ({Path(key[0]).parent.parent.name})" for label, key in zip(labels, (group, single),
                                                                                        strict=True)]
        entry = {"group": labels[0], "single": labels[1], "seeds": seeds}
        for metric in LOWER_IS_BETTER:
            defined = [s for s in seeds if _defined(rows[group][s].get(metric))
                       and _defined(rows[single][s].get(metric))]
            if defined:
                entry[metric] = paired({s: rows[group][s][metric] for s in defined},
                                       {s: rows[single][s][metric] for s in defined})
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groupdiff.experiments.distill_report",
                                     description="Rewrite table.md from results.json in each folder, or with "
                                     "--merge print the paired differences over all the folders' seeds.")
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding a distill bench results.json")
    parser.add_argument("--merge", action="store_true",
                        help="pair the same models across the folders' evaluation seeds; print, write nothing")
    parser.add_argument("--runs", nargs=2, action="append", metavar=("FIRST", "SECOND"),
                        help="with --merge: pair these two run folders' rows (runs/<name>/...) instead, first "
                        "minus second; repeatable")
    args = parser.parse_args(argv)
    if args.merge:
        print("| group model | single model | seeds | ΔFID | Δfd_classifier | Δaccuracy |\n" + "|" + " --- |" * 6)
        for entry in merged_pairs(args.folders, [tuple(pair) for pair in args.runs or []]):
            cells = [entry[m].describe(DIGITS[m], show_range=True, verdict=True) if m in entry else "–"
                     for m in LOWER_IS_BETTER]
            print(f"| {entry['group']} | {entry['single']} | {entry['seeds']} | " + " | ".join(cells) + " |")
        return 0
    for folder in args.folders:
        done = rewrite_table(folder)
        print(f"{folder / 'table.md'}: {'rewritten' if done else 'left as it is (rows without seeds)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
