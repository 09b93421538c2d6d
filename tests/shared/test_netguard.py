"""The SSRF guard: every refused spelling, DNS pinning, redirects, byte caps and deadlines.

A real HTTP server on loopback stands in for the internet; loopback is reachable only
through the allowlist, exactly as in production.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from shared.netguard import BlockedURL, GuardedHttp, UrlPolicy, blocked_reason
from tests.conftest import serve

BODY = b"\x89PNG\r\n\x1a\n" + bytes(5000)

# Every spelling of a non-public destination the guard must refuse, with no allowlist.
REFUSED = [
    "http://127.0.0.1/a.png",
    "http://127.1/a.png",
    "http://2130706433/a.png",  # decimal
    "http://0177.0.0.1/a.png",  # octal
    "http://0x7f.0.0.1/a.png",  # hex
    "http://0x7f000001/a.png",
    "http://017700000001/a.png",
    "http://10.0.0.8/a.png",
    "http://172.16.3.4/a.png",
    "http://192.168.1.1/a.png",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1/a.png",  # CGNAT
    "http://224.0.0.1/a.png",  # multicast
    "http://0.0.0.0/a.png",
    "http://240.0.0.1/a.png",  # reserved
    "http://255.255.255.255/a.png",
    "http://[::1]/a.png",
    "http://[::]/a.png",
    "http://[fc00::1]/a.png",  # ULA
    "http://[fd12:3456::1]/a.png",
    "http://[fe80::1]/a.png",  # link-local
    "http://[ff02::1]/a.png",  # multicast
    "http://[::ffff:127.0.0.1]/a.png",  # IPv4-mapped
    "http://[::ffff:169.254.169.254]/a.png",
    "http://[::ffff:a9fe:a9fe]/a.png",
    "http://[::127.0.0.1]/a.png",  # IPv4-compatible
    "http://[::10.0.0.1]/a.png",
    "http://[2002:7f00:1::]/a.png",  # 6to4 around 127.0.0.1
    "http://[2002:a9fe:a9fe::1]/a.png",  # 6to4 around the metadata address
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.png",  # Teredo, client 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:5601:5601]/a.png",  # Teredo, client 169.254.169.254
]


def test_a_teredo_address_is_judged_by_the_client_address_it_carries() -> None:
    policy = UrlPolicy(resolver=lambda host, port: pytest.fail(f"resolved {host}"))
    with pytest.raises(BlockedURL, match=r"loopback address 127\.0\.0\.1 \(embedded in 2001:"):
        policy.check("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.png")


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_destinations_are_refused(url: str) -> None:
    policy = UrlPolicy(resolver=lambda host, port: pytest.fail(f"resolved {host}"))
    with pytest.raises(BlockedURL):
        policy.check(url)
    with pytest.raises(BlockedURL):
        policy.check_literal(url)  # the API refuses them at submit time, without DNS


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://example.com/", "data:,x"],
)
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(BlockedURL, match="only http and https"):
        UrlPolicy().parse(url)


@pytest.mark.parametrize("url", ["http://example.com:8080/a.png", "https://example.com:22/"])
def test_only_ports_80_and_443_by_default(url: str) -> None:
    with pytest.raises(BlockedURL, match="port"):
        UrlPolicy().parse(url)
    UrlPolicy(allowed_ports=[8080, 22]).parse(url)


def test_credentials_in_urls_are_refused() -> None:
    with pytest.raises(BlockedURL, match="credentials"):
        UrlPolicy().parse("http://user:pw@example.com/a.png")


def test_public_addresses_pass() -> None:
    for text in ("93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert blocked_reason(ipaddress.ip_address(text)) is None


def test_a_name_is_refused_if_any_of_its_addresses_is_private() -> None:
    """DNS that answers a public and a private address must not get through either way."""
    for answer in (["93.184.216.34", "10.0.0.5"], ["10.0.0.5", "93.184.216.34"]):
        policy = UrlPolicy(resolver=lambda host, port, answer=answer: answer)
        with pytest.raises(BlockedURL, match=r"private address 10\.0\.0\.5"):
            policy.check("http://rebind.example/a.png")


def test_the_name_is_resolved_once_and_the_checked_address_is_used() -> None:
    """Rebinding: a second lookup could return 127.0.0.1; there is no second lookup."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    policy = UrlPolicy(resolver=lambda host, port: next(answers))
    target = policy.check("http://rebind.example/a.png")
    assert target.address == "93.184.216.34"
    assert target.pinned_url.host == "93.184.216.34"
    assert next(answers) == ["127.0.0.1"]  # the second answer was never asked for


def test_local_names_are_refused_at_submit_time() -> None:
    for url in ("http://localhost/a.png", "http://metadata.google.internal/"):
        with pytest.raises(BlockedURL, match="local name"):
            UrlPolicy().check_literal(url)
    UrlPolicy(["localhost"]).check_literal("http://localhost/a.png")


def test_allowlist_entries_hosts_host_ports_and_cidrs() -> None:
    resolver = lambda host, port: ["10.1.2.3"]  # noqa: E731
    assert UrlPolicy(["images.internal"], resolver=resolver).check("http://images.internal/")
    assert UrlPolicy(["10.0.0.0/8"], resolver=resolver).check("http://images.internal/")
    by_port = UrlPolicy(["images.internal:9000"], resolver=resolver)
    assert by_port.check("http://images.internal:9000/")
    with pytest.raises(BlockedURL):
        by_port.check("http://images.internal/")  # port 80 is not the listed one
    with pytest.raises(BlockedURL):
        UrlPolicy(["192.168.0.0/16"], resolver=resolver).check("http://images.internal/")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path
        if path == "/image.png":
            self._send(200, BODY)
        elif path == "/host":
            self._send(200, (self.headers["Host"] or "").encode())
        elif path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])
            self._redirect(f"/redirect/{hops - 1}" if hops > 1 else "/image.png")
        elif path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif path == "/to-decimal-loopback":
            self._redirect(f"http://2130706433:{self.server.server_address[1]}/image.png")
        elif path == "/lying-length":
            self.send_response(200)
            self.send_header("Content-Length", "100")  # claims little, sends a lot
            self.end_headers()
            self.wfile.write(bytes(50_000))
        elif path == "/no-length":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(bytes(50_000))
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/stall":  # each byte just inside a 2.5 s read timeout, forever-ish
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self._trickle(b"xxxx")
        elif path == "/stall-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self._trickle(b"X-Slow: aaaa")
        else:
            self._send(404, b"")

    def _trickle(self, data: bytes) -> None:
        for byte in data:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(2.5)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(Handler) as url:
        yield url


def test_loopback_needs_the_allowlist(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    http = GuardedHttp(UrlPolicy(allowed_ports=[port]))
    with pytest.raises(BlockedURL, match="loopback"):
        http.get_bytes(f"{server}/image.png", max_bytes=10**6, deadline_s=5)
    http.close()


def test_fetches_through_the_allowlist(server: str, loopback_http: GuardedHttp) -> None:
    assert loopback_http.get_bytes(f"{server}/image.png", max_bytes=10**6, deadline_s=5) == BODY


def test_pinned_connection_keeps_the_name_in_the_host_header(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    policy = UrlPolicy(["images.test"], resolver=lambda host, p: ["127.0.0.1"])
    http = GuardedHttp(policy)
    body = http.get_bytes(f"http://images.test:{port}/host", max_bytes=1000, deadline_s=5)
    http.close()
    assert body == f"images.test:{port}".encode()


def test_up_to_three_redirects_each_checked(server: str, loopback_http: GuardedHttp) -> None:
    assert loopback_http.get_bytes(f"{server}/redirect/3", max_bytes=10**6, deadline_s=5) == BODY
    with pytest.raises(BlockedURL, match="more than 3 redirects"):
        loopback_http.get_bytes(f"{server}/redirect/4", max_bytes=10**6, deadline_s=5)


def test_a_redirect_to_metadata_is_refused(server: str, loopback_http: GuardedHttp) -> None:
    with pytest.raises(BlockedURL, match=r"169\.254\.169\.254"):
        loopback_http.get_bytes(f"{server}/to-metadata", max_bytes=10**6, deadline_s=5)
    with pytest.raises(BlockedURL, match="non-canonical"):
        loopback_http.get_bytes(f"{server}/to-decimal-loopback", max_bytes=10**6, deadline_s=5)


def test_byte_cap_holds_without_content_length(server: str, loopback_http: GuardedHttp) -> None:
    with pytest.raises(BlockedURL, match="exceeds 10000 bytes"):
        loopback_http.get_bytes(f"{server}/no-length", max_bytes=10_000, deadline_s=5)


def test_a_lying_content_length_never_yields_more_than_it_claims(
    server: str, loopback_http: GuardedHttp
) -> None:
    body = loopback_http.get_bytes(f"{server}/lying-length", max_bytes=10_000, deadline_s=5)
    assert len(body) == 100


def test_a_slow_drip_hits_the_total_deadline(server: str, loopback_http: GuardedHttp) -> None:
    """Each byte arrives well within a read timeout; only a total deadline stops this."""
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException, match="longer than 1 s"):
        loopback_http.get_bytes(f"{server}/drip", max_bytes=10**6, deadline_s=1)
    assert time.monotonic() - started < 3  # stopped by the deadline, not by the body's end


@pytest.mark.parametrize("path", ["/stall", "/stall-headers"])
def test_the_deadline_cuts_a_read_that_would_outlast_it(
    server: str, loopback_http: GuardedHttp, path: str
) -> None:
    """A read blocked past the deadline is cut there, in the body or still in the headers,
    not when the next byte (2.5 s apart) would have let the deadline be checked."""
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException, match="longer than 3 s"):
        loopback_http.get_bytes(f"{server}{path}", max_bytes=10**6, deadline_s=3)
    assert time.monotonic() - started < 4.5  # the old per-read check ended at 5 s
