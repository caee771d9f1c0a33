"""Start real GroupDiff servers on 127.0.0.1 for tests: `groupdiff serve` in a subprocess, on free ports.

Usage (module-scoped, so one server serves a whole test module)::

    @pytest.fixture(scope="module")
    def rest(tmp_path_factory):
        checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "teacher")
        with rest_server(checkpoint) as server:
            yield server          # server.url, server.port, server.log()

    with triton_server(checkpoint) as server:   # server.http_port, .grpc_port, .metrics_port, .scheduler_metrics_url
        ...

``env`` adds to or overrides the server's environment; a value of None removes the variable.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from groupdiff.model import GroupDiT, model_config
from groupdiff.model.checkpoint import save_model

TINY = {"input_size": 8, "in_channels": 1, "depth": 2, "num_classes": 10, "max_group_size": 4}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_checkpoint(path: str | os.PathLike, kind: str = "teacher", steps: int = 2, group_size: int = 4,
                    seed: int = 0, student_sampler: str = "euler") -> Path:
    """A random DiT-T/4 on 8x8x1 images, 10 classes, groups up to 4: a teacher (Heun, ``steps`` steps,
    guidance 1.0, GroupDiff-l) or a student (``student_sampler``, steps 1/2/4, baked guidance 1.0,
    distilled at ``group_size``). Weights are noise with std 0.05, so outputs are not trivially zero."""
    model = GroupDiT(model_config("DiT-T/4", **TINY))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    if kind == "teacher":
        metadata = {"train_config": {"sample": {"sampler": "heun", "steps": steps, "guidance_scale": 1.0},
                                     "plan": {"mode": "groupdiff-l"}}}
    elif kind == "student":
        metadata = {"distill": {"sampler": student_sampler, "steps": [1, 2, 4], "teacher": "tests/teacher",
                                "guidance": {"scale": 1.0, "mode": "groupdiff-l", "interval": [0.0, 1.0]},
                                "group_size": group_size}}
    else:
        raise ValueError(f"kind must be teacher or student, got {kind!r}")
    return save_model(path, model, metadata=metadata)


@dataclass
class Server:
    process: subprocess.Popen
    log_path: Path
    port: int = 0  # REST
    http_port: int = 0  # Triton
    grpc_port: int = 0
    metrics_port: int = 0  # Triton's nv_* metrics
    scheduler_metrics_port: int = 0  # groupdiff_* metrics of the Triton frontend
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def scheduler_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.scheduler_metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def _start(args: Sequence[str], ready_url: str, server: Server, timeout: float, env: dict | None) -> Server:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"`groupdiff serve` exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return server
        time.sleep(0.3)
    raise TimeoutError(f"`groupdiff {' '.join(args)}` not ready within {timeout} s:\n{server.log()[-4000:]}")


def _popen(args: Sequence[str], env: dict | None, log_dir: Path) -> tuple[subprocess.Popen, Path]:
    log_path = log_dir / "server.log"
    full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(log_dir / "bentoml"),
                "GROUPDIFF_CACHE": str(log_dir / "cache"), **(env or {})}
    full_env = {name: value for name, value in full_env.items() if value is not None}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "groupdiff", "serve", *args], stdout=log,
                                   stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    return process, log_path


def _session_members(session_id: int) -> list[tuple[int, str]]:
    """(pid, command) of every live process in a session, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            command, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
            if int(fields[3]) == session_id and fields[0] != "Z":  # fields[3]: session id; Z: zombie
                members.append((int(stat.parent.name), command))
    return members


def _lingering_session_members(session_id: int, grace: float = 5.0) -> list[tuple[int, str]]:
    """Members of the session still alive `grace` seconds after its leader exited.

    Helpers that end by themselves once their parent is gone (multiprocessing's resource tracker reads EOF,
    cleans up shared memory, then exits) may still be finishing when the server's exit is seen; a real leak
    (a backend stub) is still there after the grace period."""
    deadline = time.monotonic() + grace
    while (members := _session_members(session_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [(pid, _command_line(pid) or command) for pid, command in members]


def _command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return ""


def stop(server: Server, timeout: float = 30.0) -> int:
    """SIGTERM (graceful shutdown), then SIGKILL of the whole process group if it hangs.

    A graceful shutdown must take its children with it (tritonserver, its Python backend stubs): any
    process still in the server's session once the server exited is killed and reported as an error,
    so a leak fails the test that owns the server instead of outliving the test run."""
    if server.alive():
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)
    # start_new_session: the session id is the server's pid
    leftovers = _lingering_session_members(server.process.pid)
    for pid, _ in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leftovers:
        raise RuntimeError(f"`groupdiff serve` exited but left {leftovers} running:\n{server.log()[-4000:]}")
    return server.process.returncode


@contextlib.contextmanager
def rest_server(checkpoint: str | os.PathLike, runtime: str = "torch", args: Sequence[str] = (),
                env: dict | None = None, timeout: float = 90.0) -> Iterator[Server]:
    """`groupdiff serve --frontend rest` on a free port; yields once /readyz answers 200."""
    port = free_port()
    argv = ["--checkpoint", str(checkpoint), "--runtime", runtime, "--port", str(port), *args]
    with tempfile.TemporaryDirectory(prefix="groupdiff-rest-") as tmp:
        process, log_path = _popen(argv, env, Path(tmp))
        server = Server(process, log_path, port=port, env=env or {})
        try:
            yield _start(argv, f"{server.url}/readyz", server, timeout, env)
        finally:
            stop(server)


@contextlib.contextmanager
def triton_server(checkpoint: str | os.PathLike, runtime: str = "torch", args: Sequence[str] = (),
                  env: dict | None = None, timeout: float = 120.0, wait: bool = True) -> Iterator[Server]:
    """`groupdiff serve --frontend triton` (PyTriton) on free ports; yields once model `groupdiff` is ready
    (at once with ``wait=False``, to watch it start)."""
    ports = [free_port() for _ in range(4)]
    with tempfile.TemporaryDirectory(prefix="groupdiff-triton-") as tmp:
        argv = ["--checkpoint", str(checkpoint), "--runtime", runtime, "--frontend", "triton",
                "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
                "--scheduler-metrics-port", str(ports[3]), "--workspace", str(Path(tmp) / "workspace"), *args]
        if "--triton-instances" not in args:  # each instance is a backend stub process: keep test servers small
            argv += ["--triton-instances", "2"]
        process, log_path = _popen(argv, env, Path(tmp))
        server = Server(process, log_path, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                        scheduler_metrics_port=ports[3], env=env or {})
        try:
            yield _start(argv, f"http://127.0.0.1:{ports[0]}/v2/models/groupdiff/ready", server, timeout, env) \
                if wait else server
        finally:
            stop(server)


@contextlib.contextmanager
def rest_and_triton(checkpoint: str | os.PathLike, rest_args: Sequence[str] = (),
                    triton_args: Sequence[str] = ()) -> Iterator[tuple[Server, Server]]:
    """A REST and a Triton server of one checkpoint, started side by side (each start takes most of a minute);
    both are stopped on exit, also when only one of them came up."""
    managers = [rest_server(checkpoint, args=rest_args), triton_server(checkpoint, args=triton_args)]
    with ThreadPoolExecutor(2) as pool:
        entered = [pool.submit(manager.__enter__) for manager in managers]
        try:
            rest, triton = (future.result() for future in entered)
            yield rest, triton
        finally:
            running = [m for m, future in zip(managers, entered, strict=True) if future.exception() is None]
            list(pool.map(lambda manager: manager.__exit__(None, None, None), running))


def metric_value(text: str, name: str, **labels) -> float:
    """The value of one series in a Prometheus text exposition (labels not given may take any value)."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if match and match[1] == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            if all(found.get(k) == str(v) for k, v in labels.items()):
                return float(match[3])
    raise AssertionError(f"metric {name}{labels} not in the exposition")
