"""Keyed tensor files under the evaluation cache folder.

What is slow to compute and fully determined by its inputs (reference features, a teacher's
evaluation samples) is stored once as safetensors with its key in the file's metadata. A file whose
stored key differs from the request is recomputed and replaced, never trusted; writes go to a
temporary name first, so an interrupted run leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$GROUPDIFF_CACHE``, else ``~/.cache/groupdiff``."""
    return Path(override or os.environ.get("GROUPDIFF_CACHE") or Path.home() / ".cache" / "groupdiff")


def entry_path(cache: Path, kind: str, prefix: str, key: dict[str, str]) -> Path:
    """``cache/<kind>/<prefix>-<hash of key>.safetensors``: the prefix only makes the folder readable."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache / kind / f"{prefix}-{digest}.safetensors"


def read_entry(path: Path, key: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """The tensors stored at ``path`` when its stored key is ``key``, else None."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as handle:
        if json.loads((handle.metadata() or {}).get("key", "{}")) != key:
            return None
        return {name: handle.get_tensor(name) for name in handle.keys()}


def write_entry(path: Path, key: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({name: value.contiguous() for name, value in tensors.items()}, str(tmp),
              metadata={"key": json.dumps(key, sort_keys=True)})
    tmp.replace(path)


def cached_tensors(cache: Path, kind: str, prefix: str, key: dict[str, str],
                   compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], bool]:
    """The entry for ``key`` under ``cache/<kind>/``, computed and stored on a miss; and whether it was a hit."""
    path = entry_path(cache, kind, prefix, key)
    if (stored := read_entry(path, key)) is not None:
        return stored, True
    tensors = compute()
    write_entry(path, key, tensors)
    return tensors, False
