"""Fixture helpers: a throwaway redis-server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    directory: Path, *, port: int | None = None, appendonly: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server in ``directory``; return the process and its URL.

    Args:
        directory: Its working directory (where an append-only file goes).
        port: The port (a free one if ``None``).
        appendonly: Whether to keep an append-only file, so data survives a restart.

    Skips the test (loudly) when no redis-server binary is installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "REDIS TESTS SKIPPED: no redis-server binary on PATH (apt install redis-server)"
        )
    port = free_port() if port is None else port
    process = subprocess.Popen(
        [
            *(
                binary,
                "--save",
                "",
                "--appendonly",
                "yes" if appendonly else "no",
                "--port",
                str(port),
            ),
            *("--bind", "127.0.0.1", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):  # bounded: at most about 10 s
        if _pings(port):
            return process, f"redis://127.0.0.1:{port}/0"
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError("redis-server did not answer PING")


def stop_redis(process: subprocess.Popen[bytes]) -> None:
    """Stop a redis-server cleanly (it flushes its append-only file) and reap it."""
    process.terminate()
    process.wait(timeout=10)


def redis_url_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the URL of a redis-server that lives for the session."""
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_redis(process)
