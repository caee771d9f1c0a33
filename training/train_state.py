"""The part of a training checkpoint beyond the weights: optimizer moments and the step.

Stored as ``optimizer.safetensors`` (tensors) and ``trainer_state.json`` (everything else) inside the
checkpoint folder, so resuming never unpickles anything. All other randomness of a step derives from
``(seed, step, rank)`` (see `trainer.step_generator`) and the data plan from ``(seed, epoch)``, so the
step number is the whole position.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from groupdiff.model.checkpoint import CheckpointError

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def write_train_state(folder: Path, optimizer: torch.optim.Optimizer, state: dict[str, Any], prefix: str = "") -> None:
    """``prefix`` names a second optimizer's files (an auxiliary network's) beside the main one's."""
    saved = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value.detach().contiguous().cpu()
        for index, moments in saved["state"].items()
        for name, value in moments.items()
    }
    save_file(tensors, str(folder / f"{prefix}{OPTIMIZER_FILE}"))
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in saved["param_groups"]]
    (folder / f"{prefix}{STATE_FILE}").write_text(json.dumps({**state, "param_groups": groups}, indent=2) + "\n")


def read_train_state(folder: Path, optimizer: torch.optim.Optimizer, prefix: str = "") -> dict[str, Any]:
    """Load the optimizer in place and return the trainer state (``step`` …)."""
    state_path, optimizer_path = folder / f"{prefix}{STATE_FILE}", folder / f"{prefix}{OPTIMIZER_FILE}"
    if not state_path.is_file() or not optimizer_path.is_file():
        raise CheckpointError(f"{folder} is a model checkpoint without training state; it cannot be resumed")
    state = json.loads(state_path.read_text())
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(optimizer_path)).items():
        index, name = key.split(".", 1)
        moments.setdefault(int(index), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state.pop("param_groups")]
    try:
        optimizer.load_state_dict({"state": moments, "param_groups": groups})
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{folder}: optimizer state does not fit this model: {error}") from None
    return state
