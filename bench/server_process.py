"""Servers under benchmark run in their own processes: start one, wait until it is ready, measure its
memory, stop it. The load generator then never shares a process (or a GIL) with the server it drives."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: Sequence[str], log_path: str | os.PathLike, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``command`` in a new process group, output to ``log_path``, BentoML telemetry off."""
    full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **(env or {})}
    with open(log_path, "wb") as log:
        return subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)


def wait_ready(url: str, timeout_s: float, process: subprocess.Popen | None = None,
               log_path: str | os.PathLike | None = None) -> None:
    """Poll ``url``/readyz until it answers 200; fail early, with the log's tail, if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}{log_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url.rstrip('/')}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the server at {url} was not ready within {timeout_s} s{log_tail(log_path)}")


def log_tail(log_path: str | os.PathLike | None, chars: int = 4000) -> str:
    if log_path is None:
        return ""
    with contextlib.suppress(OSError):
        return ":\n" + Path(log_path).read_text(errors="replace")[-chars:]
    return ""


def stop(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM (the servers drain and stop their workers), then SIGKILL of the process group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    return process.returncode


def resident_bytes(process: subprocess.Popen) -> int:
    """Resident memory of the server and every process it started (BentoML runs its worker as a child)."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total
