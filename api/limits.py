"""Per-key rate limits: Flask-Limiter on the job Redis, one moving-window bucket per key.

Every keyed route (``POST /getImageToImage`` and the ``/tasks`` routes) draws on the same
bucket: a key's ``rate`` is its whole request budget, whatever it spends it on. Polling
needs no separate budget because ``GET /tasks/<id>?wait=S`` holds one request until the
job ends. Buckets are per owner id (the key id; for the bootstrap key, its ``owner_id``),
so one key running out never slows another.

Flask-Limiter checks limits in an app-level ``before_request``, which Flask runs before a
Blueprint's ``require_key``; so the limit and the key function authenticate themselves
(``api.auth.authenticate`` does it once per request), and a bad key is a 401, not a 429.
"""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Blueprint, Flask, current_app
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse_many
from limits.errors import StorageError

from api.auth import authenticate
from shared.errors import BackendUnavailable, EaselError, TooManyRequests
from shared.settings import Settings


def key_bucket() -> str:
    """The rate-limit bucket of this request: its key's owner id."""
    return authenticate().owner


def key_rate() -> str:
    """The rate of this request's key, e.g. ``"600/minute"``."""
    return authenticate().rate


def init_app(app: Flask, settings: Settings, keyed: list[Blueprint]) -> None:
    """Rate-limit the ``keyed`` Blueprints per key, counting in the job Redis."""
    parse_many(settings.default_rate_limit)  # a typo fails at start, not on every request
    storage_options: dict[str, Any] = {  # passed to redis-py (typed str | int, takes floats)
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "wrap_exceptions": True,  # Redis trouble arrives as one StorageError: a 503
    }
    limiter = Limiter(
        key_func=key_bucket,
        storage_uri=settings.redis_url,
        storage_options=storage_options,
        strategy="moving-window",  # a window that slides: no double burst at a boundary
        key_prefix="easel",
    )
    limiter.init_app(app)
    for blueprint in keyed:
        limiter.shared_limit(key_rate, scope="key")(blueprint)
    app.extensions["easel.limiter"] = limiter


def limiter_error(exc: RateLimitExceeded | StorageError) -> EaselError:
    """The Easel error for what Flask-Limiter raised: a breached limit or Redis trouble."""
    if isinstance(exc, StorageError):
        return BackendUnavailable("Redis is unreachable; try again shortly")
    limiter: Limiter = current_app.extensions["easel.limiter"]
    breached = limiter.current_limit
    retry_after = 1.0
    if breached is not None:
        retry_after = max(1.0, math.ceil(breached.window.reset_time - time.time()))
    rate = str(exc.description)
    return TooManyRequests(
        f"rate limit: this API key may make {rate}; retry in {retry_after:.0f} s",
        retry_after_s=retry_after,
        data={"limit": rate, "retry_after_s": retry_after},
    )
