"""Bearer API keys; each request learns which owner it acts for."""

from __future__ import annotations

import hashlib
import hmac

from flask import g, request

from api.services import get_services
from shared.errors import Unauthorized


def owner_id(key: str) -> str:
    """A stable, non-secret id for a key, stored on the jobs it creates."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def require_key() -> None:
    """Reject the request unless it carries a valid key (a Blueprint ``before_request``)."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Authorization: send the header 'Authorization: Bearer <key>'")
    expected = get_services().settings.bootstrap_api_key
    if expected is None or not hmac.compare_digest(
        key.strip().encode(), expected.get_secret_value().encode()
    ):
        raise Unauthorized("Authorization: unknown API key")
    g.owner = owner_id(key.strip())


def current_owner() -> str:
    """The owner id of the authenticated request."""
    owner: str = g.owner
    return owner
