"""Outbound HTTP to URLs that strangers give us, without letting them aim it at our network.

Both the image fetch and webhook delivery go through :class:`GuardedHttp`:

1. Check the URL: ``http``/``https`` only, an allowed port, no credentials, and a host that is
   a name or a canonical IP (``2130706433``, ``0177.0.0.1`` and ``0x7f.1`` are refused, since
   resolvers read them as addresses).
2. Resolve the name once and check every address it gives: loopback, private, link-local
   (cloud metadata), CGNAT, multicast, reserved and unspecified ranges are refused, and so are
   the IPv4-mapped, IPv4-compatible, 6to4 and Teredo forms that carry such an address.
3. Connect to the address that was checked (pinned), keeping the name in the ``Host`` header
   and in TLS SNI, so a second DNS answer cannot swap in another address.
4. Follow at most ``max_redirects`` redirects, each hop checked again from step 1.
5. Enforce a byte cap while streaming and one wall-clock deadline over the whole exchange.
   Per-read timeouts alone would let a server that sends a byte just before each read
   times out stretch an exchange far past it, so at the deadline the socket is shut, which
   ends a read blocked on it at once. The socket comes from httpcore's ``trace`` extension
   at connect time; keep-alive is off, so every request makes (and shows) its connection.
   DNS resolution stays outside the deadline: ``getaddrinfo`` cannot be interrupted.

``allowlist`` (``EASEL_IMAGE_URL_ALLOWLIST``) is the one way to reach a private address: a
host name, ``host:port``, or a CIDR. A matching entry also allows its port.

Why not an existing library: ``advocate`` pins addresses but wraps ``requests`` and is
unmaintained; httpx has no SSRF policy. What httpx does offer, ``sni_hostname`` and a
per-request ``Host``, is all pinning needs, so the policy here stays small and tested.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

from shared.errors import InvalidRequest
from shared.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$", re.I)
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_CANONICAL_V4 = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")
_REDIRECTS = {301, 302, 303, 307, 308}


class BlockedURL(InvalidRequest):
    """A URL that the guard refuses; the message names the reason."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BlockedURL(f"the host {host!r} does not resolve") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def blocked_reason(address: IPAddress) -> str | None:
    """Why an address is not public, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and int(address) >> 32 == 0 and int(address) > 1:
            embedded = ipaddress.IPv4Address(int(address))  # IPv4-compatible ::a.b.c.d
        if embedded is not None:
            inner = blocked_reason(embedded)
            return f"{inner} (embedded in {address})" if inner else None
    for name in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{name}"):
            return f"{name.replace('_', '-')} address {address}"
    if not address.is_global:
        return f"non-public address {address}"  # CGNAT 100.64/10 and other special ranges
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL and the address to connect to."""

    url: httpx.URL
    address: str

    @property
    def pinned_url(self) -> httpx.URL:
        return self.url.copy_with(host=self.address)


class UrlPolicy:
    """Decides whether a URL may be fetched; see the module docstring."""

    def __init__(
        self,
        allowlist: Sequence[str] = (),
        allowed_ports: Sequence[int] = (80, 443),
        resolver: Resolver = system_resolver,
    ) -> None:
        self.allowed_ports = set(allowed_ports)
        self.resolver = resolver
        self.hosts: set[str] = set()
        self.host_ports: set[tuple[str, int]] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in (item.strip().lower() for item in allowlist):
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            host, sep, port = entry.rpartition(":")
            if sep and port.isdigit() and not host.endswith(":"):
                self.host_ports.add((host.strip("[]"), int(port)))
            else:
                self.hosts.add(entry.strip("[]"))

    def parse(self, raw: str) -> tuple[httpx.URL, str, int]:
        """Step 1: the URL, its host and port, or BlockedURL naming what is wrong."""
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError) as exc:
            raise BlockedURL(f"not a valid URL ({exc})") from None
        if url.scheme not in ("http", "https"):
            raise BlockedURL("only http and https URLs are allowed")
        if url.userinfo:
            raise BlockedURL("URLs with credentials are not allowed")
        host = url.host.lower().rstrip(".")
        if not host:
            raise BlockedURL("the URL has no host")
        if _NUMERIC_HOST.match(host) and not _CANONICAL_V4.match(host):
            raise BlockedURL(f"{host!r} is a non-canonical IPv4 spelling")
        port = url.port or (443 if url.scheme == "https" else 80)
        if port not in self.allowed_ports and not self._listed(host, port, _literal(host)):
            raise BlockedURL(f"port {port} is not allowed")
        return url, host, port

    def check(self, raw: str) -> Target:
        """Steps 1 and 2: a URL whose every address is allowed, pinned to the first."""
        url, host, port = self.parse(raw)
        literal = _literal(host)
        addresses = [str(literal)] if literal else self.resolver(host, port)
        if not addresses:
            raise BlockedURL(f"the host {host!r} does not resolve")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            reason = blocked_reason(address)
            if reason and not self._listed(host, port, address):
                raise BlockedURL(f"{host} resolves to a {reason}, which is not allowed")
        return Target(url=url, address=addresses[0])

    def check_literal(self, raw: str) -> None:
        """What can be checked without DNS (for the API at submit time)."""
        _, host, port = self.parse(raw)
        literal = _literal(host)
        local_name = host == "localhost" or host.endswith((".localhost", ".internal", ".local"))
        if literal is not None:
            reason = blocked_reason(literal)
            if reason and not self._listed(host, port, literal):
                raise BlockedURL(f"{host} is a {reason}, which is not allowed")
        elif local_name and not self._listed(host, port, None):
            raise BlockedURL(f"{host} is a local name, which is not allowed")

    def _listed(self, host: str, port: int, address: IPAddress | None) -> bool:
        if host in self.hosts or (host, port) in self.host_ports:
            return True
        return address is not None and any(address in net for net in self.networks)


def policy_from(settings: Settings) -> UrlPolicy:
    """The policy for image and webhook URLs that these settings describe."""
    return UrlPolicy(settings.image_url_allowlist, settings.url_allowed_ports)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedHttp:
    """httpx with the policy applied on every hop; see the module docstring."""

    def __init__(self, policy: UrlPolicy, transport: httpx.BaseTransport | None = None) -> None:
        self.policy = policy
        self.client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),  # see step 5
        )

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def stream(
        self,
        method: str,
        url: str,
        *,
        deadline_s: float,
        max_redirects: int = 3,
        **kwargs: Any,
    ) -> Iterator[tuple[httpx.Response, float]]:
        """The final response after checked redirects, and the monotonic deadline."""
        deadline = time.monotonic() + deadline_s
        headers = kwargs.pop("headers", {})
        current = url
        watchdog = _Watchdog(deadline)
        try:
            for _hop in range(max_redirects + 1):
                target = self.policy.check(current)
                request = self.client.build_request(
                    method,
                    target.pinned_url,
                    headers={"Host": target.url.netloc.decode("ascii"), **headers},
                    extensions={
                        "sni_hostname": target.url.host,
                        "timeout": _timeouts(deadline),
                        "trace": watchdog.trace,
                    },
                    **kwargs,
                )
                response = self.client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        current = urljoin(str(target.url), response.headers["location"])
                        method = "GET" if response.status_code == 303 else method
                        continue
                    yield response, deadline
                    return
                finally:
                    response.close()
        except httpx.TransportError:
            if watchdog.fired:
                raise httpx.ReadTimeout(f"the exchange took longer than {deadline_s:g} s") from None
            raise
        finally:
            watchdog.cancel()
        raise BlockedURL(f"more than {max_redirects} redirects")

    def get_bytes(self, url: str, *, max_bytes: int, deadline_s: float) -> bytes:
        """GET a body of at most ``max_bytes``, all within ``deadline_s`` seconds."""
        with self.stream("GET", url, deadline_s=deadline_s) as (response, deadline):
            if response.status_code != 200:
                raise BlockedURL(f"the URL answered HTTP {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():  # the cap counts decoded bytes
                size += len(chunk)
                if size > max_bytes:
                    raise BlockedURL(f"the download exceeds {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"the exchange took longer than {deadline_s:g} s")
                chunks.append(chunk)
            return b"".join(chunks)


class _Watchdog:
    """Shuts every socket of one exchange at its deadline (step 5 of the module docstring)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._timers: list[threading.Timer] = []

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: arm a timer for each new connection's socket."""
        if event != "connection.connect_tcp.complete" or info.get("return_value") is None:
            return
        sock = info["return_value"].get_extra_info("socket")
        if sock is None:
            return
        remaining = max(0.0, self.deadline - time.monotonic())
        timer = threading.Timer(remaining, self._shut, [sock])
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def _shut(self, sock: socket.socket) -> None:
        self.fired = True
        with suppress(OSError):  # already closed: the exchange ended as the timer fired
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()


def _timeouts(deadline: float) -> dict[str, float]:
    remaining = max(0.001, deadline - time.monotonic())
    return {"connect": remaining, "read": remaining, "write": remaining, "pool": remaining}
