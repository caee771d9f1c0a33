"""Checkpoints: a folder with ``config.json`` (rebuilds the model) and safetensors weights.

No pickle is ever loaded. Folders are written to a temporary sibling and renamed into place, so a
crash mid-write never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import GroupDiTConfig
from .dit import GroupDiT

CHECKPOINT_FORMAT = "groupdiff-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHT_FILES = {"model": "model.safetensors", "ema": "ema.safetensors"}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it should rebuild."""


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder (nested folders allowed); on success it replaces ``path`` in one rename,
    on error it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        mode = _new_file_mode(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                file.chmod(mode)
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _new_file_mode(folder: Path) -> int:
    """The permissions ``open()`` gives a new file under the current umask.

    safetensors writes its files 0600 whatever the umask, which would leave a checkpoint written by a
    training job unreadable to a serving process running as another user; every file in a checkpoint
    folder gets the mode its ``config.json`` gets instead.
    """
    probe = folder / f".mode-probe-{uuid.uuid4().hex[:8]}"
    probe.touch()
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _contiguous_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}


def save_model(
    directory: str | os.PathLike,
    model: GroupDiT,
    ema: GroupDiT | None = None,
    metadata: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` (and its EMA) with the config that rebuilds it; ``metadata`` records where it came
    from (training config, data, encoder). ``write_extra(folder)`` adds files (a trainer's optimizer
    state) inside the same atomic write. Returns the checkpoint folder."""
    weights = {"model": model} | ({"ema": ema} if ema is not None else {})
    with atomic_directory(directory) as tmp:
        hashes = {}
        for kind, module in weights.items():
            save_file(_contiguous_state(module), str(tmp / WEIGHT_FILES[kind]))
            hashes[kind] = file_sha256(tmp / WEIGHT_FILES[kind])
        write_json(tmp / CONFIG_FILE, {
            "format": CHECKPOINT_FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model.config.to_dict(),
            "weights": {kind: {"file": WEIGHT_FILES[kind], "sha256": digest} for kind, digest in hashes.items()},
            "metadata": metadata or {},
        })
        if write_extra is not None:
            write_extra(tmp)
    return Path(directory)


def preferred_weights(directory: str | os.PathLike) -> str:
    """The weights a checkpoint is used with when none are named: ``ema`` when it has them, else ``model``
    (a serving folder holds only ``model``)."""
    return "ema" if "ema" in read_checkpoint_info(directory).get("weights", {}) else "model"


def read_checkpoint_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint, checked for format and version."""
    folder = Path(directory)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a GroupDiff checkpoint: {CONFIG_FILE} is missing")
    try:
        info = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from None
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{config_path} is not a GroupDiff checkpoint config")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: unsupported format_version {info.get('format_version')!r}")
    if "model" not in info:
        raise CheckpointError(f"{config_path} has no model config")
    return info


def load_config(directory: str | os.PathLike) -> GroupDiTConfig:
    info = read_checkpoint_info(directory)
    try:
        return GroupDiTConfig.from_dict(info["model"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory}: bad model config: {error}") from None


def load_state(directory: str | os.PathLike, weights: str = "model") -> dict[str, torch.Tensor]:
    """The verified tensors of one weight file (``"model"`` or ``"ema"``)."""
    info = read_checkpoint_info(directory)
    entry = info.get("weights", {}).get(weights)
    if entry is None:
        raise CheckpointError(f"{directory} has no {weights!r} weights (has: {sorted(info.get('weights', {}))})")
    path = Path(directory) / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"weights file missing: {path}")
    if file_sha256(path) != entry["sha256"]:
        raise CheckpointError(f"{path} does not match the hash in {CONFIG_FILE}: the file is corrupt or was replaced")
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None


def load_model(
    directory: str | os.PathLike, weights: str = "model", device: str | torch.device = "cpu"
) -> GroupDiT:
    """Rebuild the model from ``config.json`` and load the ``"model"`` or ``"ema"`` weights."""
    model = GroupDiT(load_config(directory))
    state = load_state(directory, weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{directory}: weights do not match the config: {error}") from None
    return model.to(device).eval()
