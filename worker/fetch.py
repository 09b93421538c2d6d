"""Fetching an input image by URL through the SSRF guard (shared/netguard.py).

The worker fetches, not the API: a download can take seconds and must not hold an API
thread, and the worker is where the bytes are needed. The API checks at submit time
what it can without touching the network (scheme, port, literal addresses), so most bad
URLs still get a 400; the rest end the job as FAILED with a one-line reason.
"""

from __future__ import annotations

import httpx

from shared.errors import ImageFetchError
from shared.netguard import BlockedURL, GuardedHttp


def fetch_image(http: GuardedHttp, url: str, max_bytes: int, deadline_s: float) -> bytes:
    """Download an image, or raise ImageFetchError naming the problem."""
    try:
        return http.get_bytes(url, max_bytes=max_bytes, deadline_s=deadline_s)
    except BlockedURL as exc:
        raise ImageFetchError(f"image: {exc}") from None
    except httpx.TimeoutException:
        raise ImageFetchError(f"image: the download took longer than {deadline_s:g} s") from None
    except httpx.HTTPError as exc:
        raise ImageFetchError(f"image: could not fetch the URL ({type(exc).__name__})") from None
