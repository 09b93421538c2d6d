"""Easel's GPU workers: Celery consumers that run diffusers image-to-image pipelines.

Nothing here imports Flask or the API.
"""
