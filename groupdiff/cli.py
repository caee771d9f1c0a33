"""The ``groupdiff`` command line.

Each subcommand lives in `groupdiff.commands.<name>` with a ``register(subparsers)`` function that
adds its parser and sets ``run``. Bad input exits with code 2 and a one-line message, never a
traceback; a benchmark whose training SIGTERM stopped (checkpoint saved) exits with 143 the same way.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from . import __version__
from .commands import bench, distill, eval, export, generate, loadtest, prepare, sample, serve, train

EXIT_BAD_INPUT = 2  # bad input: one line on stderr, no traceback
EXIT_MISSING_EXTRA = 3  # the verb needs an optional part of the install
EXIT_STOPPED = 143  # 128 + SIGTERM: stopped before its result, resumable
COMMANDS = (prepare, train, distill, sample, eval, export, bench, serve, generate, loadtest)
# the extra each verb needs beyond the base install (the SDK: generate, loadtest); pyproject.toml lists them
EXTRAS = {"prepare": "train", "train": "train", "distill": "train", "sample": "train", "eval": "train",
          "bench": "all", "export": "serve", "serve": "serve"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupdiff", description="Group diffusion: train, distill, export, serve.")
    parser.add_argument("--version", action="version", version=f"groupdiff {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.invocation = shlex.join(["groupdiff", *argv])  # recorded in benchmark reports
    try:
        args.run(args)
    except ModuleNotFoundError as missing:
        extra = EXTRAS.get(args.command)
        if extra is None or (missing.name or "").partition(".")[0] == "groupdiff":
            raise  # a bug, not a missing install
        print(f"groupdiff {args.command}: error: needs the '{extra}' extra (module {missing.name!r} is not "
              f"installed): pip install 'groupdiff[{extra}]'", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except (ValueError, FileNotFoundError) as error:
        print(f"groupdiff {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InterruptedError as stopped:  # training.loop.RunStopped: SIGTERM stopped a run, resumable
        print(f"groupdiff {args.command}: stopped: {stopped}", file=sys.stderr)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
