"""Group student against size-1 student over *training* seeds: one `groupdiff bench distill` folder per
training seed, each pairing that seed's group student with that seed's size-1 student on the same noise.

`groupdiff bench distill` pairs students over evaluation seeds, which measures sampling noise only; a
second training run can move a student by more. This reads one bench folder per training seed (in seed
order), takes every metric of the group student and of the size-1 student at each step count, and pairs
them by training seed with `paired` (mean ± spread of the differences, n, sign test). The teacher's rows
(in groups and, with ``--teacher-alone``, every image alone) are kept for the FID ratios.

    python -m groupdiff.experiments.distill_training_seeds experiments/results/distill-quick/train-seed-0 \\
        experiments/results/distill-quick/train-seed-1 --out experiments/results/distill-quick/training-seeds
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

from groupdiff.clients.reporting import write_report

from .paired import paired

METRICS = ("fid", "fd_classifier", "accuracy", "diversity_ratio", "fid_vs_teacher")
LOWER_IS_BETTER = {"fid": True, "fd_classifier": True, "accuracy": False, "diversity_ratio": False,
                   "fid_vs_teacher": True}
_STUDENT = re.compile(r"^student N=(?P<n>\d+) (?P<steps>\d+)-step$")


def read_bench(folder: Path) -> dict:
    path = folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give folders written by groupdiff bench distill")
    report = json.loads(path.read_text())
    if report.get("benchmark") not in (None, "distill"):
        raise ValueError(f"{path} is a {report.get('benchmark')!r} report, not a distill bench")
    return report


def student_rows(report: dict) -> dict[tuple[str, int], dict]:
    """``("group" | "single", steps) -> row``, from a bench run over one evaluation seed."""
    seeds = sorted({row["seed"] for row in report["rows"]})
    if len(seeds) != 1:
        raise ValueError(f"each folder must hold one evaluation seed (the same in all), found {seeds}")
    found = {}
    for row in report["rows"]:
        match = _STUDENT.match(row["model"])
        if match:
            kind = "single" if match["n"] == "1" else "group"
            found[(kind, int(match["steps"]))] = row
    return found


def teacher_rows(report: dict) -> dict[str, dict]:
    return {("alone" if row["model"].startswith("teacher N=1") else "groups"): row
            for row in report["rows"] if row["model"].startswith("teacher")}


def compare(reports: list[dict], training_seeds: list[int]) -> tuple[list[dict], list[dict]]:
    """(paired rows per step count and metric, per-seed value rows)."""
    per_seed = [student_rows(report) for report in reports]
    steps = sorted({s for rows in per_seed for kind, s in rows if kind == "group"})
    comparisons, values = [], []
    for k in steps:
        for metric in METRICS:
            group, single = {}, {}
            for seed, rows in zip(training_seeds, per_seed, strict=True):
                if ("group", k) not in rows or ("single", k) not in rows:
                    raise ValueError(f"training seed {seed}: no group or size-1 student row at {k} steps")
                group[seed], single[seed] = rows[("group", k)][metric], rows[("single", k)][metric]
            result = paired(group, single)
            comparisons.append({"steps": k, "metric": metric, "group": group, "single": single,
                                "lower_is_better": LOWER_IS_BETTER[metric], "difference": result.describe(),
                                **result.as_dict()})
    for seed, report in zip(training_seeds, reports, strict=True):
        for row in report["rows"]:
            values.append({"training_seed": seed, **{key: row.get(key) for key in
                                                      ("model", "steps", "checkpoint", "s_per_group", *METRICS)}})
    return comparisons, values


def markdown(comparisons: list[dict], teachers: dict[str, dict], fid_samples: int, seeds: list[int]) -> str:
    lines = [f"FID on {fid_samples} images; training seeds {', '.join(map(str, seeds))}; one evaluation seed each, "
             "the same noise for both students of a seed. Difference: group student − size-1 student, paired by "
             "training seed ([paired.py](../../paired.py)).", ""]
    for kind, row in teachers.items():
        lines.append(f"- teacher ({kind}): FID {row['fid']:.2f}, fd_classifier {row['fd_classifier']:.2f}, "
                     f"accuracy {row['accuracy']:.3f}")
    lines += ["", "| steps | metric | group (per training seed) | size-1 (per training seed) | difference |",
              "| --- | --- | --- | --- | --- |"]
    for row in comparisons:
        cells = [" / ".join(f"{row[side][s]:.3f}" for s in sorted(row[side])) for side in ("group", "single")]
        better = "lower is better" if row["lower_is_better"] else "higher is better"
        lines.append(f"| {row['steps']} | {row['metric']} ({better}) | {cells[0]} | {cells[1]} | {row['difference']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groupdiff.experiments.distill_training_seeds",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="one bench distill folder per training seed")
    parser.add_argument("--training-seeds", type=int, nargs="+", help="the folders' training seeds (default 0..)")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and table.md")
    args = parser.parse_args(argv)
    seeds = args.training_seeds or list(range(len(args.folders)))
    if len(seeds) != len(args.folders):
        parser.error(f"{len(args.folders)} folders but {len(seeds)} training seeds")
    reports = [read_bench(folder) for folder in args.folders]
    comparisons, values = compare(reports, seeds)
    teachers = teacher_rows(reports[0])
    fid_samples = reports[0]["settings"]["fid_samples"]
    command = "python -m groupdiff.experiments.distill_training_seeds " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    settings = {"folders": [str(f) for f in args.folders], "training_seeds": seeds,
                "bench_settings": [r["settings"] for r in reports], "bench_commands": [r["command"] for r in reports]}
    extra = {"seeds": {"training": seeds, "evaluation": reports[0]["settings"]["seeds"]},
             "sample_count": {"fid": fid_samples, "other_metrics": reports[0]["settings"]["num_samples"]},
             "comparisons": comparisons}
    write_report(args.out / "results.json", "distill_training_seeds", command, values, settings, extra)
    table = markdown(comparisons, teachers, fid_samples, seeds)
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
