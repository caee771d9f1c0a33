"""The ``groupdiff`` command line.

Each subcommand lives in `groupdiff.commands.<name>` with a ``register(subparsers)`` function that
adds its parser and sets ``run``. Bad input exits with code 2 and a one-line message, never a
traceback; a benchmark whose training SIGTERM stopped (checkpoint saved) exits with 143 the same way.

The base install (the SDK) has no torch: a verb whose extra is not installed keeps its name, and running it
says which extra to install (exit 3) instead of failing while the parsers are built.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from collections.abc import Sequence

from . import __version__
from .commands import attention, bench, distill, eval, export, generate, loadtest, prepare, sample, serve, train

EXIT_BAD_INPUT = 2  # bad input: one line on stderr, no traceback
EXIT_MISSING_EXTRA = 3  # the verb needs an optional part of the install
EXIT_STOPPED = 143  # 128 + SIGTERM: stopped before its result, resumable
COMMANDS = (prepare, train, distill, sample, eval, attention, export, bench, serve, generate, loadtest)
# the extra each verb needs beyond the base install (the SDK: generate, loadtest); pyproject.toml lists them
EXTRAS = {"prepare": "train", "train": "train", "distill": "train", "sample": "train", "eval": "train",
          "attention": "train", "bench": "all", "export": "serve", "serve": "serve"}
# modules that tell whether an extra is installed (looked up, not imported)
EXTRA_MODULES = {"serve": ("torch", "safetensors", "onnxruntime", "bentoml", "pytriton", "fastapi"),
                 "train": ("torch", "torchvision", "diffusers", "faiss", "open_clip", "timm", "yaml")}
EXTRA_MODULES["all"] = EXTRA_MODULES["serve"] + EXTRA_MODULES["train"]


def first_missing(extra: str) -> str | None:
    """The first module of ``extra`` that cannot be imported, or None when it is installed."""
    for module in EXTRA_MODULES[extra]:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ImportError:
            return module
    return None


def missing_extra(command: str, extra: str, module: str) -> int:
    print(f"groupdiff {command}: error: needs the '{extra}' extra (module {module!r} is not installed): "
          f"pip install 'groupdiff[{extra}]'", file=sys.stderr)
    return EXIT_MISSING_EXTRA


def register_unavailable(subparsers, name: str, extra: str, module: str) -> None:
    """A verb whose extra is missing: it takes any arguments, and running it says what to install (in `main`)."""
    parser = subparsers.add_parser(name, help=f"(needs groupdiff[{extra}])", prefix_chars="+", add_help=False)
    parser.add_argument("arguments", nargs="*")

    def run(_args: argparse.Namespace) -> None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    parser.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupdiff", description="Group diffusion: train, distill, export, serve.")
    parser.add_argument("--version", action="version", version=f"groupdiff {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        name = command.__name__.rpartition(".")[2]
        extra = EXTRAS.get(name)
        missing = first_missing(extra) if extra else None
        if missing:
            register_unavailable(subparsers, name, extra, missing)
        else:
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
        return missing_extra(args.command, extra, missing.name)
    except (ValueError, FileNotFoundError) as error:
        print(f"groupdiff {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InterruptedError as stopped:  # training.loop.RunStopped: SIGTERM stopped a run, resumable
        print(f"groupdiff {args.command}: stopped: {stopped}", file=sys.stderr)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
