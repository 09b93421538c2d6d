"""What ``celery -A worker.app`` points at; settings come from ``EASEL_*`` variables."""

from worker.celery_app import create_celery

app = create_celery()
