"""The Triton (KServe v2) model ``groupdiff``: tensor names, datatypes and how its errors map to contract codes.

One request per call: every input carries one `/v1/generate` field, in shape [1] but ``CLASS_IDS`` (an image
set: [k], one class per image); ``PROMPT`` is the UTF-8 prompt of a text model. The outputs are the request's
images, their seeds and either their classes (``CLASS_IDS``) or the normalised prompt (``PROMPT``, [1]), and the
attention mass its ``RETURN_ATTENTION`` asks for: ``ATTENTION`` (groups, N, N), row i -> column j as in the REST
answer's ``attention[g].mass``, and ``ATTENTION_MEMBERS`` (groups, N), each member's image index (-1: padding or
another request's member). Without the flag the answer has neither.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_NAME = "groupdiff"
MODEL_VERSION = 1


@dataclass(frozen=True)
class TritonInput:
    name: str  # the tensor name
    datatype: str  # KServe v2 datatype
    field: str  # the /v1/generate field it carries
    optional: bool = True  # the body's own rules still apply (class_id with num_images, or class_ids)
    shape: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class TritonOutput:
    name: str
    datatype: str
    shape: tuple[int, ...]


INPUTS = (
    TritonInput("CLASS_ID", "INT64", "class_id"),
    TritonInput("CLASS_IDS", "INT64", "class_ids", shape=(-1,)),
    TritonInput("PROMPT", "BYTES", "prompt"),  # UTF-8
    TritonInput("NUM_IMAGES", "INT32", "num_images"),
    TritonInput("GROUP_SIZE", "INT32", "group_size"),
    TritonInput("STEPS", "INT32", "steps"),
    TritonInput("GUIDANCE_SCALE", "FP32", "guidance_scale"),
    TritonInput("SEED", "INT64", "seed"),
    TritonInput("GROUP_POLICY", "BYTES", "group_policy"),
    TritonInput("RETURN_ATTENTION", "BOOL", "return_attention"),
)
OUTPUTS = (
    TritonOutput("IMAGES", "UINT8", (-1, -1, -1, -1)),  # (k, H, W, C)
    TritonOutput("SEEDS", "INT64", (-1,)),  # (k,)
    TritonOutput("CLASS_IDS", "INT64", (-1,)),  # (k,) each image's class; only for a class request
    TritonOutput("PROMPT", "BYTES", (1,)),  # the normalised prompt, UTF-8; only for a prompt request
    TritonOutput("ATTENTION", "FP32", (-1, -1, -1)),  # (groups, N, N); only with RETURN_ATTENTION
    TritonOutput("ATTENTION_MEMBERS", "INT64", (-1, -1)),  # (groups, N) image index per member, -1: not this request's
)
NO_MEMBER = -1  # ATTENTION_MEMBERS of a padding member or another request's member
INPUT_BY_FIELD = {tensor.field: tensor for tensor in INPUTS}


def triton_error_code(status: int) -> str:
    """Triton's error code for a contract status: bad input is INVALID_ARG (HTTP 400); overload, loading,
    shutdown and deadlines are UNAVAILABLE (503; Triton has no 429 or 504); anything else is INTERNAL.
    The message starts with the contract code, which is how clients tell these apart."""
    if status in (429, 503, 504):
        return "UNAVAILABLE"
    return "INVALID_ARG" if 400 <= status < 500 else "INTERNAL"


# gRPC status names and HTTP statuses (as tritonclient reports them) to contract codes, for answers whose
# message carries no contract code (Triton's own errors)
CODE_FOR_TRITON_STATUS = {
    "RESOURCE_EXHAUSTED": "queue_full", "UNAVAILABLE": "shutting_down", "INVALID_ARGUMENT": "invalid_request",
    "DEADLINE_EXCEEDED": "deadline_exceeded", "UNAUTHENTICATED": "unauthorized", "429": "queue_full",
    "503": "shutting_down", "400": "invalid_request", "422": "invalid_request", "504": "deadline_exceeded",
    "401": "unauthorized"}
