"""``make bench``: every CPU benchmark in one run, one table, and ``bench/results.json``.

Sections (``python -m bench --only ingest,api`` runs a subset):
    ingest   5. fetch, decode and fit a 6000x4000 JPEG on one core
    api      1. the API's submit path vs GET /health under gunicorn
    worker   4 and 2. warm workers (no reloads) and orchestration overhead per job
    scaling  3. throughput with 1 to 16 simulated workers (bench/loader.py) on one queue
    tiny     6. tiny-sd and tiny-sdxl at 1024x1024, batch 1 and 4
    waiters  7. 1,000 waiting clients and 256 slowloris sockets against one API
    batching 8. cross-request batching under Poisson load, gains simulated from published ones
    fairness 9. fair share across API keys: a flood, weights, work conservation, submit cost
    replicas 10. what confirming each submit on a Redis replica (WAIT) adds to its p50
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench.report import Row, print_table, write_results

SECTIONS = (
    "ingest", "api", "worker", "scaling", "tiny", "waiters", "batching", "fairness", "replicas",
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    chosen = parser.parse_args(argv).only.split(",")
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started, load_at_start = time.time(), os.getloadavg()
    print(f"load average at start: {load_at_start}", flush=True)
    rows: list[Row] = []
    details: dict[str, Any] = {}
    for name in (section for section in SECTIONS if section in chosen):
        load = os.getloadavg()
        print(
            f"[{time.time() - started:6.1f} s] section {name} (load {load[0]:.1f}) ...", flush=True
        )
        section_rows, section_details = run_section(name)
        rows += section_rows
        details[name] = {**section_details, "load_average_at_start": load}
    print(f"[{time.time() - started:6.1f} s] done", flush=True)
    print_table(rows)
    print(f"wrote {write_results(rows, details, started, load_at_start)}")


def run_section(name: str) -> tuple[list[Row], dict[str, Any]]:
    """Run one section; the stack-backed ones get a fresh Redis and S3 each."""
    if name == "ingest":
        from bench import ingest

        return ingest.run()
    if name == "tiny":
        from bench import tiny_models

        return tiny_models.run()
    import importlib

    from bench.stack import BenchStack

    module = importlib.import_module(
        {
            "api": "bench.api_submit",
            "worker": "bench.worker_path",
            "scaling": "bench.scaling",
            "waiters": "bench.waiters",
            "batching": "bench.batching",
            "fairness": "bench.fairness",
            "replicas": "bench.replicas",
        }[name]
    )
    stack = BenchStack()
    try:
        result: tuple[list[Row], dict[str, Any]] = module.run(stack)
        return result
    finally:
        stack.close()


if __name__ == "__main__":
    main()
