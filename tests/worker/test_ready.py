"""The worker pod's readiness probe reads the heartbeats in real Redis."""

from __future__ import annotations

import subprocess
import sys

from shared.jobs import WorkerLiveness, connect_redis
from tests.conftest import settings_from
from worker.ready import ready


def test_ready_only_while_a_worker_on_this_host_beats(stack_env: dict[str, str]) -> None:
    settings = settings_from(stack_env, worker_gpu="h100", queues='{"h100": "readytest.h100"}')
    liveness = WorkerLiveness(connect_redis(settings), settings.worker_stale_after_s)
    assert not ready(settings, "pod-1")
    liveness.beat("readytest.h100", "h100-ab12cd@pod-2/41")
    assert not ready(settings, "pod-1")  # another pod's worker
    liveness.beat("readytest.h100", "h100-ab12cd@pod-1/42")
    assert ready(settings, "pod-1")
    liveness.leave("readytest.h100", "h100-ab12cd@pod-1/42")
    assert not ready(settings, "pod-1")


def test_the_probe_exits_1_when_redis_is_unreachable() -> None:
    env = {"EASEL_REDIS_URL": "redis://127.0.0.1:9/0", "EASEL_REDIS_TIMEOUT_S": "0.5"}
    probe = subprocess.run(
        [sys.executable, "-m", "worker.ready"], env=env, capture_output=True, timeout=60
    )
    assert probe.returncode == 1, probe.stderr
