"""``easel``: run the API, a worker, the whole local stack, or submit a job."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from easel.keys import add_key_commands, run_key_command
from easel.submit import JOB_COMMANDS, add_job_commands, run_job_command
from shared.models import InferenceType


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``easel`` command."""
    parser = argparse.ArgumentParser(prog="easel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    api = commands.add_parser("api", help="serve the HTTP API under gunicorn")
    api.add_argument("--bind", default="127.0.0.1:8000")
    api.add_argument("--workers", type=int, default=2)
    api.add_argument("--connections", type=int, default=2000, help="per worker (gevent)")

    worker = commands.add_parser("worker", help="run a Celery worker for one GPU class")
    worker.add_argument("--gpu", required=True, choices=[t.value for t in InferenceType])
    worker.add_argument(
        "--concurrency", type=int, default=None, help="jobs in flight (default: 3 x max_batch)"
    )
    worker.add_argument("--loglevel", default="info")

    hooks = commands.add_parser("webhooks", help="deliver webhooks (a Celery worker, no GPU)")
    hooks.add_argument("--concurrency", type=int, default=16)
    hooks.add_argument("--loglevel", default="info")

    dev = commands.add_parser("dev", help="run Redis, S3, three CPU workers and the API locally")
    dev.add_argument("--port", type=int, default=8000)

    add_job_commands(commands)  # submit, status, cancel
    add_key_commands(commands)  # keys create, list, webhook-secret, revoke

    args = parser.parse_args(argv)
    if args.command == "api":
        run_api(args.bind, args.workers, args.connections)
    elif args.command == "worker":
        run_worker(InferenceType(args.gpu), args.concurrency, args.loglevel)
    elif args.command == "webhooks":
        from worker.webhooks import run_webhook_worker

        run_webhook_worker(args.concurrency, args.loglevel)
    elif args.command == "dev":
        from easel.dev import run_dev

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C while starting: all is stopped
            run_dev(args.port)
    elif args.command == "keys":
        sys.exit(run_key_command(args))
    elif args.command in JOB_COMMANDS:
        sys.exit(run_job_command(args))


def run_api(bind: str, workers: int, connections: int) -> None:
    """Replace this process with gunicorn serving ``api.create_app()``.

    gevent's worker, not threads: a request waiting for a job (a sync submit, a long poll)
    is a greenlet blocked on a socket, so one worker holds thousands of them while it goes
    on answering everyone else. Flask, redis-py, kombu and boto3 all run on its patched
    sockets.
    """
    from shared.metrics import use_multiprocess_dir

    use_multiprocess_dir("api")  # gunicorn's workers inherit it: one /metrics sums them all
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--worker-class",
        "gevent",
        "--worker-connections",
        str(connections),
        "--timeout",
        "120",
        "--config",
        "python:api.gunicorn_conf",  # JSON logs; one access line per request from api/logs.py
        "api:create_app()",
    ]
    os.execv(sys.executable, argv)


def run_worker(gpu: InferenceType, concurrency: int | None, loglevel: str) -> None:
    """Consume only this GPU class's queue: a Celery worker (one process, a thread per job
    in flight), restarted by this process whenever it dies on its own.

    Celery's prefork pool replaced a dead child itself; the threads pool has no child to
    replace, so a worker that exits unasked (an unrecoverable broker error, or a pipeline
    call hung past its jobs' limits: worker/celery_app.py) is started again here, whatever
    its exit code (Celery exits 0 after an unrecoverable broker error). Its held
    and running jobs go back to the queue through the reaper, as from any lost worker.
    SIGTERM and SIGINT pass to the worker for Celery's warm shutdown, and end this loop.
    """
    argv = [sys.executable, "-m", "worker.main", "--gpu", gpu.value, "--loglevel", loglevel]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    stopping: list[int] = []
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        if child is not None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    quick_exits = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        code = child.wait()
        if stopping:
            sys.exit(code)
        # Celery may exit 0 even after an unrecoverable error: only a signal means stop.
        quick_exits = quick_exits + 1 if time.monotonic() - started < 60 else 0
        pause_s = min(30, 2 ** max(0, quick_exits - 1))  # a worker that cannot start backs off
        print(f"easel worker: the worker exited ({code}); again in {pause_s} s", file=sys.stderr)
        time.sleep(pause_s)
