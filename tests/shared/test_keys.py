"""API keys on a real Valkey: only keyed hashes are stored; revoke and list; the in-flight cap."""

from __future__ import annotations

import base64
import secrets
import time
from datetime import UTC, datetime

import pytest
import redis
from pydantic import ValidationError
from standardwebhooks import Webhook

from shared.jobs import JobStore, connect_redis, key
from shared.keys import KEY_PREFIX, InflightCap, KeyRecord, KeyStore, NoKeySecret, UnknownKeyId
from shared.settings import Settings
from tests.conftest import job_record, settings_from


@pytest.fixture
def client(stack_settings: Settings) -> redis.Redis:
    return connect_redis(stack_settings)


@pytest.fixture
def store(client: redis.Redis, stack_settings: Settings) -> KeyStore:
    return KeyStore(client, stack_settings)


def every_byte_in(client: redis.Redis) -> bytes:
    """Every key name and every value in the server, whatever its type, concatenated."""
    seen = bytearray()
    for name in client.scan_iter(count=1000):
        seen += name
        kind = client.type(name)
        if kind == b"string":
            seen += client.get(name) or b""
        elif kind == b"hash":
            for field, value in client.hgetall(name).items():
                seen += field + value
        elif kind == b"list":
            seen += b"".join(client.lrange(name, 0, -1))
        elif kind == b"set":
            seen += b"".join(client.smembers(name))
        elif kind == b"zset":
            seen += b"".join(client.zrange(name, 0, -1))
    return bytes(seen)


def test_created_key_is_found_by_itself_and_has_the_documented_shape(store: KeyStore) -> None:
    api_key, record = store.create("alice", "60/minute", 8)
    assert api_key.startswith(KEY_PREFIX) and len(api_key) == len(KEY_PREFIX) + 43
    assert record.owner == record.id and len(record.id) == 12
    assert store.lookup(api_key) == record
    assert store.lookup(api_key + "x") is None
    assert (record.rate, record.max_inflight, record.revoked_at) == ("60/minute", 8, None)


def test_only_a_keyed_hash_is_stored(store: KeyStore, client: redis.Redis) -> None:
    api_key, record = store.create("hash-only", "60/minute", 8)
    everything = every_byte_in(client)
    assert api_key.encode() not in everything
    assert api_key[len(KEY_PREFIX) :].encode() not in everything  # nor its random part
    assert record.key_hash.encode() in everything  # the HMAC is what is kept


def test_the_hash_depends_on_the_server_secret(
    store: KeyStore, client: redis.Redis, stack_env: dict[str, str]
) -> None:
    api_key, _ = store.create("secret", "60/minute", 8)
    other = KeyStore(client, settings_from(stack_env, key_hash_secret="another-" * 4))
    assert other.lookup(api_key) is None


def test_without_a_secret_no_key_is_made_or_matched(
    store: KeyStore, client: redis.Redis, stack_env: dict[str, str]
) -> None:
    api_key, _ = store.create("before-the-secret-went", "60/minute", 8)
    unset = {k: v for k, v in stack_env.items() if k != "EASEL_KEY_HASH_SECRET"}
    keyless = KeyStore(client, settings_from(unset))
    assert keyless.lookup(api_key) is None
    with pytest.raises(NoKeySecret, match="EASEL_KEY_HASH_SECRET"):
        keyless.create("after", "60/minute", 8)


def test_a_short_secret_is_refused(stack_env: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="key_hash_secret"):
        settings_from(stack_env, key_hash_secret="short")


def test_a_record_filed_under_another_hash_does_not_authenticate(
    store: KeyStore, client: redis.Redis
) -> None:
    api_key, _ = store.create("victim", "60/minute", 8)
    _, forged = store.create("forger", "60/minute", 8)
    # Index entry for api_key now points at a record whose own hash differs.
    client.set(key("apikey", store.hash(api_key)), forged.model_dump_json())
    assert store.lookup(api_key) is None


def test_revoked_key_is_found_as_revoked_and_revoking_twice_keeps_the_time(
    store: KeyStore,
) -> None:
    api_key, record = store.create("to-revoke", "60/minute", 8)
    revoked = store.revoke(record.id)
    assert revoked.revoked_at is not None
    found = store.lookup(api_key)
    assert found is not None and found.revoked
    assert store.revoke(record.id).revoked_at == revoked.revoked_at


def test_unknown_id_cannot_be_revoked(store: KeyStore) -> None:
    with pytest.raises(UnknownKeyId):
        store.revoke("no-such-id")


def test_list_shows_every_key_oldest_first_with_its_revocation(store: KeyStore) -> None:
    tag = secrets.token_hex(4)
    _, first = store.create(f"first-{tag}", "60/minute", 8)
    _, second = store.create(f"second-{tag}", "5/second", 2)
    store.revoke(first.id)
    mine = [r for r in store.all_keys() if r.name.endswith(tag)]
    assert [r.id for r in mine] == [first.id, second.id]
    assert mine[0].revoked and not mine[1].revoked
    assert (mine[1].rate, mine[1].max_inflight) == ("5/second", 2)


@pytest.mark.parametrize("rate", ["", "sixty a minute", "60/fortnight"])
def test_a_rate_flask_limiter_cannot_read_is_refused(store: KeyStore, rate: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        store.create("bad-rate", rate, 8)


def test_bootstrap_like_records_need_no_hash() -> None:
    record = KeyRecord(
        id="bootstrap", name="b", owner="0123456789abcdef", rate="600/minute",
        max_inflight=64, created_at=0.0,
    )  # fmt: skip
    assert record.key_hash == "" and not record.revoked


def test_inflight_cap_admits_up_to_the_cap_and_an_ended_job_frees_a_slot(
    client: redis.Redis, stack_settings: Settings
) -> None:
    cap, owner, now = (
        InflightCap(client, stack_settings.job_ttl_s),
        secrets.token_hex(6),
        time.time(),
    )
    a, b, c = (f"{name}-{owner}" for name in "abc")
    assert cap.admit(owner, a, 2, now) is None
    assert cap.admit(owner, b, 2, now) is None
    assert cap.admit(owner, c, 2, now) == 2
    JobStore(client, stack_settings.job_ttl_s).finish(job_record(a, owner=owner))
    assert cap.admit(owner, c, 2, now) is None
    assert cap.count(owner) == 2


def test_entries_older_than_the_job_ttl_no_longer_count(
    client: redis.Redis, stack_settings: Settings
) -> None:
    ttl_s = 60
    cap, owner, now = InflightCap(client, ttl_s), secrets.token_hex(6), time.time()
    assert cap.admit(owner, "expired-long-ago", 1, now - ttl_s - 1) is None
    assert cap.admit(owner, "fresh", 1, now) is None  # the stale one was pruned
    assert cap.count(owner) == 1


def test_job_store_finish_and_discard_release_the_slot(
    client: redis.Redis, stack_settings: Settings
) -> None:
    jobs = JobStore(client, stack_settings.job_ttl_s)
    cap, owner = InflightCap(client, stack_settings.job_ttl_s), secrets.token_hex(6)
    for name in ("finished", "discarded"):
        record = job_record(f"{name}-{owner}", owner=owner)
        assert cap.admit(owner, record.task_id, 5, record.created_at) is None
        jobs.create(record)
    jobs.cancel(f"finished-{owner}")  # a queued job canceled: finished at once
    jobs.discard(job_record(f"discarded-{owner}", owner=owner))
    assert cap.count(owner) == 0


# --- each key's webhook secret ---------------------------------------------------------


def whsec_bytes(secret: str) -> bytes:
    """The 32 bytes of a Standard Webhooks secret, or an assertion error."""
    assert secret.startswith("whsec_"), secret
    raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    assert len(raw) == 32
    return raw


def test_each_key_has_its_own_standard_webhooks_secret(store: KeyStore) -> None:
    _, first = store.create("hooks-1", "60/minute", 8)
    _, second = store.create("hooks-2", "60/minute", 8)
    secrets_ = [store.webhook_secret(r) for r in (first, second)]
    assert whsec_bytes(secrets_[0]) != whsec_bytes(secrets_[1])
    assert store.webhook_secret(store.get(first.id)) == secrets_[0]  # stable, read back
    Webhook(secrets_[0]).sign("msg_1", datetime.now(UTC), "{}")  # the SDK takes it


def test_no_webhook_secret_is_stored_only_what_it_derives_from(
    store: KeyStore, client: redis.Redis
) -> None:
    _, record = store.create("hooks-stored", "60/minute", 8)
    secret = store.webhook_secret(record)
    everything = every_byte_in(client)
    assert secret.encode() not in everything
    assert secret.removeprefix("whsec_").encode() not in everything
    assert record.webhook_nonce.encode() in everything


def test_the_webhook_secret_depends_on_the_server_secret(
    store: KeyStore, client: redis.Redis, stack_env: dict[str, str]
) -> None:
    _, record = store.create("hooks-server", "60/minute", 8)
    other = KeyStore(
        client,
        settings_from(stack_env, key_hash_secret="another-server-secret-of-at-least-32-chars"),
    )
    assert other.webhook_secret(record) != store.webhook_secret(record)
    unset = {k: v for k, v in stack_env.items() if k != "EASEL_KEY_HASH_SECRET"}
    with pytest.raises(NoKeySecret):
        KeyStore(client, settings_from(unset)).webhook_secret(record)


def test_rotating_replaces_the_secret_and_keeps_the_rest(store: KeyStore) -> None:
    api_key, record = store.create("hooks-rotate", "60/minute", 8)
    before = store.webhook_secret(record)
    store.revoke(record.id)
    after, rotated = store.rotate_webhook_secret(record.id)
    assert whsec_bytes(after) != whsec_bytes(before)
    assert store.webhook_secret(store.get(record.id)) == after
    found = store.lookup(api_key)
    assert found is not None and found.revoked and found.webhook_nonce == rotated.webhook_nonce
    with pytest.raises(UnknownKeyId):
        store.rotate_webhook_secret("no-such-id")


def test_a_key_made_before_webhook_secrets_has_one_from_its_first_use(
    store: KeyStore, client: redis.Redis
) -> None:
    olds = []
    for name in ("legacy-1", "legacy-2"):
        _, record = store.create(name, "60/minute", 8)
        legacy = record.model_dump_json(exclude={"webhook_nonce"})  # as stored before
        client.set(key("apikey", record.key_hash), legacy)
        olds.append(store.get(record.id))
    assert [r.webhook_nonce for r in olds] == ["", ""]
    first = store.webhook_secret(olds[0])
    assert first == store.webhook_secret(store.get(olds[0].id))  # no write, the same each time
    assert whsec_bytes(first) != whsec_bytes(store.webhook_secret(olds[1]))
    rotated, record = store.rotate_webhook_secret(olds[0].id)
    assert record.webhook_nonce and rotated != first
