"""The REST frontend: a BentoML service whose routes are a small FastAPI app mounted at ``/v1``.

Mounting FastAPI gives the contract's exact JSON errors, ``Retry-After`` on 429 and server-sent
events, while BentoML keeps ``/healthz``, ``/livez``, ``/readyz`` (ready once the model is loaded
and warmed up), ``/metrics`` and the OpenAPI docs (``/docs``, ``/docs.json``, which include the
mounted routes). `groupdiff serve` starts it; the worker reads its `ServeConfig` from the environment.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import time

import bentoml
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .defaults import ENV_TOKEN
from .engine import Engine, Result
from .metrics import ServingMetrics
from .requests import (
    MAX_TIMEOUT_S,
    RequestError,
    ResolvedRequest,
    ServedModel,
    describe_validation_error,
    invalid,
    request_model,
    resolve,
)
from .serve_config import ServeConfig, build_engine, check_checkpoint
from .spec import TEACHER_MAX_STEPS

LOG = logging.getLogger("groupdiff.serving")
if not LOG.handlers:  # one line per request on the worker's stderr, whatever BentoML does with the root logger
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOG.addHandler(_handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False

CONFIG = ServeConfig.from_env()
_SPEC = check_checkpoint(CONFIG.checkpoint)
# The body model's bounds come from the checkpoint; the runtime's accepted group sizes are checked in resolve().
_DOC_MODEL = ServedModel.for_runtime(_SPEC, tuple(range(1, _SPEC.max_group_size + 1)), CONFIG.runtime)
GenerateRequest = request_model(_DOC_MODEL, CONFIG.limits)
ERROR_RESPONSES = {status: {"description": text, "content": {"application/json": {"example": {
    "error": {"code": code, "message": "..."}}}}} for status, code, text in (
    (400, "invalid_request", "malformed JSON"), (401, "unauthorized", "missing or wrong bearer token"),
    (413, "invalid_request", "body too large"), (422, "invalid_request", "a field is out of range or unknown"),
    (429, "queue_full", "overloaded: the queue is full or the predicted wait exceeds the deadline or the "
                        "latency budget; see Retry-After"),
    (503, "not_ready", "model still loading (not_ready) or server draining (shutting_down)"),
    (504, "deadline_exceeded", "timeout_s passed"))}

app = FastAPI(title="GroupDiff", version="1", description=__doc__)


def error_response(error: RequestError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    return JSONResponse(error.to_json(), status_code=error.status, headers=headers)


@app.exception_handler(RequestError)
async def _request_error(_: Request, error: RequestError) -> JSONResponse:
    return error_response(error)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    malformed = any(item.get("type") == "json_invalid" for item in error.errors())
    _metrics(request).reject("invalid")
    if malformed:
        return error_response(invalid("malformed JSON body", 400))
    return error_response(invalid(describe_validation_error(error.errors())))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    code = "internal" if error.status_code >= 500 else "invalid_request"
    return JSONResponse({"error": {"code": code, "message": str(error.detail)}}, status_code=error.status_code)


class BodyLimit:
    """Pure ASGI middleware: refuse bodies above the limit (413) while reading them, whatever
    Content-Length claims, then replay the body; later receives still report client disconnects."""

    def __init__(self, inner, limit: int):
        self.inner = inner
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
            app.state.metrics.reject("invalid")
            response = error_response(invalid(f"the body exceeds {self.limit} bytes", 413))
            return await response(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.inner(scope, replay, send)


class ShedWhenOverloaded:
    """Pure ASGI middleware: while every request would get 429 (`Admission.refusing_everything`), answer
    POSTs with it before their body is read or validated, so that refusing costs the server as little as
    possible under overload (half the CPU of a refusal after validation). The bearer token is checked
    first: a client without it learns nothing about the load."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send) -> None:
        engine = app.state.engine if hasattr(app.state, "engine") else None
        if scope["type"] == "http" and scope["method"] == "POST" and engine is not None and engine.ready:
            refusal = engine.refusing_everything()
            if refusal is not None and token_ok(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")):
                engine.metrics.reject(refusal.reason)
                return await error_response(refusal)(scope, receive, send)
        await self.inner(scope, receive, send)


app.add_middleware(BodyLimit, limit=CONFIG.limits.max_body_bytes)
app.add_middleware(ShedWhenOverloaded)  # outermost: before the body is read


def _metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


def token_ok(header: str) -> bool:
    """Whether an ``Authorization`` header carries the server's bearer token (always, when none is set)."""
    token = os.environ.get(ENV_TOKEN)
    return not token or hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


def check_token(request: Request) -> None:
    if not token_ok(request.headers.get("authorization", "")):
        _metrics(request).reject("unauthorized")
        raise RequestError("unauthorized", "a valid bearer token is required (Authorization: Bearer ...)", 401)


def response_body(result: Result) -> dict:
    request = result.request
    height, width = result.images.shape[1:3]
    return {
        "request_id": request.request_id, "model_version": result.model_version, "width": int(width),
        "height": int(height), "group_size": request.group_size, "steps": request.steps,
        "guidance_scale": request.guidance_scale, "group_policy": request.group_policy,
        "images": [{"index": i, "seed": seed, "png_base64": base64.b64encode(png).decode("ascii")}
                   for i, (seed, png) in enumerate(zip(result.seeds, result.pngs, strict=True))],
        "timings_ms": {stage: round(ms, 3) for stage, ms in result.timings_ms.items()},
    }


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only disconnects arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@bentoml.service(name="groupdiff", workers=1,
                 traffic={"timeout": int(MAX_TIMEOUT_S) + 30, "max_concurrency": 4 * CONFIG.max_queue + 64})
@bentoml.asgi_app(app, path="/v1")
class GroupDiffService:
    def __init__(self) -> None:
        self.metrics = ServingMetrics()
        app.state.metrics = self.metrics
        self.engine: Engine = build_engine(CONFIG, self.metrics).start()
        app.state.engine = self.engine

    def __is_ready__(self) -> bool:
        return self.engine.ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        LOG.info("shutting down: finishing in-flight work (up to %g s)", CONFIG.drain_timeout_s)
        self.engine.close(CONFIG.drain_timeout_s)

    def _resolve(self, body) -> ResolvedRequest:
        served = self.engine.served
        if served is None:
            raise self.engine.not_ready_error()
        try:
            return resolve(body, served, CONFIG.limits)
        except RequestError:
            self.metrics.reject("invalid")
            raise

    def _log(self, request: ResolvedRequest, status: int, started: float) -> None:
        LOG.info("%s class=%d k=%d N=%d steps=%d policy=%s seed=%d -> %d in %.1f ms", request.request_id,
                 request.class_id, request.num_images, request.group_size, request.steps, request.group_policy,
                 request.seed, status, (time.perf_counter() - started) * 1000)

    @app.post("/generate", summary="Generate a set of images for a class", responses=ERROR_RESPONSES,
              dependencies=[Depends(check_token)])
    async def generate(self, body: GenerateRequest, request: Request) -> JSONResponse:
        started = time.perf_counter()
        resolved = self._resolve(body)
        future = self.engine.submit_future(resolved)  # queued now (or 429 now), so a disconnect can cancel it
        work = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                future.cancel()  # the client left (or this handler was cancelled): free the request's places
        if not work.done() or work.cancelled():
            self._log(resolved, 499, started)
            return JSONResponse({"error": {"code": "cancelled", "message": "client disconnected"}}, status_code=499)
        try:
            result = work.result()
        except RequestError as error:
            self._log(resolved, error.status, started)
            raise
        self._log(resolved, 200, started)
        return JSONResponse(response_body(result))

    @app.post("/generate/stream", summary="Generate with progress events (text/event-stream)",
              responses=ERROR_RESPONSES, dependencies=[Depends(check_token)])
    async def generate_stream(self, body: GenerateRequest) -> StreamingResponse:
        started = time.perf_counter()
        resolved = self._resolve(body)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_progress(step: int, steps: int) -> None:  # from the model thread
            loop.call_soon_threadsafe(events.put_nowait, {"step": step, "steps": steps})

        future = self.engine.submit_future(resolved, True, on_progress)  # full queue: a plain 429 here

        async def stream():
            result = asyncio.wrap_future(future)
            try:
                while not result.done() or not events.empty():
                    progress = asyncio.ensure_future(events.get())
                    await asyncio.wait({progress, result}, return_when=asyncio.FIRST_COMPLETED)
                    if progress.done():
                        yield sse("progress", progress.result())
                    else:
                        progress.cancel()
                try:
                    yield sse("result", response_body(result.result()))
                    self._log(resolved, 200, started)
                except RequestError as error:
                    yield sse("error", error.to_json())
                    self._log(resolved, error.status, started)
            finally:
                future.cancel()  # no-op when answered; frees the places when the client left

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/model", summary="The served model and the request limits it implies",
             dependencies=[Depends(check_token)])
    async def model(self) -> dict:
        served = self.engine.served
        if served is None or self.engine.image_shape is None:
            raise self.engine.not_ready_error()
        spec = served.spec
        height, width, _ = self.engine.image_shape
        return {
            "model_version": spec.model_version, "kind": spec.kind, "num_classes": spec.num_classes,
            "max_group_size": max(served.group_sizes), "default_group_size": served.default_group_size,
            "group_sizes": list(served.group_sizes),
            "steps": list(spec.steps) if spec.steps else {"min": 1, "max": TEACHER_MAX_STEPS},
            "default_steps": spec.default_steps, "guidance_scale": spec.guidance_scale,
            "guidance_adjustable": spec.guidance_adjustable, "width": width, "height": height,
            "runtime": served.runtime, "max_images": CONFIG.limits.max_images,
        }
