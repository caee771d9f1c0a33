"""A cache of built artefacts (ONNX exports, TensorRT engines), keyed so a wrong one never loads.

An artefact's key is the model hash plus everything the artefact depends on: for ONNX the export
settings, for a TensorRT engine also the GPU's compute capability, the TensorRT version, the precision
and the optimisation profiles (plans are tied to all of these, REFERENCES §5). The model hash comes from
the weights' bytes, verified against the checkpoint's record before any lookup
(`groupdiff.model.spec.weights_hash`), so a corrupted or replaced weights file never finds the engine
built from the original. Each entry is a folder named after the key, holding the artefact and a JSON
sidecar with the full key; a lookup reads the sidecar back and rebuilds on any difference, and
`check_sidecar` refuses a file given by hand that was built for another GPU or version. Entries are
written to a temporary folder and renamed into place, so a crash mid-build leaves nothing half-written
under the key's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIDECAR_SUFFIX = ".json"
CACHE_ENV = "GROUPDIFF_CACHE"


class EngineMismatchError(ValueError):
    """An engine or export was built for another model, GPU, library version or profile."""


def default_cache_dir() -> Path:
    """``$GROUPDIFF_CACHE/engines`` when set, else ``~/.cache/groupdiff/engines``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "groupdiff") / "engines"


@dataclass(frozen=True)
class EngineKey:
    model_hash: str
    artifact: str  # e.g. "onnx-denoiser", "onnx-decoder", "tensorrt-denoiser"
    target: dict[str, Any] = field(default_factory=dict)  # what else the artefact depends on (JSON values)

    def to_dict(self) -> dict[str, Any]:
        return {"model_hash": self.model_hash, "artifact": self.artifact, "target": self.target}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def folder_name(self) -> str:
        return f"{self.model_hash[:16]}/{self.artifact}-{self.digest[:16]}"


def sidecar_path(artifact: str | os.PathLike) -> Path:
    path = Path(artifact)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(artifact: str | os.PathLike, key: EngineKey) -> Path:
    path = sidecar_path(artifact)
    path.write_text(json.dumps(key.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(artifact: str | os.PathLike) -> EngineKey:
    path = sidecar_path(artifact)
    if not path.is_file():
        raise EngineMismatchError(f"{artifact} has no metadata sidecar ({path.name}): cannot tell which model, GPU "
                                  "and library version it was built for, so it is not loaded")
    try:
        data = json.loads(path.read_text())
        return EngineKey(str(data["model_hash"]), str(data["artifact"]), dict(data["target"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise EngineMismatchError(f"{path} is not a valid engine sidecar: {error}") from None


def check_sidecar(artifact: str | os.PathLike, expected: EngineKey) -> None:
    """Refuse ``artifact`` unless its sidecar records exactly ``expected``; the error names what differs."""
    found = read_sidecar(artifact)
    differences = []
    if found.model_hash != expected.model_hash:
        differences.append(f"model hash {found.model_hash[:12]} (expected {expected.model_hash[:12]})")
    if found.artifact != expected.artifact:
        differences.append(f"artifact {found.artifact!r} (expected {expected.artifact!r})")
    for name in sorted(set(found.target) | set(expected.target)):
        if found.target.get(name) != expected.target.get(name):
            differences.append(f"{name} {found.target.get(name)!r} (expected {expected.target.get(name)!r})")
    if differences:
        raise EngineMismatchError(f"{artifact} was built for a different target: " + "; ".join(differences)
                                  + ". Rebuild it for this machine (or drop the file to let the cache rebuild it)")


class EngineCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: EngineKey, filename: str) -> Path:
        return self.root / key.folder_name / filename

    def lookup(self, key: EngineKey, filename: str) -> Path | None:
        """The cached artefact when present and its sidecar matches ``key``; ``None`` means build it."""
        path = self.path(key, filename)
        if not path.is_file():
            return None
        try:
            check_sidecar(path, key)
        except EngineMismatchError:
            return None
        return path

    def get_or_build(self, key: EngineKey, filename: str, build: Callable[[Path], None]) -> Path:
        """The cached artefact, or ``build(path)`` it into a fresh entry first (atomically)."""
        found = self.lookup(key, filename)
        if found is not None:
            return found
        final = self.path(key, filename).parent
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            build(tmp / filename)
            write_sidecar(tmp / filename, key)
            if final.exists():  # a stale entry whose sidecar did not match
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final / filename
