"""Bearer API keys; each request learns which key, and so which owner, it acts for.

A key is checked on every request, against Redis, so a revoked key is refused at once;
the result is kept only on ``flask.g``, for the rest of that one request.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from contextlib import suppress

from flask import g, request

from api.services import get_services
from shared.errors import Unauthorized
from shared.keys import BOOTSTRAP_ID, KEY_PREFIX, KeyRecord, KeyStore
from shared.settings import Settings


def owner_id(key: str) -> str:
    """The owner id of the bootstrap key: stable for a given key, and not secret."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def key_store() -> KeyStore:
    """The API keys of this app's Redis."""
    services = get_services()
    return KeyStore(services.jobs.redis, services.settings)


def authenticate() -> KeyRecord:
    """The key of this request, checked once per request; Unauthorized if none is valid."""
    known: KeyRecord | None = g.get("api_key")
    if known is not None:
        return known
    sent = sent_key()
    if not sent:
        raise Unauthorized(
            "Authorization: send the header 'Authorization: Bearer <key>' (or 'X-API-Key: <key>')"
        )
    record = bootstrap_key(sent, get_services().settings)
    if record is None and sent.startswith(KEY_PREFIX):
        record = key_store().lookup(sent)
    if record is None:
        raise Unauthorized("Authorization: unknown API key")
    if record.revoked:
        raise Unauthorized("Authorization: this API key was revoked")
    g.api_key = record
    return record


def sent_key() -> str:
    """The key a request sends: ``Authorization: Bearer <key>``, or ``X-API-Key: <key>`` as
    Qolaba's newer platform sends it; empty if neither."""
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and sent.strip():
        return sent.strip()
    return request.headers.get("X-API-Key", "").strip()


def client_address() -> str:
    """The address of the client, as the first proxy in front of the API saw it.

    Each of the ``EASEL_TRUSTED_PROXY_HOPS`` proxies appends the address it was reached from
    to ``X-Forwarded-For``, so the value that many places from the end is the client's; what
    the client wrote before it is not trusted. Without the header (or without an address
    there) it is the socket's peer.
    """
    hops = get_services().settings.trusted_proxy_hops
    forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",")]
    if hops and len(forwarded) >= hops:
        with suppress(ValueError):  # not an address: no proxy of ours wrote it
            return str(ipaddress.ip_address(forwarded[-hops]))
    return request.remote_addr or "unknown"


def bootstrap_key(sent: str, settings: Settings) -> KeyRecord | None:
    """``EASEL_BOOTSTRAP_API_KEY`` as an implicit key with the default limits, if it matches.

    Its owner stays ``owner_id(key)``, as before stored keys existed, so its jobs stay
    visible across upgrades and a rotated bootstrap key does not inherit the old one's."""
    expected = settings.bootstrap_api_key
    if expected is None or not hmac.compare_digest(
        sent.encode(), expected.get_secret_value().encode()
    ):
        return None
    return KeyRecord(
        id=BOOTSTRAP_ID, name="EASEL_BOOTSTRAP_API_KEY", owner=owner_id(sent),
        rate=settings.default_rate_limit, max_inflight=settings.default_max_inflight,
        weight=settings.bootstrap_weight, created_at=0.0,
    )  # fmt: skip


def require_key() -> None:
    """Reject the request unless it carries a valid key (a Blueprint ``before_request``)."""
    authenticate()


def current_key() -> KeyRecord:
    """The key of the authenticated request."""
    return authenticate()


def current_owner() -> str:
    """The owner id of the authenticated request: the key's id (see ``bootstrap_key``)."""
    return authenticate().owner
