"""The contract's models: states map to Qolaba's statuses; echoes stay small."""

from __future__ import annotations

import pytest

from shared.models import (
    Envelope,
    GenerationParams,
    ImageToImageRequest,
    JobState,
    JobStatus,
)


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (JobState.QUEUED, JobStatus.PENDING),
        (JobState.RUNNING, JobStatus.PENDING),
        (JobState.UPLOADING, JobStatus.PENDING),
        (JobState.SUCCEEDED, JobStatus.SUCCESS),
        (JobState.FAILED, JobStatus.FAILED),
    ],
)
def test_states_report_qolaba_statuses(state: JobState, status: JobStatus) -> None:
    assert state.status is status
    assert status.is_terminal is (status is not JobStatus.PENDING)


def test_data_uri_is_summarized_in_the_echo() -> None:
    request = ImageToImageRequest(app_id="tiny-sd", image="data:image/png;base64," + "A" * 4000)
    assert request.echo()["image"] == "data:image/png;base64,<4000 base64 chars>"
    assert GenerationParams.from_request(request).image_url is None


def test_url_travels_to_the_worker() -> None:
    request = ImageToImageRequest(app_id="tiny-sd", image="https://example.com/a.png", seed=3)
    params = GenerationParams.from_request(request)
    assert (params.image_url, params.seed, params.batch) == ("https://example.com/a.png", 3, 1)


def test_error_envelope_keeps_every_field() -> None:
    body = Envelope.for_error("x: broken").model_dump()
    assert set(body) >= {
        "task_id",
        "status",
        "input",
        "output",
        "error",
        "error_data",
        "time_required",
        "ref_id",
    }
    assert body["status"] is JobStatus.FAILED
