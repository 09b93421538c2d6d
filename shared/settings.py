"""One typed settings object, built from ``EASEL_*`` environment variables when asked for."""

from __future__ import annotations

import base64
import binascii
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


MIN_API_KEY_CHARS = 16
MIN_HASH_SECRET_CHARS = 32
MIN_WEBHOOK_SECRET_BYTES = 24  # the Standard Webhooks spec: 24 to 64 random bytes
# Stand-ins that deploy/, docker-compose.yml and the README ship, and one Easel once defaulted to.
PLACEHOLDERS = {"...", "change-me", "change-me-to-a-long-random-string", "easel-dev-only-change-me"}


def _refuse_weak(variable: str, secret: str, min_chars: int) -> None:
    """ValueError naming ``variable`` if ``secret`` is a shipped placeholder or too short."""
    lowered = secret.strip().lower()
    if lowered in PLACEHOLDERS or any(word in lowered for word in ("change-me", "changeme")):
        raise ValueError(f"{variable} is a placeholder; set it to a random secret")
    if len(secret) < min_chars:
        raise ValueError(f"{variable} must be at least {min_chars} characters")


def _check_whsec(secret: str) -> None:
    """ValueError unless ``secret`` is a Standard Webhooks secret: ``whsec_`` + base64."""
    prefix, _, encoded = secret.partition("_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        key = b""
    if prefix != "whsec" or len(key) < MIN_WEBHOOK_SECRET_BYTES:
        raise ValueError(
            f"EASEL_WEBHOOK_SECRET must be 'whsec_' + base64 of at least "
            f"{MIN_WEBHOOK_SECRET_BYTES} random bytes (`easel dev` makes one)"
        )


class Settings(BaseSettings):
    """Every knob Easel has; see docs/settings.md."""

    # An empty variable means "unset" (compose's ${VAR:-} gives one for every optional knob).
    # An error never echoes the value it refuses: it may be a secret, and it goes to the logs.
    model_config = SettingsConfigDict(
        env_prefix="EASEL_", extra="ignore", env_ignore_empty=True, hide_input_in_errors=True
    )

    # Redis: the Celery broker, the job records and worker liveness all live here.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Past it a request answers 503; 1.5 s keeps "Redis down" under 2 s end to end.
    redis_timeout_s: float = Field(default=1.5, gt=0)
    # Celery's broker; unset: the same Redis. Job records and liveness stay in Redis either
    # way, so RabbitMQ (amqp://) or SQS (sqs://) is a configuration change.
    broker_url: str | None = None
    # Redis Sentinel (shared/redisconn.py), "host:port,host:port": set, every client asks
    # these for the primary of redis_master_name and follows a failover; redis_url then
    # gives only the database number, and its host and password are not used.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_master_name: str = Field(default="easel", min_length=1)
    redis_sentinel_password: SecretStr | None = None  # the Sentinels' own (requirepass)
    redis_password: SecretStr | None = None  # the primary's and replicas', with Sentinel
    # A submit answers only once this many replicas hold the job (Redis WAIT), waiting at
    # most redis_wait_timeout_ms; else a failover could lose a job already accepted. 0: off.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_ms: int = Field(default=500, ge=1)

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _sentinels_are_host_port(cls, value: Any) -> Any:
        """Accept ``host:port,host:port`` or a list; refuse an entry that is not host:port."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for address in value if isinstance(value, list) else []:
            host, _, port = str(address).rpartition(":")
            port_ok = port.isdigit() and 1 <= int(port) <= 65535
            if not host.strip("[]") or (":" in host and host[0] != "[") or not port_ok:
                raise ValueError(
                    "EASEL_REDIS_SENTINELS must be host:port pairs separated by commas "
                    "([v6]:port for IPv6), each port 1 to 65535"
                )
        return value

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
    key_hash_secret: SecretStr | None = None
    default_rate_limit: str = "600/minute"  # Flask-Limiter syntax; per key
    # Failed authentications (401s) one client address may make on keyed routes; past
    # them it gets 429 on every keyed route, even with a valid key, until the window slides.
    auth_failure_limit: str = "20/minute"
    # Proxies in front of the API that append to X-Forwarded-For (the shipped nginx: 1);
    # the client address is the entry that many from the end. 0: the socket's peer.
    trusted_proxy_hops: int = Field(default=1, ge=0)
    default_max_inflight: int = Field(default=64, ge=1)
    # Jobs start in weighted fair order across API keys per GPU class (shared/fairness.py);
    # a key's weight is its share while keys compete. False: one FIFO per class (the
    # baseline `make bench` compares against). Every API and worker must agree.
    fair_share: bool = True
    bootstrap_weight: int = Field(default=1, ge=1, le=1000)  # EASEL_BOOTSTRAP_API_KEY's
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
    # How long `completed` is retried, from its first attempt. The floor is low for tests;
    # under an hour, a receiver's ordinary outage can outlast it.
    webhook_retry_for_s: float = Field(default=3 * 3600, ge=1)
    webhook_backoff_base_s: float = Field(default=1.0, gt=0)  # retry n waits base * 2**n,
    webhook_backoff_cap_s: float = Field(default=600.0, gt=0)  # at most this
    # A host that fails this many deliveries in a row gets none for the cool-down.
    webhook_host_failures: int = Field(default=5, ge=1)
    webhook_host_cooldown_s: float = Field(default=30.0, gt=0)
    # One key's deliveries waiting for a retry; past it `start` drops, `completed` waits longer.
    webhook_max_pending_per_key: int = Field(default=1000, ge=1)
    webhook_progress_interval_s: float = Field(default=1.0, ge=0)
    webhook_queue: str = "easel.webhooks"

    @field_validator("bootstrap_api_key")
    @classmethod
    def _bootstrap_key_is_real(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse a placeholder or a short EASEL_BOOTSTRAP_API_KEY at start."""
        if value is not None:
            _refuse_weak("EASEL_BOOTSTRAP_API_KEY", value.get_secret_value(), MIN_API_KEY_CHARS)
        return value

    @field_validator("key_hash_secret")
    @classmethod
    def _key_hash_secret_is_real(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse a placeholder or a short EASEL_KEY_HASH_SECRET at start."""
        if value is not None:
            _refuse_weak("EASEL_KEY_HASH_SECRET", value.get_secret_value(), MIN_HASH_SECRET_CHARS)
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_is_whsec(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse an EASEL_WEBHOOK_SECRET that is not ``whsec_`` + base64 of 24+ bytes."""
        if value is not None:
            _check_whsec(value.get_secret_value())
        return value

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
