"""The API built from its factory against the session's real Redis and S3.

Queues get names no worker consumes, so valid submissions stop at 503 before any
job is queued; the integration suite covers the rest of the path.
"""

from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared.settings import Settings
from tests.conftest import settings_from

UNSERVED_QUEUES = json.dumps(
    {"a10g": "apitest.a10g", "a100": "apitest.a100", "h100": "apitest.h100"}
)


@pytest.fixture
def settings(stack_env: dict[str, str]) -> Settings:
    return settings_from(stack_env, queues=UNSERVED_QUEUES, max_body_bytes="200000")


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
