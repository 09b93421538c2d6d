"""The worker process's own guards: how many jobs it holds, and how it ends when stuck."""

from __future__ import annotations

import os
import signal
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import easel.cli
import worker.celery_app
from shared.models import InferenceType
from shared.settings import Settings
from worker.celery_app import HUNG_EXIT_CODE, WorkerProcess, create_celery, job_slots

REGISTRY = """
[small]
family = "sd"
source = "builtin:tiny-sd"
max_batch = 2
inference_types = ["a10g", "a100"]

[wide]
family = "sd"
source = "builtin:tiny-sd"
max_batch = 8
inference_types = ["a100"]
"""


def test_a_worker_holds_three_calls_of_its_classs_largest_max_batch(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(REGISTRY)
    assert job_slots(Settings(worker_gpu=InferenceType.A10G, model_registry=path)) == 6
    assert job_slots(Settings(worker_gpu=InferenceType.A100, model_registry=path)) == 24
    assert job_slots(Settings(worker_gpu=InferenceType.A10G)) == 12  # tiny-sd: max_batch 4


def test_a_call_hung_past_its_limits_ends_the_process_with_its_own_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codes: list[int] = []
    monkeypatch.setattr(os, "_exit", codes.append)
    process = WorkerProcess(Settings(), create_celery(Settings()))
    process._ctx = types.SimpleNamespace(batcher=types.SimpleNamespace(stuck_for=lambda: 0.0))  # type: ignore[assignment]
    process._exit_if_hung()
    assert codes == []  # a call within its limits
    process._ctx.batcher.stuck_for = lambda: 5.0  # type: ignore[union-attr]
    process._exit_if_hung()
    assert codes == [HUNG_EXIT_CODE]


def test_a_failing_celery_stop_arms_the_exit_and_a_clean_one_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    armed: list[bool] = []
    monkeypatch.setattr(worker.celery_app, "arm_exit", lambda: armed.append(True))
    app = create_celery(Settings())
    stops: list[int | None] = []
    base = app.Worker.__mro__[1]
    monkeypatch.setattr(
        base, "stop", lambda self, in_sighandler=False, exitcode=None: stops.append(exitcode)
    )
    controller = app.Worker.__new__(app.Worker)
    controller.stop(exitcode=0)
    assert (armed, stops) == ([], [0])  # a warm shutdown waits for its jobs, unhurried
    controller.stop(exitcode=1)  # Celery's "Unrecoverable error" path
    assert (armed, stops) == ([True], [0, 1])


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


class FakeChild:
    """Stands in for the Celery worker process easel worker runs: exits with ``code``, or,
    with ``code`` None, waits for a SIGTERM sent to easel worker itself."""

    def __init__(self, code: int | None) -> None:
        self.code = code
        self.signals: list[int] = []

    def wait(self) -> int:
        if self.code is None:
            os.kill(os.getpid(), signal.SIGTERM)  # as Kubernetes stops the pod
            return 0
        return self.code

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)


def test_easel_worker_restarts_a_worker_that_exits_unasked_and_stops_on_sigterm(
    monkeypatch: pytest.MonkeyPatch, restore_signals: None
) -> None:
    children = [FakeChild(1), FakeChild(0), FakeChild(None)]  # crash, exit 0 unasked, SIGTERM
    started: list[list[str]] = []

    def popen(argv: list[str]) -> FakeChild:
        started.append(argv)
        return children[len(started) - 1]

    monkeypatch.setattr(easel.cli.subprocess, "Popen", popen)
    monkeypatch.setattr(easel.cli.time, "sleep", lambda s: None)
    with pytest.raises(SystemExit) as ended:
        easel.cli.run_worker(InferenceType.A10G, None, "info")
    assert ended.value.code == 0
    assert len(started) == 3 and started[0][1:5] == ["-m", "worker.main", "--gpu", "a10g"]
    assert children[2].signals == [signal.SIGTERM]  # passed on for Celery's warm shutdown
