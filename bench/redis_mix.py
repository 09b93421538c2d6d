"""What one Redis-protocol server sustains for Easel's commands (input to docs/scaling.md).

Starts the same server ``easel dev`` runs (AOF on, fsync every second) and drives it with
``redis-benchmark`` (apt: redis-tools): 50 clients, no pipelining, job-record-sized
values, one run per command Easel issues most, and one per Lua script Easel runs on every
submit (the in-flight cap's ADMIT from shared/keys.py and Flask-Limiter's moving window,
both as EVALSHA of the very script text the API loads). Each command's rate is then
weighted by how often a job issues it, as counted with INFO commandstats during
``make bench``'s orchestration section (``details.worker.overhead.redis_calls_per_job`` in
bench/results.json), to give job lifecycles per second.

Pricing, where a counted command was not benchmarked itself: see ``PRICED_AS``.
INFO commandstats counts the commands a script runs (and those inside MULTI/EXEC) under
their own names as well, so the commands of each EVALSHA are taken off the counts and the
script is priced whole, at its own measured rate.

Run: ``python -m bench.redis_mix`` (not part of ``make bench``); writes
``bench/redis_mix.json``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from limits.storage import RedisStorage

from bench.report import RESULTS, hardware
from easel.stack import start_redis
from shared.keys import ADMIT

OUT = Path(__file__).with_name("redis_mix.json")
RECORD_BYTES = 3000  # a finished job record with presigned URLs is 2-3 KB of JSON
REQUESTS = 100_000
CLIENTS = 50
JOB_TTL_S = 7 * 24 * 3600  # Settings.job_ttl_s's default
RATE_LIMIT, WINDOW_S = 600, 60  # Settings.default_rate_limit's default, 600/minute
MAX_INFLIGHT = 64  # Settings.default_max_inflight's default

COMMANDS = {
    "set": ["SET", "easel:job:__rand_int__", "x" * RECORD_BYTES],
    "get": ["GET", "easel:job:__rand_int__"],
    "exists": ["EXISTS", "easel:cancel:__rand_int__"],
    "expire": ["EXPIRE", "easel:job:__rand_int__", str(JOB_TTL_S)],
    "zadd": ["ZADD", "easel:queued:q", "__rand_int__", "__rand_int__"],
    "zrem": ["ZREM", "easel:queued:q", "__rand_int__"],
    "zrangebyscore": ["ZRANGEBYSCORE", "easel:workers:q", "0", "+inf"],
    "lpush": ["LPUSH", "easel.a10g", "x" * 1200],  # a Celery message is about 1.2 KB
    "rpop": ["RPOP", "easel.a10g"],
    "hset": ["HSET", "unacked", "__rand_int__", "x" * 1200],  # Celery's unacked messages
    "ping": ["PING"],  # one request's dispatch, no data work
}

# The scripts every submit runs, with the arguments the API passes (``now`` filled in).
# Random owners: each key holds a few entries, as a key does that is under its limits.
SCRIPTS = {
    "admit": (ADMIT, "easel:inflight:__rand_int__",
              ["{now}", "{expired}", str(MAX_INFLIGHT), "__rand_int__", str(JOB_TTL_S)]),
    "moving_window": (RedisStorage.SCRIPT_ACQUIRE_MOVING_WINDOW,
                      f"easel:LIMITER/__rand_int__/{RATE_LIMIT}/1/minute",
                      ["{now}", str(RATE_LIMIT), str(WINDOW_S), "1"]),
}  # fmt: skip
# What each script calls once per run (a moving window that admits, an admitted job).
SCRIPT_CALLS = {
    "admit": ["zremrangebyscore", "zcard", "zadd", "expire"],
    "moving_window": ["lindex", "lpush", "ltrim", "expire"],
}

# Counted commands without a benchmark of their own, and the benchmark that prices them.
PRICED_AS = {
    # Transaction framing: a dispatch with no data work. redis-py sends MULTI, the commands
    # and EXEC in one write; here each pays a round trip, so this errs high.
    "multi": "ping",
    "exec": "ping",
    "unwatch": "ping",
    "watch": "exists",  # one key lookup, and the key remembered on the connection
    "blpop": "rpop",  # a blocking pop that finds an element is a pop; a waiting one is idle
    "brpop": "rpop",
    "rpush": "lpush",
    "lindex": "rpop",
    "ltrim": "rpop",
    "publish": "lpush",  # a small message handed to the (few) subscribers
    "del": "set",  # freeing a record costs about what writing it did
    "hdel": "hset",
    "zcard": "exists",
    "zrange": "zrangebyscore",
    "zremrangebyscore": "zrangebyscore",
}
IGNORED = {"config|resetstat"}  # the benchmark's own reset of the counters


def benchmark(port: int, command: list[str]) -> float:
    """Requests per second for one command."""
    args = ["redis-benchmark", "-p", str(port), "-c", str(CLIENTS), "-n", str(REQUESTS),
            "-r", "100000", "--csv", *command]  # fmt: skip
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rows = list(csv.reader(io.StringIO(out)))
    return float(rows[1][1])


def script_command(client: redis.Redis, name: str) -> list[str]:
    """``EVALSHA <sha> 1 <key> <args>`` for one of SCRIPTS, loaded into the server first."""
    text, key, args = SCRIPTS[name]
    sha = client.script_load(text)
    now = time.time()
    filled = [arg.format(now=f"{now:.6f}", expired=f"{now - JOB_TTL_S:.6f}") for arg in args]
    return ["EVALSHA", sha, "1", key, *filled]


def measure() -> tuple[dict[str, float], str]:
    """Rates of every benchmark, and the server's name and version."""
    workdir = Path(tempfile.mkdtemp(prefix="easel-redis-mix-"))
    server = start_redis(workdir)
    try:
        client = redis.Redis(port=server.port)
        info = client.info("server")
        version = f"valkey {info['valkey_version']}" if "valkey_version" in info else (
            f"redis {info['redis_version']}")  # fmt: skip
        commands = {**COMMANDS, **{f"evalsha:{name}": script_command(client, name)
                                   for name in SCRIPTS}}  # fmt: skip
        rates = {}
        for name, command in commands.items():
            rates[name] = benchmark(server.port, command)
            print(f"{name:>22}: {rates[name]:9.0f} requests/s", flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # its AOF: ~60 MB a run
    return rates, version


def per_job(calls: dict[str, float], rates: dict[str, float]) -> dict[str, Any]:
    """Server seconds per job lifecycle at the benchmarked rates, and how each was priced."""
    counts = {name: count for name, count in calls.items() if name not in IGNORED}
    scripts = counts.pop("evalsha", 0.0)
    for inner in (call for calls in SCRIPT_CALLS.values() for call in calls):
        counts[inner] = counts.get(inner, 0.0) - scripts / len(SCRIPTS)
    script_s = scripts / len(SCRIPTS) * sum(1 / rates[f"evalsha:{name}"] for name in SCRIPTS)
    priced = {name: name if name in rates else PRICED_AS.get(name, "set") for name in counts}
    seconds = script_s + sum(count / rates[priced[name]] for name, count in counts.items())
    return {
        "commands_per_job": round(sum(calls.values()) - sum(calls.get(i, 0) for i in IGNORED), 2),
        "evalsha_per_job": scripts,
        "counts_priced": {name: round(count, 2) for name, count in sorted(counts.items())},
        "priced_as": {name: bench for name, bench in sorted(priced.items()) if name != bench},
        "unpriced_fell_back_to_set": sorted(set(counts) - set(rates) - set(PRICED_AS)),
        "server_ms_per_job": round(seconds * 1e3, 3),
        "job_lifecycles_per_s": round(1 / seconds),
    }


def main() -> None:
    if not shutil.which("redis-benchmark"):
        raise SystemExit("redis-benchmark not found: apt-get install redis-tools")
    started, load = time.time(), os.getloadavg()
    rates, server = measure()
    version = subprocess.run(["redis-benchmark", "--version"], capture_output=True, text=True)
    result: dict[str, Any] = {
        "command": "python -m bench.redis_mix",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "hardware": {**hardware(), "load_average_at_start": load},
        "server": f"{server}, appendonly yes (fsync every second), as easel dev runs it",
        "client": f"{version.stdout.strip()}, {CLIENTS} clients, no pipelining, "
        f"{REQUESTS} requests per command, 100000 random keys",
        "requests_per_s": rates,
    }
    measured = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "worker" in measured.get("details", {}):
        calls = measured["details"]["worker"]["overhead"]["redis_calls_per_job"]
        job = per_job(calls, rates)
        result["per_job"] = {"counts_from": f"{RESULTS.name}, run of {measured['date']}", **job}
        print(f"commands per job lifecycle: {job['commands_per_job']:.0f}; "
              f"server time per job at these rates: {job['server_ms_per_job']:.3f} ms; "
              f"job lifecycles per second: {job['job_lifecycles_per_s']}")  # fmt: skip
    else:
        print("no per-job counts: run make bench (its worker section) first")
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
