"""Rows of the benchmark table: a figure, the baseline measured beside it, a target, a verdict."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")


@dataclass
class Row:
    """One line of the table. ``met`` is None for figures that carry no target."""

    section: str
    metric: str
    value: str
    baseline: str = ""
    target: str = ""
    met: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: ""}[self.met]


def ms(seconds: float) -> str:
    """Seconds as milliseconds for the table."""
    return f"{seconds * 1000:.1f} ms"


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile by the nearest-rank method (p99 of 2000 is the 1980th value)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def hardware() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "gpu": "none",
        "python": platform.python_version(),
        "load_average_at_end": os.getloadavg(),
    }


def print_table(rows: list[Row]) -> None:
    """The one table ``make bench`` prints (plain text when rich is not installed)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown_rows([asdict(row) | {"verdict": row.verdict} for row in rows]))
        return

    table = Table(title="Easel CPU benchmarks (make bench)", show_lines=False)
    for name in ("section", "metric", "measured", "baseline (same run)", "target", "result"):
        table.add_column(name, overflow="fold")
    previous = None
    for row in rows:
        section = row.section if row.section != previous else ""
        if previous is not None and row.section != previous:
            table.add_section()
        previous = row.section
        style = {True: "green", False: "bold red", None: ""}[row.met]
        table.add_row(
            section, row.metric, row.value, row.baseline, row.target, row.verdict, style=style
        )
    Console(width=160).print(table)


def write_results(
    rows: list[Row], details: dict[str, Any], started: float, load_at_start: tuple[float, ...]
) -> Path:
    """Everything measured, as JSON next to this file."""
    payload = {
        "load_average_at_start": load_at_start,
        "command": "make bench  (python -m bench)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "hardware": hardware(),
        "rows": [asdict(row) | {"verdict": row.verdict} for row in rows],
        "details": details,
    }
    RESULTS.write_text(json.dumps(payload, indent=2, default=str))
    return RESULTS


def markdown(path: Path = RESULTS) -> str:
    """The table of a results file as Markdown, for docs/benchmarks.md."""
    return markdown_rows(json.loads(path.read_text())["rows"])


def markdown_rows(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table."""
    lines = ["| section | metric | measured | baseline (same run) | target | result |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        cells = [row["section"], row["metric"], row["value"], row["baseline"], row["target"],
                 row["verdict"]]  # fmt: skip
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(markdown(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS))
