"""The worker's image fetch: the guard's refusals become one-line ImageFetchErrors.

The guard itself is tested in tests/shared/test_netguard.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.errors import ImageFetchError
from shared.netguard import GuardedHttp, UrlPolicy
from worker.fetch import fetch_image

BODY = b"\x89PNG\r\n\x1a\n" + bytes(5000)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/image.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path.startswith("/redirect/"):
            hops = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{hops - 1}" if hops > 1 else "/image.png")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def http() -> Iterator[GuardedHttp]:
    guarded = GuardedHttp(UrlPolicy(["127.0.0.1"]))
    yield guarded
    guarded.close()


def test_fetches_the_body(server: str, http: GuardedHttp) -> None:
    assert fetch_image(http, f"{server}/image.png", 1_000_000, 5) == BODY


def test_byte_cap_is_named(server: str, http: GuardedHttp) -> None:
    with pytest.raises(ImageFetchError, match=r"^image: the download exceeds 1000 bytes$"):
        fetch_image(http, f"{server}/image.png", 1000, 5)


def test_http_error_status_is_named(server: str, http: GuardedHttp) -> None:
    with pytest.raises(ImageFetchError, match="answered HTTP 404"):
        fetch_image(http, f"{server}/missing", 1_000_000, 5)


def test_too_many_redirects_is_named(server: str, http: GuardedHttp) -> None:
    assert fetch_image(http, f"{server}/redirect/3", 1_000_000, 5) == BODY
    with pytest.raises(ImageFetchError, match="more than 3 redirects"):
        fetch_image(http, f"{server}/redirect/4", 1_000_000, 5)


def test_private_address_without_allowlist_is_named(server: str) -> None:
    http = GuardedHttp(UrlPolicy(allowed_ports=[int(server.rsplit(":", 1)[1])]))
    with pytest.raises(ImageFetchError, match=r"^image: 127\.0\.0\.1 resolves to a loopback"):
        fetch_image(http, f"{server}/image.png", 1_000_000, 5)
    http.close()


def test_unreachable_host_is_named(http: GuardedHttp) -> None:
    with pytest.raises(ImageFetchError, match="could not fetch the URL \\(ConnectError\\)"):
        fetch_image(http, "http://127.0.0.1:9/a.png", 1_000_000, 5)
