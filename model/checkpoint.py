"""Checkpoints: a folder with ``config.json`` (rebuilds the model) and safetensors weights.

No pickle is ever loaded. Folders are written to a temporary sibling and renamed into place, so a
crash mid-write never leaves a half-written checkpoint under the final name.

A text model's ``config.json`` records its text encoder (``text_encoder``: name, sha256, context length),
and its folder may carry that frozen encoder in ``text_encoder/`` so that it is self-contained. An encoder
is used with a checkpoint only when its sha256 is the recorded one: the model learned that encoder's
features (and stores its null prompt), and any other encoder's are noise to it.
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import GroupDiTConfig
from .dit import GroupDiT
from .text_encoder import TextEncoder, TextEncoderRecord

CHECKPOINT_FORMAT = "groupdiff-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHT_FILES = {"model": "model.safetensors", "ema": "ema.safetensors"}
TEXT_ENCODER_DIR = "text_encoder"  # a text checkpoint's own copy of its frozen encoder (`TextEncoder.save`)
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # `cached_file_sha256`: file identity -> sha256


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
    """SHA-256 of a file's bytes, read in 1 MiB chunks so a multi-GB file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_file_sha256(path: Path) -> str:
    """`file_sha256`, remembered in this process per (path, inode, size, mtime, ctime).

    One server start verifies the same weights in several places (the CLI's check, the spec, the runtime,
    the decoder); this reads a multi-GB file once. A file written since, even with its mtime put back,
    has a new ctime and is hashed again.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def check_safetensors(path: Path) -> None:
    """Refuse a file that is not one complete safetensors file: missing, empty, truncated, padded, or in
    another format such as a pickle (which is never loaded).

    safetensors parses only the header and checks that it describes exactly the file's bytes, so this is
    cheap, and it names what is wrong where a hash mismatch could only say that something is.
    """
    if not path.is_file():
        raise CheckpointError(f"weights file missing: {path}")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        reason = str(error).removeprefix("Error while deserializing header: ")
        raise CheckpointError(f"{path} is not a safetensors file ({path.stat().st_size} bytes, {reason}): it is "
                              "truncated, emptied or in another format; only safetensors weights are loaded") from None


def _contiguous_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}


def save_model(
    directory: str | os.PathLike,
    model: GroupDiT,
    ema: GroupDiT | None = None,
    metadata: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    text_encoder: TextEncoder | TextEncoderRecord | None = None,
) -> Path:
    """Write ``model`` (and its EMA) with the config that rebuilds it; ``metadata`` records where it came
    from (training config, data, encoder). ``write_extra(folder)`` adds files (a trainer's optimizer
    state) inside the same atomic write. Returns the checkpoint folder.

    A text model needs ``text_encoder``: a `TextEncoder` is recorded and copied into ``text_encoder/``
    (a self-contained checkpoint), a `TextEncoderRecord` only recorded (frequent training checkpoints)."""
    weights = {"model": model} | ({"ema": ema} if ema is not None else {})
    record = _text_encoder_record_for(model, text_encoder)
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
        } | ({"text_encoder": record.to_dict()} if record is not None else {}))
        if isinstance(text_encoder, TextEncoder):
            text_encoder.save(tmp / TEXT_ENCODER_DIR)
        if write_extra is not None:
            write_extra(tmp)
    return Path(directory)


def _text_encoder_record_for(model: GroupDiT, encoder: TextEncoder | TextEncoderRecord | None
                             ) -> TextEncoderRecord | None:
    cfg = model.config
    if cfg.condition != "text":
        if encoder is not None:
            raise CheckpointError("a class model has no text encoder to record")
        return None
    if encoder is None:
        raise CheckpointError("a text model's checkpoint records its text encoder: pass text_encoder (the "
                              "TextEncoder, or its record)")
    if not bool(model.null_mask.any()):
        raise CheckpointError("this text model has no null prompt: call model.set_null_prompt(encoder) first")
    record = encoder.record if isinstance(encoder, TextEncoder) else encoder
    if record.context_length > cfg.text_tokens or (isinstance(encoder, TextEncoder) and encoder.width != cfg.text_dim):
        raise CheckpointError(f"text encoder {record.name!r} does not fit the model (at most {cfg.text_tokens} "
                              f"tokens of width {cfg.text_dim})")
    return record


def text_encoder_record(directory: str | os.PathLike) -> TextEncoderRecord | None:
    """The text encoder a text checkpoint was trained with; None for a class checkpoint."""
    info = read_checkpoint_info(directory)
    if info["model"].get("condition", "class") != "text":
        return None
    try:
        return TextEncoderRecord.from_dict(info["text_encoder"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: a text model needs a text_encoder entry with name, "
                              f"sha256 and context_length ({error})") from None


def check_text_encoder(directory: str | os.PathLike, encoder: TextEncoder) -> None:
    """Refuse an encoder other than the one the text checkpoint records (its weights' sha256 differs)."""
    record = text_encoder_record(directory)
    if record is None:
        raise CheckpointError(f"{directory} is a class-conditioned checkpoint: it takes no text encoder")
    if encoder.sha256 != record.sha256:
        raise CheckpointError(f"{directory} was trained with text encoder {record.name!r} (sha256 {record.sha256}); "
                              f"the encoder given is {encoder.name!r} (sha256 {encoder.sha256}): its features would "
                              "mean nothing to the model")


def load_text_encoder(directory: str | os.PathLike) -> TextEncoder:
    """The frozen encoder a text checkpoint carries in ``text_encoder/``, verified against its record."""
    return _carried_text_encoder(directory, TextEncoder.load)


def verify_text_encoder(directory: str | os.PathLike) -> None:
    """`load_text_encoder`'s checks (present, the recorded sha256) without building the encoder."""
    _carried_text_encoder(directory, TextEncoder.verify)


def _carried_text_encoder(directory, open_folder):
    """``open_folder(folder, expected_sha256=...)`` on the checkpoint's ``text_encoder/``; CheckpointError when
    the checkpoint is not a text model, carries no encoder, or carries another one."""
    record = text_encoder_record(directory)
    if record is None:
        raise CheckpointError(f"{directory} is a class-conditioned checkpoint: it has no text encoder")
    folder = Path(directory) / TEXT_ENCODER_DIR
    if not folder.is_dir():
        raise CheckpointError(f"{directory} carries no {TEXT_ENCODER_DIR}/: load its encoder {record.name!r} "
                              f"(sha256 {record.sha256}) from its own files with TextEncoder.load")
    try:
        return open_folder(folder, expected_sha256=record.sha256)
    except ValueError as error:
        raise CheckpointError(f"{directory}: {error}") from None


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


def recorded_weights(directory: str | os.PathLike, weights: str = "model") -> tuple[Path, str]:
    """The file of one weight entry (``"model"`` or ``"ema"``) and the sha256 ``config.json`` records for it,
    taken on trust: `verify_weights` is what checks them."""
    info = read_checkpoint_info(directory)
    entry = info.get("weights", {}).get(weights)
    if entry is None:
        raise CheckpointError(f"{directory} has no {weights!r} weights (has: {sorted(info.get('weights', {}))})")
    try:
        return Path(directory) / entry["file"], str(entry["sha256"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: the {weights!r} weights entry needs a file and a "
                              "sha256") from None


def verify_weights(directory: str | os.PathLike, weights: str = "model") -> tuple[Path, str]:
    """The path and sha256 of one weight file, once it is shown to be a complete safetensors file whose
    bytes hash to the sha256 ``config.json`` records.

    Loading weights and keying a cached engine by them (`groupdiff.model.spec.weights_hash`) both go
    through here, so a file corrupted or replaced after the checkpoint was written is refused before
    anything uses it, and never matches an engine built from the original.
    """
    path, recorded = recorded_weights(directory, weights)
    check_safetensors(path)
    digest = cached_file_sha256(path)
    if digest != recorded:
        raise CheckpointError(f"{path} does not match the sha256 in {CONFIG_FILE} ({digest[:12]} on disk, "
                              f"{recorded[:12]} recorded): the file is corrupt or was replaced")
    return path, digest


def load_state(directory: str | os.PathLike, weights: str = "model") -> dict[str, torch.Tensor]:
    """The verified tensors of one weight file (``"model"`` or ``"ema"``)."""
    path, _ = verify_weights(directory, weights)
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None


def check_loads(directory: str | os.PathLike, weights: str = "model") -> None:
    """Refuse verified weights that would not load into the model ``config.json`` describes, without
    reading a tensor: the model is built on the meta device and given tensors of the header's shapes.

    A server runs this before it starts, so such a checkpoint is refused in one line at start-up instead
    of when its model thread loads.
    """
    path, _ = verify_weights(directory, weights)
    with torch.device("meta"):
        model = GroupDiT(load_config(directory))
    with safe_open(str(path), framework="pt") as handle:
        state = {name: torch.empty(handle.get_slice(name).get_shape(), device="meta") for name in handle.keys()}
    _load_into(model, state, directory)


def _load_into(model: GroupDiT, state: dict[str, torch.Tensor], directory: str | os.PathLike) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # torch lists each missing, unexpected or misshapen tensor on its own line
        raise CheckpointError(f"{directory}: weights do not match the config: {' '.join(str(error).split())}") from None


def load_model(
    directory: str | os.PathLike, weights: str = "model", device: str | torch.device = "cpu",
    text_encoder: TextEncoder | None = None,
) -> GroupDiT:
    """Rebuild the model from ``config.json`` and load the ``"model"`` or ``"ema"`` weights; a ``text_encoder``
    to be used with a text model is checked against the one the checkpoint records first."""
    if text_encoder is not None:
        check_text_encoder(directory, text_encoder)
    model = GroupDiT(load_config(directory))
    _load_into(model, load_state(directory, weights), directory)
    return model.to(device).eval()
