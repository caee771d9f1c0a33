"""Errors the SDK raises, one class per error code of the serving contract (docs/clients.md).

Each class carries ``outcome``, the load generator's name for it (`groupdiff.clients.loadgen`), so a
failed call is counted as a rejection, a deadline or an error without the load generator knowing HTTP.
"""

from __future__ import annotations


class GroupDiffError(Exception):
    """The server answered with an error, or could not be reached."""

    code = "internal"
    outcome = "error"

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}"


class InvalidRequest(GroupDiffError):
    code = "invalid_request"


class Unauthorized(GroupDiffError):
    code = "unauthorized"


class QueueFull(GroupDiffError):
    """The server is overloaded (429); ``retry_after`` is its hint in seconds, when it gave one."""

    code = "queue_full"
    outcome = "rejected"

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message, status, code)
        self.retry_after = retry_after


class ShuttingDown(QueueFull):
    """503: the server is draining; another replica (or this one, later) can take the request."""

    code = "shutting_down"


class NotReady(QueueFull):
    """503: the server is still loading its model (or failed to load it); retried like an overload."""

    code = "not_ready"


class DeadlineExceeded(GroupDiffError, TimeoutError):
    """The request's deadline passed on the server (504) or the client stopped waiting."""

    code = "deadline_exceeded"
    outcome = "deadline"


class ServerUnavailable(GroupDiffError):
    """No connection could be made (server down or wrong address)."""

    code = "unavailable"


ERRORS_BY_CODE = {cls.code: cls for cls in (InvalidRequest, Unauthorized, QueueFull, NotReady, ShuttingDown,
                                             DeadlineExceeded)}
ERRORS_BY_STATUS = {400: InvalidRequest, 422: InvalidRequest, 401: Unauthorized, 429: QueueFull, 503: ShuttingDown,
                    504: DeadlineExceeded}


def error_for(status: int | None, code: str | None, message: str, retry_after: float | None = None) -> GroupDiffError:
    """The SDK exception for an error answer, by contract code first, then by HTTP status."""
    cls = ERRORS_BY_CODE.get(code or "") or ERRORS_BY_STATUS.get(status or 0, GroupDiffError)
    if issubclass(cls, QueueFull):
        return cls(message, status, code, retry_after=retry_after)
    return cls(message, status, code)
