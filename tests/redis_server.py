"""Fixture helpers: a throwaway redis-server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The prefix of a test URL that names a node of a Redis Cluster (the tests' own mark).
CLUSTER = "cluster+"


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


def _cluster_ok(port: int) -> bool:
    """Whether the node sees the cluster healthy and, if a replica, is in sync."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"CLUSTER INFO\r\n")
            if b"cluster_state:ok" not in sock.recv(4096):
                return False
            sock.sendall(b"INFO replication\r\n")
            info = sock.recv(4096)
            return b"role:master" in info or b"master_link_status:up" in info
    except OSError:
        return False


def _cluster_port() -> int:
    """A free port under 55536 whose cluster bus port (+10000) is free too."""
    for _ in range(1000):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """A real Redis Cluster on loopback: three masters, three replicas.

    Attributes:
        ports: The six nodes' ports.
        processes: The six redis-server processes, by port.
        url: The URL of one master (a cluster client finds the others from it).
    """

    def __init__(self, directory: Path) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            pytest.skip(
                "REDIS CLUSTER TESTS SKIPPED: no redis-server or redis-cli on PATH "
                "(apt install redis-server redis-tools)"
            )
        self.ports: list[int] = []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._server = server
        self._directory = directory
        try:
            for _ in range(6):
                self.ports.append(self._start_new())
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
            self.wait_ok()
        except BaseException:
            self.stop()  # no node left running behind a failed set-up
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def _start_new(self) -> int:
        """Start a new node; on another port pair if it could not bind the first one.

        A port found free a moment ago may be taken by another socket before the node
        binds it (the ports are in the ephemeral range): the node then exits at once.
        """
        for _ in range(5):
            port = _cluster_port()
            if port in self.processes:
                continue
            try:
                self.start(port)
            except RuntimeError:
                process = self.processes.pop(port)
                if process.poll() is None:  # running but silent: not a port problem
                    process.kill()
                    process.wait(timeout=10)
                    raise
                continue
            return port
        raise RuntimeError("no cluster node would start on a free port pair")

    def start(self, port: int) -> None:
        """Start (or restart, keeping its cluster config) the node on ``port``."""
        directory = self._directory / str(port)
        directory.mkdir(exist_ok=True)
        process = subprocess.Popen(
            [
                *(self._server, "--port", str(port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no"),
                # Replicas sync at once (by default a master waits 5 s for more of them).
                *("--repl-diskless-sync-delay", "0"),
                *("--dir", str(directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes[port] = process
        for _ in range(200):  # bounded: at most about 10 s
            if _pings(port):
                return
            if process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"cluster node {port} did not answer PING")

    def wait_ok(self, ports: list[int] | None = None) -> None:
        """Wait (at most about 30 s) until the nodes on ``ports`` see the cluster healthy."""
        for _ in range(600):
            if all(_cluster_ok(port) for port in ports or self.ports):
                return
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not become healthy")

    def stop(self) -> None:
        """Kill every node and reap it."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Yield a six-node Redis Cluster that lives as long as the fixture."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
