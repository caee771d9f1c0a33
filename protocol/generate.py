"""`POST /v1/generate`: the request body (with a served model's exact bounds), the response and `/v1/model`.

`request_model` builds the body's Pydantic model from `RequestLimits`, what one server accepts (its model's
classes, group sizes and steps, its image limit), so the OpenAPI document shows the real bounds and both
frontends validate with the same model. Clients send `OPTIONAL_FIELDS` only when set, leaving the defaults to
the server.

A request names its condition one of three ways: ``class_id`` with ``num_images`` (images of one class, in groups
of ``group_size``), ``class_ids``, an *image set*: one class per image, generated as one group whose members
attend to each other (so a T-shirt, trousers and sneakers share a style), never shared with other requests, or,
for a text-conditioned model, ``prompt`` with ``num_images``. Which kind a server takes is its model's
(`RequestLimits.condition`); the other kind is refused by the body model itself, so every frontend refuses it
with the same message. A prompt is checked and normalised by `groupdiff.protocol.prompts.check_prompt` here;
whether the text encoder's tokenizer can hold it is the server's check (it needs the tokenizer).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .limits import GROUP_POLICIES, MAX_GUIDANCE_SCALE, MAX_PROMPT_CHARS, MAX_SEED, MAX_TIMEOUT_S, TEACHER_MAX_STEPS
from .prompts import check_prompt

CONDITION_FIELDS = ("class_id", "class_ids", "prompt")  # exactly one: a class, an image set, or a text prompt
CONDITIONS = ("class", "text")  # what a served model is conditioned on
OPTIONAL_FIELDS = ("group_size", "steps", "guidance_scale", "seed", "group_policy", "timeout_s", "return_attention")
ATTENTION_DOC = (
    "also return, for each group that holds this request's images, the N x N image-to-image attention mass: "
    "row i is how member i's patches split their attention over the members j of its group (p^{i->j} of the "
    "paper's Eq. 7 divided by the patches per image, so each row sums to 1: self plus cross-sample share), "
    "head-averaged and averaged over layers (a layer without group attention counts as all self), measured on "
    "the input of the final denoising step in the pass where members attend to each other (a student's or "
    "GroupDiff-f's conditional pass, GroupDiff-l's unconditional one). It costs one extra forward of the group "
    "with explicit attention on the model thread and never changes the images. Needs a group size of at least "
    "2 and a pass with group attention; otherwise the request is refused (invalid_request)")


@dataclass(frozen=True)
class RequestLimits:
    """What one server accepts: the bounds of its request body."""

    num_classes: int  # class ids 0 .. num_classes - 1
    max_images: int
    group_sizes: tuple[int, ...]  # ascending
    default_group_size: int
    steps: tuple[int, ...]  # a student's step counts; () for a teacher: any count in 1..TEACHER_MAX_STEPS
    default_steps: int
    guidance_scale: float  # the default (teacher) or the baked-in scale (student)
    guidance_adjustable: bool
    default_timeout_s: float
    condition: Literal["class", "text"] = "class"  # the served model's: class ids, or text prompts
    max_prompt_tokens: int | None = None  # a text model's tokenizer limit (start and end tokens included)

    def describe_steps(self) -> str:
        return ", ".join(map(str, self.steps)) if self.steps else f"1..{TEACHER_MAX_STEPS}"


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


def _checked_prompt(text: str) -> str:
    return check_prompt(text, MAX_PROMPT_CHARS)  # ValueError: pydantic reports it under the field's name


Prompt = Annotated[StrictStr, AfterValidator(_checked_prompt),
                   WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS})]
ASK_CONDITION = {"class": "give class_id (with num_images) or class_ids (an image set)",
                 "text": "give prompt (with num_images)"}
WRONG_CONDITION = {  # the served model's kind -> why a request of the other kind is refused
    "class": "prompt: this model is class-conditioned; send class_id (with num_images) or class_ids, not a prompt",
    "text": "this model is text-conditioned; send prompt (with num_images), not class_id or class_ids",
}


class _GenerateBody(BaseModel):
    """The rules across fields; each field's own bounds come from `request_model`."""

    condition: ClassVar[str]  # the served model's kind, set by the subclass

    @model_validator(mode="after")
    def _one_condition(self):
        given = [name for name in CONDITION_FIELDS if getattr(self, name) is not None]
        if not given:
            raise ValueError(ASK_CONDITION[self.condition])
        if len(given) > 1:
            raise ValueError(f"{ASK_CONDITION[self.condition]}: one condition, not both ({' and '.join(given)})")
        if ("text" if given == ["prompt"] else "class") != self.condition:
            raise ValueError(WRONG_CONDITION[self.condition])
        if self.class_ids is None and self.num_images is None:
            raise ValueError(f"num_images: Field required (with {given[0]})")
        if self.class_ids is not None:
            size = len(self.class_ids)
            for field in ("num_images", "group_size"):
                if getattr(self, field) not in (None, size):
                    raise ValueError(f"{field}: an image set of {size} classes is one group of {size} images "
                                     f"(omit {field} or pass {size})")
            if self.group_policy != "isolated":
                raise ValueError("group_policy: an image set is always its own group (isolated)")
        return self


class _ClassBody(_GenerateBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["class_id", "num_images"]}, {"required": ["class_ids"]}]})
    condition: ClassVar[str] = "class"


class _TextBody(_GenerateBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [{"required": ["prompt", "num_images"]}]})
    condition: ClassVar[str] = "text"


@functools.lru_cache(maxsize=16)
def request_model(limits: RequestLimits) -> type[BaseModel]:
    """The JSON body model with these exact limits (unknown fields are refused)."""
    steps = limits.steps or tuple(range(1, TEACHER_MAX_STEPS + 1))
    guidance_doc = (f"teacher: 0..{MAX_GUIDANCE_SCALE:g}, default {limits.guidance_scale:g}"
                    if limits.guidance_adjustable
                    else f"baked into the student ({limits.guidance_scale:g}); omit it or pass that value")
    # a text model takes no class: any id is refused by the condition rule, not by a bound it does not have
    last_class = limits.num_classes - 1 if limits.condition == "class" else MAX_SEED
    fields = {
        "class_id": (json_int(0, last_class) | None, Field(
            default=None, description="the condition: a class id (with num_images)")),
        "class_ids": (list[json_int(0, last_class)] | None, Field(
            default=None, min_length=1, max_length=max(limits.group_sizes), description=(
                "an image set: one class per image, generated together as one group (instead of class_id)"))),
        "prompt": (Prompt | None, Field(default=None, description=_prompt_doc(limits))),
        "num_images": (json_int(1, limits.max_images) | None, Field(
            default=None, description="images to return (k); with class_ids, their count")),
        "group_size": (int_among(limits.group_sizes) | None, Field(
            default=None, description=f"members per group (default {limits.default_group_size})")),
        "steps": (int_among(steps) | None, Field(default=None, description=(
            f"sampling steps, {'one of ' if limits.steps else ''}{limits.describe_steps()} "
            f"(default {limits.default_steps})"))),
        "guidance_scale": (float | None, Field(default=None, ge=0.0, le=MAX_GUIDANCE_SCALE, allow_inf_nan=False,
                                               strict=True, description=guidance_doc)),
        "seed": (json_int(0, MAX_SEED) | None, Field(
            default=None, description="image i uses seed + i (default: drawn by the server)")),
        "group_policy": (Literal[GROUP_POLICIES], Field(default=GROUP_POLICIES[0], description=(
            "isolated: padding members fill a partial group, so images never depend on other requests; "
            "shared: members of other requests with the same settings fill it"))),
        "timeout_s": (float, Field(default=limits.default_timeout_s, gt=0.0, le=MAX_TIMEOUT_S, allow_inf_nan=False,
                                   strict=True, description="deadline in seconds; expired work is dropped (504)")),
        "return_attention": (StrictBool, Field(default=False, description=ATTENTION_DOC)),
    }
    return create_model("GenerateRequest", __base__=_TextBody if limits.condition == "text" else _ClassBody, **fields)


def _prompt_doc(limits: RequestLimits) -> str:
    if limits.condition != "text":
        return "text models only (this server's model is class-conditioned: a prompt is refused)"
    tokens = f" and at most {limits.max_prompt_tokens} tokens of the model's text encoder" if \
        limits.max_prompt_tokens else ""
    return (f"the condition of a text model (with num_images): Unicode NFC, whitespace runs folded to one space, "
            f"at most {MAX_PROMPT_CHARS} characters after that{tokens} (longer prompts are refused, never "
            "truncated); control characters are refused. Requests whose normalised prompts and settings are equal "
            "may share groups")


def describe_validation_error(error: ValidationError | list) -> str:
    """One line per bad field, e.g. ``num_images: Input should be less than or equal to 64``."""
    errors = error.errors() if isinstance(error, ValidationError) else error
    parts = []
    for item in errors:
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        message = item.get("msg", "invalid").removeprefix("Value error, ")  # a rule across fields names them
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)


# ---- responses (the 200 schemas of the OpenAPI document); unknown fields are ignored, so an SDK reads the
# answers of a newer server -----------------------------------------------------------------------------------

class GeneratedImage(BaseModel):
    index: int = Field(ge=0, description="position in the request")
    class_id: int | None = Field(default=None, ge=0, description=(
        "the image's class (an image set's class for this member); absent for a prompt"))
    seed: int = Field(ge=0, le=MAX_SEED, description="the image's seed: the request's seed + index (mod 2^63)")
    png_base64: str = Field(description="the image as a base64-encoded PNG")


class StageTimings(BaseModel):
    queue: float = Field(description="ms from arrival until its first group ran")
    denoise: float = Field(description="ms of sampling, decode excluded")
    decode: float = Field(description="ms of the decoder calls that held its groups")
    encode: float = Field(description="ms of PNG encoding")
    total: float = Field(description="ms from arrival to answer")


class GroupAttention(BaseModel):
    """One group's member-to-member attention mass (`return_attention`)."""

    members: list[int | None] = Field(description=(
        "for each member of the group, in order, the index of this request's image it became; null for a padding "
        "member or another request's member (a shared group)"))
    mass: list[list[float]] = Field(description=(
        "N x N, row i -> column j: the share of member i's attention that lands on member j; rows sum to 1"))


class GenerateResponse(BaseModel):
    request_id: str
    model_version: str
    width: int
    height: int
    group_size: int
    steps: int
    guidance_scale: float
    group_policy: Literal[GROUP_POLICIES]
    prompt: str | None = Field(default=None, description="the prompt as the model saw it (normalised); absent for "
                                                         "a class request")
    images: list[GeneratedImage]
    timings_ms: StageTimings
    attention: list[GroupAttention] | None = Field(default=None, description=(
        "with return_attention: one entry per group holding this request's images, in the order of their first "
        "image; absent otherwise"))


class StepRange(BaseModel):
    min: int
    max: int


class ModelInfo(BaseModel):
    """``GET /v1/model``: the served model and the request limits it implies."""

    model_version: str
    kind: Literal["teacher", "student"]
    condition: Literal[CONDITIONS] = "class"
    num_classes: int = Field(description="class ids 0 .. num_classes - 1 (a class-conditioned model)")
    max_prompt_chars: int | None = Field(default=None, description="a text model's prompt limit in characters")
    max_prompt_tokens: int | None = Field(default=None, description=(
        "a text model's prompt limit in tokens of its text encoder (start and end of text included)"))
    max_group_size: int
    default_group_size: int
    group_sizes: list[int]
    steps: list[int] | StepRange = Field(description="a student's step counts, or a teacher's range")
    default_steps: int
    guidance_scale: float
    guidance_adjustable: bool
    width: int
    height: int
    runtime: str
    max_images: int
