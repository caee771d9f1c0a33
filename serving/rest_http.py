"""The REST frontend's HTTP plumbing under the routes: uvicorn's protocol and pure-ASGI middlewares.

They answer what must not reach a route: requests without the bearer token (401), bodies over the limit (413),
requests during a drain (503) and requests admission would refuse (429, before routing costs anything), and they
turn every framework error into the contract's JSON body. Each takes the app's ``state`` (engine, metrics,
drain), which `serving/service.py` fills when the service starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import time
from functools import partial
from http import HTTPStatus

import h11
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from groupdiff.protocol.auth import TOKEN_ENV
from groupdiff.protocol.errors import code_for_status, error_body

from .engine import Engine, shutdown_error
from .requests import RequestError, ServerLimits, invalid, resolve

LOG = logging.getLogger("groupdiff.serving")
API = "/v1/"  # the routes behind the bearer token and the drain
GENERATE_PATHS = ("/v1/generate", "/v1/generate/stream")


def error_response(error: RequestError) -> JSONResponse:
    """The JSON answer to a refusal, with the headers its status calls for."""
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if error.code == "shutting_down":
        headers["Connection"] = "close"  # the client's next attempt opens a connection (to another replica)
    return JSONResponse(error.to_json(), status_code=error.status, headers=headers)


class ContractH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with two changes that BentoML offers no setting for.

    - Slow clients: a connection must send a complete request head within uvicorn's ``timeout_keep_alive``
      (``groupdiff serve --header-timeout``) of opening or of its previous response, else it is closed.
      uvicorn only times out idle connections, so a client trickling header bytes could hold one forever.
    - A request h11 cannot parse (a malformed ``Content-Length`` such as -5, a bad request line) gets the
      contract's JSON 400 instead of uvicorn's plain text.
    """

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._expect_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _expect_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_overdue)

    def _head_overdue(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # no complete request head yet
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(error_body("invalid_request", msg)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def _header(scope, name: bytes) -> str:
    return dict(scope["headers"]).get(name, b"").decode("latin-1")


def _is_api(scope) -> bool:
    return scope["type"] == "http" and scope["path"].startswith(API)


class JsonErrors:
    """Pure ASGI middleware around the whole server: an error answered as anything but JSON (BentoML's 503 from
    /readyz, Starlette's 404 for an unknown path and 405 for a wrong method, an uncaught exception's 500) is
    rewritten as the contract's JSON body, keeping its status and other headers."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        start, text = None, b""

        async def send_json(message) -> None:
            nonlocal start, text
            if message["type"] == "http.response.start" and message["status"] >= 400 and not dict(
                    message["headers"]).get(b"content-type", b"").startswith(b"application/json"):
                start = message  # held back until its body is known
                return
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            text += message.get("body", b"")
            if message.get("more_body", False):
                return
            status = start["status"]
            message = text.decode(errors="replace").strip()[:500] or HTTPStatus(status).phrase
            body = json.dumps(error_body(code_for_status(status), message)).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-type", b"content-length")]
            await send({**start, "headers": [*headers, (b"content-type", b"application/json"),
                                             (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.inner(scope, receive, send_json)


def token_ok(header: str) -> bool:
    """Whether an ``Authorization`` header carries the server's bearer token (always, when none is set). The
    scheme is case-insensitive (RFC 7235); the token is compared in constant time."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        return True
    scheme, _, credentials = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())


class Authorize:
    """Pure ASGI middleware: a /v1 request without the bearer token gets 401 before anything else is done with
    it, its body included, so a client without the token learns nothing about validation, load or shutdown."""

    def __init__(self, inner, state):
        self.inner = inner
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if _is_api(scope) and not token_ok(_header(scope, b"authorization")):
            self.state.metrics.reject("unauthorized")
            error = RequestError("unauthorized", "a valid bearer token is required (Authorization: Bearer ...)", 401)
            return await error_response(error)(scope, receive, send)
        await self.inner(scope, receive, send)


class Drain:
    """Graceful shutdown that keeps answering.

    uvicorn's own SIGTERM handler closes the listening socket at once: a request arriving while in-flight work
    finishes would wait in the backlog and then be reset. `Drain` takes SIGTERM and SIGINT first: from then on
    /v1 requests get 503 ``shutting_down`` (with ``Connection: close``) and /readyz 503, the requests already in
    flight finish (within the drain timeout), the engine closes, and only then uvicorn's handler starts its
    shutdown. A second signal goes straight to uvicorn.
    """

    def __init__(self, engine: Engine, timeout_s: float):
        self.engine = engine
        self.timeout_s = timeout_s
        self.draining = False
        self.in_flight = 0
        self._changed = asyncio.Condition()

    def take_signals(self) -> None:
        """Put the drain in front of uvicorn's handlers; call it on the event loop's (main) thread once uvicorn
        has installed them (the service is built inside uvicorn's lifespan, after that)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            then = signal.getsignal(signum)
            if callable(then):
                signal.signal(signum, partial(self._on_signal, loop, then))

    def _on_signal(self, loop, then, signum, frame) -> None:
        if self.draining:
            then(signum, frame)
            return
        self.draining = True
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain(partial(then, signum, frame))))

    async def _drain(self, then) -> None:
        LOG.info("shutting down: finishing %d request(s) in flight (up to %g s)", self.in_flight, self.timeout_s)
        began = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.in_flight == 0), self.timeout_s)
        left = max(0.0, self.timeout_s - (time.monotonic() - began))
        await asyncio.to_thread(self.engine.close, left)
        then()

    @contextlib.asynccontextmanager
    async def request(self):
        """Counts a request in flight while it runs."""
        self.in_flight += 1
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()


class RefuseWhileDraining:
    """Pure ASGI middleware: /v1 requests count as in flight for `Drain`, and get 503 ``shutting_down`` once it
    has begun."""

    def __init__(self, inner, state):
        self.inner = inner
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        drain: Drain | None = getattr(self.state, "drain", None)
        if drain is None or not _is_api(scope):
            return await self.inner(scope, receive, send)
        if drain.draining:
            self.state.metrics.reject("shutting_down")
            return await error_response(shutdown_error())(scope, receive, send)
        async with drain.request():
            await self.inner(scope, receive, send)


def replaying(message: dict, receive):
    """An ASGI ``receive`` that gives the already-read body ``message`` first, then the real ``receive``
    (which still reports a client's disconnect)."""
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return message

    return replay


class ShedWhenOverloaded:
    """Pure ASGI middleware, inside `BodyLimit` (so the body is read and bounded): resolve a generation
    request from its body and answer its 429 at once when admission would refuse it, before routing,
    dependencies and the response model cost anything: under overload most requests are refused, and
    every refusal takes CPU from the model. Anything it cannot resolve goes on to the route, which
    answers it exactly as before (the same `resolve`); an accepted request is resolved and admitted
    there. `Authorize` runs first: a client without the token learns nothing about the load."""

    def __init__(self, inner, state, limits: ServerLimits):
        self.inner = inner
        self.state = state
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        engine = getattr(self.state, "engine", None)
        if (scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATE_PATHS
                or engine is None or engine.served is None):
            return await self.inner(scope, receive, send)
        message = await receive()  # the whole body: BodyLimit replays it in one message
        refusal = _refusal(engine, message.get("body", b""), self.limits)
        if refusal is not None:
            engine.metrics.reject(refusal.reason)
            return await error_response(refusal)(scope, receive, send)
        await self.inner(scope, replaying(message, receive), send)


def _refusal(engine: Engine, body: bytes, limits: ServerLimits) -> RequestError | None:
    try:
        fields = json.loads(body)
        request = resolve(fields, engine.served, limits) if isinstance(fields, dict) else None
    except (ValueError, RecursionError, RequestError):  # malformed or invalid: the route answers it
        return None
    return engine.refusal(request) if request is not None else None


class BodyLimit:
    """Pure ASGI middleware: refuse bodies above the limit (413) while reading them, whatever
    Content-Length claims, then replay the body; later receives still report client disconnects."""

    def __init__(self, inner, state, limit: int):
        self.inner = inner
        self.state = state
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.inner(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        body, more = b"", not (declared.isdigit() and int(declared) > self.limit)
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False) and len(body) <= self.limit
        if len(body) > self.limit or not (declared.isdigit() and int(declared) <= self.limit):
            self.state.metrics.reject("invalid")
            response = error_response(invalid(f"the body exceeds {self.limit} bytes", 413))
            return await response(scope, receive, send)
        await self.inner(scope, replaying({"type": "http.request", "body": body, "more_body": False}, receive), send)
