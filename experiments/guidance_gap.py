"""What the group does to a GroupDiff-l teacher's guidance direction, per group size and time.

GroupDiff-l guides with ``v = v_c + s·(v_c − v_u(N))``: the conditional branch sees each image alone,
the unconditional branch the whole group. In the quality benchmark groups of 8 helped less than groups
of 4 and guidance *lowered* their class accuracy. The guess (experiments/notes/quality.md) is that a group of
same-class images tells the unconditional branch the class, so the guidance direction
``d(N) = v_c − v_u(N)`` shrinks and what is left of it no longer points at the class. This measures
that on noised training groups of one class (a generated group shares one class label too), with the
unconditional branch run as the sampler runs it (group attention and the members' sample ids); every
group size sees the same images and noise, the smaller sizes as consecutive slices of the largest
groups:

- ``strength``: ``|d(N)|² / |d(1)|²`` — below 1 the group takes guidance away;
- ``alignment``: the cosine of ``d(N)`` with ``d(1)`` — whether what is left points the same way;
- ``uncond_accuracy``: the project classifier's accuracy on the unconditional branch's clean-image
  estimate ``x̂₀ = x_t − t·v_u(N)``, against the group's class — how much of the class that branch
  reads off the group (``cond_accuracy``: the same for ``v_c``, the class it is told);
- ``pull``: the squared distance of that estimate to the mean of the *other* members of the image's
  largest group (their clean images), over the same at group size 1 — below 1 the unconditional
  branch copies from the group, so guidance pushes each image away from its group.

    python -m groupdiff.experiments.guidance_gap --checkpoint outputs/quality/l-uc8/seed-0/checkpoints/step-0010000 \\
        --group-sizes 1 4 8 --out experiments/results/quality/guidance-gap/l-uc8.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from groupdiff.clients.reporting import format_table, write_report
from groupdiff.evaluation.classifier import SmallCNN, classify
from groupdiff.evaluation.evaluate import EvalSettings, project_classifier
from groupdiff.model import GroupDiT, Guidance, interpolate
from groupdiff.model.checkpoint import load_model
from groupdiff.model.images import to_uint8
from groupdiff.training.prepared import PreparedData, load_prepared

from .distill_gap import training_groups

COLUMNS = ["t", "group_size", "strength", "alignment", "uncond_accuracy", "cond_accuracy", "pull"]


@dataclass(frozen=True)
class GapSettings:
    group_sizes: tuple[int, ...] = (1, 4, 8)
    times: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3, 0.1)
    groups: int = 64  # groups of the largest size; every time uses the same images
    seed: int = 0

    def __post_init__(self) -> None:
        largest = max(self.group_sizes)
        if 1 not in self.group_sizes or any(n < 1 or largest % n for n in self.group_sizes):
            raise ValueError(f"group sizes must include 1 and divide the largest, got {self.group_sizes}")
        if not all(0.0 < t <= 1.0 for t in self.times):
            raise ValueError(f"times must lie in (0, 1], got {self.times}")
        if self.groups < 1:
            raise ValueError(f"groups must be >= 1, got {self.groups}")


@torch.no_grad()
def guidance_gaps(model: GroupDiT, data: PreparedData, classifier: SmallCNN, settings: GapSettings) -> list[dict]:
    """One row per (time, group size), the group size 1 row first at each time."""
    generator = torch.Generator().manual_seed(settings.seed)
    x0, y = training_groups(data, "class", max(settings.group_sizes), settings.groups, generator)  # (G·N, C, H, W)
    others = others_mean(x0, max(settings.group_sizes))
    null = torch.full_like(y, model.null_class)
    recipe = Guidance(mode="groupdiff-l")  # its branch group sizes: the conditional branch always alone
    cond_size, _ = recipe.branch_group_sizes(max(settings.group_sizes))
    rows = []
    for time in settings.times:
        t = torch.full((len(y),), time)
        x_t = interpolate(x0, torch.randn(x0.shape, generator=generator), t)
        v_cond = model(x_t, t, y, group_size=cond_size)
        cond_accuracy = class_accuracy(classifier, x_t - time * v_cond, y)
        alone = alone_distance = None
        for n in sorted(settings.group_sizes):
            v_uncond = model(x_t, t, null, group_size=recipe.branch_group_sizes(n)[1])
            estimate = x_t - time * v_uncond  # (G·N, C, H, W) the unconditional branch's x̂₀
            direction = (v_cond - v_uncond).flatten(1)  # (G·N, C·H·W)
            distance = (estimate - others).pow(2).sum()
            alone = direction if alone is None else alone
            alone_distance = distance if alone_distance is None else alone_distance
            rows.append({"t": time, "group_size": n,
                         "strength": float(direction.pow(2).sum() / alone.pow(2).sum()),
                         "alignment": float(torch.nn.functional.cosine_similarity(direction, alone).mean()),
                         "uncond_accuracy": class_accuracy(classifier, estimate, y),
                         "cond_accuracy": cond_accuracy, "pull": float(distance / alone_distance)})
    return rows


def others_mean(x0: torch.Tensor, group_size: int) -> torch.Tensor:
    """For each image of group-major ``x0`` (G·N, C, H, W), the mean of the other members of its group
    (the image itself when the group has one member)."""
    if group_size == 1:
        return x0
    groups = x0.unflatten(0, (-1, group_size))  # (G, N, C, H, W)
    return ((groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)).flatten(0, 1)


def class_accuracy(classifier: SmallCNN, estimate: torch.Tensor, labels: torch.Tensor) -> float:
    predictions, _ = classify(classifier, to_uint8(estimate))
    return float((torch.from_numpy(predictions) == labels).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a pixel-space GroupDiff-l teacher checkpoint folder")
    parser.add_argument("--weights", choices=["model", "ema"], default="ema")
    parser.add_argument("--data", default="data/fmnist-pixel", help="prepared folder the groups are drawn from")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=list(GapSettings.group_sizes),
                        help="unconditional-branch group sizes; must include 1 and divide the largest")
    parser.add_argument("--times", type=float, nargs="+", default=list(GapSettings.times), help="t (1 = noise)")
    parser.add_argument("--groups", type=int, default=GapSettings.groups, help="groups of the largest size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier", help="a saved classifier folder (default: the evaluation's cached one)")
    parser.add_argument("--out", help="write the rows and settings as JSON here")
    args = parser.parse_args(argv)
    try:
        settings = GapSettings(tuple(args.group_sizes), tuple(args.times), args.groups, args.seed)
        model = load_model(args.checkpoint, args.weights).eval()
        classifier, _ = project_classifier(EvalSettings(classifier=args.classifier))
        rows = guidance_gaps(model, load_prepared(args.data), classifier, settings)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"guidance_gap: {error}")
    print(format_table(rows, COLUMNS))
    if args.out:
        arguments = argv if argv is not None else sys.argv[1:]
        command = "python -m groupdiff.experiments.guidance_gap " + shlex.join(arguments)
        path = write_report(Path(args.out), "guidance_gap", command, rows,
                            {**asdict(settings), "checkpoint": args.checkpoint, "weights": args.weights,
                             "data": args.data})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
