"""Fetching input images over HTTP from a real local server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.errors import ImageFetchError
from worker.images import fetch_image

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


def test_fetches_the_body(server: str) -> None:
    assert fetch_image(f"{server}/image.png", 1_000_000, 5) == BODY


def test_byte_cap_is_enforced_while_streaming(server: str) -> None:
    with pytest.raises(ImageFetchError, match="exceeds 1000 bytes"):
        fetch_image(f"{server}/image.png", 1000, 5)


def test_http_error_status_is_named(server: str) -> None:
    with pytest.raises(ImageFetchError, match="answered HTTP 404"):
        fetch_image(f"{server}/missing", 1_000_000, 5)


def test_up_to_three_redirects_are_followed(server: str) -> None:
    assert fetch_image(f"{server}/redirect/3", 1_000_000, 5) == BODY
    with pytest.raises(ImageFetchError, match="TooManyRedirects"):
        fetch_image(f"{server}/redirect/4", 1_000_000, 5)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(ImageFetchError, match="only http"):
        fetch_image(url, 1000, 5)
