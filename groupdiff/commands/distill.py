"""``groupdiff distill``: distil a GroupDiff teacher into a few-step group student (FACM), or fine-tune
such a student into a 1-step generator (``--set method=dmd``, DMD2 without its GAN head).

Runs alone or under ``torchrun --nproc_per_node K -m groupdiff distill ...``. SIGTERM saves a checkpoint
at the end of the current step; ``--resume`` continues from the latest one. ``--export-to`` writes the
serving folder (the EMA weights only, with the command that reproduces it).
"""

from __future__ import annotations

import argparse
import shlex

from .train import add_run_args, config_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distil a teacher into a 1-4 step group student (FACM, DMD2)")
    p.add_argument("--teacher", help="teacher checkpoint folder (overrides the config's teacher)")
    add_run_args(p, recipe="fmnist", example="group_size=1")
    p.add_argument("--export-to", metavar="DIR", help="after training, write the serving folder (EMA weights only)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from groupdiff.distill.config import DistillConfig
    from groupdiff.distill.dmd_trainer import DMDDistiller
    from groupdiff.distill.trainer import Distiller, export_student
    from groupdiff.training import distributed
    from groupdiff.training.config_files import find_config, load_config
    from groupdiff.training.prepared import load_prepared
    from groupdiff.training.run_folder import latest_checkpoint

    overrides = config_overrides(args, ("teacher", "data", "out", "steps"))
    config = load_config(DistillConfig, find_config(args.config, "distill"), overrides)
    dist = distributed.setup(config.device)
    try:
        method = DMDDistiller if config.method == "dmd" else Distiller
        distiller = method(config, load_prepared(config.data), dist, resume=args.resume)
        checkpoint = distiller.train() or latest_checkpoint(distiller.out)  # a finished run exports its last one
        if dist.is_main and checkpoint is not None:
            print(f"checkpoint: {checkpoint}")
            if args.export_to:
                reproduce = straight_command(args.invocation, distiller.step)
                print(f"serving folder: {export_student(checkpoint, args.export_to, reproduce)}")
    finally:
        distributed.teardown()


def straight_command(invocation: str, step: int) -> str:
    """The command that makes the same student in one uninterrupted run (resume is exact): the invocation
    without ``--resume`` and with ``--steps`` set to the checkpoint's step."""
    words, kept, i = shlex.split(invocation), [], 0
    while i < len(words):
        word = words[i]
        takes_value = word == "--steps" or (word == "--resume" and i + 1 < len(words)
                                            and not words[i + 1].startswith("-"))
        if not word.startswith(("--resume", "--steps")):
            kept.append(word)
        i += 2 if takes_value else 1
    return shlex.join([*kept, "--steps", str(step)])
