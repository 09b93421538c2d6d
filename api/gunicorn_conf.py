"""gunicorn's configuration for ``easel api`` (``-c python:api.gunicorn_conf``).

- Logging: gunicorn's own lines go through the root handler of shared/logs.py, so they are
  JSON like the app's. gunicorn's access log stays off; api/logs.py writes one line per
  request instead, with the task id.
- Metrics: ``easel api`` sets ``PROMETHEUS_MULTIPROC_DIR`` before gunicorn starts; when a
  worker exits its live gauges are dropped, and the directory goes when gunicorn does.
"""

from __future__ import annotations

from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.base import Worker
from prometheus_client import multiprocess

from shared.logs import configure_logging, route_to_root
from shared.metrics import multiprocess_dir, remove_multiprocess_dir
from shared.settings import Settings


class EaselLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing through Easel's root handler."""

    def setup(self, cfg: Config) -> None:
        super().setup(cfg)
        configure_logging(Settings(), "api", self.loglevel)
        route_to_root(self.error_log)


logger_class = EaselLogger


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A worker is gone: its live gauges must stop counting."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Arbiter) -> None:
    """gunicorn stops: nothing reads the metric files any more."""
    path = multiprocess_dir()
    if path is not None:
        remove_multiprocess_dir(path)
