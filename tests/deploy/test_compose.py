"""docker-compose.yml, checked offline: no Docker engine runs here."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from gunicorn.config import Config

from api.tasks import MAX_WAIT_S
from shared.models import Envelope, InferenceType
from shared.settings import DEFAULT_QUEUES, Settings

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


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
    assert not [p for p in others if p.split(":")[0] == api_port]
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
    headers = dict(d.args for d in proxy if d.name == "proxy_set_header")
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
