"""Redis through Sentinel (shared/redisconn.py), against a real primary, replica and three
Sentinels (easel.stack.start_sentinel_group) that fail over in about two seconds: the
settings, the job store's client, Celery's broker and the rate limiter's storage, before,
during and after the primary is lost.

The primary and the Sentinels have different passwords, so a client that gives either
one the other's cannot log in.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from unittest import mock

import pytest
import redis
from kombu import Connection
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from pydantic import ValidationError

from easel.stack import SentinelGroup, Server, start_redis, start_sentinel_group
from shared.redisconn import (
    broker_transport_options,
    broker_url,
    flask_limiter_storage,
    redis_client,
    sentinel_addresses,
)
from shared.settings import Settings
from tests.conftest import settings_from

T = TypeVar("T")
PASSWORD = "primary/" + secrets.token_hex(8)  # a '/' the broker URL must quote
SENTINEL_PASSWORD = "sentinel-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = start_sentinel_group(
        tmp_path_factory.mktemp("sentinel"), password=PASSWORD, sentinel_password=SENTINEL_PASSWORD
    )
    yield group
    group.stop()


@pytest.fixture
def group(sentinel_group: SentinelGroup) -> Iterator[SentinelGroup]:
    """The group, healthy; a node the test killed or paused is brought back after it."""
    sentinel_group.wait_healthy()
    yield sentinel_group
    for node in sentinel_group.nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGCONT)
        else:
            sentinel_group.restart(node)


@pytest.fixture
def settings(group: SentinelGroup) -> Settings:
    return settings_from(group.env())


def until_ok(call: Callable[[], T], timeout_s: float = 15) -> tuple[T, float, int]:
    """Call until it succeeds: its result, the seconds it took and the failures. Only a
    connection error or a timeout may fail it; anything else fails the test."""
    start, failures = time.monotonic(), 0
    while True:
        try:
            return call(), time.monotonic() - start, failures
        except (redis.ConnectionError, redis.TimeoutError):
            failures += 1
            if time.monotonic() - start > timeout_s:
                raise
            time.sleep(0.05)


# Settings and the URLs built from them.


def test_sentinels_parse_from_host_port_commas() -> None:
    env = {"EASEL_REDIS_SENTINELS": "s1:26379, 10.0.0.2:1,[::1]:26380"}
    with mock.patch.dict(os.environ, env, clear=True):
        settings = Settings()
    assert settings.redis_sentinels == ["s1:26379", "10.0.0.2:1", "[::1]:26380"]
    assert sentinel_addresses(settings) == [("s1", 26379), ("10.0.0.2", 1), ("::1", 26380)]
    assert settings.redis_master_name == "easel"
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout_ms) == (0, 500)


@pytest.mark.parametrize(
    "value", ["s1", "s1:", ":26379", "s1:0", "s1:65536", "s1:port", "::1:26379", "s1:1,s2"]
)
def test_a_bad_sentinel_address_is_refused_naming_the_variable(value: str) -> None:
    env = {"EASEL_REDIS_SENTINELS": value}
    with mock.patch.dict(os.environ, env, clear=True), pytest.raises(ValidationError) as caught:
        Settings()
    assert "EASEL_REDIS_SENTINELS" in str(caught.value)
    assert value not in str(caught.value)


def test_without_sentinels_every_client_uses_the_url() -> None:
    settings = Settings(redis_url="redis://:pw@10.0.0.5:6380/3")
    assert broker_url(settings) == "redis://:pw@10.0.0.5:6380/3"
    assert broker_transport_options(settings) == {}
    uri, options = flask_limiter_storage(settings)
    assert uri == "redis://:pw@10.0.0.5:6380/3"
    assert "password" not in options
    kwargs = redis_client(settings).connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "10.0.0.5",
        6380,
        3,
        "pw",
    )


def test_an_explicit_broker_url_wins_over_sentinel() -> None:
    settings = Settings(redis_sentinels=["s1:26379"], broker_url="amqp://rabbit//")
    assert broker_url(settings) == "amqp://rabbit//"
    assert broker_transport_options(settings) == {}


def test_kombu_gets_the_primary_password_in_the_url_and_the_sentinels_in_options() -> None:
    settings = Settings(
        redis_url="redis://ignored:6379/2",
        redis_sentinels=["s1:26379", "s2:26380"],
        redis_master_name="jobs",
        redis_password="a/b@c",
        redis_sentinel_password="sent",
    )
    assert broker_url(settings) == (
        "sentinel://:a%2Fb%40c@s1:26379/2;sentinel://:a%2Fb%40c@s2:26380/2"
    )
    options = broker_transport_options(settings)
    assert options["master_name"] == "jobs"
    assert options["sentinel_kwargs"]["password"] == "sent"


def test_the_limiter_never_gives_the_sentinels_the_primary_password() -> None:
    """limits passes the primary's password to the Sentinels unless told theirs."""
    settings = Settings(redis_sentinels=["s1:26379"], redis_password="primary")
    uri, options = flask_limiter_storage(settings)
    assert uri == "redis+sentinel://s1:26379/easel"
    assert options["password"] == "primary"
    assert options["sentinel_kwargs"]["password"] is None


# The job store's client (redis-py) against a real failover.


def test_client_writes_and_reads_through_the_primary(
    group: SentinelGroup, settings: Settings
) -> None:
    client = redis_client(settings, decode_responses=True)
    assert client.set("redisconn:read", "here") is True
    assert client.get("redisconn:read") == "here"
    with group.direct(group.primary()[1]) as primary:
        assert primary.get("redisconn:read") == "here"
        assert primary.wait(1, 2000) == 1  # and the replica holds it


def test_client_rides_out_a_killed_primary(group: SentinelGroup, settings: Settings) -> None:
    client = redis_client(settings, decode_responses=True)
    client.set("redisconn:before-kill", "kept")
    assert client.wait(1, 2000) == 1

    old = group.kill_primary(signal.SIGKILL)
    _, unavailable_s, failures = until_ok(lambda: client.set("redisconn:after-kill", "new"))
    new, promoted_s = group.wait_for_promotion(old)
    print(
        f"\nSIGKILL: writes failed for {unavailable_s:.2f} s ({failures} errors); "
        f"promoted after {promoted_s:.2f} s"
    )

    assert new != old
    with group.direct(new[1]) as primary:
        assert primary.get("redisconn:after-kill") == "new"
        assert primary.get("redisconn:before-kill") == "kept"  # WAIT made it survive
    assert unavailable_s < 10


def test_a_demoted_primary_is_a_connection_error_then_the_new_primary(
    group: SentinelGroup, settings: Settings
) -> None:
    """The three shapes of write the job store makes, each on a connection that outlives
    its primary's demotion: the first write is a ConnectionError, the next lands on the
    new primary. (Sentinel itself also kills a demoted node's clients; the direct
    REPLICAOF here leaves them, to reach redis-py's READONLY path every time.)"""
    plain, scripted, transacted = (redis_client(settings) for _ in range(3))
    set_by_script = scripted.register_script("return redis.call('SET', KEYS[1], ARGV[1])")

    def write_plain() -> object:
        return plain.set("redisconn:plain", "1")

    def write_by_script() -> object:
        return set_by_script(keys=["redisconn:script"], args=["1"])

    def write_in_transaction() -> object:
        pipe = transacted.pipeline(transaction=True)
        pipe.set("redisconn:multi", "1")
        pipe.expire("redisconn:multi", 60)
        return pipe.execute()

    writes = [write_plain, write_by_script, write_in_transaction]
    for write in writes:
        write()  # each client now holds an idle connection to the primary

    old = group.kill_primary(signal.SIGSTOP)
    new, promoted_s = group.wait_for_promotion(old)
    group.send_signal(old, signal.SIGCONT)
    with group.direct(old[1]) as demoted:
        demoted.execute_command("REPLICAOF", *new)
    print(f"\nSIGSTOP: promoted after {promoted_s:.2f} s")

    for write in writes:
        with pytest.raises(redis.ConnectionError, match="previous master is now a slave"):
            write()
        write()
    with group.direct(new[1]) as primary:
        assert primary.exists("redisconn:plain", "redisconn:script", "redisconn:multi") == 3


def test_a_write_the_resumed_old_primary_takes_is_unconfirmed_and_lost(
    group: SentinelGroup, settings: Settings
) -> None:
    """Between waking and Sentinel demoting it (about a second here, 8 s or more with
    Sentinel's own timers), a paused old primary still takes writes on connections made
    before the pause; they are lost when it resyncs. WAIT tells: no replica holds them."""
    client = redis_client(settings, decode_responses=True)
    client.set("redisconn:warm", "1")

    old = group.kill_primary(signal.SIGSTOP)
    new, _ = group.wait_for_promotion(old)
    group.send_signal(old, signal.SIGCONT)
    pipe = client.pipeline(transaction=False)
    pipe.set("redisconn:split", "1")
    pipe.wait(1, 200)  # on the same connection as the write, as a submit will
    written, replicas = pipe.execute()
    assert (written, replicas) == (True, 0)  # taken by the old primary, held by no replica

    group.wait_healthy()  # Sentinel has made the old primary a replica of the new one
    _, _, failures = until_ok(lambda: client.set("redisconn:healed", "1"))
    with group.direct(new[1]) as primary:
        assert primary.get("redisconn:split") is None
        assert primary.get("redisconn:healed") == "1"
    assert failures <= 1


# Celery's broker (kombu) and Flask-Limiter's storage (limits).


def test_kombu_publishes_and_gets_through_sentinel_across_a_failover(
    group: SentinelGroup, settings: Settings
) -> None:
    options = {
        **broker_transport_options(settings),
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
    }
    with Connection(broker_url(settings), transport_options=options) as connection:
        queue = connection.SimpleQueue("redisconn.kombu")

        def round_trip(payload: dict[str, int]) -> object:
            queue.put(payload)
            message = queue.get(timeout=2)
            message.ack()
            return message.payload

        assert round_trip({"n": 1}) == {"n": 1}
        old = group.kill_primary(signal.SIGKILL)
        payload, unavailable_s, _ = until_ok(lambda: round_trip({"n": 2}))
        assert payload == {"n": 2}
        assert group.primary() != old
        queue.close()
    print(f"\nkombu: a round trip failed for {unavailable_s:.2f} s")


def test_rate_limiter_counts_through_sentinel(settings: Settings) -> None:
    """Flask-Limiter builds its storage from storage_uri and storage_options with this call."""
    uri, options = flask_limiter_storage(settings)
    storage = storage_from_string(uri, **options)
    assert storage.check()
    limiter = MovingWindowRateLimiter(storage)
    assert limiter.hit(parse("1/minute"), "redisconn")
    assert not limiter.hit(parse("1/minute"), "redisconn")


def test_a_plain_client_on_a_demoted_primary_reconnects_instead_of_failing(
    tmp_path_factory: pytest.TempPathFactory, redis_server: Server
) -> None:
    """A managed Redis moves its endpoint to the new primary; a connection still on the old
    one gets READONLY. That is a ConnectionError (BackendUnavailable upstream: retried),
    and the same client's next command connects afresh."""
    node = start_redis(tmp_path_factory.mktemp("demoted"))
    try:
        client = redis_client(settings_from({"EASEL_REDIS_URL": node.url}))
        assert client.set("before", "1")
        admin = redis.Redis(port=node.port)
        admin.replicaof("127.0.0.1", redis_server.port)  # demoted: now a read-only replica
        with pytest.raises(redis.ConnectionError, match="now a replica"):
            client.set("during", "1")
        admin.replicaof("NO", "ONE")  # the endpoint's node is a primary again
        assert client.set("after", "1")  # the same client, a new connection
    finally:
        node.stop()
