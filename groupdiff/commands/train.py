"""``groupdiff train``: train a GroupDiff teacher from a recipe or config file.

Runs alone or under ``torchrun --nproc_per_node K -m groupdiff train ...`` (DDP). SIGTERM saves a
checkpoint at the end of the current step; ``--resume`` continues from the latest checkpoint.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a GroupDiff teacher (single process or torchrun)")
    p.add_argument("--config", required=True, help="YAML/TOML config file, or a recipe name such as fmnist-tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set plan.group_size=8 (repeatable)")
    p.add_argument("--data", help="prepared data folder (overrides the config's data)")
    p.add_argument("--out", help="output folder (overrides the config's out)")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides the config's steps)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in --out (or from CHECKPOINT)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from groupdiff.config import find_config, load_config
    from groupdiff.training import distributed
    from groupdiff.training.config import TrainConfig
    from groupdiff.training.prepared import load_prepared
    from groupdiff.training.trainer import Trainer

    overrides = list(args.overrides)
    for key in ("data", "out", "steps"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    config = load_config(TrainConfig, find_config(args.config, "train"), overrides)
    dist = distributed.setup(config.device)
    try:
        trainer = Trainer(config, load_prepared(config.data), dist, resume=args.resume)
        checkpoint = trainer.train()
        if dist.is_main and checkpoint is not None:
            print(f"checkpoint: {checkpoint}")
    finally:
        distributed.teardown()
