"""Request, job and response models: the HTTP contract and the job record.

Field rules follow Qolaba's ``POST /getImageToImage`` page; where its prose and its
Minimum/Maximum disagree, Minimum/Maximum win.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

DATA_URI_RE = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.ASCII)
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1


class InferenceType(StrEnum):
    """The GPU class a job asks for; each has its own Celery queue."""

    A10G = "a10g"
    A100 = "a100"
    H100 = "h100"


class JobStatus(StrEnum):
    """Qolaba's coarse status."""

    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        """Whether a job in this status will never change again."""
        return self is not JobStatus.PENDING


class JobState(StrEnum):
    """The finer state a job moves through; ``status`` is derived from it."""

    QUEUED = "queued"
    RUNNING = "running"
    UPLOADING = "uploading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def status(self) -> JobStatus:
        """The Qolaba status this state reports as."""
        return _STATUS_OF_STATE.get(self, JobStatus.PENDING)


_STATUS_OF_STATE = {
    JobState.SUCCEEDED: JobStatus.SUCCESS,
    JobState.FAILED: JobStatus.FAILED,
    JobState.CANCELED: JobStatus.CANCELED,
}


class OutputFormat(StrEnum):
    """How output images are encoded."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        """The MIME type of this format."""
        return f"image/{self.value}"


class WebhookEvent(StrEnum):
    """When a job's webhook is called (Replicate's ``webhook_events_filter``)."""

    START = "start"
    PROGRESS = "progress"
    COMPLETED = "completed"


class ImageToImageRequest(BaseModel):
    """The body of ``POST /getImageToImage``."""

    model_config = ConfigDict(extra="forbid")

    app_id: str = Field(min_length=1, max_length=128, strict=True)
    image: str = Field(min_length=1, strict=True)
    # Qolaba's own name for image (its load-test client sends it); moved to image before
    # validation, so it is left here only when both were sent.
    file_url: str | None = Field(default=None, exclude=True)
    prompt: str = Field(default="a beautiful painting", max_length=MAX_PROMPT_CHARS, strict=True)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS, strict=True)
    guidance_scale: float = Field(default=7.5, ge=2, le=25, strict=True)
    batch: int = Field(default=1, ge=1, le=4, strict=True)
    strength: float = Field(default=0.7, gt=0, le=1, strict=True)
    height: int = Field(default=1024, ge=512, le=1536, multiple_of=64, strict=True)
    width: int = Field(default=1024, ge=512, le=1536, multiple_of=64, strict=True)
    celery: bool = Field(default=False, strict=True)
    inference_type: InferenceType = InferenceType.A10G
    ref_id: str | None = Field(default=None, max_length=256, strict=True)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, strict=True)
    output_format: OutputFormat = OutputFormat.PNG
    output_quality: int = Field(default=90, ge=1, le=100, strict=True)
    webhook: str | None = Field(default=None, min_length=1, max_length=2048, strict=True)
    webhook_events_filter: list[WebhookEvent] = Field(
        default_factory=lambda: list(WebhookEvent), min_length=1, max_length=3
    )
    # Qolaba's APIInput has these two; this deployment offers neither, and says so rather
    # than ignore a request for them.
    upscale: bool = Field(default=False, strict=True)
    check_copyright_content: bool = Field(default=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _file_url_names_the_image(cls, data: Any) -> Any:
        if isinstance(data, dict) and "file_url" in data and "image" not in data:
            data = dict(data)
            data["image"] = data.pop("file_url")
        return data

    @field_validator("file_url")
    @classmethod
    def _not_both_image_and_file_url(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("image and file_url name the same image; send one of them")
        return value

    @field_validator("upscale")
    @classmethod
    def _no_upscaling(cls, value: bool) -> bool:
        if value:
            raise ValueError("this deployment does not offer upscaling; send false or omit it")
        return value

    @field_validator("check_copyright_content")
    @classmethod
    def _no_copyright_check(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "this deployment does not check for copyrighted content; send false or omit it"
            )
        return value

    @field_validator("image")
    @classmethod
    def _image_is_url_or_data_uri(cls, value: str) -> str:
        if value.startswith(("http://", "https://")) or DATA_URI_RE.match(value):
            return value
        raise ValueError("must be an http(s):// URL or a data:image/...;base64, URI")

    @field_validator("webhook")
    @classmethod
    def _webhook_is_http_url(cls, value: str | None) -> str | None:
        if value is None or value.startswith(("http://", "https://")):
            return value
        raise ValueError("must be an http(s):// URL")

    @field_validator("webhook_events_filter")
    @classmethod
    def _unique_events(cls, value: list[WebhookEvent]) -> list[WebhookEvent]:
        return list(dict.fromkeys(value))

    @property
    def is_data_uri(self) -> bool:
        """Whether the image travels inline rather than by URL."""
        return self.image.startswith("data:")

    def echo(self) -> dict[str, Any]:
        """The normalized parameters, defaults included, as the envelope's ``input``."""
        data = self.model_dump(mode="json")
        if self.is_data_uri:
            head, _, payload = self.image.partition(",")
            if not payload.startswith("<"):  # not already a summary (see with_image_summary)
                data["image"] = f"{head},<{len(payload)} base64 chars>"
        return data

    def with_image_summary(self, mime: str, data: bytes) -> ImageToImageRequest:
        """This request with its inline image replaced by a short summary of its bytes, once
        they have been taken out: the bytes go to S3, and the summary's digest still tells
        two images apart (an Idempotency-Key fingerprint includes it)."""
        digest = hashlib.sha256(data).hexdigest()
        summary = f"data:{mime};base64,<{len(data)} bytes, sha256 {digest}>"
        return self.model_copy(update={"image": summary})


class GenerationParams(BaseModel):
    """What a worker needs to run one job; carried in the Celery message and the record."""

    app_id: str
    prompt: str
    negative_prompt: str | None = None
    guidance_scale: float
    batch: int
    strength: float
    height: int
    width: int
    seed: int | None = None
    output_format: OutputFormat = OutputFormat.PNG
    output_quality: int = 90
    image_url: str | None = None  # None: the image bytes sit in Redis beside the job

    @classmethod
    def from_request(cls, request: ImageToImageRequest) -> GenerationParams:
        """Take the generation fields of a validated request."""
        fields = request.model_dump(include=set(cls.model_fields) - {"image_url"})
        return cls(**fields, image_url=None if request.is_data_uri else request.image)


class TimeRequired(BaseModel):
    """Seconds spent in each phase of a job, and Qolaba's two-number summary of them."""

    queue: float | None = None
    load: float | None = None
    inference: float | None = None
    safety: float | None = None  # the safety checker, over the whole batch in one call
    upload: float | None = None
    total: float | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def startup_time(self) -> float | None:
        """Qolaba's cold start: loading the model (0 when it was warm)."""
        return None if self.total is None else (self.load or 0.0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def runtime(self) -> float | None:
        """Qolaba's rest: everything from submit to the end but the model load."""
        return None if self.total is None else round(self.total - (self.load or 0.0), 4)


class Output(BaseModel):
    """A finished job's images, and small JPEG previews of them.

    ``result`` is the one list of image URLs, named as Qolaba names it; ``images`` is the
    same list under Easel's earlier name, derived from it, for clients written against
    that. ``Has_NSFW_Content`` holds the safety checker's flag for each image, in order.
    """

    result: list[str]
    low_res_urls: list[str] = Field(default_factory=list)
    Has_NSFW_Content: list[bool] = Field(default_factory=list)  # Qolaba's name, as it spells it
    seeds: list[int]
    width: int
    height: int

    @model_validator(mode="before")
    @classmethod
    def _result_from_images(cls, data: Any) -> Any:
        """Records written before ``result`` existed stored the list as ``images``."""
        if isinstance(data, dict) and "result" not in data and "images" in data:
            return {**data, "result": data["images"]}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def images(self) -> list[str]:
        """The image URLs under Easel's earlier name: the same list as ``result``."""
        return self.result


class Progress(BaseModel):
    """How far the denoising loop of a running job has got."""

    step: int
    total: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def percent(self) -> float:
        """Share of steps done, 0 to 100."""
        return round(100 * self.step / self.total, 1) if self.total else 0.0


class JobRecord(BaseModel):
    """The API's own record of a job, kept in Redis; Celery's result backend is not used."""

    task_id: str
    owner: str
    state: JobState = JobState.QUEUED
    app_id: str
    inference_type: InferenceType
    queue: str
    params: GenerationParams
    input: dict[str, Any]
    ref_id: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    image_keys: list[str] = Field(default_factory=list)
    preview_keys: list[str] = Field(default_factory=list)
    progress: Progress | None = None
    output: Output | None = None
    error: str | None = None
    error_data: Any = None
    time_required: TimeRequired = Field(default_factory=TimeRequired)
    worker: str | None = None
    worker_gpu: InferenceType | None = None
    attempts: int = 0
    call_images: int | None = None  # images in the pipeline call that ran it, partners' too
    webhook: str | None = None
    webhook_events: list[WebhookEvent] = Field(default_factory=list)

    @property
    def status(self) -> JobStatus:
        """Qolaba's status for this record."""
        return self.state.status


class Envelope(BaseModel):
    """The one JSON shape every answer takes."""

    task_id: str | None = None
    app_id: str | None = None
    status: JobStatus | None = None
    state: JobState | None = None
    input: dict[str, Any] | None = None
    output: Output | None = None
    error: str | None = None
    error_data: Any = None
    time_required: TimeRequired | None = None
    ref_id: str | None = None
    progress: Progress | None = None
    queue_position: int | None = None
    eta_seconds: float | None = None
    warnings: list[str] | None = None  # what the server ignored (EASEL_UNKNOWN_FIELDS=ignore)

    @classmethod
    def for_job(
        cls,
        record: JobRecord,
        urls: tuple[list[str], list[str]] | None = None,
        queue_position: int | None = None,
        eta_seconds: float | None = None,
    ) -> Envelope:
        """Describe a job, with freshly signed (image, preview) URLs when given."""
        output = record.output
        if output is not None and urls is not None:
            output = output.model_copy(update={"result": urls[0], "low_res_urls": urls[1]})
        return cls(
            task_id=record.task_id,
            app_id=record.app_id,
            status=record.status,
            state=record.state,
            input=record.input,
            output=output,
            error=record.error,
            error_data=record.error_data,
            time_required=record.time_required,
            ref_id=record.ref_id,
            progress=record.progress,
            queue_position=queue_position,
            eta_seconds=eta_seconds,
        )

    @classmethod
    def for_error(cls, message: str, data: Any = None, task_id: str | None = None) -> Envelope:
        """Describe a request that failed before or without a job."""
        return cls(task_id=task_id, status=JobStatus.FAILED, error=message, error_data=data)


class AppInfo(BaseModel):
    """One entry of ``GET /list_of_Apps``."""

    app_id: str
    family: str
    default_steps: int
    inference_types: list[InferenceType]
    description: str = ""


class AppsEnvelope(BaseModel):
    """``GET /list_of_Apps``: Qolaba's envelope, with the apps in ``output``."""

    status: JobStatus = JobStatus.SUCCESS
    output: list[AppInfo]
    error: str | None = None
    error_data: Any = None
