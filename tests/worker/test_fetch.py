"""The worker's image fetch: the guard's refusals become one-line ImageFetchErrors.

The guard itself is tested in tests/shared/test_netguard.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.errors import ImageFetchError
from shared.netguard import GuardedHttp, UrlPolicy
from tests.conftest import serve
from tests.shared.test_netguard import BODY, Handler  # the same loopback server
from worker.fetch import fetch_image


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(Handler) as url:
        yield url


def test_fetches_the_body(server: str, loopback_http: GuardedHttp) -> None:
    assert fetch_image(loopback_http, f"{server}/image.png", 1_000_000, 5) == BODY


def test_byte_cap_is_named(server: str, loopback_http: GuardedHttp) -> None:
    with pytest.raises(ImageFetchError, match=r"^image: the download exceeds 1000 bytes$"):
        fetch_image(loopback_http, f"{server}/image.png", 1000, 5)


def test_http_error_status_is_named(server: str, loopback_http: GuardedHttp) -> None:
    with pytest.raises(ImageFetchError, match="answered HTTP 404"):
        fetch_image(loopback_http, f"{server}/missing", 1_000_000, 5)


def test_too_many_redirects_is_named(server: str, loopback_http: GuardedHttp) -> None:
    assert fetch_image(loopback_http, f"{server}/redirect/3", 1_000_000, 5) == BODY
    with pytest.raises(ImageFetchError, match="more than 3 redirects"):
        fetch_image(loopback_http, f"{server}/redirect/4", 1_000_000, 5)


def test_private_address_without_allowlist_is_named(server: str) -> None:
    http = GuardedHttp(UrlPolicy(allowed_ports=[int(server.rsplit(":", 1)[1])]))
    with pytest.raises(ImageFetchError, match=r"^image: 127\.0\.0\.1 resolves to a loopback"):
        fetch_image(http, f"{server}/image.png", 1_000_000, 5)
    http.close()


def test_unreachable_host_is_named(loopback_http: GuardedHttp) -> None:
    with pytest.raises(ImageFetchError, match="could not fetch the URL \\(ConnectError\\)"):
        fetch_image(loopback_http, "http://127.0.0.1:9/a.png", 1_000_000, 5)
