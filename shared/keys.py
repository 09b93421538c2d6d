"""API keys and the per-key in-flight cap, in Redis. A key itself is never stored.

A key is ``esl_`` plus 43 URL-safe characters, shown once when it is created. Redis holds
only HMAC-SHA256(``EASEL_KEY_HASH_SECRET``, key): a leaked dump cannot be replayed, and
without the secret it cannot even be brute-forced offline.

Each key signs its own webhooks with a Standard Webhooks secret, ``whsec_`` plus base64 of
32 bytes: HMAC-SHA256(``EASEL_KEY_HASH_SECRET``, the key's id and a random nonce). Redis
holds only the nonce, so a leaked dump cannot forge deliveries either, and the webhook
process, which has the server secret, derives the secret in clear to sign. Rotating draws
a new nonce. A key made before webhook secrets has no nonce; its secret is derived from
its id alone, the same every time, so it exists from its first use without a write.

Keys (all under ``easel:``, spelled by ``shared.jobs.key``):
    apikey:<hash>      the KeyRecord as JSON, found by the hash of the key a request sends
    apikeyid:<id>      the hash of key <id>, for revoking by id
    apikeys            sorted set of key ids by creation time, for listing
    inflight:<owner>   sorted set of an owner's unfinished task ids by submit time; an entry
                       leaves when its job ends (JobStore.finish) or when it is older than
                       the job TTL (its record expired, so nothing will ever finish it)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import cast

import redis
from pydantic import BaseModel, Field, ValidationInfo, field_validator
from redis.client import Pipeline

from shared.fairness import MAX_WEIGHT
from shared.jobs import _run, key
from shared.settings import Settings

KEY_PREFIX = "esl_"
BOOTSTRAP_ID = "bootstrap"
STORED = {"stored": True}  # validation context of records read back from Redis
WEBHOOK_SECRET_PREFIX = "whsec_"

# Atomically: forget entries older than the job TTL, refuse past the cap, else add.
ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[3]) then return count end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return -1
"""


class UnknownKeyId(LookupError):
    """No key has this id."""


class NoKeySecret(RuntimeError):
    """``EASEL_KEY_HASH_SECRET`` is unset, so no key can be hashed: only the bootstrap key
    authenticates."""


class KeyRecord(BaseModel):
    """What Easel knows about one API key; ``owner`` is stored on the jobs it creates."""

    id: str
    name: str
    owner: str  # the key id, except for the bootstrap key (see api/auth.py)
    rate: str  # Flask-Limiter syntax, e.g. "60/minute"
    max_inflight: int = Field(ge=1)
    # Its share of job starts on a GPU class while other keys' jobs wait too (a key
    # weighted 3 against one weighted 1 gets 3 of every 4): shared/fairness.py.
    weight: int = Field(default=1, ge=1, le=MAX_WEIGHT)
    created_at: float
    revoked_at: float | None = None
    key_hash: str = ""  # hex HMAC-SHA256 of the key; empty for the bootstrap key
    webhook_nonce: str = ""  # what its webhook secret derives from; empty for old keys

    @field_validator("rate")
    @classmethod
    def _rate_parses(cls, value: str, info: ValidationInfo) -> str:
        """Refuse a rate Flask-Limiter could not read (it would silently skip it). A stored
        record was checked when it was made: reading it needs no ``limits``, which the
        webhook deliverer's image lacks."""
        if info.context == STORED:
            return value
        from limits import parse_many

        if not parse_many(value):
            raise ValueError(f"no rate in {value!r}")
        return value

    @classmethod
    def stored(cls, raw: bytes | str) -> KeyRecord:
        """A record as Redis holds it."""
        return cls.model_validate_json(raw, context=STORED)

    @property
    def revoked(self) -> bool:
        """Whether requests with this key are refused."""
        return self.revoked_at is not None


def new_key() -> str:
    """A fresh secret API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_nonce() -> str:
    """A fresh random part for a key's webhook secret."""
    return secrets.token_hex(32)


class KeyStore:
    """Creates, finds, lists and revokes API keys; stores only their keyed hashes."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        secret = settings.key_hash_secret
        self._secret = None if secret is None else secret.get_secret_value().encode()

    def hash(self, api_key: str) -> str:
        """HMAC-SHA256 of a key under the server's secret, as hex."""
        if self._secret is None:
            raise NoKeySecret("EASEL_KEY_HASH_SECRET is unset: set it to create or use API keys")
        return hmac.new(self._secret, api_key.encode(), hashlib.sha256).hexdigest()

    def create(
        self, name: str, rate: str, max_inflight: int, weight: int = 1
    ) -> tuple[str, KeyRecord]:
        """Make a key; the returned secret is the only copy there will ever be."""
        api_key, key_id = new_key(), secrets.token_hex(6)
        digest = self.hash(api_key)
        record = KeyRecord(
            id=key_id, name=name, owner=key_id, rate=rate, max_inflight=max_inflight,
            weight=weight, created_at=time.time(), key_hash=digest, webhook_nonce=new_nonce(),
        )  # fmt: skip
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(key("apikey", digest), record.model_dump_json())
        pipe.set(key("apikeyid", key_id), digest)
        pipe.zadd(key("apikeys", "all"), {key_id: record.created_at})
        _run(pipe.execute)
        return api_key, record

    def lookup(self, api_key: str) -> KeyRecord | None:
        """The record of a key (revoked ones included), or None if no such key exists."""
        if self._secret is None:
            return None  # no secret, no stored keys to match
        digest = self.hash(api_key)
        raw = _run(partial(self.redis.get, key("apikey", digest)))
        if raw is None:
            return None
        record = KeyRecord.stored(raw)
        # Found by its hash already; compare anyway, in constant time, so that a record
        # filed under the wrong index entry can never authenticate.
        if not hmac.compare_digest(record.key_hash.encode(), digest.encode()):
            return None
        return record

    def get(self, key_id: str) -> KeyRecord:
        """The record of a key by its id; UnknownKeyId if there is none."""
        digest = _run(partial(self.redis.get, key("apikeyid", key_id)))
        raw = (
            None if digest is None else _run(partial(self.redis.get, key("apikey", _text(digest))))
        )
        if raw is None:
            raise UnknownKeyId(f"no API key with id {key_id!r}")
        return KeyRecord.stored(raw)

    def all_keys(self) -> list[KeyRecord]:
        """Every key, oldest first (never the keys themselves: Easel does not have them)."""
        ids = cast(list[bytes], _run(partial(self.redis.zrange, key("apikeys", "all"), 0, -1)))
        return [self.get(key_id.decode()) for key_id in ids]

    def revoke(self, key_id: str) -> KeyRecord:
        """Refuse a key from now on; revoking twice keeps the first time."""

        def revoked(record: KeyRecord) -> None:
            if record.revoked_at is None:
                record.revoked_at = time.time()

        return self._update(key_id, revoked)

    def set_weight(self, key_id: str, weight: int) -> KeyRecord:
        """Give a key a new weight; its jobs submitted from now on use it."""

        def reweighted(record: KeyRecord) -> None:
            changed = {**record.model_dump(), "weight": weight}  # checked against its bounds
            record.weight = KeyRecord.model_validate(changed, context=STORED).weight

        return self._update(key_id, reweighted)

    def webhook_secret(self, record: KeyRecord) -> str:
        """The ``whsec_`` secret that signs this key's webhooks (see the module docstring)."""
        if self._secret is None:
            raise NoKeySecret("EASEL_KEY_HASH_SECRET is unset: key webhook secrets derive from it")
        message = f"easel-webhook-secret:{record.id}:{record.webhook_nonce}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return WEBHOOK_SECRET_PREFIX + base64.b64encode(digest).decode()

    def rotate_webhook_secret(self, key_id: str) -> tuple[str, KeyRecord]:
        """Replace a key's webhook secret; deliveries from now on, retries included, use it."""

        def renewed(record: KeyRecord) -> None:
            record.webhook_nonce = new_nonce()

        record = self._update(key_id, renewed)
        return self.webhook_secret(record), record

    def _update(self, key_id: str, change: Callable[[KeyRecord], None]) -> KeyRecord:
        """Apply ``change`` to a key's record atomically (WATCH), so that a revoke and a
        rotation at the same moment both stick."""
        digest = _run(partial(self.redis.get, key("apikeyid", key_id)))
        if digest is None:
            raise UnknownKeyId(f"no API key with id {key_id!r}")
        name = key("apikey", _text(digest))
        updated: list[KeyRecord] = []

        def apply(pipe: Pipeline) -> None:
            raw = pipe.get(name)
            if raw is None:
                raise UnknownKeyId(f"no API key with id {key_id!r}")
            record = KeyRecord.stored(raw)
            change(record)
            pipe.multi()
            pipe.set(name, record.model_dump_json())
            updated[:] = [record]

        _run(partial(self.redis.transaction, apply, name))
        return updated[0]


class InflightCap:
    """Counts each owner's unfinished jobs, so that a key cannot hold more than its cap."""

    def __init__(self, client: redis.Redis, job_ttl_s: int) -> None:
        self.redis = client
        self.job_ttl_s = job_ttl_s
        self._admit = client.register_script(ADMIT)

    def admit(self, owner: str, task_id: str, cap: int, now: float) -> int | None:
        """Count a new job in; None if admitted, else how many are in flight already."""
        args: list[float | int | str] = [now, now - self.job_ttl_s, cap, task_id, self.job_ttl_s]
        count = cast(int, _run(partial(self._admit, keys=[key("inflight", owner)], args=args)))
        return None if count < 0 else count

    def count(self, owner: str) -> int:
        """How many of an owner's jobs are counted in flight now."""
        return _run(partial(self.redis.zcard, key("inflight", owner)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
