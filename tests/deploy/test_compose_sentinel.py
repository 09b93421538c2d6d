"""docker-compose.sentinel.yml merged over docker-compose.yml, checked offline: a primary, a
replica and three Sentinels, and every Redis client of Easel pointed at the Sentinels."""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from shared.redisconn import broker_url, sentinel_addresses
from shared.settings import Settings
from tests.deploy.common import (
    K8S,
    REQUIRED_ENV,
    ROOT,
    Doc,
    Unset,
    interpolate,
    redis_flags,
)

SENTINEL_ENV = {**REQUIRED_ENV, "EASEL_REDIS_SENTINEL_PASSWORD": "9a8b7c6d5e4f30211203f4e5d6c7b8a9"}
# What docker-compose.sentinel.yml may set on a service docker-compose.yml already has: the
# keys whose merge `merged` models (compose merges volumes and ports by target instead).
MERGED_KEYS = {"image", "restart", "command", "environment", "healthcheck", "depends_on", "configs"}
REDIS_POLICIES = {
    "--appendonly": "yes",
    "--appendfsync": "everysec",
    "--maxmemory-policy": "noeviction",
}
SENTINEL_PORT = 26379


def long_depends_on(value: Any) -> Any:
    """depends_on in its long form: a listed service is one that has started."""
    if isinstance(value, list):
        return {name: {"condition": "service_started"} for name in value}
    return value


def merged(base: Any, override: Any, key: str | None = None) -> Any:
    """``docker compose -f base -f override``, for what the override sets: mappings merge key
    by key (environment, depends_on in either form, top-level sections), and anything else
    (command, configs) is the override's."""
    if key == "depends_on":
        base, override = long_depends_on(base), long_depends_on(override)
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: merged(base[k], v, k) if k in base else v for k, v in override.items()} | {
            k: v for k, v in base.items() if k not in override
        }
    return override


def load(name: str) -> Doc:
    data: Doc = yaml.safe_load((ROOT / name).read_text())
    return data


@pytest.fixture(scope="module")
def override() -> Doc:
    return load("docker-compose.sentinel.yml")


@pytest.fixture(scope="module")
def services(override: Doc) -> dict[str, Doc]:
    """The merged services as compose runs them, with the required variables set."""
    found: dict[str, Doc] = interpolate(merged(load("docker-compose.yml"), override), SENTINEL_ENV)[
        "services"
    ]
    return found


def script_and_args(service: Doc) -> tuple[str, list[str]]:
    """A ``sh -c SCRIPT NAME ARGS...`` command's script and its arguments ("$@")."""
    command = service["command"]
    assert command[:2] == ["sh", "-c"], command
    return command[2], command[4:]


def sentinel_conf(service: Doc) -> list[str]:
    """The config lines a Sentinel service writes on its first start."""
    script, lines = script_and_args(service)
    assert "redis-server sentinel.conf --sentinel" in script
    assert 'printf \'%s\\n\' "$@" "sentinel announce-ip $(hostname)"' in script
    return [*lines, f"sentinel announce-ip {service['hostname']}"]


def sentinels(services: dict[str, Doc]) -> dict[str, list[str]]:
    """Each Sentinel service's first config, by service name."""
    return {
        name: sentinel_conf(s)
        for name, s in services.items()
        if "--sentinel" in " ".join(map(str, s.get("command", [])))
    }


def data_nodes(services: dict[str, Doc]) -> dict[str, dict[str, str]]:
    """Each Redis data node's redis-server flags, by service name."""
    found = {}
    for name, service in services.items():
        command = service.get("command", [])
        if command[:2] == ["sh", "-c"] and "redis-server redis.conf" in command[2]:
            found[name] = redis_flags(script_and_args(service)[1])
    return found


def monitor(conf: list[str]) -> tuple[str, str, int, int]:
    """A Sentinel's ``sentinel monitor NAME HOST PORT QUORUM`` line."""
    (line,) = [c for c in conf if c.startswith("sentinel monitor ")]
    name, host, port, quorum = line.split()[2:]
    return name, host, int(port), int(quorum)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No EASEL_* variable from the machine running the tests leaks into Settings()."""
    for name in [n for n in os.environ if n.startswith("EASEL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def settings_of(service: Doc, env: pytest.MonkeyPatch) -> Settings:
    """Settings() as the service's process builds it."""
    for name, value in service["environment"].items():
        env.setenv(name, str(value))
    return Settings()


# The file and its merge


def test_merge_follows_compose_s_rules() -> None:
    base = {"s": {"command": ["a"], "environment": {"A": "1"}, "depends_on": ["x"], "image": "i"}}
    over = {"s": {"command": ["b"], "environment": {"B": "2"}, "depends_on": {"y": {"c": 1}}}}
    assert merged(base, over) == {
        "s": {
            "command": ["b"],
            "environment": {"A": "1", "B": "2"},
            "depends_on": {"x": {"condition": "service_started"}, "y": {"c": 1}},
            "image": "i",
        }
    }


def test_sentinel_file_and_the_merge_match_the_compose_specification(
    override: Doc, services: dict[str, Doc]
) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(override, schema)
    jsonschema.validate(merged(load("docker-compose.yml"), override), schema)


def test_sentinel_file_changes_existing_services_only_where_the_merge_is_modelled(
    override: Doc,
) -> None:
    existing = load("docker-compose.yml")["services"]
    for name, service in override["services"].items():
        if name in existing:
            assert set(service) <= MERGED_KEYS, name
    added = set(override["services"]) - set(existing)
    assert added == {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
    # No profile: merging the file is the one switch (its header says why).
    assert not [n for n in added if "profiles" in override["services"][n]]


def test_sentinel_setup_refuses_to_start_without_the_sentinel_password(override: Doc) -> None:
    merged_file = merged(load("docker-compose.yml"), override)
    for missing in ({}, {"EASEL_REDIS_SENTINEL_PASSWORD": ""}):
        env = {k: v for k, v in SENTINEL_ENV.items() if k != "EASEL_REDIS_SENTINEL_PASSWORD"}
        with pytest.raises(Unset, match="EASEL_REDIS_SENTINEL_PASSWORD"):
            interpolate(merged_file, env | missing)


# The Sentinel group


def test_three_sentinels_watch_the_primary_by_name_and_need_two_to_agree(
    services: dict[str, Doc],
) -> None:
    found = sentinels(services)
    assert sorted(found) == ["sentinel-1", "sentinel-2", "sentinel-3"]
    password = SENTINEL_ENV["EASEL_REDIS_PASSWORD"]
    for name, conf in found.items():
        master, host, port, quorum = monitor(conf)
        assert (host, port) == ("redis", 6379), name  # the primary of a new group, by name
        assert len(found) // 2 < quorum <= len(found), name
        # Names, not container IPs: resolved (before the monitor line needs it) and reported.
        index = conf.index("sentinel resolve-hostnames yes")
        assert index < conf.index(f"sentinel monitor {master} {host} {port} {quorum}"), name
        assert "sentinel announce-hostnames yes" in conf, name
        assert services[name]["hostname"] == name  # so it announces its service name
        assert f"port {SENTINEL_PORT}" in conf, name
        assert f"sentinel auth-pass {master} {password}" in conf, name
        sentinel_password = SENTINEL_ENV["EASEL_REDIS_SENTINEL_PASSWORD"]
        assert f"requirepass {sentinel_password}" in conf, name
        assert f"sentinel sentinel-pass {sentinel_password}" in conf, name
        assert [c for c in conf if c.startswith("sentinel down-after-milliseconds ")], name
        assert services[name]["volumes"] == [f"{name}:/data"], name  # its config survives
        assert "ports" not in services[name], name
    assert len({monitor(conf)[0] for conf in found.values()}) == 1


def test_data_nodes_keep_the_durability_flags_and_announce_their_names(
    services: dict[str, Doc],
) -> None:
    nodes = data_nodes(services)
    assert sorted(nodes) == ["redis", "redis-replica"]
    password = SENTINEL_ENV["EASEL_REDIS_PASSWORD"]
    for name, flags in nodes.items():
        assert flags.items() >= REDIS_POLICIES.items(), name
        assert flags["--requirepass"] == flags["--masterauth"] == password, name
        assert flags["--replica-announce-ip"] == name, name
        # The config file is created once, then left to Sentinel, on the node's own volume.
        script, _ = script_and_args(services[name])
        assert 'exec docker-entrypoint.sh redis-server redis.conf "$@"' in script, name
        assert "ports" not in services[name], name
    assert services["redis"]["volumes"] == ["redis-data:/data"]
    assert services["redis-replica"]["volumes"] == ["redis-replica-data:/data"]
    replica, _ = script_and_args(services["redis-replica"])
    assert "test -f redis.conf || echo 'replicaof redis 6379' > redis.conf" in replica
    primary, _ = script_and_args(services["redis"])
    assert primary.startswith("touch redis.conf;")


def test_nodes_and_sentinels_are_healthchecked_and_easel_waits_for_them(
    services: dict[str, Doc],
) -> None:
    group = [*data_nodes(services), *sentinels(services)]
    for name in group:
        assert services[name]["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
    for name, conf in sentinels(services).items():
        master = monitor(conf)[0]
        test = services[name]["healthcheck"]["test"]
        assert f"sentinel ckquorum {master}" in test[1], name
        auth = services[name]["environment"]["REDISCLI_AUTH"]
        assert auth == SENTINEL_ENV["EASEL_REDIS_SENTINEL_PASSWORD"], name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    for name in data_nodes(services):
        assert (
            services[name]["environment"]["REDISCLI_AUTH"] == REQUIRED_ENV["EASEL_REDIS_PASSWORD"]
        )
    for name in [*easel_processes(services), "flower"]:
        depends_on = services[name]["depends_on"]
        for other in set(group) - {"redis"}:
            assert depends_on[other]["condition"] == "service_healthy", (name, other)


# Easel's processes and Flower


def easel_processes(services: dict[str, Doc]) -> list[str]:
    """The services that run Easel (they read EASEL_REDIS_URL)."""
    return [n for n, s in services.items() if "EASEL_REDIS_URL" in s.get("environment", {})]


def test_every_easel_process_asks_all_three_sentinels_for_the_watched_primary(
    services: dict[str, Doc], clean_env: pytest.MonkeyPatch
) -> None:
    processes = easel_processes(services)
    assert sorted(processes) == ["api", "webhooks", "worker-a100", "worker-a10g", "worker-h100"]
    group = sentinels(services)
    (master,) = {monitor(conf)[0] for conf in group.values()}
    for name in processes:
        settings = settings_of(services[name], clean_env)
        assert sorted(sentinel_addresses(settings)) == [(s, SENTINEL_PORT) for s in sorted(group)]
        assert settings.redis_master_name == master, name
        assert settings.redis_password is not None and settings.redis_sentinel_password
        assert settings.redis_password.get_secret_value() == SENTINEL_ENV["EASEL_REDIS_PASSWORD"]
        assert (
            settings.redis_sentinel_password.get_secret_value()
            == SENTINEL_ENV["EASEL_REDIS_SENTINEL_PASSWORD"]
        )
        # A submit waits for the replica; there must be one to wait for.
        assert 1 <= settings.redis_wait_replicas <= len(data_nodes(services)) - 1, name
        assert broker_url(settings).startswith("sentinel://"), name  # derived, not set


def test_flower_reads_the_sentinel_broker_easel_uses_with_its_transport_options(
    services: dict[str, Doc], clean_env: pytest.MonkeyPatch
) -> None:
    flower = services["flower"]
    command = flower["command"]
    expected = broker_url(settings_of(services["api"], clean_env))
    assert f"--broker={expected}" in command
    assert command.index(f"--broker={expected}") < command.index("flower")  # celery's option
    workdir = next(a for a in command if a.startswith("--workdir=")).split("=", 1)[1]
    module = next(a for a in command if a.startswith("--config=")).split("=", 1)[1]
    (config,) = flower["configs"]
    assert config["target"] == f"{workdir}/{module}.py"
    options = transport_options(
        load("docker-compose.sentinel.yml")["configs"][config["source"]]["content"],
        flower["environment"],
        clean_env,
    )
    (master,) = {monitor(conf)[0] for conf in sentinels(services).values()}
    assert options == {
        "master_name": master,
        "sentinel_kwargs": {"password": SENTINEL_ENV["EASEL_REDIS_SENTINEL_PASSWORD"]},
    }
    for url in expected.split(";"):
        assert urlsplit(url).password == SENTINEL_ENV["EASEL_REDIS_PASSWORD"]


def transport_options(module: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """What Celery reads as broker_transport_options from the config module, run with env."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    namespace: dict[str, Any] = {}
    exec(compile(module, "easel_flower.py", "exec"), namespace)
    return namespace["broker_transport_options"]


def test_flower_config_module_is_the_kubernetes_one() -> None:
    """Compose and deploy/k8s/sentinel give Flower the very same module."""
    compose = load("docker-compose.sentinel.yml")["configs"]["easel-flower"]["content"]
    config_map = yaml.safe_load((K8S / "sentinel" / "flower-config.yaml").read_text())
    assert config_map["data"]["easel_flower.py"] == compose
    assert not re.search(r"\$", compose)  # nothing for compose to fill in


def test_documented_command_merges_this_file() -> None:
    header = (ROOT / "docker-compose.sentinel.yml").read_text()
    assert "docker compose -f docker-compose.yml -f docker-compose.sentinel.yml up" in header
    assert "docker-compose.sentinel.yml" in (ROOT / "docker-compose.yml").read_text()
