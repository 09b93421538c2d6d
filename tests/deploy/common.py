"""Helpers the tests of tests/deploy share: the repository's deploy files, read offline."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
# What an operator exports before `docker compose up` (docker-compose.yml's header names them).
REQUIRED_ENV = {
    "EASEL_BOOTSTRAP_API_KEY": "bootstrap-key-0123456789abcdef",
    "EASEL_S3_SECRET_ACCESS_KEY": "s3-secret-0123456789abcdef",
    "EASEL_KEY_HASH_SECRET": "hash-secret-0123456789abcdef0123456789",
    "EASEL_REDIS_PASSWORD": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "EASEL_FLOWER_AUTH": "admin:5a4b3c2d1e0f",
}

Doc = dict[str, Any]


class Unset(Exception):
    """A variable compose requires (``${NAME:?message}``) is not set."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` with compose's variables filled in from ``env``, as `docker compose config`
    would: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` (Unset when missing),
    ``$$`` for a dollar sign."""

    def fill(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if name is None:
            return "$"
        found = env.get(name)
        missing = found is None or (found == "" and operator is not None and ":" in operator)
        if operator and operator.endswith("-"):
            return argument if missing else str(found)
        if operator and operator.endswith("?") and missing:
            raise Unset(f"{name}: {argument}")
        return found or ""

    if isinstance(value, str):
        return COMPOSE_VARIABLE.sub(fill, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


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


def container(workload: Doc) -> Doc:
    """The one container of a Deployment's or StatefulSet's pod."""
    only: Doc
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def redis_flags(argv: list[str]) -> dict[str, str]:
    """The ``--flag value`` pairs of a redis-server command line."""
    return {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag.startswith("--")}


def filled(secret: dict[str, str]) -> dict[str, str]:
    """A Secret's values with each shipped placeholder replaced by a random secret, as an
    operator deploys it."""
    token = secrets.token_hex(32)
    return {k: re.sub(r"change-me[\w-]*", token, v) for k, v in secret.items()}


def secret_env(spec: Doc) -> dict[str, tuple[str, str]]:
    """The container's variables that come from a Secret key: name -> (Secret, key)."""
    return {
        var["name"]: (ref["name"], ref["key"])
        for var in spec.get("env", [])
        if (ref := var.get("valueFrom", {}).get("secretKeyRef"))
    }


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches ``labels``."""
    if selector.get("matchLabels", {}).items() - labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, values = expression["key"], expression.get("values", [])
        matches = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }
        if not matches[expression["operator"]]:
            return False
    return True
