"""KServe v2 SDK (gRPC or HTTP) for the Triton frontend, on NVIDIA's tritonclient.

The model ``groupdiff`` takes one request per call (inputs of shape [1], a text model's ``PROMPT`` as UTF-8
BYTES; see the contract in docs/clients.md) and returns ``IMAGES`` uint8 [k, H, W, C], ``SEEDS`` int64 [k] and, with
``return_attention=True``, the attention mass (`GenerationResult.attention`). Results are the
same `GenerationResult` as over REST. `TritonClient.stream` sends many requests on one gRPC
bidirectional stream and yields each result as it completes. Errors map to the SDK's typed errors,
and overload errors are retried with the same `RetryPolicy` as the REST client (Triton sends no
``Retry-After``, so the back-off applies).
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from groupdiff.protocol.auth import TOKEN_ENV
from groupdiff.protocol.generate import CONDITION_FIELDS
from groupdiff.protocol.triton import CODE_FOR_TRITON_STATUS, INPUT_BY_FIELD, MODEL_NAME, OUTPUTS

from .errors import ERRORS_BY_CODE, DeadlineExceeded, GroupDiffError, QueueFull, ServerUnavailable, error_for
from .rest import DEFAULT_RETRY, RetryPolicy, condition, retry_delay
from .results import GenerationResult

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
OUTPUT_NAMES = tuple(tensor.name for tensor in OUTPUTS)
CODE_IN_MESSAGE = re.compile(r"\b(" + "|".join(ERRORS_BY_CODE) + r")\b")


def protocol_module(protocol: str, asynchronous: bool = False):
    if protocol not in DEFAULT_URLS:
        raise ValueError(f"protocol must be grpc or http, got {protocol!r}")
    if protocol == "grpc":
        import tritonclient.grpc as module
        import tritonclient.grpc.aio as aio
    else:
        import tritonclient.http as module
        import tritonclient.http.aio as aio
    return aio if asynchronous else module, module


def build_inputs(module, class_id: int | None = None, num_images: int | None = None,
                 class_ids: Sequence[int] | None = None, prompt: str | None = None, **options: Any) -> list:
    """The request's tensors (``CLASS_IDS`` [k] for an image set, every other input [1], ``PROMPT`` as UTF-8);
    unset options are left to the server's defaults."""
    import numpy as np
    from tritonclient.utils import triton_to_np_dtype

    optional = [field for field in INPUT_BY_FIELD if field not in CONDITION_FIELDS and field != "num_images"]
    unknown = set(options) - set(optional)
    if unknown:
        raise TypeError(f"unknown generate options {sorted(unknown)}; known: {', '.join(optional)}")
    values = {"class_id": class_id, "num_images": num_images, "class_ids": class_ids, "prompt": prompt, **options}
    inputs = []
    for field, value in values.items():
        if value is None:
            continue
        tensor = INPUT_BY_FIELD[field]
        data = np.array(list(value) if field == "class_ids" else [value.encode() if isinstance(value, str) else value],
                        dtype=triton_to_np_dtype(tensor.datatype))
        infer_input = module.InferInput(tensor.name, list(data.shape), tensor.datatype)
        infer_input.set_data_from_numpy(data)
        inputs.append(infer_input)
    return inputs


def translate(error: Exception) -> GroupDiffError:
    """A tritonclient exception as the SDK's typed error: the contract code in the message wins,
    else the gRPC/HTTP status."""
    from tritonclient.utils import InferenceServerException

    if isinstance(error, TimeoutError):
        return DeadlineExceeded(f"no answer in time: {error}")
    if not isinstance(error, InferenceServerException):
        return ServerUnavailable(f"cannot reach the Triton server: {error}")
    message, status = error.message() or str(error), str(error.status() or "")
    found = CODE_IN_MESSAGE.search(message)
    code = found.group(1) if found else CODE_FOR_TRITON_STATUS.get(status.removeprefix("StatusCode."))
    if code is None and "unavailable" in message.lower():
        return ServerUnavailable(message)
    http_status = int(status) if status.isdigit() else None
    failure = error_for(http_status, code, message)
    if isinstance(failure, QueueFull) and failure.status is None:
        failure.status = 429 if failure.code == "queue_full" else 503  # so the retry policy treats it as overload
    return failure


def call_errors() -> tuple[type[Exception], ...]:
    """What a tritonclient call raises when the server refuses or cannot be reached (OSError covers
    refused connections and socket timeouts of both the gevent and the aiohttp transports)."""
    from tritonclient.utils import InferenceServerException

    return InferenceServerException, OSError


def to_result(response, class_id: int | None, options: dict[str, Any], started: float,
              protocol: str) -> GenerationResult:
    settings = {k: options.get(k) for k in ("group_size", "steps", "guidance_scale", "group_policy")}
    prompt = response.as_numpy("PROMPT")  # a text model's normalised prompt, (1,) UTF-8
    return GenerationResult.from_arrays(response.as_numpy("IMAGES"), response.as_numpy("SEEDS"), class_id, settings,
                                        time.perf_counter() - started, protocol, response.as_numpy("CLASS_IDS"),
                                        response.as_numpy("ATTENTION"), response.as_numpy("ATTENTION_MEMBERS"),
                                        None if prompt is None else bytes(prompt.reshape(-1)[0]).decode("utf-8"))


class TritonClient:
    """Blocking KServe v2 client; ``protocol`` "grpc" (default, port 8001) or "http" (8000)."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = MODEL_NAME,
                 token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY, timeout_s: float = 70.0):
        _, self._module = protocol_module(protocol)
        self.protocol, self.model, self.retry, self.timeout_s = protocol, model, retry, timeout_s
        url = url or DEFAULT_URLS[protocol]
        if protocol == "grpc":
            self._client = self._module.InferenceServerClient(url)
        else:
            self._client = self._module.InferenceServerClient(url, network_timeout=timeout_s)
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._headers = {"authorization": f"Bearer {token}"} if token else None

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _infer(self, inputs: list, request_id: str = ""):
        outputs = [self._module.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        extra = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return self._client.infer(self.model, inputs, outputs=outputs, request_id=request_id, headers=self._headers,
                                  **extra)

    def generate(self, class_id: int | None = None, num_images: int = 1, *, prompt: str | None = None,
                 **options: Any) -> GenerationResult:
        """Images of class ``class_id`` or, for a text model, of ``prompt``. Options: group_size, steps,
        guidance_scale, seed, group_policy, return_attention."""
        inputs = build_inputs(self._module, **condition(class_id, prompt), num_images=num_images, **options)
        return self._generate(inputs, class_id, options)

    def generate_set(self, class_ids: Sequence[int], **options: Any) -> GenerationResult:
        """An image set: image i of class ``class_ids[i]``, generated together as one group."""
        return self._generate(build_inputs(self._module, class_ids=class_ids, **options), None, options)

    def _generate(self, inputs: list, class_id: int | None, options: dict[str, Any]) -> GenerationResult:
        started, attempt = time.perf_counter(), 0
        while True:
            try:
                return to_result(self._infer(inputs), class_id, options, started, self.protocol)
            except call_errors() as error:
                failure = translate(error)
            delay = retry_delay(self.retry, attempt, failure)
            if delay is None:
                raise failure from None
            time.sleep(delay)
            attempt += 1

    def stream(self, requests: Iterable[dict[str, Any]]) -> Iterator[GenerationResult | GroupDiffError]:
        """Send every request (dicts of `generate`'s arguments) on one gRPC stream; yield each result,
        or its error, as it completes (order of completion, not of sending; no retries)."""
        if self.protocol != "grpc":
            raise ValueError("streaming needs the gRPC protocol")
        answers: queue.Queue = queue.Queue()
        self._client.start_stream(lambda result, error: answers.put((result, error)), headers=self._headers)
        try:
            sent = {}
            for index, request in enumerate(requests):
                request = dict(request)
                class_id, prompt = request.pop("class_id", None), request.pop("prompt", None)
                num_images = request.pop("num_images", 1)
                inputs = build_inputs(self._module, **condition(class_id, prompt), num_images=num_images, **request)
                sent[str(index)] = (class_id, request, time.perf_counter())
                outputs = [self._module.InferRequestedOutput(name) for name in OUTPUT_NAMES]
                self._client.async_stream_infer(self.model, inputs, outputs=outputs, request_id=str(index))
            for _ in range(len(sent)):
                try:
                    result, error = answers.get(timeout=self.timeout_s)
                except queue.Empty:
                    raise DeadlineExceeded(f"no answer on the stream within {self.timeout_s:g} s") from None
                if error is not None:
                    yield translate(error)
                    continue
                class_id, options, started = sent[result.get_response().id]
                yield to_result(result, class_id, options, started, "grpc")
        finally:
            self._client.stop_stream()

    def ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(self.model, headers=self._headers))
        except call_errors():
            return False

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"model {self.model!r} not ready after {timeout_s:g} s")
            time.sleep(poll_s)


class AsyncTritonClient:
    """The asyncio twin of `TritonClient.generate` (tritonclient's grpc.aio / http.aio clients)."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = MODEL_NAME,
                 token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY, timeout_s: float = 70.0):
        aio, self._module = protocol_module(protocol, asynchronous=True)
        self.protocol, self.model, self.retry, self.timeout_s = protocol, model, retry, timeout_s
        url = url or DEFAULT_URLS[protocol]
        if protocol == "grpc":
            self._client = aio.InferenceServerClient(url)
        else:
            self._client = aio.InferenceServerClient(url, conn_timeout=timeout_s)
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._headers = {"authorization": f"Bearer {token}"} if token else None

    async def __aenter__(self) -> AsyncTritonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def generate(self, class_id: int | None = None, num_images: int = 1, *, prompt: str | None = None,
                       **options: Any) -> GenerationResult:
        inputs = build_inputs(self._module, **condition(class_id, prompt), num_images=num_images, **options)
        outputs = [self._module.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        extra = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        started, attempt = time.perf_counter(), 0
        while True:
            try:
                response = await self._client.infer(self.model, inputs, outputs=outputs, headers=self._headers,
                                                    **extra)
            except call_errors() as error:
                failure = translate(error)
            else:
                return to_result(response, class_id, options, started, self.protocol)
            delay = retry_delay(self.retry, attempt, failure)
            if delay is None:
                raise failure from None
            await asyncio.sleep(delay)
            attempt += 1

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model, headers=self._headers))
        except call_errors():
            return False
