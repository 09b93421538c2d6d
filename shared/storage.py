"""The S3 client both sides use: workers upload outputs, the API signs URLs and checks health."""

from __future__ import annotations

import logging
import math
from typing import Any

import boto3
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from shared.errors import BackendUnavailable
from shared.settings import Settings

log = logging.getLogger(__name__)


RETENTION_RULE_ID = "easel-retention"
INPUTS_RULE_ID = "easel-inputs"
INPUTS_PREFIX = "inputs"
INPUT_RETENTION_DAYS = 1  # inputs are deleted when their job ends; this is the backstop


def _same_rule(kept: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a rule the bucket has already does what ``wanted`` asks."""
    return (
        kept.get("ID") == wanted["ID"]
        and kept.get("Status") == "Enabled"
        and kept.get("Filter", {}).get("Prefix") == wanted["Filter"]["Prefix"]
        and kept.get("Expiration", {}).get("Days") == wanted["Expiration"]["Days"]
    )


def _expiry_rule(rule_id: str, prefix: str, days: int) -> dict[str, Any]:
    return {
        "ID": rule_id,
        "Filter": {"Prefix": prefix},
        "Status": "Enabled",
        "Expiration": {"Days": days},
    }


def _transient(exc: BaseException) -> bool:
    """Connection trouble, timeouts, throttling and 5xx: worth another try."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") == "SlowDown"
    return isinstance(exc, BotoCoreError)


class Storage:
    """One bucket on any S3-compatible server."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix.strip("/")
        self.expiry_s = settings.presign_expiry_s
        self.upload_retry_s = settings.s3_upload_retry_s
        self.retention_days = max(1, math.ceil(settings.job_ttl_s / 86400))
        self.client = self._client(settings, settings.s3_endpoint_url)
        # Clients may reach S3 by another address than the servers do (Docker, Kubernetes).
        public = settings.s3_public_endpoint_url
        self.signer = self._client(settings, public) if public else self.client

    @staticmethod
    def _client(settings: Settings, endpoint_url: str | None) -> Any:
        secret = settings.s3_secret_access_key
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    def output_key(self, task_id: str, name: str) -> str:
        """Where one output of a task lives; a rerun overwrites, never duplicates."""
        return f"{self.prefix}/{task_id}/{name}"

    @staticmethod
    def input_key(task_id: str) -> str:
        """Where a job's inline input image waits until the job ends."""
        return f"{INPUTS_PREFIX}/{task_id}"

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist; either way, make outputs expire like job
        records, and inputs after a day (a bucket made by hand gets the rules too, beside
        any rules it has)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)
        wanted = [
            _expiry_rule(RETENTION_RULE_ID, f"{self.prefix}/", self.retention_days),
            _expiry_rule(INPUTS_RULE_ID, f"{INPUTS_PREFIX}/", INPUT_RETENTION_DAYS),
        ]
        try:
            rules = self._lifecycle_rules()
            if all(any(_same_rule(kept, rule) for kept in rules) for rule in wanted):
                return
            ours = {rule["ID"] for rule in wanted}
            others = [kept for kept in rules if kept.get("ID") not in ours]
            self.client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": [*others, *wanted]}
            )
        except ClientError as exc:  # some S3 servers lack lifecycle rules; records still expire
            log.warning("could not set the bucket's lifecycle rule: %s", exc)

    def _lifecycle_rules(self) -> list[dict[str, Any]]:
        try:
            answer = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                return []
            raise
        return list(answer.get("Rules", []))

    def put(
        self, key: str, body: bytes, content_type: str, retry_for_s: float | None = None
    ) -> None:
        """Upload one object, retrying with backoff while S3 is unreachable or failing.

        botocore's own retries (3 attempts) cover a blip; these cover an outage of up to
        ``retry_for_s`` (default ``upload_retry_s``: a restart, a failover). Keys derive from
        the task id, so a retry overwrites and never duplicates.
        """
        for attempt in self._retrying(key, retry_for_s):
            with attempt:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
                )

    def get(self, key: str, retry_for_s: float | None = None) -> bytes:
        """Download one object, riding out an outage as ``put`` does; a missing key raises
        at once (ClientError ``NoSuchKey``)."""
        for attempt in self._retrying(key, retry_for_s):
            with attempt:
                body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def _retrying(self, key: str, retry_for_s: float | None) -> Retrying:
        return Retrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential(multiplier=0.25, max=5),
            stop=stop_after_delay(self.upload_retry_s if retry_for_s is None else retry_for_s),
            before_sleep=lambda state: log.warning(
                "S3 call on %s failed (%s); retrying",
                key,
                state.outcome and state.outcome.exception(),
            ),
            reraise=True,
        )

    def delete(self, key: str) -> None:
        """Remove one object (absent is fine); the lifecycle rules catch what this misses."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not delete %s (%s); the bucket's lifecycle rule will", key, exc)

    def presign(self, key: str) -> str:
        """A GET URL for one object, valid for the configured expiry."""
        url: str = self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.expiry_s
        )
        return url

    def check(self) -> None:
        """Raise BackendUnavailable unless the bucket answers."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise BackendUnavailable(f"S3 bucket {self.bucket!r} is unreachable") from exc
