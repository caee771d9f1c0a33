"""How far a student is from its distillation target, per group size and time.

Before a run: a FACM student starts as the teacher's network, run plainly (class labels, fixed sample
ids) at the group size it will serve; its target is the teacher's guided velocity at that size
(`Teacher.target`). With a GroupDiff-l teacher the conditional branch only ever trained at group size
1, so a group student can start much further from its target than a size-1 student: ``--teacher``
alone prints the relative gap ``|F_init − v_target|² / |v_target|²`` on real training groups.

After a run: ``--student`` asks a distilled student's anchor (its instantaneous velocity, FACM's
``t < 0`` task) on groups drawn as in its training, and splits its error by what the target holds.
The group term ``D = v_target(N) − v_target(1)`` is what the group adds to the target; ``captured`` is
the share of it the student reproduces (the projection of ``F − v_target(1)`` on ``D``: 0 ignores the
group, 1 has all of it); ``error alone`` runs the same student with every image its own group against
``v_target(1)``, so a student that is worse everywhere shows up apart from one that misses the group.
``--baseline`` adds a size-1 student's error against ``v_target(1)`` for scale.

    python -m groupdiff.experiments.distill_gap --teacher runs/fmnist-tiny/checkpoints/step-0001500
    python -m groupdiff.experiments.distill_gap --student runs/distill-luc4/checkpoints/step-0001800 \\
        --baseline runs/distill-luc4-n1/checkpoints/step-0001800
"""

from __future__ import annotations

import argparse
import math

import torch

from groupdiff.distill.student import load_anchored
from groupdiff.distill.teacher import load_teacher
from groupdiff.model import GroupDiT, fixed_sample_ids, interpolate
from groupdiff.model.checkpoint import read_checkpoint_info
from groupdiff.training.prepared import PreparedData, load_prepared

DEFAULT_DATA = "data/fmnist-pixel"


@torch.no_grad()
def relative_gaps(teacher_path: str, data_path: str, group_sizes: list[int], times: list[float], groups: int = 16,
                  seed: int = 0, guidance_scale: float | None = None) -> list[dict]:
    """One row per (group size, time); ``guidance_scale`` overrides the teacher's recorded scale."""
    teacher = load_teacher(teacher_path, guidance_scale=guidance_scale)
    data = load_prepared(data_path)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in group_sizes:
        x0, y = training_groups(data, "class", n, groups, generator)
        ids = fixed_sample_ids(len(y), n, x0.device)
        for time in times:
            t = torch.full((len(y),), time)
            x_t = interpolate(x0, torch.randn(x0.shape, generator=generator), t)
            target = teacher.target(x_t, t, y, n)
            start = teacher.model(x_t, t, y, group_size=n, sample_ids=ids)
            rows.append({"group_size": n, "t": time, "relative_gap": relative_error(start, target, target)})
    return rows


@torch.no_grad()
def student_errors(student_path: str, times: list[float], baseline_path: str | None = None,
                   teacher_path: str | None = None, data_path: str | None = None, groups: int = 32,
                   seed: int = 0) -> list[dict]:
    """One row per time. The teacher, its guidance scale, the data and the group query default to what
    the student's checkpoint records it was distilled from."""
    metadata = read_checkpoint_info(student_path)["metadata"]
    recorded, config = metadata["distill"], metadata.get("distill_config", {})
    teacher = load_teacher(teacher_path or recorded["teacher"], guidance_scale=recorded["guidance"]["scale"])
    data = load_prepared(data_path or config.get("data", DEFAULT_DATA))
    n = recorded["group_size"]
    student = load_anchored(student_path)
    baseline = load_anchored(baseline_path) if baseline_path else None
    generator = torch.Generator().manual_seed(seed)
    x0, y = training_groups(data, config.get("query", "efficientnet"), n, groups, generator)
    rows = []
    for time in times:
        t = torch.full((len(y),), time)
        x_t = interpolate(x0, torch.randn(x0.shape, generator=generator), t)
        grouped, alone = teacher.target(x_t, t, y, n), teacher.target(x_t, t, y, 1)  # (G·N, C, H, W) each
        in_groups, by_itself = anchor_velocity(student, x_t, t, y, n), anchor_velocity(student, x_t, t, y, 1)
        row = {"t": time, "group_term": relative_error(grouped, alone, grouped),
               "error": relative_error(in_groups, grouped, grouped),
               "captured": captured_share(in_groups, alone, grouped),
               "error_alone": relative_error(by_itself, alone, grouped)}
        if baseline is not None:
            row["baseline_error"] = relative_error(anchor_velocity(baseline, x_t, t, y, 1), alone, grouped)
        rows.append(row)
    return rows


def training_groups(data: PreparedData, query: str, n: int, groups: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``groups`` random anchors, each with N − 1 neighbours under ``query``; every member gets its
    anchor's class, as in training. Returns samples (G·N, C, H, W) and labels (G·N,), group-major."""
    neighbours = data.neighbours(query)
    anchors = torch.randint(0, len(data.labels), (groups,), generator=generator)
    members = []
    for anchor in anchors:
        candidates = neighbours.candidates(int(anchor))
        drawn = candidates[torch.randperm(len(candidates), generator=generator)[:n - 1]]
        members.append(torch.cat([anchor.view(1), drawn]))
    index = torch.stack(members).reshape(-1)  # (G·N,)
    return data.samples[index], data.labels[anchors].repeat_interleave(n)


def anchor_velocity(student: GroupDiT, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """The student's flow-matching anchor (asked at −t) at group size ``n``."""
    return student(x_t, -t, y, group_size=n, sample_ids=fixed_sample_ids(len(y), n, x_t.device))


def captured_share(estimate: torch.Tensor, alone: torch.Tensor, grouped: torch.Tensor) -> float:
    """How much of the group term ``grouped − alone`` the estimate holds: the coefficient of its
    projection on that term (NaN when the target has no group term, e.g. without guidance)."""
    group_term = grouped - alone
    norm = group_term.pow(2).sum()
    return float(((estimate - alone) * group_term).sum() / norm) if norm > 0 else float("nan")


def relative_error(estimate: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> float:
    return float((estimate - target).pow(2).mean() / scale.pow(2).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", help="the teacher (with --student: defaults to the one it records)")
    parser.add_argument("--student", help="a distilled group student: split its error by the target's parts")
    parser.add_argument("--baseline", help="with --student: a size-1 student of the same teacher, for scale")
    parser.add_argument("--data", help="the teacher's prepared folder (default: data/fmnist-pixel, or the "
                        "student's recorded one)")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[1, 4],
                        help="start gaps only (a student is scored at the group size it was distilled for)")
    parser.add_argument("--times", type=float, nargs="+", default=[0.9, 0.6, 0.3])
    parser.add_argument("--groups", type=int, default=16,
                        help="groups per (group size, time), or per time with --student")
    args = parser.parse_args(argv)
    if args.student is None:
        if args.teacher is None or args.baseline is not None:
            parser.error("give --teacher (start gaps) or --student [--baseline] (a distilled student's errors)")
        print("| group size | t | relative gap |\n|---|---|---|")
        for row in relative_gaps(args.teacher, args.data or DEFAULT_DATA, args.group_sizes, args.times,
                                 args.groups):
            print(f"| {row['group_size']} | {row['t']:g} | {row['relative_gap']:.3f} |")
        return
    rows = student_errors(args.student, args.times, args.baseline, args.teacher, args.data, args.groups)
    print("Relative squared errors (/ |v_target(N)|²) of the student's anchor velocity:\n")
    print("| t | group term | error | captured | error alone |" + (" baseline error |" if args.baseline else ""))
    print("|---|---|---|---|---|" + ("---|" if args.baseline else ""))
    for row in rows:
        captured = "–" if math.isnan(row["captured"]) else f"{row['captured']:.2f}"
        cells = [f"{row['t']:g}", f"{row['group_term']:.4f}", f"{row['error']:.4f}", captured,
                 f"{row['error_alone']:.4f}"] + ([f"{row['baseline_error']:.4f}"] if args.baseline else [])
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
