"""Helpers test_compose.py and test_k8s.py share: the repository's deploy files, read offline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def strings_in(value: Any) -> list[str]:
    """Every string anywhere in a parsed YAML value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    return []


def dockerfile_user(name: str) -> tuple[int, int]:
    """The uid and gid the image ``deploy/<name>.Dockerfile`` runs as: its last USER."""
    text = (ROOT / "deploy" / f"{name}.Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, f"{name}.Dockerfile has no USER: it runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and gid.isdigit(), f"{users[-1]}: by number, so Kubernetes can check it"
    return int(uid), int(gid)
