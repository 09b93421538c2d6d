"""docker-compose.yml, checked offline: no Docker engine runs here."""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from gunicorn.config import Config
from packaging.requirements import Requirement

from api.tasks import MAX_WAIT_S
from shared.models import Envelope, InferenceType
from shared.settings import DEFAULT_QUEUES, Settings
from tests.deploy.common import (
    REQUIRED_ENV,
    ROOT,
    Unset,
    dockerfile_user,
    interpolate,
    strings_in,
)

NGINX = ROOT / "deploy" / "nginx"
NGINX_TOKEN = re.compile(r"""#[^\n]*|'[^']*'|"[^"]*"|[{};]|[^\s{};'"#]+""")
SERVER = ("server",)
UPSTREAM = ("upstream easel_api",)


@dataclass(frozen=True)
class Directive:
    """One ``name args;`` of an nginx config, and the blocks it sits in ("server", ...)."""

    block: tuple[str, ...]
    name: str
    args: tuple[str, ...]


def read_nginx(text: str) -> list[Directive]:
    """Every directive of an nginx config, in order; comments dropped, quotes removed."""
    directives: list[Directive] = []
    blocks: list[str] = []
    words: list[str] = []
    for token in NGINX_TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token == "{":
            blocks.append(" ".join(words))
            words = []
        elif token == "}":
            blocks.pop()
        elif token == ";":
            directives.append(Directive(tuple(blocks), words[0], tuple(words[1:])))
            words = []
        else:
            words.append(token[1:-1] if token[0] in "'\"" else token)
    return directives


def args_of(conf: list[Directive], name: str, block: tuple[str, ...] = SERVER) -> tuple[str, ...]:
    """The arguments of the one directive ``name`` in ``block``."""
    (found,) = [d.args for d in conf if d.name == name and d.block == block]
    return found


def seconds(value: str) -> float:
    """An nginx time ("10s", "1m", "500ms"; a bare number is seconds), in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|)", value)
    assert match, value
    number, unit = match.groups()
    return int(number) * {"ms": 0.001, "": 1, "s": 1, "m": 60, "h": 3600}[unit]


def size(value: str) -> int:
    """An nginx size ("16k", "32m"; a bare number is bytes), in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, value
    number, unit = match.groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def gunicorn_setting(name: str) -> float:
    """A setting the API's gunicorn runs with: api/gunicorn_conf.py's, or gunicorn's default.

    Read, not imported: importing the module patches gunicorn for the whole test session.
    """
    text = (ROOT / "api" / "gunicorn_conf.py").read_text()
    found = re.search(rf"^{name}\s*=\s*([\d.]+)", text, re.MULTILINE)
    return float(found[1]) if found else float(getattr(Config(), name))


LOOPBACK = "127.0.0.1"


def published(port: str) -> tuple[str, str]:
    """The host address and host port of a published ``[ip:]host:container`` port; the
    address is 0.0.0.0 (every interface) when the spec names none."""
    parts = port.split(":")
    assert len(parts) in (2, 3), port
    return (parts[0] if len(parts) == 3 else "0.0.0.0", parts[-2])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def deployed(compose: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml as compose runs it, with the required variables set and nothing else."""
    resolved: dict[str, Any] = interpolate(compose, REQUIRED_ENV)
    return resolved


@pytest.fixture(scope="module")
def proxy() -> list[Directive]:
    """The proxy's server (deploy/nginx/easel.conf): what the API's clients talk to."""
    return read_nginx((NGINX / "easel.conf").read_text())


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No EASEL_* variable from the machine running the tests leaks into Settings()."""
    for name in [n for n in os.environ if n.startswith("EASEL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose, schema)


def test_schema_check_would_catch_a_mistake(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    broken = {**compose, "services": {**compose["services"], "api": {"image": 5, "portz": []}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(schema_file.read_text()))


def test_one_gpu_worker_per_class_on_its_own_queue(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for gpu in InferenceType:
        worker = services[f"worker-{gpu}"]
        assert worker["command"] == ["worker", "--gpu", gpu.value]
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    queues = json.loads(services["api"]["environment"]["EASEL_QUEUES"])
    assert queues == {str(k): v for k, v in DEFAULT_QUEUES.items()}


def test_redis_keeps_an_append_only_file_and_flower_is_there(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    durable = {"--appendonly": "yes", "--appendfsync": "everysec"}
    durable["--maxmemory-policy"] = "noeviction"  # a full Redis refuses, never drops a job
    for flag, value in durable.items():
        assert command[command.index(flag) + 1] == value, flag
    assert "flower" in compose["services"]["flower"]["command"]
    assert {"api", "seaweedfs"} <= set(compose["services"])


def test_webhooks_are_delivered_by_their_own_service_with_the_shared_secret(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    webhooks = services["webhooks"]
    assert webhooks["command"] == ["webhooks"] and webhooks["image"] == "easel-worker:latest"
    assert webhooks["profiles"] == ["webhooks"]  # it cannot run without the secret
    for name in ("api", "webhooks", "worker-a10g"):
        assert "EASEL_WEBHOOK_SECRET" in services[name]["environment"]
        assert "EASEL_KEY_HASH_SECRET" in services[name]["environment"]


def test_an_empty_variable_is_an_unset_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose passes ${EASEL_WEBHOOK_SECRET:-} as an empty string when it is not set."""
    for name in [n for n in os.environ if n.startswith("EASEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EASEL_WEBHOOK_SECRET", "")
    assert Settings().webhook_secret is None


# The nginx proxy in front of the API (deploy/nginx/easel.conf says why it is required)


def test_nginx_config_reader_keeps_blocks_and_quotes_and_drops_comments() -> None:
    conf = read_nginx("a 1; # b 2;\nserver { c 'x; y' \"\"; }  # }\n")
    assert conf == [Directive((), "a", ("1",)), Directive(SERVER, "c", ("x; y", ""))]
    assert (seconds("90s"), seconds("1m"), seconds("10")) == (90, 60, 10)
    assert (size("16k"), size("32m"), size("512")) == (16 * 1024, 32 * 1024 * 1024, 512)


def test_nginx_is_the_only_published_entry_to_the_api(
    compose: dict[str, Any], proxy: list[Directive]
) -> None:
    services = compose["services"]
    api, nginx = services["api"], services["nginx"]
    api_port = api["command"][api["command"].index("--bind") + 1].rsplit(":", 1)[1]
    assert "ports" not in api and api["expose"] == [api_port]
    assert args_of(proxy, "server", UPSTREAM) == (f"api:{api_port}",)
    (listen,) = args_of(proxy, "listen")
    assert nginx["ports"] == [f"{api_port}:{listen}"]  # clients keep the API's port
    others = [p for name, s in services.items() if name != "nginx" for p in s.get("ports", [])]
    assert not [p for p in interpolate(others, REQUIRED_ENV) if published(p)[1] == api_port]
    assert nginx["image"].startswith("nginx:")  # the official image
    assert nginx["depends_on"]["api"]["restart"] is True  # nginx resolves `api` at start


def test_nginx_runs_this_repository_s_config_read_only(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    (volume,) = nginx["volumes"]
    source, target, mode = volume.split(":")
    assert ((ROOT / source).resolve(), mode) == (NGINX, "ro")
    assert nginx["command"] == ["nginx", "-c", f"{target}/nginx.conf"]
    main = read_nginx((NGINX / "nginx.conf").read_text())
    assert args_of(main, "include", ("http",)) == (f"{target}/easel.conf",)
    assert args_of(main, "daemon", ()) == ("off",)  # the container's process


def test_proxy_times_out_slow_clients(proxy: list[Directive]) -> None:
    """A slowloris header or a stalled body costs nginx a connection for seconds, no more."""
    for name in ("client_header_timeout", "client_body_timeout"):
        (value,) = args_of(proxy, name)
        assert 0 < seconds(value) <= 15, name
    for name in ("send_timeout", "keepalive_timeout"):
        (value,) = args_of(proxy, name)
        assert 0 < seconds(value) <= 60, name


def test_proxy_buffers_whole_requests_and_answers(proxy: list[Directive]) -> None:
    """The API sees a request only once all of it has arrived, and hands its answer off at once."""
    assert args_of(proxy, "proxy_request_buffering") == ("on",)
    assert args_of(proxy, "proxy_buffering") == ("on",)


def test_proxy_admits_what_the_api_admits(
    proxy: list[Directive], clean_env: pytest.MonkeyPatch
) -> None:
    (body,) = args_of(proxy, "client_max_body_size")
    assert size(body) == Settings().max_body_bytes
    count, buffer = args_of(proxy, "large_client_header_buffers")
    # One buffer must hold any request line or header line gunicorn reads (plus its CRLF),
    # so gunicorn, not nginx, answers 414 and 431 with the JSON envelope.
    assert int(count) >= 2
    assert size(buffer) >= gunicorn_setting("limit_request_line") + 2
    assert size(buffer) >= gunicorn_setting("limit_request_field_size") + 2


def test_proxy_waits_longer_than_the_api_holds_a_request(
    proxy: list[Directive], clean_env: pytest.MonkeyPatch
) -> None:
    """A long poll (?wait=60) or a sync submit (EASEL_SYNC_WAIT_S) must not end in a 504."""
    (read,) = args_of(proxy, "proxy_read_timeout")
    assert seconds(read) > max(MAX_WAIT_S, Settings().sync_wait_s)


def test_proxy_keeps_connections_to_the_api_alive_and_says_who_asked(
    proxy: list[Directive],
) -> None:
    assert args_of(proxy, "proxy_http_version") == ("1.1",)
    headers = {d.args[0]: d.args[1] for d in proxy if d.name == "proxy_set_header"}
    assert headers == {
        "Connection": "",  # keep-alive to the API, whatever the client asked
        "Host": "$host",
        "X-Forwarded-For": "$proxy_add_x_forwarded_for",
        "X-Forwarded-Proto": "$scheme",
    }
    assert args_of(proxy, "proxy_pass", ("server", "location /")) == ("http://easel_api",)
    (idle,) = args_of(proxy, "keepalive", UPSTREAM)
    assert int(idle) > 0
    # nginx must drop an idle connection before gunicorn does, or reuse one gunicorn closes.
    (idle_timeout,) = args_of(proxy, "keepalive_timeout", UPSTREAM)
    assert seconds(idle_timeout) < gunicorn_setting("keepalive")


def test_proxy_limits_connections_per_client_generously(proxy: list[Directive]) -> None:
    key, zone = args_of(proxy, "limit_conn_zone", ())
    assert key == "$binary_remote_addr"
    name, limit = args_of(proxy, "limit_conn")
    assert zone.startswith(f"zone={name}:")
    assert int(limit) >= 100  # one client may hold many long polls
    assert args_of(proxy, "limit_conn_status") == ("429",)


def test_what_nginx_answers_itself_is_the_json_envelope(proxy: list[Directive]) -> None:
    *codes, target = args_of(proxy, "error_page")
    assert {"413", "429", "502", "504"} <= set(codes)
    messages = {d.name: d.args[0] for d in proxy if d.block == ("map $status $easel_error",)}
    location = ("server", f"location {target}")
    assert args_of(proxy, "default_type", location) == ("application/json",)
    _, body = args_of(proxy, "return", location)
    for code in codes:
        message = messages.get(code, messages["default"])
        envelope = Envelope.model_validate_json(body.replace("$easel_error", message))
        assert envelope == Envelope.for_error(message), code


# Safe defaults (docs/kubernetes.md, "Security defaults"): Redis AUTH, Flower behind a login on
# this host only, nothing else published beyond it, non-root images


def test_compose_variables_are_filled_as_compose_fills_them() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET}/${EMPTY:-d}/${UNSET:-d}/${EMPTY-d}/$$SET", env) == "x/d/d//$SET"
    assert interpolate(["${SET:?need it}"], env) == ["x"]
    for required in ("${UNSET:?need it}", "${EMPTY:?need it}"):
        with pytest.raises(Unset, match="need it"):
            interpolate(required, env)
    assert published("127.0.0.1:5555:5555") == (LOOPBACK, "5555")
    assert published("8000:8080") == ("0.0.0.0", "8000")


@pytest.mark.parametrize("variable", ["EASEL_REDIS_PASSWORD", "EASEL_FLOWER_AUTH"])
def test_compose_refuses_to_start_without_a_secret(compose: dict[str, Any], variable: str) -> None:
    for missing in ({}, {variable: ""}):
        env = {k: v for k, v in REQUIRED_ENV.items() if k != variable} | missing
        with pytest.raises(Unset, match=variable):
            interpolate(compose, env)


def test_redis_requires_the_password_every_redis_url_carries(deployed: dict[str, Any]) -> None:
    services = deployed["services"]
    password = REQUIRED_ENV["EASEL_REDIS_PASSWORD"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == password
    urls = {
        name: [s for s in strings_in(service) if "redis://" in s]
        for name, service in services.items()
    }
    users = {name for name, found in urls.items() if found}
    assert users == {"api", "worker-a10g", "worker-a100", "worker-h100", "webhooks", "flower"}
    for name in users:
        for text in urls[name]:
            url = urlsplit(text[text.index("redis://") :])
            assert (url.hostname, url.port, url.password) == ("redis", 6379, password), name
    assert "ports" not in services["redis"]  # reachable on the compose network only


def test_flower_asks_for_a_login_and_listens_on_this_host_only(
    deployed: dict[str, Any],
) -> None:
    flower = deployed["services"]["flower"]
    assert f"--basic-auth={REQUIRED_ENV['EASEL_FLOWER_AUTH']}" in flower["command"]
    assert [published(p)[0] for p in flower["ports"]] == [LOOPBACK]


def test_only_nginx_is_published_beyond_this_host(deployed: dict[str, Any]) -> None:
    exposed = {
        name
        for name, service in deployed["services"].items()
        for port in service.get("ports", [])
        if published(port)[0] != LOOPBACK
    }
    assert exposed == {"nginx"}
    # S3 serves presigned URLs to clients: on this host unless the operator says otherwise.
    (s3,) = interpolate(deployed["services"]["seaweedfs"]["ports"], {})
    assert published(s3) == (LOOPBACK, "8333")
    (elsewhere,) = interpolate(
        yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["seaweedfs"]["ports"],
        {"EASEL_S3_BIND": "0.0.0.0"},
    )
    assert published(elsewhere) == ("0.0.0.0", "8333")


def test_easel_images_run_as_non_root_users(compose: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        uid, gid = dockerfile_user(name)
        assert uid > 0 and gid > 0, name
    for name, service in compose["services"].items():
        assert str(service.get("user", "")).split(":")[0] not in {"0", "root"}, name
    # The worker's user owns the model directory, so a new volume mounted there is its own.
    worker = (ROOT / "deploy" / "worker.Dockerfile").read_text()
    model_dir = compose["x-worker"]["environment"]["EASEL_MODEL_DIR"]
    uid, gid = dockerfile_user("worker")
    assert f"useradd --uid {uid} --gid " in worker and f"groupadd --gid {gid} " in worker
    assert re.search(rf"chown {uid}:{gid} {model_dir}$", worker, re.M)


def test_worker_base_image_torch_meets_pyproject_s_floor() -> None:
    """Else pip would swap the image's CUDA torch for whatever PyPI serves."""
    image = re.search(
        r"^FROM pytorch/pytorch:([\d.]+)-",
        (ROOT / "deploy" / "worker.Dockerfile").read_text(),
        re.M,
    )
    assert image, "worker.Dockerfile: FROM pytorch/pytorch:<torch>-cuda..."
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch,) = [
        r for r in map(Requirement, project["optional-dependencies"]["worker"]) if r.name == "torch"
    ]
    assert torch.specifier.contains(image[1]), (str(torch), image[1])
