"""Easel's error hierarchy, rooted here so both sides share it.

    EaselError
    ├── InvalidRequest        400  a field broke a rule (names the field)
    ├── Unauthorized          401  missing or unknown API key
    ├── NotFound              404
    │   ├── UnknownTask
    │   │   └── ExpiredTask   it existed, past its retention
    │   └── UnknownApp
    ├── Conflict              409  an Idempotency-Key reused with another body
    ├── PayloadTooLarge       413
    ├── TooManyRequests       429  rate limit or in-flight cap (carries retry_after)
    ├── Unavailable           503
    │   ├── BackendUnavailable    Redis or S3 cannot be reached
    │   ├── NoLiveWorker          nobody consumes the requested queue
    │   └── ServerBusy            this API process reads enough large bodies already
    ├── JobError                  a job failed in the worker; ends it FAILED
    │   ├── ImageFetchError
    │   ├── ImageDecodeError
    │   └── ModelError
    └── JobCanceled               the owner canceled a running job; ends it CANCELED

The API maps ``status_code`` to the response in one handler; the worker turns a
``JobError`` (or any exception) into a FAILED job whose error is ``str(exc)``.
"""

from __future__ import annotations

from typing import Any, TypeVar


class EaselError(Exception):
    """Root of every error Easel raises on purpose."""

    status_code = 500

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class InvalidRequest(EaselError):
    status_code = 400


class Unauthorized(EaselError):
    status_code = 401


class NotFound(EaselError):
    status_code = 404


class UnknownTask(NotFound):
    pass


class ExpiredTask(UnknownTask):
    pass


class Conflict(EaselError):
    status_code = 409


class TooManyRequests(EaselError):
    status_code = 429

    def __init__(self, message: str, retry_after_s: float | None = None, data: Any = None):
        super().__init__(message, data)
        self.retry_after_s = retry_after_s


class UnknownApp(NotFound):
    pass


class PayloadTooLarge(EaselError):
    status_code = 413


class Unavailable(EaselError):
    status_code = 503


class BackendUnavailable(Unavailable):
    pass


class NoLiveWorker(Unavailable):
    pass


class ServerBusy(Unavailable):
    def __init__(self, message: str, retry_after_s: float | None = None, data: Any = None):
        super().__init__(message, data)
        self.retry_after_s = retry_after_s


class JobError(EaselError):
    """A failure inside a job; the job ends FAILED with this one-line message."""


class ImageFetchError(JobError):
    pass


class ImageDecodeError(JobError):
    pass


class ModelError(JobError):
    pass


class JobCanceled(EaselError):
    """Raised inside a running job when its owner cancels it."""


E = TypeVar("E", bound=EaselError)


def field_error(
    field: str,
    rule: str,
    message: str,
    error: type[E] = InvalidRequest,  # type: ignore[assignment]
) -> E:
    """The one shape of an error about one field: ``"<field>: <message>"``, with
    ``error_data = {"errors": [{"field", "rule", "message"}]}``, as pydantic's are mapped."""
    return error(f"{field}: {message}", field_errors([(field, rule, message)]))


def field_errors(errors: list[tuple[str, str, str]]) -> dict[str, Any]:
    """``error_data`` for one or more (field, rule, message) triples."""
    return {"errors": [{"field": f, "rule": r, "message": m} for f, r, m in errors]}
