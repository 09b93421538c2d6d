"""Easel's Python SDK."""
