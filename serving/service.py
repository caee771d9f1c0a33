"""The REST frontend: a BentoML service serving one FastAPI app.

BentoML runs the server (uvicorn under its process manager) and answers ``/healthz``, ``/livez``,
``/readyz`` (ready once the model is loaded and warmed up, until shutdown begins) and ``/metrics``. The
FastAPI app, mounted at the root, adds ``POST /v1/generate``, ``POST /v1/generate/stream`` (server-sent
events), ``GET /v1/model``, the OpenAPI 3.1 document ``/docs.json`` (with the served model's exact limits) and
its browsable page ``/docs``. Every error, BentoML's and uvicorn's included, is the contract's JSON body
``{"error": {"code": ..., "message": ...}}``. `groupdiff serve` starts it; the worker reads its `ServeConfig`
from the environment.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time

import bentoml
import uvicorn.config
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from groupdiff.protocol.auth import TOKEN_ENV
from groupdiff.protocol.errors import ErrorBody, code_for_status, error_body
from groupdiff.protocol.generate import GenerateResponse, ModelInfo, StepRange, describe_validation_error, request_model
from groupdiff.protocol.limits import MAX_PROMPT_CHARS, MAX_TIMEOUT_S, TEACHER_MAX_STEPS

from .engine import Engine, Result
from .metrics import ServingMetrics
from .requests import RequestError, ResolvedRequest, ServedModel, invalid, resolve
from .rest_http import (
    API,
    Authorize,
    BodyLimit,
    ContractH11Protocol,
    Drain,
    JsonErrors,
    RefuseWhileDraining,
    ShedWhenOverloaded,
    error_response,
)
from .serve_config import ServeConfig, build_engine, check_checkpoint

LOG = logging.getLogger("groupdiff.serving")
if not LOG.handlers:  # one line per request on the worker's stderr, whatever BentoML does with the root logger
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOG.addHandler(_handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False

CONFIG = ServeConfig.from_env()
_SPEC = check_checkpoint(CONFIG.checkpoint)
# The body model's bounds come from the checkpoint; the runtime's accepted group sizes are checked in resolve()
# (and shown in /docs.json once the runtime is loaded).
_DOC_MODEL = ServedModel.for_runtime(_SPEC, tuple(range(1, _SPEC.max_group_size + 1)), CONFIG.runtime)
GenerateRequest = request_model(_DOC_MODEL.request_limits(CONFIG.limits))


ERRORS = {
    400: "malformed JSON or HTTP (invalid_request)", 401: "missing or wrong bearer token (unauthorized)",
    413: "body too large (invalid_request)", 422: "a field is unknown, of the wrong type or out of range "
    "(invalid_request)", 429: "overloaded: the queue is full or the predicted wait exceeds the deadline or the "
    "latency budget (queue_full); see Retry-After", 503: "model still loading (not_ready) or server draining "
    "(shutting_down)", 504: "timeout_s passed (deadline_exceeded)", 500: "a bug (internal)"}


ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}  # put in the document by openapi_document()


def error_responses(*statuses: int) -> dict:
    """Documented error answers (always JSON, also on the event-stream route: so no FastAPI ``model`` here, which
    would take the route's media type)."""
    return {status: {"description": ERRORS[status], "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for status in statuses}


# BentoML builds uvicorn's config without an `http` setting, so the worker uses the "auto" protocol: make it ours.
uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{ContractH11Protocol.__module__}:{ContractH11Protocol.__name__}"


# ---- the FastAPI app ---------------------------------------------------------------------------------------------

app = FastAPI(title="GroupDiff", version="1", description=__doc__, openapi_url="/docs.json", docs_url=None,
              redoc_url=None)
app.add_middleware(ShedWhenOverloaded, state=app.state, limits=CONFIG.limits)
app.add_middleware(BodyLimit, state=app.state, limit=CONFIG.limits.max_body_bytes)
app.add_middleware(RefuseWhileDraining, state=app.state)
app.add_middleware(Authorize, state=app.state)  # outermost: before anything else


@app.exception_handler(RequestError)
async def _request_error(_: Request, error: RequestError) -> JSONResponse:
    return error_response(error)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    app.state.metrics.reject("invalid")
    if any(item.get("type") == "json_invalid" for item in error.errors()):
        return error_response(invalid("malformed JSON body", 400))
    return error_response(invalid(describe_validation_error(error.errors())))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    status = error.status_code
    return JSONResponse(error_body(code_for_status(status), str(error.detail)), status_code=status,
                        headers=error.headers)


def _plain(description: str) -> dict:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


_NOT_READY = {"description": "not ready: still loading, failed to load, or draining",
              "content": {"application/json": {"schema": ERROR_SCHEMA}}}
PROBES = {  # BentoML's routes, documented beside ours
    "/livez": {"get": {"summary": "Liveness", "operationId": "livez", "tags": ["probes"],
                       "responses": {"200": _plain("the server process is up")}}},
    "/healthz": {"get": {"summary": "Liveness (alias of /livez)", "operationId": "healthz", "tags": ["probes"],
                         "responses": {"200": _plain("the server process is up")}}},
    "/readyz": {"get": {"summary": "Readiness", "operationId": "readyz", "tags": ["probes"],
                        "responses": {"200": _plain("the model is loaded and warmed up"), "503": _NOT_READY}}},
    "/metrics": {"get": {"summary": "Prometheus metrics (docs/metrics.md)", "operationId": "metrics",
                         "tags": ["probes"], "responses": {"200": _plain("Prometheus text exposition")}}},
}


def openapi_document() -> dict:
    """The OpenAPI 3.1 document at /docs.json: FastAPI's for our routes plus BentoML's probes, with the request
    limits as served (the runtime's group sizes once it is loaded, the checkpoint's until then) and the bearer
    scheme when the server requires a token."""
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    engine: Engine | None = getattr(app.state, "engine", None)
    if engine is not None and engine.served is not None:
        served_body = request_model(engine.served.request_limits(CONFIG.limits))
        document["components"]["schemas"]["GenerateRequest"] = served_body.model_json_schema(
            ref_template="#/components/schemas/{model}")
    _, errors = models_json_schema([(ErrorBody, "serialization")], ref_template="#/components/schemas/{model}")
    document["components"]["schemas"].update(errors["$defs"])
    document["paths"].update(PROBES)
    if os.environ.get(TOKEN_ENV):
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, item in document["paths"].items():
            for operation in item.values() if path.startswith(API) else ():
                operation["security"] = [{"bearer": []}]
                operation["responses"].update(error_responses(401))
    return document


app.openapi = openapi_document


@app.get("/docs", include_in_schema=False)
async def docs_page() -> HTMLResponse:
    """Swagger UI for /docs.json, from the copy BentoML serves under /static_content (so it works offline)."""
    return get_swagger_ui_html(openapi_url="/docs.json", title="GroupDiff API",
                               swagger_js_url="/static_content/swagger-ui-bundle.js",
                               swagger_css_url="/static_content/swagger-ui.css",
                               swagger_favicon_url="/static_content/favicon-light-32x32.png")


def response_body(result: Result) -> dict:
    """The 200 body (`GenerateResponse`, whose schema the OpenAPI document shows; tests check the two agree)."""
    request = result.request
    height, width = result.images.shape[1:3]
    return {
        "request_id": request.request_id, "model_version": result.model_version, "width": int(width),
        "height": int(height), "group_size": request.group_size, "steps": request.steps,
        "guidance_scale": request.guidance_scale, "group_policy": request.group_policy,
        **({} if request.prompt is None else {"prompt": request.prompt}),
        "images": [{"index": i, **({} if request.prompt is not None else {"class_id": request.member_class(i)}),
                    "seed": seed, "png_base64": base64.b64encode(png).decode("ascii")}
                   for i, (seed, png) in enumerate(zip(result.seeds, result.pngs, strict=True))],
        "timings_ms": {stage: round(ms, 3) for stage, ms in result.timings_ms.items()},
        **({} if result.attention is None else {"attention": [
            {"members": list(group.members), "mass": group.mass.tolist()} for group in result.attention]}),
    }


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only disconnects arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _event(name: str, data_schema: dict) -> dict:
    return {"properties": {"event": {"const": name}, "data": {"contentSchema": data_schema}}}


# OpenAPI 3.1 has no item schema for event streams (3.2's itemSchema): by convention `schema` describes each event.
STREAM_200 = {"description": "progress events, then one `result` event (the 200 body of POST /v1/generate) or one "
                             "`error` event (an error body)",
              "content": {"text/event-stream": {"schema": {
                  "type": "object", "required": ["event", "data"],
                  "properties": {"event": {"enum": ["progress", "result", "error"]},
                                 "data": {"type": "string", "contentMediaType": "application/json"}},
                  "oneOf": [_event("progress", {"type": "object", "required": ["step", "steps"], "properties": {
                                "step": {"type": "integer"}, "steps": {"type": "integer"}}}),
                            _event("result", {"$ref": "#/components/schemas/GenerateResponse"}),
                            _event("error", {"$ref": "#/components/schemas/ErrorBody"})]}}}}


@bentoml.service(name="groupdiff", workers=1,
                 traffic={"timeout": int(MAX_TIMEOUT_S) + 30, "max_concurrency": 4 * CONFIG.max_queue + 64})
@bentoml.asgi_app(app, path="/")
class GroupDiffService:
    def __init__(self) -> None:
        self.metrics = ServingMetrics()
        app.state.metrics = self.metrics
        self.engine: Engine = build_engine(CONFIG, self.metrics).start()
        app.state.engine = self.engine
        self.drain = Drain(self.engine, CONFIG.drain_timeout_s)
        self.drain.take_signals()
        app.state.drain = self.drain

    def __is_ready__(self) -> bool:
        return self.engine.ready and not self.drain.draining

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.engine.close(CONFIG.drain_timeout_s)  # at once after a drain; else (no signal) the drain happens here

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
        LOG.info("%s %s k=%d N=%d steps=%d policy=%s seed=%d -> %d in %.1f ms", request.request_id,
                 request.describe_condition(), request.num_images, request.group_size, request.steps,
                 request.group_policy, request.seed, status, (time.perf_counter() - started) * 1000)

    @app.post("/v1/generate", summary="Generate images of a class or a prompt, or an image set",
              response_model=GenerateResponse,
              responses=error_responses(400, 413, 422, 429, 503, 504, 500))
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
            return JSONResponse(error_body("cancelled", "client disconnected"), status_code=499)
        try:
            result = work.result()
        except RequestError as error:
            self._log(resolved, error.status, started)
            raise
        self._log(resolved, 200, started)
        return JSONResponse(response_body(result))

    @app.post("/v1/generate/stream", summary="Generate with progress events (text/event-stream)",
              response_class=EventStream, responses={200: STREAM_200, **error_responses(400, 413, 422, 429, 503, 500)})
    async def generate_stream(self, body: GenerateRequest) -> EventStream:
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

        return EventStream(stream(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/model", summary="The served model and the request limits it implies", response_model=ModelInfo,
             responses=error_responses(503))
    async def model(self) -> ModelInfo:
        served = self.engine.served
        if served is None or self.engine.image_shape is None:
            raise self.engine.not_ready_error()
        spec = served.spec
        height, width, _ = self.engine.image_shape
        text = spec.text_encoder is not None
        return ModelInfo(
            model_version=spec.model_version, kind=spec.kind, condition=served.condition,
            num_classes=spec.num_classes, max_prompt_chars=MAX_PROMPT_CHARS if text else None,
            max_prompt_tokens=spec.text_encoder.context_length if text else None,
            max_group_size=max(served.group_sizes), default_group_size=served.default_group_size,
            group_sizes=list(served.group_sizes),
            steps=list(spec.steps) if spec.steps else StepRange(min=1, max=TEACHER_MAX_STEPS),
            default_steps=spec.default_steps, guidance_scale=spec.guidance_scale,
            guidance_adjustable=spec.guidance_adjustable, width=width, height=height, runtime=served.runtime,
            max_images=CONFIG.limits.max_images)


GroupDiffService.add_asgi_middleware(JsonErrors)
