"""Per-key rate limits: Flask-Limiter on the job Redis, one moving-window bucket per key.

Every keyed route (``POST /getImageToImage`` and the ``/tasks`` routes) draws on the same
bucket: a key's ``rate`` is its whole request budget, whatever it spends it on. Polling
needs no separate budget because ``GET /tasks/<id>?wait=S`` holds one request until the
job ends. Buckets are per owner id (the key id; for the bootstrap key, its ``owner_id``),
so one key running out never slows another.

Flask-Limiter checks limits in an app-level ``before_request``, which Flask runs before a
Blueprint's ``require_key``; so the limit and the key function authenticate themselves
(``api.auth.authenticate`` does it once per request), and a bad key is a 401, not a 429.

Failed authentications have a budget of their own, per client address
(``EASEL_AUTH_FAILURE_LIMIT``, moving window, in the same Redis): every 401 a keyed route
answers is counted, and an address past the budget gets 429 with ``Retry-After`` on every
keyed route, before its key is even looked at. A valid key from that address is refused too,
until the window slides: were it let through, 200-or-429 would tell a guesser which of its
guesses was right, and the limit would slow nothing. The check runs ahead of Flask-Limiter's
own, whose key function would answer a bad key with a 401 first.
"""

from __future__ import annotations

import math
import time
from contextlib import suppress

from flask import Blueprint, Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import RateLimitItem, parse_many
from limits.errors import StorageError

from api.auth import authenticate, client_address
from shared.errors import BackendUnavailable, EaselError, TooManyRequests
from shared.redisconn import flask_limiter_storage
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
    storage_uri, storage_options = flask_limiter_storage(settings)  # Sentinel-aware
    limiter = Limiter(
        key_func=key_bucket,
        storage_uri=storage_uri,
        storage_options=storage_options,
        strategy="moving-window",  # a window that slides: no double burst at a boundary
        key_prefix="easel",
    )
    guard = AuthFailureGuard(limiter, settings.auth_failure_limit, {bp.name for bp in keyed})
    app.before_request(guard.check)  # ahead of Flask-Limiter's own check, registered next
    limiter.init_app(app)
    app.after_request(guard.count)
    for blueprint in keyed:
        limiter.shared_limit(key_rate, scope="key")(blueprint)
    app.extensions["easel.limiter"] = limiter


class AuthFailureGuard:
    """The per-address budget of failed authentications on the keyed Blueprints."""

    def __init__(self, limiter: Limiter, rate: str, blueprints: set[str]) -> None:
        self.limiter = limiter
        self.limits: list[RateLimitItem] = parse_many(rate)  # a typo fails at start
        self.rate = "; ".join(str(limit) for limit in self.limits)  # "20 per 1 minute"
        self.blueprints = blueprints

    def check(self) -> None:
        """Refuse (429) a client address that spent its budget of failed authentications."""
        if request.blueprint not in self.blueprints:
            return
        counter, bucket = self.limiter.limiter, self.bucket()
        for limit in self.limits:
            if not counter.test(limit, *bucket):
                reset_at = counter.get_window_stats(limit, *bucket).reset_time
                retry_after = max(1.0, math.ceil(reset_at - time.time()))
                raise TooManyRequests(
                    f"authentication: too many failed attempts from this address (at most "
                    f"{self.rate}); retry in {retry_after:.0f} s",
                    retry_after_s=retry_after,
                    data={"limit": self.rate, "retry_after_s": retry_after},
                )

    def count(self, response: Response) -> Response:
        """Count a 401 of a keyed route against its client address."""
        if response.status_code != 401 or request.blueprint not in self.blueprints:
            return response
        with suppress(StorageError):  # the 401 stands; the next check is the 503
            for limit in self.limits:
                self.limiter.limiter.hit(limit, *self.bucket())
        return response

    @staticmethod
    def bucket() -> tuple[str, str, str]:
        """This request's bucket: its client address."""
        return ("easel", "auth-failures", client_address())


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
