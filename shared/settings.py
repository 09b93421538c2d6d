"""One typed settings object, built from ``EASEL_*`` environment variables when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.models import InferenceType

DEFAULT_QUEUES: dict[InferenceType, str] = {
    InferenceType.A10G: "easel.a10g",
    InferenceType.A100: "easel.a100",
    InferenceType.H100: "easel.h100",
}


class Settings(BaseSettings):
    """Every knob Easel has; see the README's settings table."""

    # An empty variable means "unset" (compose's ${VAR:-} gives one for every optional knob).
    model_config = SettingsConfigDict(env_prefix="EASEL_", extra="ignore", env_ignore_empty=True)

    # Redis: the Celery broker, the job records and worker liveness all live here.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Past it a request answers 503; 1.5 s keeps "Redis down" under 2 s end to end.
    redis_timeout_s: float = Field(default=1.5, gt=0)
    # Celery's broker; unset: the same Redis. Job records and liveness stay in Redis either
    # way, so RabbitMQ (amqp://) or SQS (sqs://) is a configuration change.
    broker_url: str | None = None

    # S3 (any S3-compatible server: AWS, SeaweedFS, MinIO).
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_bucket: str = "easel"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = "outputs"
    presign_expiry_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    s3_upload_retry_s: float = Field(default=120.0, ge=0)  # outage an upload rides out

    # API keys (shared/keys.py): only HMAC-SHA256(key_hash_secret, key) is stored.
    bootstrap_api_key: SecretStr | None = None
    # No default: a secret in the source would be everyone's. Unset, only the bootstrap key
    # works and `easel keys create` refuses; `easel dev` keeps a generated one in .easel/.
    key_hash_secret: SecretStr | None = Field(default=None, min_length=16)
    default_rate_limit: str = "600/minute"  # Flask-Limiter syntax; per key
    default_max_inflight: int = Field(default=64, ge=1)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    max_attempts: int = Field(default=3, ge=1)  # a job that loses its worker this often fails
    # Celery time limits for every job (the registry may set its own per model): past the
    # soft one the job ends FAILED; past the hard one its worker process is killed.
    job_soft_time_limit_s: int = Field(default=900, ge=1)
    job_hard_time_limit_s: int = Field(default=960, ge=1)
    # Refuse (503) a job no live worker would take. Off where an autoscaler starts workers
    # from zero on queue length (KEDA): there, the queued job is what wakes them.
    require_live_worker: bool = True
    sync_wait_s: float = Field(default=60.0, ge=0)
    # "forbid": a request field Easel does not know is a 400 (it catches typos). "ignore":
    # it is dropped and named in the answer's warnings, for clients migrating from Qolaba
    # that send extras.
    unknown_fields: Literal["forbid", "ignore"] = "forbid"
    # Waits (sync submits and ?wait= long polls) one key may hold at once, over every API
    # instance: past it, 429. A wait costs a socket and a greenlet, so this is defence in
    # depth, not a capacity limit.
    max_waits_per_key: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Bodies over large_body_bytes are read at most max_large_bodies at a time per API
    # process; one more waits up to large_body_wait_s for its turn, then gets a 503.
    large_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_large_bodies: int = Field(default=4, ge=1)
    large_body_wait_s: float = Field(default=10.0, ge=0)
    # Inline (data URI or multipart) images wait in S3 under inputs/<task_id>; one key's
    # unfinished ones may hold at most this many bytes there.
    max_input_bytes_per_key: int = Field(default=256 * 1024 * 1024, gt=0)
    job_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)

    # Queues: one Celery queue per GPU class.
    queues: dict[InferenceType, str] = Field(default_factory=lambda: dict(DEFAULT_QUEUES))

    # Workers.
    worker_gpu: InferenceType = InferenceType.A10G
    worker_heartbeat_s: float = Field(default=2.0, gt=0)
    worker_stale_after_s: float = Field(default=10.0, gt=0)
    model_registry: Path | None = None
    model_dir: Path = Path(".easel/models")
    device: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1)
    warm_models: list[str] = Field(default_factory=list)
    image_max_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    image_fetch_timeout_s: float = Field(default=15.0, gt=0)
    vram_budget_gb: float | None = Field(default=None, gt=0)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # worker /metrics
    log_json: bool = True  # one JSON object per log line, with task_id
    # What a flagged image becomes: "flag" (returned, flagged), "blur" (stored heavily
    # blurred, preview too) or "block" (replaced by a black image). The flag is always
    # reported in output.Has_NSFW_Content.
    nsfw_policy: Literal["flag", "blur", "block"] = "flag"
    # Replaces every concept threshold of the safety checker (None: the checker's own).
    # -1 flags every image and 2 none: what the tests use to make the tiny checker decide.
    nsfw_threshold: float | None = Field(default=None, ge=-1, le=2)

    # Outbound HTTP (image fetch and webhooks): see shared/netguard.py.
    # Hosts, host:port or CIDRs that may be private; comma-separated or a JSON list.
    image_url_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    url_allowed_ports: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [80, 443])

    # Webhooks (Standard Webhooks). The secret is "whsec_" + base64 (`easel dev` makes one);
    # while it is unset, requests that ask for a webhook are refused with a 400.
    webhook_secret: SecretStr | None = None
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_retry_for_s: float = Field(default=3 * 3600, ge=3600)
    webhook_progress_interval_s: float = Field(default=1.0, ge=0)
    webhook_queue: str = "easel.webhooks"

    @field_validator("queues")
    @classmethod
    def _every_class_has_a_queue(cls, value: dict[InferenceType, str]) -> dict[InferenceType, str]:
        """Classes left out of EASEL_QUEUES keep their default queue."""
        return {**DEFAULT_QUEUES, **value}

    @field_validator("image_url_allowlist", "url_allowed_ports", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """Accept ``a,b`` as well as a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def queue_for(self, inference_type: InferenceType) -> str:
        """The Celery queue that serves one GPU class."""
        return self.queues[inference_type]
