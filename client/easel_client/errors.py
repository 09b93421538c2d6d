"""Everything the SDK raises, under one root::

EaselError
├── APIConnectionError            the API could not be reached (no HTTP answer)
├── APIError                      the API answered with an error envelope
│   ├── BadRequest                400: a field breaks a rule (the message names it)
│   ├── Unauthorized              401: missing or unknown API key
│   ├── NotFound                  404: unknown task, someone else's task, unknown app_id
│   ├── Conflict                  409
│   ├── PayloadTooLarge           413: the body is over the server's limit
│   ├── RateLimited               429: still limited after ``max_retries`` retries
│   └── Unavailable               503: Redis down, or no live worker for the GPU class
├── TaskError                     ``wait()`` saw the job end badly
│   ├── TaskFailed                it ended FAILED
│   └── TaskCanceled              it ended CANCELED
└── WaitTimeout                   ``wait(timeout=...)`` ran out first
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from easel_client._task import BaseTask


class EaselError(Exception):
    """The root of every error the SDK raises."""


class APIConnectionError(EaselError):
    """No HTTP answer: refused connection, DNS failure, timeout."""


class APIError(EaselError):
    """The API answered with an error status; ``body`` is its JSON envelope (or text)."""

    def __init__(self, status_code: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.body = body

    @property
    def error_data(self) -> Any:
        """The envelope's ``error_data`` (for a 400, ``{"errors": [{field, rule, message}]}``)."""
        return self.body.get("error_data") if isinstance(self.body, dict) else None


class BadRequest(APIError):
    """400: the request breaks a rule; ``message`` names the field."""


class Unauthorized(APIError):
    """401: missing or unknown API key."""


class NotFound(APIError):
    """404: unknown task or model."""


class Conflict(APIError):
    """409: the request conflicts with the task's state."""


class PayloadTooLarge(APIError):
    """413: the request body is larger than the server accepts."""


class RateLimited(APIError):
    """429 after every retry; ``retry_after`` is the server's last hint, in seconds."""

    def __init__(
        self, status_code: int, message: str, body: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(status_code, message, body)
        self.retry_after = retry_after


class Unavailable(APIError):
    """503: the service cannot take the request now."""


class TaskError(EaselError):
    """A job ended without images; ``task`` holds its final envelope."""

    def __init__(self, task: BaseTask) -> None:
        super().__init__(f"task {task.id} ended {task.status}: {task.error or 'no reason given'}")
        self.task = task


class TaskFailed(TaskError):
    """The job ended FAILED."""


class TaskCanceled(TaskError):
    """The job ended CANCELED."""


class WaitTimeout(EaselError):
    """``wait`` gave up before the job ended; the job itself goes on."""


ERRORS_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}
