"""REST SDK for the BentoML service (`POST /v1/generate`, its event stream, `/v1/model`, health).

`GroupDiffClient` (sync) and `AsyncGroupDiffClient` (asyncio) share the request building, error
mapping and retry policy below. Overload answers (429 ``queue_full``, 503 ``not_ready`` and ``shutting_down``)
and refused connections are retried with exponential back-off and jitter; a ``Retry-After`` header
from the server replaces the back-off. Everything else fails at once with a typed error
(`groupdiff.clients.errors`). Usage in docs/clients.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from groupdiff.protocol.auth import TOKEN_ENV, authorization_header
from groupdiff.protocol.generate import OPTIONAL_FIELDS, ModelInfo
from groupdiff.protocol.limits import DEFAULT_TIMEOUT_S

from .errors import DeadlineExceeded, GroupDiffError, ServerUnavailable, error_for
from .results import GenerationResult, Progress

DEFAULT_URL = "http://127.0.0.1:3000"
RETRY_STATUSES = frozenset({429, 503})
READ_MARGIN_S = 10.0  # the client waits this much longer than the server's deadline
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts after the first; delays ``backoff_s · 2^attempt`` with ±50 % jitter,
    or the server's ``Retry-After``, capped at ``max_delay_s``. ``retries=0`` never retries (load tests)."""

    retries: int = 3
    backoff_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay_s)
        return min(self.backoff_s * 2**attempt, self.max_delay_s) * random.uniform(0.5, 1.5)


DEFAULT_RETRY = RetryPolicy()


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in delta-seconds or as an HTTP date, as seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def generate_body(class_id: int | None = None, num_images: int = 1, prompt: str | None = None,
                  **options: Any) -> dict[str, Any]:
    """The JSON body of `/v1/generate` for images of one class or, for a text model, of one prompt (sent as given:
    the server normalises and checks it); unset options are left to the server's defaults."""
    return with_options({**condition(class_id, prompt), "num_images": int(num_images)}, options)


def condition(class_id: int | None, prompt: str | None) -> dict[str, Any]:
    """``class_id`` or ``prompt``, exactly one (which one a server takes is its model's: `ModelInfo.condition`)."""
    if (class_id is None) == (prompt is None):
        raise TypeError("give class_id or prompt (for a text model), exactly one")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        return {"prompt": prompt}
    return {"class_id": int(class_id)}


def set_body(class_ids: Sequence[int], **options: Any) -> dict[str, Any]:
    """The JSON body of `/v1/generate` for an image set: one class per image, generated as one group."""
    return with_options({"class_ids": [int(class_id) for class_id in class_ids]}, options)


def with_options(body: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(OPTIONAL_FIELDS)
    if unknown:
        raise TypeError(f"unknown generate options {sorted(unknown)}; known: {', '.join(OPTIONAL_FIELDS)}")
    return {**body, **{k: v for k, v in options.items() if v is not None}}


def read_timeout(body: dict[str, Any]) -> httpx.Timeout:
    """Wait for the server's own deadline plus a margin, so its 504 arrives before our timeout."""
    deadline = float(body.get("timeout_s") or DEFAULT_TIMEOUT_S)
    return httpx.Timeout(deadline + READ_MARGIN_S, connect=CONNECT_TIMEOUT_S)


def error_from_response(status: int, text: str, retry_after_header: str | None) -> GroupDiffError:
    try:
        error = json.loads(text)["error"]
        code, message = error.get("code"), error.get("message", "")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = None, text.strip()[:500] or f"HTTP {status}"
    return error_for(status, code, message, parse_retry_after(retry_after_header))


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_from_response(response.status_code, response.text, response.headers.get("retry-after"))
    return response


def retry_delay(policy: RetryPolicy, attempt: int, failure: GroupDiffError) -> float | None:
    """Seconds to wait before the next attempt, or None when ``failure`` is final."""
    retryable = failure.status in RETRY_STATUSES or isinstance(failure, ServerUnavailable)
    if not retryable or attempt >= policy.retries:
        return None
    return policy.delay(attempt, getattr(failure, "retry_after", None))


def headers(token: str | None) -> dict[str, str]:
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    return authorization_header(token) if token else {}


class EventParser:
    """Server-sent events, one line at a time: `feed` returns (event, JSON data) when a blank line ends one."""

    def __init__(self) -> None:
        self.event, self.data = "message", []

    def feed(self, line: str) -> tuple[str, dict] | None:
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].strip())
        elif not line and self.data:
            complete = self.event, json.loads("\n".join(self.data))
            self.event, self.data = "message", []
            return complete
        return None


def stream_item(event: str, data: dict, class_id: int | None, started: float) -> Progress | GenerationResult:
    if event == "progress":
        return Progress(int(data["step"]), int(data["steps"]))
    if event == "result":
        return GenerationResult.from_rest(data, class_id, time.perf_counter() - started)
    if event == "error":
        error = data.get("error", {})
        raise error_for(None, error.get("code"), error.get("message", "stream error"))
    raise GroupDiffError(f"unexpected stream event {event!r}")


def _transport_error(error: httpx.TransportError) -> GroupDiffError:
    if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout):
        return DeadlineExceeded(f"no answer in time ({type(error).__name__})")
    return ServerUnavailable(f"cannot reach the server: {error}")


class GroupDiffClient:
    """Blocking REST client. ``token`` defaults to ``$GROUPDIFF_API_TOKEN``."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY,
                 max_connections: int = 100):
        self.retry = retry
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(base_url=url, headers=headers(token), limits=limits,
                                  timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT_S))

    def __enter__(self) -> GroupDiffClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return check(self._http.request(method, path, **kwargs))
            except httpx.TransportError as error:
                failure = _transport_error(error)
            except GroupDiffError as error:
                failure = error
            delay = retry_delay(self.retry, attempt, failure)
            if delay is None:
                raise failure
            time.sleep(delay)
            attempt += 1

    def generate(self, class_id: int | None = None, num_images: int = 1, *, prompt: str | None = None,
                 **options: Any) -> GenerationResult:
        """Images of class ``class_id`` or, for a text model, of ``prompt``. Options: group_size, steps,
        guidance_scale, seed, group_policy, timeout_s (server deadline), return_attention."""
        return self._generate(generate_body(class_id, num_images, prompt, **options), class_id)

    def generate_set(self, class_ids: Sequence[int], **options: Any) -> GenerationResult:
        """An image set: image i of class ``class_ids[i]``, all generated together as one group (up to the
        model's group size). Options as for `generate` (but group_policy, which is always isolated)."""
        return self._generate(set_body(class_ids, **options), None)

    def _generate(self, body: dict[str, Any], class_id: int | None) -> GenerationResult:
        started = time.perf_counter()
        response = self._request("POST", "/v1/generate", json=body, timeout=read_timeout(body))
        return GenerationResult.from_rest(response.json(), class_id, time.perf_counter() - started)

    def stream(self, class_id: int | None = None, num_images: int = 1, *, prompt: str | None = None,
               **options: Any) -> Iterator[Progress | GenerationResult]:
        """`Progress` per sampling step, then the `GenerationResult` (errors raise)."""
        body = generate_body(class_id, num_images, prompt, **options)
        started = time.perf_counter()
        attempt, streamed = 0, False
        while True:
            try:
                with self._http.stream("POST", "/v1/generate/stream", json=body, timeout=read_timeout(body)) as answer:
                    if answer.status_code >= 400:
                        answer.read()
                        check(answer)
                    parser = EventParser()
                    for line in answer.iter_lines():  # each event as it arrives, not the stream as a whole
                        if (complete := parser.feed(line)) is not None:
                            streamed = True
                            yield stream_item(*complete, class_id, started)
                    if (complete := parser.feed("")) is not None:  # an event the server left open
                        yield stream_item(*complete, class_id, started)
                    return
            except httpx.TransportError as error:
                failure = _transport_error(error)
            except GroupDiffError as error:
                failure = error
            delay = None if streamed else retry_delay(self.retry, attempt, failure)  # never replay a stream
            if delay is None:
                raise failure
            time.sleep(delay)
            attempt += 1

    def model_info(self) -> ModelInfo:
        return ModelInfo.model_validate(self._request("GET", "/v1/model").json())

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"{self._http.base_url} not ready after {timeout_s:g} s")
            time.sleep(poll_s)

    def metrics(self) -> str:
        return self._request("GET", "/metrics").text


class AsyncGroupDiffClient:
    """The asyncio twin of `GroupDiffClient` (same arguments and methods, awaitable)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY,
                 max_connections: int = 100):
        self.retry = retry
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=url, headers=headers(token), limits=limits,
                                       timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT_S))

    async def __aenter__(self) -> AsyncGroupDiffClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return check(await self._http.request(method, path, **kwargs))
            except httpx.TransportError as error:
                failure = _transport_error(error)
            except GroupDiffError as error:
                failure = error
            delay = retry_delay(self.retry, attempt, failure)
            if delay is None:
                raise failure
            await asyncio.sleep(delay)
            attempt += 1

    async def generate(self, class_id: int | None = None, num_images: int = 1, *, prompt: str | None = None,
                       **options: Any) -> GenerationResult:
        return await self._generate(generate_body(class_id, num_images, prompt, **options), class_id)

    async def generate_set(self, class_ids: Sequence[int], **options: Any) -> GenerationResult:
        return await self._generate(set_body(class_ids, **options), None)

    async def _generate(self, body: dict[str, Any], class_id: int | None) -> GenerationResult:
        started = time.perf_counter()
        response = await self._request("POST", "/v1/generate", json=body, timeout=read_timeout(body))
        return GenerationResult.from_rest(response.json(), class_id, time.perf_counter() - started)

    async def stream(self, class_id: int | None = None, num_images: int = 1, *, prompt: str | None = None,
                     **options: Any) -> AsyncIterator[Progress | GenerationResult]:
        body = generate_body(class_id, num_images, prompt, **options)
        started = time.perf_counter()
        attempt, streamed = 0, False
        while True:
            try:
                async with self._http.stream("POST", "/v1/generate/stream", json=body,
                                             timeout=read_timeout(body)) as answer:
                    if answer.status_code >= 400:
                        await answer.aread()
                        check(answer)
                    parser = EventParser()
                    async for line in answer.aiter_lines():
                        if (complete := parser.feed(line)) is not None:
                            streamed = True
                            yield stream_item(*complete, class_id, started)
                    if (complete := parser.feed("")) is not None:  # an event the server left open
                        yield stream_item(*complete, class_id, started)
                    return
            except httpx.TransportError as error:
                failure = _transport_error(error)
            except GroupDiffError as error:
                failure = error
            delay = None if streamed else retry_delay(self.retry, attempt, failure)
            if delay is None:
                raise failure
            await asyncio.sleep(delay)
            attempt += 1

    async def model_info(self) -> ModelInfo:
        return ModelInfo.model_validate((await self._request("GET", "/v1/model")).json())

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.ready():
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"{self._http.base_url} not ready after {timeout_s:g} s")
            await asyncio.sleep(poll_s)

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics")).text
