"""Weights are verified before anything serves them (issue 30).

With a warm engine cache, a copy of a good checkpoint whose ``model.safetensors`` was byte-flipped,
truncated, emptied or replaced by a pickle is refused by the runtimes (before the cache is looked up, so
the engine of the original is never served for it) and by `groupdiff serve`, which exits 2 with one line
before any server starts. An untouched copy in another folder has the same verified hash and reuses the
cache.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from groupdiff.model import checkpoint as checkpoint_io
from groupdiff.model.checkpoint import CheckpointError
from groupdiff.serving import onnx_runtime
from groupdiff.serving.decoders import AUTOENCODER_WEIGHTS
from groupdiff.serving.runtimes import load_decoder, load_runtime
from groupdiff.serving.serve_config import check_checkpoint
from tests.serving.test_runtimes import group_inputs
from tests.support.checkpoints import save_latent_teacher, save_student
from tests.support.servers import free_port

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)

WEIGHTS = "model.safetensors"
SERVE_TIMEOUT_S = 30  # the refusal takes ~1.5 s here (Python and torch imports); a started server never exits


class Payload:
    """A pickle that leaves ``marker`` behind if anything ever unpickles it."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def flip_a_byte(data: bytes, marker: pathlib.Path) -> bytes:
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF  # inside the last tensor, so the header still parses and only the hash can tell
    return bytes(flipped)


CORRUPTIONS = {  # name: (new bytes from the good file's bytes and a marker path, what the refusal says)
    "byte-flip": (flip_a_byte, "does not match the sha256 in config.json"),
    "truncated": (lambda data, marker: data[:100], "is not a safetensors file"),
    "empty": (lambda data, marker: b"", "is not a safetensors file"),
    "pickle": (lambda data, marker: pickle.dumps(Payload(marker)), "is not a safetensors file"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return save_student(tmp_path_factory.mktemp("good") / "student")


@pytest.fixture(scope="module")
def warm(good, tmp_path_factory):
    """An engine cache holding the good checkpoint's ONNX export, and the runtime that exported it."""
    cache = tmp_path_factory.mktemp("cache")
    runtime = load_runtime("onnxruntime", good, cache_dir=cache)
    yield cache, runtime
    runtime.close()


def cache_files(cache: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in cache.rglob("*") if path.is_file())


def corrupt_copy(good: pathlib.Path, folder: pathlib.Path, how: str) -> pathlib.Path:
    copy = shutil.copytree(good, folder / "student")
    weights = copy / WEIGHTS
    weights.write_bytes(CORRUPTIONS[how][0](weights.read_bytes(), folder / "unpickled"))
    return copy


def serve(checkpoint: pathlib.Path, cache: pathlib.Path, log: pathlib.Path) -> tuple[int, str]:
    """`groupdiff serve` in its own session: (exit code, stderr). A server that starts instead of refusing
    fails the test and is stopped with SIGTERM, which also stops its workers (they run in sessions of their
    own, so stderr goes to a file their exit does not wait on)."""
    command = [sys.executable, "-m", "groupdiff", "serve", "--checkpoint", str(checkpoint), "--cache-dir", str(cache),
               "--port", str(free_port())]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        code = process.wait(timeout=SERVE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        pytest.fail(f"groupdiff serve was still up after {SERVE_TIMEOUT_S} s: it served {checkpoint}")
    return code, log.read_text()


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_runtimes_refuse_corrupt_weights_despite_a_warm_cache(how, good, warm, tmp_path):
    cache, _ = warm
    copy = corrupt_copy(good, tmp_path, how)
    before = cache_files(cache)
    reason = f"{re.escape(str(copy / WEIGHTS))} {CORRUPTIONS[how][1]}"
    with pytest.raises(CheckpointError, match=reason):
        load_runtime("onnxruntime", copy, cache_dir=cache)
    with pytest.raises(CheckpointError, match=reason):
        load_runtime("torch", copy)
    assert cache_files(cache) == before and not (tmp_path / "unpickled").exists()


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_serve_exits_with_one_line_before_starting(how, good, warm, tmp_path):
    cache, _ = warm
    copy = corrupt_copy(good, tmp_path, how)
    code, stderr = serve(copy, cache, tmp_path / "serve.log")
    assert code == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("groupdiff serve: error: ") and f"{copy / WEIGHTS} {CORRUPTIONS[how][1]}" in line
    assert not (tmp_path / "unpickled").exists()


def test_an_untouched_copy_elsewhere_reuses_the_warm_cache(good, warm, tmp_path, monkeypatch):
    cache, original = warm
    copy = shutil.copytree(good, tmp_path / "elsewhere" / "student")
    before = cache_files(cache)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again: the warm cache was not used")

    monkeypatch.setattr(onnx_runtime, "export_served_denoiser", no_export)
    runtime = load_runtime("onnxruntime", copy, cache_dir=cache)
    assert runtime.model_file == original.model_file and runtime.spec.model_hash == original.spec.model_hash
    inputs = group_inputs(3, 4)
    assert torch.equal(runtime.velocity(*inputs), original.velocity(*inputs))
    assert cache_files(cache) == before
    runtime.close()


def test_a_start_hashes_each_weights_file_once(good, warm, tmp_path, monkeypatch):
    """The server's check and every runtime verify the weights; only the first reads the file. A file
    written since is read again."""
    cache, _ = warm
    copy = shutil.copytree(good, tmp_path / "student")
    hashed, file_sha256 = [], checkpoint_io.file_sha256
    monkeypatch.setattr(checkpoint_io, "file_sha256", lambda path: hashed.append(path) or file_sha256(path))
    check_checkpoint(copy)
    load_runtime("onnxruntime", copy, cache_dir=cache).close()
    load_runtime("torch", copy)
    assert hashed == [copy / WEIGHTS]
    (copy / WEIGHTS).write_bytes((copy / WEIGHTS).read_bytes())
    check_checkpoint(copy)
    assert hashed == [copy / WEIGHTS] * 2


def test_missing_weights_are_refused_unless_the_copy_holds_none_by_design(good, tmp_path):
    """A Triton GPU repository copies config.json alone (the weights live in its TensorRT plans)."""
    copy = tmp_path / "student"
    copy.mkdir()
    shutil.copy2(good / "config.json", copy / "config.json")
    with pytest.raises(CheckpointError, match=f"weights file missing: {re.escape(str(copy / WEIGHTS))}"):
        check_checkpoint(copy)
    assert check_checkpoint(copy, verify=False).model_hash == check_checkpoint(good).model_hash


def test_weights_that_do_not_fit_the_config_are_refused_before_start(good, tmp_path):
    copy = shutil.copytree(good, tmp_path / "student")
    info = json.loads((copy / "config.json").read_text())
    info["model"]["depth"] += 1  # the weights hold one block fewer
    (copy / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="weights do not match the config: .*Missing key") as refused:
        check_checkpoint(copy)
    assert "\n" not in str(refused.value)


def test_a_corrupt_autoencoder_is_refused(tmp_path):
    checkpoint, autoencoder = save_latent_teacher(tmp_path)
    weights = autoencoder / AUTOENCODER_WEIGHTS
    weights.write_bytes(pickle.dumps(Payload(tmp_path / "unpickled")))
    loads = (lambda: check_checkpoint(checkpoint), lambda: load_decoder(checkpoint),
             lambda: load_decoder(checkpoint, runtime="onnxruntime", cache_dir=tmp_path / "cache"))
    for load in loads:
        with pytest.raises(CheckpointError, match=f"{re.escape(str(weights))} is not a safetensors file"):
            load()
    weights.unlink()  # diffusers would fall back to a pickled .bin
    with pytest.raises(CheckpointError, match=f"weights file missing: {re.escape(str(weights))}"):
        load_decoder(checkpoint)
    assert not (tmp_path / "unpickled").exists()
