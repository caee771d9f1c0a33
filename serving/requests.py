"""What a client may ask for, checked once for both frontends (REST and Triton).

A request is validated in two layers: `request_model` builds a Pydantic model whose field limits come
from the served model and the server limits (so the OpenAPI docs show the real bounds), and
`resolve` turns a validated body into a `ResolvedRequest` with every default filled in. Anything
wrong raises `RequestError`, which each frontend turns into its own error format.
"""

from __future__ import annotations

import functools
import math
import secrets
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from .spec import MAX_GUIDANCE_SCALE, TEACHER_MAX_STEPS, DenoiserSpec

GROUP_POLICIES = ("isolated", "shared")
MAX_SEED = 2**63 - 1  # seeds travel as INT64 (Triton) and JSON integers
SEED_SPACE = 2**63  # image seeds wrap around here, so every one fits an INT64
MAX_TIMEOUT_S = 300.0
DEFAULT_TIMEOUT_S = 60.0


class RequestError(Exception):
    """A request the server refuses; ``code`` and ``status`` follow the serving contract."""

    def __init__(self, code: str, message: str, status: int, retry_after_s: int | None = None,
                 reason: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.reason = reason or code  # the metrics' rejection reason (429s: queue_full or overloaded)

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

    @property
    def outcome(self) -> str:
        """The load generator's outcome kind (groupdiff.clients.loadgen) for an in-process call."""
        return {"queue_full": "rejected", "deadline_exceeded": "deadline"}.get(self.code, "error")


def invalid(message: str, status: int = 422) -> RequestError:
    return RequestError("invalid_request", message, status)


@dataclass(frozen=True)
class ServerLimits:
    max_images: int = 64  # num_images per request
    max_queue_groups: int = 256  # groups waiting to run; beyond it requests get 429
    max_body_bytes: int = 64 * 1024  # REST bodies above it get 413
    default_timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {self.max_images}")
        if self.max_queue_groups < self.max_images:
            raise ValueError(f"the queue ({self.max_queue_groups} groups) must hold the largest request "
                             f"({self.max_images} groups of one image)")


@dataclass(frozen=True)
class ServedModel:
    """The served checkpoint's contract plus what the runtime accepts: everything validation needs."""

    spec: DenoiserSpec
    group_sizes: tuple[int, ...]  # N values the runtime runs (subset of 1..spec.max_group_size)
    default_group_size: int
    runtime: str

    @classmethod
    def for_runtime(cls, spec: DenoiserSpec, group_sizes: tuple[int, ...], runtime: str) -> ServedModel:
        """The one place the default group size is decided: the checkpoint's (a student's distilled
        size, a teacher's largest) when the runtime serves it, else the runtime's largest."""
        sizes = tuple(sorted(group_sizes))
        default = spec.default_group_size if spec.default_group_size in sizes else max(sizes)
        return cls(spec, sizes, default, runtime)


@dataclass(frozen=True)
class ResolvedRequest:
    """A validated request with its defaults filled in: what the scheduler works on."""

    request_id: str
    class_id: int
    num_images: int
    group_size: int
    steps: int
    guidance_scale: float
    seed: int
    group_policy: str
    timeout_s: float

    @property
    def settings_key(self) -> tuple:
        """Requests with equal keys may share a group (same condition, shape and sampling settings)."""
        return (self.class_id, self.group_size, self.steps, self.guidance_scale)

    def image_seed(self, index: int) -> int:
        """Seed of image ``index`` (padding members beyond ``num_images`` continue the sequence)."""
        return (self.seed + index) % SEED_SPACE


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def json_int(low: int, high: int) -> Any:
    """An integer in ``[low, high]`` as JSON Schema (and so the OpenAPI document) means it: 4 and 4.0, never true,
    "4" or 4.5 (pydantic's strict int would refuse 4.0, its lax int take "4" and true)."""
    return Annotated[StrictInt, Field(ge=low, le=high), BeforeValidator(_whole)]  # bounds first: see the schema


def int_among(values: tuple[int, ...]) -> Any:
    """A `json_int` among ``values``: a range (``minimum``/``maximum`` in the JSON schema) when they are
    consecutive, else an ``enum`` (pydantic's ``Literal`` would also take ``true``)."""
    if values == tuple(range(values[0], values[-1] + 1)):
        return json_int(values[0], values[-1])
    expected = ", ".join(map(str, values))

    def check(value: int) -> int:
        if value not in values:
            raise PydanticCustomError("enum", "Input should be one of {expected}", {"expected": expected})
        return value

    return Annotated[StrictInt, AfterValidator(check), BeforeValidator(_whole),
                     WithJsonSchema({"type": "integer", "enum": list(values)})]


@functools.lru_cache(maxsize=16)
def request_model(served: ServedModel, limits: ServerLimits) -> type[BaseModel]:
    """The JSON body model with this server's exact limits (unknown fields are refused); the OpenAPI document
    shows the same bounds, and the Triton frontend validates with it too (hence the cache)."""
    spec = served.spec
    steps = spec.steps or tuple(range(1, TEACHER_MAX_STEPS + 1))
    steps_doc = f"one of {spec.describe_steps()}" if spec.steps else f"1..{TEACHER_MAX_STEPS}"
    guidance_doc = (f"teacher: 0..20, default {spec.guidance_scale:g}" if spec.guidance_adjustable
                    else f"baked into the student ({spec.guidance_scale:g}); omit it or pass that value")
    fields = {
        "class_id": (json_int(0, spec.num_classes - 1), Field(description="the condition: a class id")),
        "num_images": (json_int(1, limits.max_images), Field(description="images to return (k)")),
        "group_size": (int_among(served.group_sizes) | None, Field(
            default=None, description=f"members per group (default {served.default_group_size})")),
        "steps": (int_among(steps) | None, Field(
            default=None, description=f"sampling steps, {steps_doc} (default {spec.default_steps})")),
        "guidance_scale": (float | None, Field(default=None, ge=0.0, le=MAX_GUIDANCE_SCALE, allow_inf_nan=False,
                                               strict=True, description=guidance_doc)),
        "seed": (json_int(0, MAX_SEED) | None, Field(
            default=None, description="image i uses seed + i (default: drawn by the server)")),
        "group_policy": (Literal[GROUP_POLICIES], Field(default="isolated", description=(
            "isolated: padding members fill a partial group, so images never depend on other requests; "
            "shared: members of other requests with the same settings fill it"))),
        "timeout_s": (float, Field(default=limits.default_timeout_s, gt=0.0, le=MAX_TIMEOUT_S, allow_inf_nan=False,
                                   strict=True, description="deadline in seconds; expired work is dropped (504)")),
    }
    return create_model("GenerateRequest", __config__=ConfigDict(extra="forbid"), **fields)


def describe_validation_error(error: ValidationError | list) -> str:
    """One line per bad field, e.g. ``num_images: Input should be less than or equal to 64``."""
    errors = error.errors() if isinstance(error, ValidationError) else error
    parts = []
    for item in errors:
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def resolve(body: BaseModel | dict, served: ServedModel, limits: ServerLimits) -> ResolvedRequest:
    """Validate (a dict or an already-validated body) and fill in the defaults."""
    if isinstance(body, dict):
        try:
            body = request_model(served, limits).model_validate(body)
        except ValidationError as error:
            raise invalid(describe_validation_error(error)) from None
    spec = served.spec
    group_size = served.default_group_size if body.group_size is None else body.group_size
    if group_size not in served.group_sizes:
        raise invalid(f"group_size: {group_size} is not served by the {served.runtime} runtime "
                      f"(allowed: {', '.join(map(str, served.group_sizes))})")
    steps = spec.default_steps if body.steps is None else body.steps
    if body.guidance_scale is None:
        guidance = spec.guidance_scale
    elif spec.guidance_adjustable:
        guidance = float(body.guidance_scale)
    elif math.isclose(body.guidance_scale, spec.guidance_scale, rel_tol=0, abs_tol=1e-6):
        guidance = spec.guidance_scale
    else:
        raise invalid(f"guidance_scale: this student has guidance {spec.guidance_scale:g} baked in; "
                      f"omit the field or pass that value (got {body.guidance_scale:g})")
    seed = secrets.randbelow(MAX_SEED + 1) if body.seed is None else body.seed
    return ResolvedRequest(
        request_id=uuid.uuid4().hex, class_id=body.class_id, num_images=body.num_images, group_size=group_size,
        steps=steps, guidance_scale=guidance, seed=seed, group_policy=body.group_policy,
        timeout_s=float(body.timeout_s),
    )
