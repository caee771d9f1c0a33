"""Files of a run folder shared by the trainer and the distiller: checkpoints with a ``latest`` pointer,
pruning, and the ``log.jsonl`` that a resumed run truncates to its checkpoint's step."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from groupdiff.model.checkpoint import CheckpointError, read_checkpoint_info

LATEST = "latest"


def checkpoint_folder(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}"


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / "checkpoints" / LATEST
    return out / "checkpoints" / pointer.read_text().strip() if pointer.is_file() else None


def check_same_setup(folder: Path, config_key: str, current: dict[str, Any], fields: tuple[str, ...],
                     added: dict[str, Any] | None = None) -> None:
    """Refuse to resume from a checkpoint whose recorded run config (``metadata[config_key]``) differs in a
    field that shapes the trajectory: the resumed run would silently be another run. ``added`` gives the
    value of fields that checkpoints written before the field existed ran with."""
    saved = read_checkpoint_info(folder).get("metadata", {}).get(config_key)
    if saved is None:
        raise CheckpointError(f"{folder} has no {config_key} in its metadata: it was not written by this command")
    saved = with_added_fields(saved, added or {})
    mismatched = [k for k in fields if saved.get(k) != current[k]]
    if mismatched:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {current[k]!r}" for k in mismatched)
        raise CheckpointError(f"{folder} was made with a different setup ({details})")


def with_added_fields(saved: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the ``added`` defaults filled in, one level into nested sections (a key added to
    ``dmd`` leaves the old ``dmd`` section otherwise as recorded)."""
    merged = {**added, **saved}
    for key, default in added.items():
        if isinstance(default, dict) and isinstance(saved.get(key), dict):
            merged[key] = {**default, **saved[key]}
    return merged


def mark_latest(folder: Path) -> None:
    """Point ``checkpoints/latest`` at ``folder`` atomically."""
    pointer = folder.parent / LATEST
    tmp_pointer = pointer.with_suffix(".tmp")
    tmp_pointer.write_text(folder.name + "\n")
    os.replace(tmp_pointer, pointer)


def prune_checkpoints(out: Path, keep: int) -> None:
    folders = sorted(p for p in (out / "checkpoints").glob("step-*") if p.is_dir())
    for old in folders[:-keep]:
        shutil.rmtree(old)


def append_log(out: Path, record: dict[str, Any]) -> None:
    with open(out / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_log(out: Path, step: int) -> None:
    """Drop log lines a killed run wrote after its last checkpoint; the resumed run writes them again."""
    path = out / "log.jsonl"
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
