"""``groupdiff bench train``: training throughput of a recipe at several group settings.

Each variant runs the real trainer's step (plan slice, both forwards, backward, AdamW, EMA) on the
prepared data for ``steps`` timed steps after ``warmup`` untimed ones, in one process.
"""

from __future__ import annotations

import tempfile
import time

import torch

from groupdiff.clients.reporting import format_table, write_report
from groupdiff.training import distributed
from groupdiff.training.config import TrainConfig
from groupdiff.training.config_files import find_config, load_config
from groupdiff.training.prepared import load_prepared
from groupdiff.training.trainer import Trainer

VARIANTS = {
    "baseline (N=1)": ["plan.mode=groupdiff-l", "plan.group_size=1", "plan.group_share=0.1"],
    "GroupDiff-l N=4, 10%": ["plan.mode=groupdiff-l", "plan.group_size=4", "plan.group_share=0.1"],
    "GroupDiff-l N=4, 25%": ["plan.mode=groupdiff-l", "plan.group_size=4", "plan.group_share=0.25"],
    "GroupDiff-f N=4": ["plan.mode=groupdiff-f", "plan.group_size=4"],
}


def run(
    recipe: str,
    data: str | None,
    steps: int,
    warmup: int,
    out: str,
    command: str,
    device: str = "cpu",
    overrides: list[str] | None = None,
) -> list[dict]:
    rows = []
    prepared = None
    dist = distributed.setup(device)
    for name, variant in VARIANTS.items():
        with tempfile.TemporaryDirectory() as scratch:
            extra = [f"out={scratch}", f"device={device}"] + ([f"data={data}"] if data else [])
            config = load_config(TrainConfig, find_config(recipe, "train"), extra + (overrides or []) + variant)
            prepared = prepared if prepared is not None and str(prepared.root) == config.data else load_prepared(
                config.data)
            trainer = Trainer(config, prepared, dist)
            for _ in range(warmup):
                trainer.train_step()
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            if dist.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        rows.append({"variant": name, "batch": config.batch_size, "steps": steps,
                     "s_per_step": seconds / steps, "images_per_s": steps * config.batch_size / seconds})
    print(format_table(rows, ["variant", "batch", "steps", "s_per_step", "images_per_s"]))
    settings = {"recipe": recipe, "data": data, "warmup": warmup, "device": device, "overrides": overrides,
                "variants": VARIANTS}
    path = write_report(out, "train", command, rows, settings)
    print(f"wrote {path}")
    return rows
