"""One typed settings object, built from ``EASEL_*`` environment variables when asked for."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.models import InferenceType

DEFAULT_QUEUES: dict[InferenceType, str] = {
    InferenceType.A10G: "easel.a10g",
    InferenceType.A100: "easel.a100",
    InferenceType.H100: "easel.h100",
}


class Settings(BaseSettings):
    """Every knob Easel has; see the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="EASEL_", extra="ignore")

    # Redis: the Celery broker, the job records and worker liveness all live here.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = Field(default=2.0, gt=0)

    # S3 (any S3-compatible server: AWS, SeaweedFS, MinIO).
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_bucket: str = "easel"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = "outputs"
    presign_expiry_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    # API.
    bootstrap_api_key: SecretStr | None = None
    sync_wait_s: float = Field(default=60.0, ge=0)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
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

    def queue_for(self, inference_type: InferenceType) -> str:
        """The Celery queue that serves one GPU class."""
        return self.queues[inference_type]
