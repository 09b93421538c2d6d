"""The arithmetic the CPU benchmarks report: percentiles, the idle-while-queued gap and the
Redis mix's price of a job."""

from __future__ import annotations

from bench.redis_mix import COMMANDS, SCRIPTS, per_job
from bench.report import percentile


def test_p99_of_100_values_is_the_99th_smallest() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([7.0], 99) == 7.0


def flat_rates() -> dict[str, float]:
    """1000 requests/s for every benchmarked command, 500/s for each script."""
    return {name: 1000.0 for name in COMMANDS} | {f"evalsha:{name}": 500.0 for name in SCRIPTS}


def test_a_script_is_priced_whole_and_its_inner_commands_come_off_the_counts() -> None:
    # One submit's scripts as commandstats counts them: each EVALSHA and what it ran inside.
    calls = {"evalsha": 2.0, "zremrangebyscore": 1.0, "zcard": 1.0, "zadd": 1.0,
             "expire": 2.0, "lindex": 1.0, "lpush": 1.0, "ltrim": 1.0,
             "multi": 1.0, "exec": 1.0, "set": 1.0, "config|resetstat": 0.05}  # fmt: skip
    job = per_job(calls, flat_rates())
    assert job["commands_per_job"] == 13.0  # the benchmark's own CONFIG RESETSTAT left out
    assert all(count == 0 for name, count in job["counts_priced"].items()
               if name not in ("multi", "exec", "set"))  # fmt: skip
    assert job["priced_as"] == {"exec": "ping", "lindex": "rpop", "ltrim": "rpop",
                                "multi": "ping", "zcard": "exists",
                                "zremrangebyscore": "zrangebyscore"}  # fmt: skip
    assert job["server_ms_per_job"] == 2 * 2.0 + 3 * 1.0  # two scripts, MULTI, EXEC, SET


def test_every_command_a_job_issued_has_a_price_other_than_set() -> None:
    # The commands of results.json's redis_calls_per_job, make bench of 2026-11-27 13:19 UTC.
    counted = ["blpop", "brpop", "del", "evalsha", "exec", "exists", "expire", "get", "hdel",
               "hset", "lindex", "lpush", "ltrim", "multi", "publish", "rpush", "set",
               "unwatch", "watch", "zadd", "zcard", "zrange", "zrangebyscore", "zrem",
               "zremrangebyscore"]  # fmt: skip
    job = per_job(dict.fromkeys(counted, 2.0), flat_rates())
    assert job["unpriced_fell_back_to_set"] == []
