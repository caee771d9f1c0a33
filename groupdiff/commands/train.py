"""``groupdiff train``: train a GroupDiff teacher from a recipe or config file.

Runs alone or under ``torchrun --nproc_per_node K -m groupdiff train ...`` (DDP). SIGTERM saves a
checkpoint at the end of the current step; ``--resume`` continues from the latest checkpoint.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a GroupDiff teacher (single process or torchrun)")
    add_run_args(p, recipe="fmnist-tiny", example="plan.group_size=8")
    p.set_defaults(run=run)


def add_run_args(p: argparse.ArgumentParser, recipe: str, example: str) -> None:
    """What a training run and a distillation run share: the config, its overrides, where, how long, resume."""
    p.add_argument("--config", required=True, help=f"YAML/TOML config file, or a recipe name such as {recipe}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config field, e.g. --set {example} (repeatable)")
    p.add_argument("--data", help="prepared data folder (overrides the config's data)")
    p.add_argument("--out", help="output folder (overrides the config's out)")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides the config's steps)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in --out (or from CHECKPOINT)")


def config_overrides(args: argparse.Namespace, flags: tuple[str, ...] = ("data", "out", "steps")) -> list[str]:
    """The ``--set`` overrides, then each dedicated flag given as ``key=value`` (so the flag wins)."""
    return [*args.overrides, *(f"{key}={getattr(args, key)}" for key in flags if getattr(args, key) is not None)]


def run(args: argparse.Namespace) -> None:
    from groupdiff.training import distributed
    from groupdiff.training.config import TrainConfig
    from groupdiff.training.config_files import find_config, load_config
    from groupdiff.training.prepared import load_prepared
    from groupdiff.training.trainer import Trainer

    config = load_config(TrainConfig, find_config(args.config, "train"), config_overrides(args))
    dist = distributed.setup(config.device)
    try:
        trainer = Trainer(config, load_prepared(config.data), dist, resume=args.resume)
        checkpoint = trainer.train()
        if dist.is_main and checkpoint is not None:
            print(f"checkpoint: {checkpoint}")
    finally:
        distributed.teardown()
