"""Error codes of the contract, their HTTP statuses and the JSON error body every frontend answers with."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

ErrorCode = Literal["invalid_request", "unauthorized", "not_found", "method_not_allowed", "queue_full", "not_ready",
                    "shutting_down", "deadline_exceeded", "cancelled", "internal"]
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)
# the code of an HTTP error that carries none of its own (a framework's 404, 405, 503, ...)
CODE_FOR_STATUS = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                   413: "invalid_request", 422: "invalid_request", 429: "queue_full", 503: "not_ready",
                   504: "deadline_exceeded"}
RETRYABLE_CODES = frozenset({"queue_full", "not_ready", "shutting_down"})  # another try (later, elsewhere) may work


def code_for_status(status: int) -> str:
    return CODE_FOR_STATUS.get(status, "internal" if status >= 500 else "invalid_request")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str


class ErrorBody(BaseModel):
    """``{"error": {"code": ..., "message": ...}}``: every error answer, on every route and frontend."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}
