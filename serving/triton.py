"""The Triton frontend: model ``groupdiff`` (KServe v2 over gRPC and HTTP) in PyTriton's bundled server.

Triton does no batching here (``batching=False``): each inference is one request, handed to the same
group scheduler the REST frontend uses, which batches groups itself. The inference callable is a
coroutine, so many requests wait on the scheduler at once. Requests are validated exactly as over
REST (`serving/requests.py`); a refused request becomes a Triton error whose message is the contract's
``<code>: <message>`` and whose status follows the REST one: INVALID_ARGUMENT / HTTP 400 for bad input,
UNAVAILABLE / 503 for overload, loading, shutdown and deadlines (Triton has no 429 or 504), INTERNAL / 500
for a bug; never a traceback (`serving/pytriton_stub.py` does this inside Triton's stub processes). Wrong
datatypes, shapes and unknown inputs are refused by Triton itself before the model runs, also with
INVALID_ARGUMENT naming the input.

Readiness: the model is loaded and warmed up before Triton starts, and Triton loads model ``groupdiff``
from its model store at start-up, so ``/v2/health/ready`` (strict readiness) and the model's ready
endpoint answer 200 only once it can serve (PyTriton's default instead loads models through the API once
the server already reports ready).

PyTriton notes (REFERENCES §6): the Python backend stub must load this interpreter's libpython, so
``LD_LIBRARY_PATH`` gets ``sysconfig``'s LIBDIR before the server starts (it inherits our
environment); SIGTERM/SIGINT, from before Triton starts, lead to ``triton.stop()``, which lets in-flight
inferences finish. When tritonserver's exit timeout runs out while the model unloads, it exits and
orphans its backend stubs; the frontend stops whatever of Triton's processes is still running before it
exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from groupdiff.protocol.triton import INPUTS, MODEL_NAME, MODEL_VERSION, NO_MEMBER, OUTPUTS, triton_error_code

from .engine import Engine, Result
from .metrics import ServingMetrics
from .pytriton_stub import INTERNAL, Refusal, install_entry_point
from .requests import RequestError, ServedModel, ServerLimits, invalid, resolve
from .serve_config import ServeConfig, build_engine

LOG = logging.getLogger("groupdiff.serving")
MONITOR_S = 1.0  # how often the frontend checks that Triton is still alive
# PyTriton declares tensors with numpy dtypes (BYTES as np.bytes_)
NUMPY_DTYPES = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "UINT8": np.uint8, "BYTES": np.bytes_,
                "BOOL": np.bool_}
INPUT_NAMES = frozenset(tensor.name for tensor in INPUTS)


def body_from_inputs(inputs: dict[str, np.ndarray]) -> dict:
    """KServe v2 inputs (each of shape [1], ``CLASS_IDS`` [k]) -> the JSON body a REST client would send (a
    ``PROMPT`` is its UTF-8 text; the body model checks and normalises it as over REST)."""
    unknown = sorted(set(inputs) - INPUT_NAMES)
    if unknown:
        raise invalid(f"unknown inputs {unknown}")
    body = {}
    for name, field in ((tensor.name, tensor.field) for tensor in INPUTS):
        if name not in inputs:
            continue
        value = np.asarray(inputs[name])
        if field == "class_ids":
            body[field] = [int(item) for item in value.reshape(-1)]  # bounds and length: the body model's
            continue
        if value.size != 1:
            raise invalid(f"{field}: {name} must hold exactly one value, got shape {value.shape}")
        item = value.reshape(()).item()
        if field in ("group_policy", "prompt"):
            try:
                item = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            except UnicodeDecodeError:
                raise invalid(f"{field}: {name} is not valid UTF-8") from None
        elif field == "guidance_scale":
            item = float(item)
        elif field == "return_attention":
            item = bool(item)  # a BOOL tensor: Triton refuses any other datatype
        else:
            item = int(item)
        body[field] = item
    return body


def outputs_of(result: Result) -> dict[str, np.ndarray]:
    """The model's outputs for one answered request (`groupdiff.protocol.triton.OUTPUTS`): the classes of a class
    request or the normalised prompt of a prompt request, and the attention ones only when asked for (PyTriton
    cannot send a tensor with no elements)."""
    request = result.request
    outputs = {"IMAGES": result.images, "SEEDS": np.asarray(result.seeds, dtype=np.int64)}
    if request.prompt is not None:
        outputs["PROMPT"] = np.asarray([request.prompt.encode("utf-8")], dtype=np.bytes_)
    else:
        outputs["CLASS_IDS"] = np.asarray([request.member_class(i) for i in range(request.num_images)], np.int64)
    if result.attention is not None:
        outputs["ATTENTION"] = np.stack([group.mass for group in result.attention]).astype(np.float32)
        outputs["ATTENTION_MEMBERS"] = np.asarray(
            [[NO_MEMBER if i is None else i for i in group.members] for group in result.attention], dtype=np.int64)
    return outputs


def refusal(error: RequestError) -> Refusal:
    return Refusal(triton_error_code(error.status), f"{error.code}: {error.message}")


def make_infer(engine: Engine, limits: ServerLimits):
    """The coroutine PyTriton calls for each batch of requests (one request each: batching is off)."""

    async def infer(requests):
        responses = []
        for request in requests:
            started = time.perf_counter()
            try:
                served: ServedModel | None = engine.served
                if served is None:
                    raise engine.not_ready_error()
                try:
                    resolved = resolve(body_from_inputs(dict(request.items())), served, limits)
                except RequestError:
                    engine.metrics.reject("invalid")
                    raise
                result = await engine.submit(resolved, encode=False)
            except RequestError as error:
                LOG.info("triton request -> %s in %.1f ms", error.code, (time.perf_counter() - started) * 1000)
                raise refusal(error) from None
            except Exception:
                LOG.exception("triton request failed")
                raise Refusal(*INTERNAL) from None
            LOG.info("%s %s k=%d N=%d steps=%d policy=%s seed=%d -> ok in %.1f ms", resolved.request_id,
                     resolved.describe_condition(), resolved.num_images, resolved.group_size, resolved.steps,
                     resolved.group_policy, resolved.seed, (time.perf_counter() - started) * 1000)
            responses.append(outputs_of(result))
        return responses

    return infer


def python_library_path() -> str:
    """``LD_LIBRARY_PATH`` with this interpreter's LIBDIR first, for the Python backend stub."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    rest = os.environ.get("LD_LIBRARY_PATH", "")
    return os.pathsep.join(p for p in (libdir, rest) if p)


def serve_triton(config: ServeConfig, host: str, http_port: int, grpc_port: int, metrics_port: int,
                 scheduler_metrics_port: int, workspace: str | None = None, instances: int = 8) -> None:
    """Load the model, start PyTriton and the groupdiff_* metrics endpoint, serve until SIGTERM/SIGINT."""
    os.environ["LD_LIBRARY_PATH"] = python_library_path()
    from prometheus_client import start_http_server
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy
    from pytriton.utils.workspace import Workspace

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = ServingMetrics()
    engine = build_engine(config, metrics).start()
    engine.wait_ready()
    start_http_server(scheduler_metrics_port, addr=host, registry=metrics.registry)
    workspace_dir = Path(workspace or tempfile.mkdtemp(prefix="groupdiff-pytriton-"))
    triton_config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                                 metrics_address=host, metrics_port=metrics_port,
                                 exit_timeout_secs=int(config.drain_timeout_s) + 1)
    inputs = [Tensor(name=tensor.name, dtype=NUMPY_DTYPES[tensor.datatype], shape=tensor.shape,
                     optional=tensor.optional) for tensor in INPUTS]
    outputs = [Tensor(name=tensor.name, dtype=NUMPY_DTYPES[tensor.datatype], shape=tensor.shape)
               for tensor in OUTPUTS]
    # Triton runs one request at a time per model instance: `instances` stubs forward requests
    # concurrently to this process, where they wait on the one scheduler together.
    bind = {"model_name": MODEL_NAME, "model_version": MODEL_VERSION, "inputs": inputs, "outputs": outputs,
            "config": ModelConfig(batching=False), "strict": True}
    # The model goes into the model store before tritonserver starts, which then loads it at start-up (see the
    # module's docstring on readiness), with our entry point in front of PyTriton's stub model.
    load_at_start = TritonLifecyclePolicy(launch_triton_on_startup=True, local_model_store=True)
    # Signals only set an event, from the start on: Triton reports ready (and a supervisor may stop the server)
    # before PyTriton's run() returns, and a SIGTERM there must still stop Triton rather than orphan it.
    stop_requested = threading.Event()

    def request_stop(signum, _frame):
        LOG.info("signal %d: stopping Triton (in-flight requests finish first)", signum)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    workspace = Workspace(workspace_dir)
    triton = Triton(config=triton_config, workspace=workspace, triton_lifecycle_policy=load_at_start)
    try:
        triton.bind(infer_func=[make_infer(engine, config.limits) for _ in range(instances)], **bind)
        install_entry_point(workspace.model_store_path / MODEL_NAME / str(MODEL_VERSION))
        triton.run()
    except Exception as error:
        triton.stop()
        engine.close(0)
        raise RuntimeError(f"Triton did not load model {MODEL_NAME}: {error}") from error

    # tritonserver's exit timeout also bounds unloading the model: when it expires it exits at once and
    # leaves its Python backend stubs (and their multiprocessing helpers) running. Known now, stopped at exit.
    triton_processes = psutil.Process().children(recursive=True)
    LOG.info("Triton model %s on http %s:%d, grpc %s:%d, metrics :%d; groupdiff metrics :%d/metrics",
             MODEL_NAME, host, http_port, host, grpc_port, metrics_port, scheduler_metrics_port)
    try:
        while not stop_requested.wait(MONITOR_S) and triton.is_alive():  # what PyTriton's serve() does
            pass
    finally:
        triton.stop()
        stop_leftovers(triton_processes)
    engine.close(config.drain_timeout_s)


def stop_leftovers(processes: list[psutil.Process], grace_s: float = 5.0) -> None:
    """SIGTERM the processes still running, SIGKILL those that outlive ``grace_s``."""
    alive = [process for process in processes if process.is_running()]
    if not alive:
        return
    LOG.warning("stopping %d process(es) Triton left behind: %s", len(alive),
                ", ".join(f"{process.pid} ({process.name()})" for process in alive))
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, stubborn = psutil.wait_procs(alive, timeout=grace_s)
    for process in stubborn:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
