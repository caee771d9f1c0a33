"""How far a student starts from its distillation target, per group size and time.

A FACM student starts as the teacher's network, run plainly (class labels, fixed sample ids) at the
group size it will serve; its target is the teacher's guided velocity at that size (`Teacher.target`).
With a GroupDiff-l teacher the conditional branch only ever trained at group size 1, so a group
student can start much further from its target than a size-1 student: this prints the relative gap
``|F_init − v_target|² / |v_target|²`` on real training groups, before spending a distillation run.

    python -m groupdiff.bench.distill_gap --teacher runs/fmnist-tiny/checkpoints/step-0001500
"""

from __future__ import annotations

import argparse

import torch

from groupdiff.distill.teacher import load_teacher
from groupdiff.model import fixed_sample_ids, interpolate
from groupdiff.training.prepared import load_prepared


@torch.no_grad()
def relative_gaps(teacher_path: str, data_path: str, group_sizes: list[int], times: list[float], groups: int = 16,
                  seed: int = 0, guidance_scale: float | None = None) -> list[dict]:
    """One row per (group size, time); ``guidance_scale`` overrides the teacher's recorded scale."""
    teacher = load_teacher(teacher_path, guidance_scale=guidance_scale)
    data = load_prepared(data_path)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in group_sizes:
        same_class = data.neighbours("class")
        anchors = torch.randint(0, len(data.labels), (groups,), generator=generator)
        members = torch.stack([_draw(same_class.candidates(int(a)), n, generator) for a in anchors])  # (G, N)
        index = members.reshape(-1)  # (G·N,) group-major, members of one class
        x0, y = data.samples[index], data.labels[anchors].repeat_interleave(n)
        ids = fixed_sample_ids(len(y), n, x0.device)
        for time in times:
            t = torch.full((len(y),), time)
            x_t = interpolate(x0, torch.randn(x0.shape, generator=generator), t)
            target = teacher.target(x_t, t, y, n)
            start = teacher.model(x_t, t, y, group_size=n, sample_ids=ids)
            rows.append({"group_size": n, "t": time,
                         "relative_gap": float((start - target).pow(2).mean() / target.pow(2).mean())})
    return rows


def _draw(candidates: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    return candidates[torch.randperm(len(candidates), generator=generator)[:n]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", default="data/fmnist-pixel", help="the teacher's prepared folder")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--times", type=float, nargs="+", default=[0.9, 0.6, 0.3])
    parser.add_argument("--groups", type=int, default=16, help="groups per (group size, time)")
    args = parser.parse_args(argv)
    print("| group size | t | relative gap |\n|---|---|---|")
    for row in relative_gaps(args.teacher, args.data, args.group_sizes, args.times, args.groups):
        print(f"| {row['group_size']} | {row['t']:g} | {row['relative_gap']:.3f} |")


if __name__ == "__main__":
    main()
