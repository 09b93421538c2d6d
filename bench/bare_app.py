"""Section 1's RSS baseline: a bare Flask app with one trivial route, nothing of Easel's.

``python -m gunicorn ... "bench.bare_app:create_app()"``, started as ``easel api`` starts
``api:create_app()`` (bench/api_submit.py), so an API worker's RSS stands next to what
gunicorn and Flask alone cost.
"""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    """A Flask app whose only route returns a constant."""
    app = Flask(__name__)

    @app.get("/")
    def index() -> dict[str, str]:
        return {"status": "ok"}

    return app
