"""Admitting a job: validate against the registry, record it, queue it on its GPU class."""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from contextlib import suppress

from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError

from api.metrics import count_job
from api.services import Services
from shared.errors import (
    BackendUnavailable,
    InvalidRequest,
    NoLiveWorker,
    PayloadTooLarge,
    TooManyRequests,
    field_error,
)
from shared.keys import InflightCap
from shared.logs import bind_task_id
from shared.models import GenerationParams, ImageToImageRequest, JobRecord
from shared.netguard import BlockedURL
from shared.queues import BROKER_DOWN, publish_turn
from shared.registry import ModelSpec
from shared.storage import Storage

log = logging.getLogger(__name__)

# Magic numbers of the formats a worker will decode; the worker checks again, fully.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
INFLIGHT_RETRY_S = 5.0  # a hint: jobs take seconds, and we cannot know which ends first


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """The MIME type and bytes of a ``data:image/...;base64,`` URI, if they look like an image."""
    head, _, payload = uri.partition(",")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_image("the data URI is not valid base64") from None
    check_image_bytes(data)
    return head.removeprefix("data:").partition(";")[0], data


def check_image_bytes(data: bytes) -> None:
    """Refuse bytes that do not start like an image the worker can decode."""
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if not (is_webp or data.startswith(_SIGNATURES)):
        raise _bad_image("the data URI does not hold a PNG, JPEG, WebP, GIF or BMP image")


def take_inline_image(
    request: ImageToImageRequest, upload: tuple[str, bytes] | None = None
) -> tuple[ImageToImageRequest, bytes | None]:
    """Take the inline image (a data URI, or a multipart file part's ``(mime, bytes)``) out of
    the request, so the large string is not kept or copied further; its bytes, if any."""
    if upload is not None:
        mime, data = upload
        check_image_bytes(data)
    elif request.is_data_uri:
        mime, data = decode_data_uri(request.image)
    else:
        return request, None
    return request.with_image_summary(mime, data), data


def _bad_image(reason: str) -> InvalidRequest:
    return field_error("image", "image", reason)


def check_webhook(services: Services, url: str) -> None:
    """Refuse a webhook the server cannot sign or must not call (checked again on delivery)."""
    if services.settings.webhook_secret is None:
        raise field_error("webhook", "config", "webhooks are off: EASEL_WEBHOOK_SECRET is unset")
    try:
        services.url_policy.check_literal(url)
    except BlockedURL as exc:
        raise field_error("webhook", "ssrf", str(exc)) from None


def admit_inflight(services: Services, record: JobRecord, cap: int) -> None:
    """Count the job against its owner's cap (JobStore.finish counts it out), or refuse it."""
    cap_store = InflightCap(services.jobs.redis, services.settings.job_ttl_s)
    if cap_store.admit(record.owner, record.task_id, cap, record.created_at) is not None:
        raise TooManyRequests(
            f"max_inflight: this API key already has {cap} jobs queued or running, its cap; "
            "submit again when one ends",
            retry_after_s=INFLIGHT_RETRY_S,
            data={"max_inflight": cap},
        )


def check_steps(spec: ModelSpec, strength: float) -> None:
    """A 400 for a strength so small that one denoising step would take more than the
    model's ``max_steps`` (img2img runs ``steps x strength`` of the schedule)."""
    if spec.steps_for(strength) is None:
        raise field_error(
            "strength", "min_for_model",
            f"must be at least {1 / spec.step_cap:.4g} for {spec.app_id!r}: a smaller "
            f"strength needs more than its max_steps ({spec.step_cap}) for one denoising step",
        )  # fmt: skip


def stash_input(services: Services, record: JobRecord, image: bytes) -> None:
    """Count an inline image against its owner's quota and put it in S3 for the worker."""
    most = services.settings.image_max_bytes
    if len(image) > most:  # the bound a fetched image has, too
        reason = f"the inline image is {len(image)} bytes; at most {most} are accepted"
        raise field_error("image", "max_bytes", reason, PayloadTooLarge)
    quota = services.settings.max_input_bytes_per_key
    if not services.jobs.reserve_input(record.owner, record.task_id, len(image), quota):
        raise TooManyRequests(
            f"max_input_bytes: this API key's unfinished jobs already hold close to {quota} "
            "bytes of inline images, its quota; send image URLs, or wait for jobs to end",
            retry_after_s=INFLIGHT_RETRY_S,
            data={"max_input_bytes": quota},
        )
    try:
        services.storage.put(Storage.input_key(record.task_id), image, "image", retry_for_s=0)
    except (BotoCoreError, ClientError) as exc:
        raise BackendUnavailable("S3 is unreachable; the job was not accepted") from exc


def forget(services: Services, record: JobRecord, had_input: bool) -> None:
    """Undo a submit that was not accepted: its record, cap slot, quota and input."""
    with suppress(RedisError, BackendUnavailable):  # unreachable too: the reaper ends it
        services.jobs.discard(record)
    if had_input:
        services.storage.delete(Storage.input_key(record.task_id))


def submit(
    services: Services,
    request: ImageToImageRequest,
    owner: str,
    max_inflight: int | None = None,
    image: bytes | None = None,
    weight: int = 1,
) -> JobRecord:
    """Record a job in its key's lane (``weight``: the key's fair share) and publish a turn
    on its GPU class's queue; raise if nobody can run it, or if ``owner`` already has
    ``max_inflight`` jobs queued or running. ``image`` holds the bytes of an inline image
    (``take_inline_image``), which wait in S3 for the worker."""
    spec = services.registry.check_runnable(request.app_id, request.inference_type)
    check_steps(spec, request.strength)
    if request.webhook is not None:
        check_webhook(services, request.webhook)
    if image is None and request.is_data_uri:
        raise _bad_image("the inline image was not taken out of the request")
    if image is None:
        try:
            services.url_policy.check_literal(request.image)
        except BlockedURL as exc:
            raise field_error("image", "ssrf", str(exc)) from None
    queue = services.settings.queue_for(request.inference_type)
    if services.settings.require_live_worker and not services.liveness.served(queue):
        raise NoLiveWorker(
            f"inference_type: no live worker consumes the {request.inference_type} queue "
            f"({queue!r}); start one with `easel worker --gpu {request.inference_type}`"
        )
    params = GenerationParams.from_request(request)
    record = JobRecord(
        task_id=str(uuid.uuid4()),
        owner=owner,
        app_id=request.app_id,
        inference_type=request.inference_type,
        queue=queue,
        params=params,
        input=request.echo(),
        ref_id=request.ref_id,
        created_at=time.time(),
        webhook=request.webhook,
        webhook_events=request.webhook_events_filter if request.webhook else [],
    )
    bind_task_id(record.task_id)  # the request's log lines from here on carry it
    if max_inflight is not None:
        admit_inflight(services, record, max_inflight)
    try:
        if image is not None:
            stash_input(services, record, image)
        services.jobs.create(record, weight)
    except BaseException:
        forget(services, record, image is not None)
        raise
    try:
        publish_turn(services.celery.send_task, record.queue)
    except BROKER_DOWN as exc:
        forget(services, record, image is not None)  # if Redis is down too: the reaper
        raise BackendUnavailable("the job queue is unreachable; the job was not accepted") from exc
    confirm(services, record, image is not None)
    count_job(record)
    return record


def confirm(services: Services, record: JobRecord, had_input: bool) -> None:
    """Accept the job only once ``EASEL_REDIS_WAIT_REPLICAS`` replicas hold it, so that a
    failover cannot lose a job already acknowledged; else take it back and answer 503.

    A worker may take the job in the meantime (turns are interchangeable): then it runs,
    whatever Redis does next, and the answer is the job's."""
    settings = services.settings
    replicas, timeout_ms = settings.redis_wait_replicas, settings.redis_wait_timeout_ms
    if services.jobs.published(record, replicas, timeout_ms):
        return
    if not services.jobs.take_back(record):
        log.warning(
            "job %s ran before %d replicas confirmed it; accepted", record.task_id, replicas
        )
        return
    if had_input:
        services.storage.delete(Storage.input_key(record.task_id))
    raise BackendUnavailable(
        f"the job was not confirmed on {replicas} Redis replica(s) within {timeout_ms} ms "
        "(EASEL_REDIS_WAIT_REPLICAS), so it was not accepted; try again shortly"
    )
