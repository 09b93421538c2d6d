"""The real stack's fixtures (workers, the API, clients) live in tests/conftest.py, shared
with tests/compat/; ``spawn`` stays importable from here."""

from __future__ import annotations

from tests.conftest import spawn

__all__ = ["spawn"]
