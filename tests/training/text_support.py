"""A tiny captioned Fashion-MNIST folder and the tiny text training recipe, shared by the text tests of the
training, CLI, evaluation and distillation layers (the class tests' equivalents are tests/support/training.py)."""

from pathlib import Path

from groupdiff.cli import main
from tests.support.training import FMNIST, TINY

# prepare-fmnist-text on 256 images: class and random indices, the text index with 20 neighbours
PREPARE_TEXT = ["--config", "prepare-fmnist-text", "--data", FMNIST, "--limit", "256", "--encoders", "class",
                "random", "--set", "neighbours.k=20", "--set", "neighbours.figure_queries=2"]
TINY_TEXT = [*TINY, "condition=text", "plan.query=text"]


def prepare_text(out: Path, *overrides: str) -> Path:
    settings = [item for override in overrides for item in ("--set", override)]
    assert main(["prepare", *PREPARE_TEXT, *settings, "--out", str(out)]) == 0
    return out


def train_text_command(prepared: Path, out: Path, steps: int, *settings: str, resume: bool = False) -> list[str]:
    args = ["train", "--config", "fmnist-tiny-text", "--data", str(prepared), "--out", str(out), "--steps", str(steps)]
    for item in [*TINY_TEXT, *settings]:
        args += ["--set", item]
    return args + (["--resume"] if resume else [])


def train_text(prepared: Path, out: Path, *settings: str, steps: int = 4, resume: bool = False) -> int:
    return main(train_text_command(prepared, out, steps, *settings, resume=resume))
