"""What one Redis-protocol server sustains for Easel's commands (input to docs/scaling.md).

Starts the same server ``easel dev`` runs (AOF on, fsync every second) and drives it with
``redis-benchmark`` (apt: redis-tools): 50 clients, no pipelining, job-record-sized
values, one run per command Easel issues most. Each command's rate is then weighted by
how often a job issues it, as counted with INFO commandstats during ``make bench``'s
orchestration section (``details.worker.overhead.redis_calls_per_job`` in
bench/results.json), to give job lifecycles per second.
Run: ``python -m bench.redis_mix`` (not part of ``make bench``).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.report import RESULTS
from easel.stack import start_redis

RECORD_BYTES = 3000  # a finished job record with presigned URLs is 2-3 KB of JSON
REQUESTS = 100_000
COMMANDS = {
    "set": ["SET", "easel:job:__rand_int__", "x" * RECORD_BYTES],
    "get": ["GET", "easel:job:__rand_int__"],
    "exists": ["EXISTS", "easel:cancel:__rand_int__"],
    "zadd": ["ZADD", "easel:queued:q", "__rand_int__", "__rand_int__"],
    "zrem": ["ZREM", "easel:queued:q", "__rand_int__"],
    "zrangebyscore": ["ZRANGEBYSCORE", "easel:workers:q", "0", "+inf"],
    "lpush": ["LPUSH", "easel.a10g", "x" * 1200],  # a Celery message is about 1.2 KB
    "rpop": ["RPOP", "easel.a10g"],
}


def benchmark(port: int, name: str, command: list[str]) -> float:
    """Requests per second for one command."""
    args = ["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(REQUESTS),
            "-r", "100000", "--csv", *command]  # fmt: skip
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rows = list(csv.reader(io.StringIO(out)))
    return float(rows[1][1])


def main() -> None:
    if not shutil.which("redis-benchmark"):
        raise SystemExit("redis-benchmark not found: apt-get install redis-tools")
    server = start_redis(Path(tempfile.mkdtemp(prefix="easel-redis-mix-")))
    try:
        rates = {name: benchmark(server.port, name, cmd) for name, cmd in COMMANDS.items()}
    finally:
        server.stop()
    print(json.dumps({"requests_per_s": rates}, indent=2))
    details = json.loads(RESULTS.read_text())["details"] if RESULTS.exists() else {}
    if "worker" not in details:
        print("run make bench first for the per-job command counts")
        return
    calls = details["worker"]["overhead"]["redis_calls_per_job"]
    seconds = 0.0
    for command, count in calls.items():
        rate = rates.get(command.split("|")[0], rates["set"])  # others: about a SET
        seconds += count / rate
    print(f"commands per job lifecycle: {sum(calls.values()):.0f}; "
          f"server time per job at these rates: {seconds * 1e3:.3f} ms; "
          f"job lifecycles per second: {1 / seconds:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
