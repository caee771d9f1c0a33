"""What a client may ask for, checked once for both frontends (REST and Triton).

The body's schema and bounds are the protocol's (`groupdiff.protocol.generate.request_model`, built from what
this server's model and limits accept: `ServedModel.request_limits`); `resolve` validates a body and turns it
into a `ResolvedRequest` with every default filled in. Anything wrong raises `RequestError`, which each frontend
turns into its own error format.

A prompt arrives normalised by the body model (`groupdiff.protocol.prompts`); here it must also fit the text
encoder's tokenizer (`ServedModel.check_tokens`), or it is refused with the limit named, never truncated.
"""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from groupdiff.model.spec import DenoiserSpec
from groupdiff.protocol.generate import RequestLimits, describe_validation_error, request_model
from groupdiff.protocol.limits import DEFAULT_MAX_IMAGES, DEFAULT_TIMEOUT_S, MAX_SEED, SEED_SPACE

from .attention import attention_branch
from .runtimes import RUNTIMES


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
    max_images: int = DEFAULT_MAX_IMAGES  # num_images per request
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
    captures_attention: bool = False  # a torch model beside the runtime can report attention mass
    # a text model's tokenizer check: raises a ValueError naming the limit (`PromptTooLong`) for a prompt too long
    check_tokens: Callable[[str], None] | None = None

    @classmethod
    def for_runtime(cls, spec: DenoiserSpec, group_sizes: tuple[int, ...], runtime: str,
                    captures_attention: bool = False,
                    check_tokens: Callable[[str], None] | None = None) -> ServedModel:
        """The one place the default group size is decided: the checkpoint's (a student's distilled
        size, a teacher's largest) when the runtime serves it, else the runtime's largest."""
        sizes = tuple(sorted(group_sizes))
        default = spec.default_group_size if spec.default_group_size in sizes else max(sizes)
        return cls(spec, sizes, default, runtime, captures_attention, check_tokens)

    @property
    def condition(self) -> str:
        return "text" if self.spec.text_encoder is not None else "class"

    def request_limits(self, limits: ServerLimits) -> RequestLimits:
        spec = self.spec
        return RequestLimits(
            num_classes=spec.num_classes, max_images=limits.max_images, group_sizes=self.group_sizes,
            default_group_size=self.default_group_size, steps=spec.steps, default_steps=spec.default_steps,
            guidance_scale=spec.guidance_scale, guidance_adjustable=spec.guidance_adjustable,
            default_timeout_s=limits.default_timeout_s, condition=self.condition,
            max_prompt_tokens=spec.text_encoder.context_length if spec.text_encoder is not None else None)


@dataclass(frozen=True)
class ResolvedRequest:
    """A validated request with its defaults filled in: what the scheduler works on."""

    request_id: str
    class_id: int | None  # None for an image set or a prompt
    num_images: int
    group_size: int
    steps: int
    guidance_scale: float
    seed: int
    group_policy: str
    timeout_s: float
    class_ids: tuple[int, ...] = ()  # an image set: one class per member of its one group
    return_attention: bool = False  # not in the settings key: it never changes the images
    prompt: str | None = None  # a text model's condition, normalised (`groupdiff.protocol.prompts`)

    @property
    def settings_key(self) -> tuple:
        """Requests with equal keys may share a group (same condition, shape and sampling settings); prompts
        are compared in their normal form, so "a  shirt" and "a shirt" share groups."""
        condition = ("prompt", self.prompt) if self.prompt is not None else self.class_ids or self.class_id
        return (condition, self.group_size, self.steps, self.guidance_scale)

    def member_class(self, index: int) -> int | None:
        """The class of image ``index`` (a padding member of a one-class request has the request's class);
        None for a prompt."""
        return self.class_ids[index] if self.class_ids else self.class_id

    def describe_condition(self) -> str:
        if self.prompt is not None:
            return f"prompt={self.prompt if len(self.prompt) <= 60 else self.prompt[:57] + '...'!r}"
        return f"set={list(self.class_ids)}" if self.class_ids else f"class={self.class_id}"

    def image_seed(self, index: int) -> int:
        """Seed of image ``index`` (padding members beyond ``num_images`` continue the sequence)."""
        return (self.seed + index) % SEED_SPACE


def resolve(body: BaseModel | dict, served: ServedModel, limits: ServerLimits) -> ResolvedRequest:
    """Validate (a dict or an already-validated body) and fill in the defaults."""
    if isinstance(body, dict):
        try:
            body = request_model(served.request_limits(limits)).model_validate(body)
        except ValidationError as error:
            raise invalid(describe_validation_error(error)) from None
    spec = served.spec
    class_ids = tuple(body.class_ids or ())
    if class_ids:  # an image set is one group of its own (the body model checked num_images, group_size, policy)
        group_size = num_images = len(class_ids)
        if group_size not in served.group_sizes:
            raise invalid(f"class_ids: a set of {group_size} images is one group of {group_size}, which the "
                          f"{served.runtime} runtime does not serve (sizes: {', '.join(map(str, served.group_sizes))})")
    else:
        num_images = body.num_images
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
    if body.return_attention:
        check_attention(served, group_size, guidance)
    if body.prompt is not None:
        check_tokens(served, body.prompt)
    seed = secrets.randbelow(MAX_SEED + 1) if body.seed is None else body.seed
    return ResolvedRequest(
        request_id=uuid.uuid4().hex, class_id=body.class_id, num_images=num_images, group_size=group_size,
        steps=steps, guidance_scale=guidance, seed=seed, group_policy=body.group_policy,
        timeout_s=float(body.timeout_s), class_ids=class_ids, return_attention=body.return_attention,
        prompt=body.prompt,
    )


def check_tokens(served: ServedModel, prompt: str) -> None:
    """A prompt the text encoder's tokenizer cannot hold is refused with its limit (never truncated)."""
    try:
        served.check_tokens(prompt)
    except ValueError as error:
        raise invalid(f"prompt: {error}") from None


def check_attention(served: ServedModel, group_size: int, guidance_scale: float) -> None:
    """``return_attention`` needs a pass with group attention and a torch model to capture it (`attention`)."""
    try:
        attention_branch(served.spec, group_size, guidance_scale)
    except ValueError as error:
        raise invalid(f"return_attention: {error}") from None
    if not served.captures_attention:
        # `groupdiff serve` runtimes can load a copy (--attention-capture); a Triton GPU repository's BLS cannot
        hint = " (the server was started without --attention-capture)" if served.runtime in RUNTIMES else ""
        raise invalid(f"return_attention: the {served.runtime} runtime of this server has no torch model to "
                      f"capture attention with{hint}")
