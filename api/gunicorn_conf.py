"""gunicorn's configuration for ``easel api`` (``-c python:api.gunicorn_conf``).

- Logging: gunicorn's own lines go through the root handler of shared/logs.py, so they are
  JSON like the app's. gunicorn's access log stays off; api/logs.py writes one line per
  request instead, with the task id.
- Metrics: ``easel api`` sets ``PROMETHEUS_MULTIPROC_DIR`` before gunicorn starts; when a
  worker exits its live gauges are dropped, and the directory goes when gunicorn does.
- Errors: a request gunicorn refuses before Flask sees it (a request line over
  ``limit_request_line``, headers over ``limit_request_field_size``, a malformed line) is
  answered with the JSON envelope, like every other error, instead of gunicorn's HTML page.
"""

from __future__ import annotations

import socket

from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.base import Worker
from prometheus_client import multiprocess

from shared.logs import configure_logging, route_to_root
from shared.metrics import multiprocess_dir, remove_multiprocess_dir
from shared.models import Envelope
from shared.settings import Settings


class EaselLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing through Easel's root handler."""

    def setup(self, cfg: Config) -> None:
        super().setup(cfg)
        configure_logging(Settings(), "api", self.loglevel)
        route_to_root(self.error_log)


logger_class = EaselLogger

# gunicorn's defaults, stated because api/openapi.py documents them (414 and 431).
limit_request_line = 4094
limit_request_field_size = 8190


def write_envelope_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answer, as the JSON envelope clients parse for every 4xx and 5xx.

    gunicorn has no setting for this page: it is hard-coded in ``gunicorn.util.write_error``
    (benoitc/gunicorn#993), which its workers look up at call time. Replacing that one
    function keeps gunicorn's own choice of status, reason and logging, and changes only
    the body.
    """
    error = f"{reason}: {mesg}" if mesg else reason
    body = Envelope.for_error(error).model_dump_json().encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_envelope_error


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A worker is gone: its live gauges must stop counting."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Arbiter) -> None:
    """gunicorn stops: nothing reads the metric files any more."""
    path = multiprocess_dir()
    if path is not None:
        remove_multiprocess_dir(path)
