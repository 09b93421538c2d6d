"""``python -m worker.ready``: the readiness probe of a worker pod.

Exit 0 while a worker process on this host heartbeats on its GPU class's queue, which it
does only once its models are warm (worker/celery_app.py); exit 1 otherwise.
"""

from __future__ import annotations

import socket
import sys

from redis.exceptions import RedisError

from shared.errors import BackendUnavailable
from shared.jobs import WorkerLiveness, connect_redis
from shared.settings import Settings


def ready(settings: Settings, hostname: str) -> bool:
    """Whether a worker named ``<...>@hostname/<pid>`` is live on this class's queue."""
    liveness = WorkerLiveness(connect_redis(settings), settings.worker_stale_after_s)
    live = liveness.live(settings.queue_for(settings.worker_gpu))
    return any(name.split("/", 1)[0].endswith(f"@{hostname}") for name in live)


def main() -> None:
    try:
        ok = ready(Settings(), socket.gethostname())
    except (RedisError, BackendUnavailable):
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
