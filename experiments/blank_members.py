"""Why do guided GroupDiff-l samples of the quick teacher come out blank? Blank share by guidance mode,
scale, member position, class and the unconditional branch's sample ids, all on the same noise.

`make teacher` draws its grid with GroupDiff-l at s = 1.0; on some seeds a few members are flat black
images, mostly at member positions 1 and 2. The candidate causes make different predictions:

- **guidance too strong for the model** (v = v_c + s·(v_c − v_u) overshoots): blanks grow with s in
  plain CFG too, whose unconditional branch never sees a group;
- **the group (unconditional) branch**: blanks appear in GroupDiff-l but not in plain CFG at equal s;
- **the sample embedding**: members differ only by their sample id (attention is otherwise symmetric
  over members, and every position draws fresh noise in every group), so blanks piling up at some
  positions point at the ids. Rotating the unconditional branch's ids by one (position p gets id p + 1)
  tells the two apart: blanks that follow the ids move one position down. (Reversing 0..3 would not: it
  maps positions 1 and 2 onto ids 2 and 1.)

Every setting samples the same groups (``--groups-per-class`` per class, one seed per chunk), so the
settings differ only in what the experiment changes. A member is blank when its pixel standard deviation
is below `evaluation.blank.BLANK_STD`.

    python -m groupdiff.experiments.blank_members --checkpoint runs/fmnist-tiny/checkpoints/step-0001500 \\
        --out experiments/results/blank-members/fmnist-tiny
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from groupdiff.clients.reporting import format_table, json_ready, write_report
from groupdiff.evaluation.blank import BLANK_STD, blank_mask
from groupdiff.evaluation.generation import load_generator
from groupdiff.model.guidance import Guidance, velocity_function
from groupdiff.model.images import save_group_grid
from groupdiff.model.samplers import sample

ID_ORDERS = ("fixed", "reversed", "rotated")  # the unconditional branch's ids: 0..N-1, N-1..0, or 1..N-1, 0


@dataclass(frozen=True)
class Setting:
    mode: str
    scale: float
    ids: str = "fixed"

    @property
    def name(self) -> str:
        return f"{self.mode} s={self.scale:g}" + ("" if self.ids == "fixed" else f" ids={self.ids}")


def default_settings(scales: list[float], modes: tuple[str, ...] = ("groupdiff-l", "plain"),
                     id_orders: tuple[str, ...] = ("rotated",)) -> list[Setting]:
    """Each mode at every scale (plain only above 0, where it differs), plus GroupDiff-l with each other id
    order at the largest scale."""
    settings = [Setting(mode, s) for mode in modes for s in scales if mode == "groupdiff-l" or s > 0]
    if "groupdiff-l" in modes:
        settings += [Setting("groupdiff-l", max(scales), order) for order in id_orders if order != "fixed"]
    return settings


def sample_ids(groups: int, group_size: int, order: str) -> torch.Tensor:
    ids = torch.arange(group_size)
    ordered = {"fixed": ids, "reversed": ids.flip(0), "rotated": ids.roll(-1)}[order]
    return ordered.repeat(groups)  # (G·N,)


@torch.no_grad()
def sample_setting(generator, setting: Setting, classes: list[int], groups_per_class: int, group_size: int,
                   steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (G·N, C, H, W) in [-1, 1] and their classes (G·N,), one chunk of groups per class."""
    model, cfg = generator.model, generator.model.config
    guidance = Guidance(setting.scale, setting.mode)
    images, labels = [], []
    for chunk, class_id in enumerate(classes):
        noise_generator = torch.Generator().manual_seed(seed * 1000 + chunk)
        y = torch.full((groups_per_class * group_size,), class_id)  # (G·N,)
        noise = torch.randn(len(y), cfg.in_channels, cfg.input_size, cfg.input_size, generator=noise_generator)
        ids = sample_ids(groups_per_class, group_size, setting.ids)
        velocity = velocity_function(model, y, group_size, guidance, sample_ids=ids)
        images.append(generator.decode(sample(velocity, noise, steps, method="heun")).clamp(-1, 1))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def summarize(setting: Setting, images: torch.Tensor, labels: torch.Tensor, group_size: int,
              classes: list[int]) -> dict:
    blank = blank_mask(images)  # (G·N,)
    by_position = blank.view(-1, group_size).double().mean(0)  # (N,)
    return {"setting": setting.name, "mode": setting.mode, "scale": setting.scale, "ids": setting.ids,
            "images": len(blank), "blank": int(blank.sum()), "blank_share": float(blank.double().mean()),
            "by_position": [round(float(v), 4) for v in by_position],
            "by_class": {c: int(blank[labels == c].sum()) for c in classes}}


def run(checkpoint: str, out: str, command: str, scales: list[float], classes: list[int], groups_per_class: int,
        group_size: int, steps: int, seed: int, modes: tuple[str, ...] = ("groupdiff-l", "plain"),
        id_orders: tuple[str, ...] = ("rotated",), progress: bool = True) -> Path:
    generator = load_generator(checkpoint, "ema")
    generator.model.eval()
    settings = default_settings(scales, modes, id_orders)
    rows, grids = [], Path(out) / "grids"
    for setting in tqdm(settings, desc="settings", disable=not progress):
        images, labels = sample_setting(generator, setting, classes, groups_per_class, group_size, steps, seed)
        rows.append(summarize(setting, images, labels, group_size, classes))
        first_groups = images.view(len(classes), groups_per_class * group_size, *images.shape[1:])[:, :2 * group_size]
        save_group_grid(grids / f"{setting.name.replace(' ', '_')}.png", first_groups.reshape(-1, *images.shape[1:]),
                        group_size, upscale=2)
    recorded = {"checkpoint": checkpoint, "weights": "ema", "sampler": "heun", "steps": steps,
                "group_size": group_size, "classes": classes, "groups_per_class": groups_per_class,
                "blank_std": BLANK_STD, "noise": "chunk k (class k) seeded seed*1000 + k, the same in every setting"}
    extra = {"seeds": [seed], "sample_count": {"images_per_setting": len(classes) * groups_per_class * group_size,
                                               "settings": len(settings)}}
    path = write_report(Path(out) / "results.json", "blank_members", command, json_ready(rows), recorded, extra)
    print(format_table(rows, ["setting", "images", "blank", "blank_share", "by_position"]))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groupdiff.experiments.blank_members",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a GroupDiff-l teacher checkpoint folder")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 1.5])
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--groups-per-class", type=int, default=10)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25, help="Heun steps (make teacher's grid uses 25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", choices=["groupdiff-l", "plain"], default=["groupdiff-l", "plain"])
    parser.add_argument("--id-orders", nargs="+", choices=ID_ORDERS, default=["rotated"],
                        help="the unconditional branch's ids tried at the largest scale besides 0..N-1")
    parser.add_argument("--out", default="outputs/blank-members")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m groupdiff.experiments.blank_members " + shlex.join(sys.argv[1:] if argv is None else argv)
    run(args.checkpoint, args.out, command, args.scales, args.classes, args.groups_per_class, args.group_size,
        args.steps, args.seed, tuple(args.modes), tuple(args.id_orders), progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
