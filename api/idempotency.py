"""``Idempotency-Key`` on ``POST /getImageToImage``: a retried submit never makes a second job.

Within ``EASEL_IDEMPOTENCY_TTL_S``, the same API key sending the same Idempotency-Key
with the same body gets the task of the first request; with another body, a 409. The
body's fingerprint is the SHA-256 of the validated request as canonical JSON, so a JSON
and a multipart body with the same fields (or the same fields in another order) match.

Redis: ``easel:idem:<owner>:<sha256 of the header>`` holds ``{"fingerprint", "task_id"}``.
The first request claims it with SET NX (``task_id`` still null, for a short time) and
fills in the task once the job is recorded; a concurrent retry waits for that and then
answers with the same task. A claim whose submit fails is deleted, so a retry can try
again; one whose process dies expires after ``CLAIM_TTL_S``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from contextlib import suppress
from functools import partial

from pydantic import BaseModel

from api.jobs import submit
from api.services import Services
from shared.errors import BackendUnavailable, Conflict, field_error
from shared.jobs import _run, key
from shared.keys import KeyRecord
from shared.models import ImageToImageRequest, JobRecord

MAX_KEY_LENGTH = 255
CLAIM_TTL_S = 30  # a claim outlives any submit (milliseconds) but not a crashed process
WAIT_FOR_CLAIM_S = 10.0
POLL_S = 0.05

# Delete the claim only if it is still ours (the submit that made it failed).
UNCLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claim(BaseModel):
    fingerprint: str
    task_id: str | None = None
    token: str = ""


def submit_once(
    services: Services,
    body: ImageToImageRequest,
    api_key: KeyRecord,
    header: str | None,
    image: bytes | None = None,
) -> JobRecord:
    """Submit the job, or, for a repeated Idempotency-Key, find the job it already made.

    ``image`` is the inline image taken out of ``body``, whose summary keeps its digest,
    so the fingerprint tells two images apart."""
    if header is None:
        return submit(services, body, api_key.owner, api_key.max_inflight, image, api_key.weight)
    check_header(header)
    name = key("idem", f"{api_key.owner}:{hashlib.sha256(header.encode()).hexdigest()}")
    fingerprint = fingerprint_of(body)
    deadline = time.monotonic() + WAIT_FOR_CLAIM_S
    while True:
        mine = Claim(fingerprint=fingerprint, token=secrets.token_hex(8)).model_dump_json()
        claim = partial(services.jobs.redis.set, name, mine, nx=True, ex=CLAIM_TTL_S)
        if _run(claim):
            return _submit_claimed(services, body, api_key, name, mine, image)
        raw = _run(partial(services.jobs.redis.get, name))
        if raw is not None:
            found = Claim.model_validate_json(raw)
            if found.fingerprint != fingerprint:
                raise field_error(
                    "Idempotency-Key", "reused",
                    "already used with a different body; send the same body to get its "
                    "task, or use a new key", Conflict,
                )  # fmt: skip
            if found.task_id is not None:
                return services.jobs.get(found.task_id)
        if time.monotonic() > deadline:
            raise Conflict("Idempotency-Key: the first request with it is still being admitted")
        time.sleep(POLL_S)  # the first request is admitting its job (or just gave up)


def _submit_claimed(
    services: Services,
    body: ImageToImageRequest,
    api_key: KeyRecord,
    name: str,
    mine: str,
    image: bytes | None,
) -> JobRecord:
    try:
        record = submit(services, body, api_key.owner, api_key.max_inflight, image, api_key.weight)
    except BaseException:  # not admitted: let a retry claim the key again
        unclaim = services.jobs.redis.register_script(UNCLAIM)
        with suppress(BackendUnavailable):  # Redis is down: the claim expires on its own
            _run(partial(unclaim, keys=[name], args=[mine]))
        raise
    done = Claim.model_validate_json(mine).model_copy(update={"task_id": record.task_id})
    ttl = services.settings.idempotency_ttl_s
    _run(partial(services.jobs.redis.set, name, done.model_dump_json(), ex=ttl))
    return record


def check_header(header: str) -> None:
    """A 400 for an Idempotency-Key that is empty, too long or not printable ASCII."""
    if not 1 <= len(header) <= MAX_KEY_LENGTH or not header.isascii() or not header.isprintable():
        reason = f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        raise field_error("Idempotency-Key", "header", reason)


def fingerprint_of(body: ImageToImageRequest) -> str:
    """SHA-256 of the validated request as canonical JSON."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
