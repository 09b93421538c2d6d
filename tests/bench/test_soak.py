"""The soak in small: 60 s of the mixed, multi-tenant workload above the workers' capacity,
on a stack of its own (``make soak`` runs the same for 600 s).

It pins correctness only: no accepted job lost or ended twice, one task per idempotency
key, no 5xx, a 400 envelope for every invalid request. Its latencies and RSS are measured
and printed (``pytest -s``), never asserted: speed is the benchmarks' business.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import run_soak

pytestmark = pytest.mark.integration


def test_a_minute_of_mixed_overload_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    result = run_soak(60, workers=2, out=tmp_path / "soak.json")
    print(result["table"])
    counts = result["counts"]
    assert (counts["lost"], counts["duplicated"], counts["duplicated completions"]) == (0, 0, 0)
    assert counts["5xx"] == 0, result["http"]
    assert counts["accepted"] > 0 and counts["succeeded"] > 0 and counts["canceled"] > 0, counts
    assert result["invalid"] and result["invalid_all_400_enveloped"], result["invalid"]
    sampled = " ".join(result["processes"])
    for role in ("api gunicorn master", "api worker", "worker-0 celery main"):
        assert role in sampled, sampled
    assert "valkey" in result["processes"] and result["valkey"]["dbsize"][0], result["valkey"]
