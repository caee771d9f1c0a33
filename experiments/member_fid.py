"""FID (or fd_classifier) of one member per group: is a group student's gap per image, or in how alike its members are?

`groupdiff bench distill` scores FID on whole groups, so a group whose members come out alike (diversity
ratio below 1) narrows the scored set on top of whatever each image lacks. Here every set holds one
member of each group: member ``k`` of ``G`` groups, for each ``k < N``, so its images are independent
draws and the set's FID is plain FID at ``G`` images. If a group student's per-member FID matches the
size-1 student's while its whole-group FID does not, the gap is the likeness of its members; if the
per-member gap is as large, each image is worse. A size-1 student's "groups" are independent draws, so
its per-member and whole-group FIDs measure the same thing. Same noise and labels as the distill bench.

    python -m groupdiff.experiments.member_fid --student runs/distill-class-dmd-g/checkpoints/step-0000300 \\
        --baseline runs/distill-class-dmd-n1/checkpoints/step-0000300 --groups 500 --seeds 0 --out DIR
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import torch

from groupdiff.clients.reporting import format_table, write_report
from groupdiff.evaluation import EvalSettings, SampleSet, evaluate
from groupdiff.model.checkpoint import read_checkpoint_info
from groupdiff.model.images import to_uint8
from groupdiff.training.data import FASHION_MNIST_DIR

from .distill import checkpoint_decoder, distill_metadata, draw, noise_and_labels, student_contenders
from .paired import paired


def member(images, labels, group_size: int, k: int):
    """Member ``k`` of every group of group-major (G·N, ...) images: (G, ...) images and (G,) labels."""
    if not 0 <= k < group_size or len(images) % group_size:
        raise ValueError(f"member {k} of groups of {group_size} from {len(images)} images")
    return images[k::group_size], labels[k::group_size]


def run(student: str, baseline: str | None, groups: int, seeds: list[int], out: str, command: str,
        metrics: tuple[str, ...] = ("fid",), reference: str = FASHION_MNIST_DIR, reference_count: int = 2000,
        cache: str | None = None, classifier: str | None = None, progress: bool = True) -> Path:
    group_size = int(distill_metadata(student)["group_size"])
    if group_size < 2:
        raise ValueError("--student must be a group student; pass the size-1 one as --baseline")
    if groups < 10 or groups % 10:
        raise ValueError(f"--groups must be a positive multiple of 10 (one class per group in turn), got {groups}")
    contenders = student_contenders(student, f"student N={group_size}")
    if baseline:
        if int(distill_metadata(baseline)["group_size"]) != 1:
            raise ValueError(f"--baseline {baseline} is not a size-1 student")
        contenders += student_contenders(baseline, "student N=1")
    decode = checkpoint_decoder(student)
    config = read_checkpoint_info(student)["model"]
    shape = (config["in_channels"], config["input_size"], config["input_size"])  # (C, H, W) of one sample
    rows = []
    for seed in seeds:
        inputs = noise_and_labels(groups, group_size, shape, seed, config["num_classes"], chunk=16)
        labels = torch.cat([y for _, y in inputs]).numpy()  # (G·N,)
        settings = EvalSettings(metrics=list(metrics), reference=reference, reference_count=reference_count,
                                cache=cache, classifier=classifier, progress=progress, seed=seed, group_size=1)
        for contender in contenders:
            images = to_uint8(decode(draw(contender, inputs, seed, progress)))
            scores = [evaluate(SampleSet(*member(images, labels, group_size, k), contender.name), settings)["metrics"]
                      for k in range(group_size)]
            row = {"model": contender.name, "seed": seed, "steps": contender.steps, "checkpoint": contender.checkpoint}
            for metric in metrics:
                row[f"{metric}_members"] = [score[metric] for score in scores]
                row[f"{metric}_member_mean"] = statistics.fmean(row[f"{metric}_members"])
            rows.append(row)
    pairs = member_pairs(rows, metrics)
    path = write_report(Path(out) / "results.json", "member_fid", command, rows, {
        "student": student, "baseline": baseline, "groups": groups, "group_size": group_size, "seeds": seeds,
        "metrics": list(metrics), "reference": reference, "reference_count": reference_count},
        extra={"paired": [{**entry, "summary": entry["summary"].as_dict()} for entry in pairs]} if pairs else None)
    columns = [f"{metric}_{part}" for metric in metrics for part in ("member_mean", "members")]
    shown = [{**row, **{f"{m}_members": " / ".join(f"{v:.2f}" for v in row[f"{m}_members"]) for m in metrics}}
             for row in rows]
    print(format_table(shown, ["model", "seed", *columns]))
    for entry in pairs:
        print(f"{entry['group']} − {entry['single']}, {entry['metric']}, paired by evaluation seed: "
              f"{entry['summary'].describe(show_range=True, verdict=True)}")
    return path


def member_pairs(rows: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """The group student minus the size-1 student at each step count, per metric's member mean, paired by
    evaluation seed (`experiments.paired`); none without a baseline."""
    by_model: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["seed"]] = row
    singles = {next(iter(seeds.values()))["steps"]: name for name, seeds in by_model.items()
               if name.startswith("student N=1 ")}
    out = []
    for name, seeds in by_model.items():
        steps = next(iter(seeds.values()))["steps"]
        if name.startswith("student N=1 ") or steps not in singles:
            continue
        single = by_model[singles[steps]]
        for metric in metrics:
            key = f"{metric}_member_mean"
            out.append({"group": name, "single": singles[steps], "metric": key,
                        "summary": paired({s: r[key] for s, r in seeds.items()},
                                          {s: r[key] for s, r in single.items()})})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groupdiff.experiments.member_fid",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--student", required=True, help="group student checkpoint (groupdiff distill)")
    parser.add_argument("--baseline", help="size-1 student distilled the same way, scored on the same noise")
    parser.add_argument("--groups", type=int, default=500, help="groups drawn; each member's set has this many images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds")
    parser.add_argument("--metrics", nargs="+", choices=["fid", "fd_classifier"], default=["fid"],
                        help="scores per member set: Inception FID (slow on the CPU) and/or fd_classifier")
    parser.add_argument("--reference", default=FASHION_MNIST_DIR, help="idx folder whose test split is the reference")
    parser.add_argument("--reference-count", type=int, default=2000, help="first N test images as FID reference")
    parser.add_argument("--classifier", help="a saved classifier folder (default: the cached one)")
    parser.add_argument("--cache", help="cache folder (default $GROUPDIFF_CACHE or ~/.cache/groupdiff)")
    parser.add_argument("--out", default="outputs/member-fid", help="folder for results.json")
    args = parser.parse_args(argv)
    arguments = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "groupdiff.experiments.member_fid", *arguments])
    try:
        print(run(args.student, args.baseline, args.groups, args.seeds, args.out, command, tuple(args.metrics),
                  args.reference, args.reference_count, args.cache, args.classifier))
    except ValueError as error:
        parser.exit(2, f"member_fid: error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
