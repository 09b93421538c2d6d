"""Where Easel's three Redis clients connect: a plain ``EASEL_REDIS_URL``, or the primary
that Redis Sentinel names (``EASEL_REDIS_SENTINELS``), followed through a failover.

The clients:

* the job store's redis-py client (``redis_client``);
* Celery's broker, kombu (``broker_url`` and ``broker_transport_options``);
* Flask-Limiter's storage, ``limits`` (``flask_limiter_storage``).

Two passwords with Sentinel: ``EASEL_REDIS_PASSWORD`` is the primary's and the replicas'
(their ``requirepass``), ``EASEL_REDIS_SENTINEL_PASSWORD`` the Sentinels' own. Each library
takes them in its own place; each function below puts them there.

How a failover reaches a client (redis-py 8, ``redis/sentinel.py``):

* A connection asks the Sentinels for the primary each time it connects, never per
  command; a pool that learns of a new primary closes its idle connections.
* A connection to a dead or stopped primary fails within ``redis_timeout_s`` with
  ``ConnectionError`` or ``TimeoutError``; until the Sentinels agree on a new primary,
  reconnecting fails with ``MasterNotFoundError``, a ``ConnectionError`` too.
* A demoted primary answers a write with ``READONLY``: ``SentinelManagedConnection``
  turns that ``ReadOnlyError`` into ``ConnectionError("The previous master is now a
  slave")`` and disconnects, so the next command asks the Sentinels again. Sentinel
  also kills the clients of a node it demotes, so that path is rare.

A managed Redis with failover (ElastiCache, Memorystore) keeps one endpoint and moves it
to the new primary; a connection opened before the move may still reach the old one, now
a replica, which answers writes with ``READONLY``. ``FollowPrimary`` gives plain clients
what ``SentinelManagedConnection`` does: that answer closes the connection and raises
``ConnectionError``, so the next command connects again, to the new primary.

Whatever happens, the caller sees only ``ConnectionError`` or ``TimeoutError`` (the job
store makes them ``BackendUnavailable``, a 503) and retries as it already does; nothing
here retries. A write that a resumed old primary accepted before Sentinel demoted it is
lost: that is what ``EASEL_REDIS_WAIT_REPLICAS`` is for.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import redis
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError
from redis.retry import Retry
from redis.sentinel import Sentinel

from shared.settings import Settings


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """The Sentinels as (host, port) pairs; empty when Sentinel is not used."""
    pairs = (address.rpartition(":") for address in settings.redis_sentinels)
    return [(host.strip("[]"), int(port)) for host, _, port in pairs]


class FollowPrimary:
    """A connection mixin: a ``READONLY`` answer (a demoted primary) means reconnect."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ReadOnlyError:
            self.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError("the primary is now a replica; reconnecting") from None


class PrimaryConnection(FollowPrimary, redis.Connection):
    """``redis://``: a connection that follows a managed failover."""


class PrimarySSLConnection(FollowPrimary, redis.SSLConnection):
    """``rediss://``: the same, over TLS."""


def redis_client(settings: Settings, **overrides: Any) -> redis.Redis:
    """A Redis client for the job store that fails within the configured timeout instead
    of hanging; with Sentinel, it talks to whichever node the Sentinels call primary."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
        **overrides,
    }
    if not settings.redis_sentinels:
        scheme = urlsplit(settings.redis_url).scheme
        follow = {"redis": PrimaryConnection, "rediss": PrimarySSLConnection}.get(scheme)
        if follow is not None:  # (a unix socket has no failover to follow)
            options["connection_class"] = follow
        return redis.Redis.from_url(settings.redis_url, **options)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinel_addresses(settings),
        sentinel_kwargs={**_sentinel_kwargs(settings), "retry": Retry(NoBackoff(), 0)},
        password=_secret(settings.redis_password),
        db=_db(settings.redis_url),
        **options,
    )
    client: redis.Redis = sentinel.master_for(settings.redis_master_name)  # type: ignore[no-untyped-call]
    return client


def broker_url(settings: Settings) -> str:
    """Celery's broker URL: ``EASEL_BROKER_URL`` if set, else one ``sentinel://`` URL per
    Sentinel joined by ``;`` (kombu's form), else ``EASEL_REDIS_URL``."""
    if settings.broker_url or not settings.redis_sentinels:
        return settings.broker_url or settings.redis_url
    # kombu takes the primary's password from the URL and the Sentinels' from
    # sentinel_kwargs (kombu/transport/redis.py, SentinelChannel._sentinel_managed_pool).
    password = _secret(settings.redis_password)
    auth = f":{quote(password, safe='')}@" if password else ""
    db = _db(settings.redis_url)
    return ";".join(f"sentinel://{auth}{address}/{db}" for address in settings.redis_sentinels)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """The kombu transport options a ``sentinel://`` broker needs; {} for any other."""
    if not broker_url(settings).startswith("sentinel://"):
        return {}
    # Given sentinel_kwargs, kombu's Sentinel takes nothing else (no timeouts) from the URL.
    sentinel_kwargs = {k: v for k, v in _sentinel_kwargs(settings).items() if v is not None}
    return {"master_name": settings.redis_master_name, "sentinel_kwargs": sentinel_kwargs}


def flask_limiter_storage(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Flask-Limiter's ``storage_uri`` and ``storage_options``: the job Redis either way."""
    options: dict[str, Any] = {  # passed to redis-py (typed str | int, takes floats)
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "wrap_exceptions": True,  # Redis trouble arrives as one StorageError: a 503
    }
    if not settings.redis_sentinels:
        return settings.redis_url, options
    sentinels = ",".join(settings.redis_sentinels)
    return f"redis+sentinel://{sentinels}/{settings.redis_master_name}", {
        **options,
        "password": _secret(settings.redis_password),
        "db": _db(settings.redis_url),
        # limits gives the Sentinels the primary's password unless told theirs (even None).
        "sentinel_kwargs": _sentinel_kwargs(settings),
        "use_replicas": False,  # a replica lags: counts are read where they are written
    }


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """How to reach the Sentinels: their password (None: none) and the usual timeouts."""
    return {
        "password": _secret(settings.redis_sentinel_password),
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
    }


def _secret(value: SecretStr | None) -> str | None:
    """The plain text of an optional SecretStr."""
    return value.get_secret_value() if value is not None else None


def _db(url: str) -> int:
    """The database number in a ``redis://host:port/N`` URL; 0 when it names none."""
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0
