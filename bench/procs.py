"""Process facts from /proc (Linux), so the benchmarks need no psutil."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def children(pid: int, recursive: bool = False) -> list[int]:
    """The pids whose parent is ``pid`` (and their descendants when recursive)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue  # exited meanwhile
    if recursive:
        found += [grandchild for child in list(found) for grandchild in children(child, True)]
    return found


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def vm_rss_mb(pid: int) -> float:
    """VmRSS of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def maps_torch(pid: int) -> bool:
    """Whether a process has any torch library mapped (an ``import torch`` maps libtorch)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "/torch/" in maps
