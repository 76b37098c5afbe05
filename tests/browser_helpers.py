"""Helpers of the browser tests: a TCP proxy that cuts a connection mid-stream."""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttingProxy:
    """Forward loopback TCP to ``upstream_port``; cut the first event stream short.

    The response to the first request whose bytes hold ``marker`` is cut (both sockets
    closed) after ``cut_after`` bytes, as a lost network connection would; every other
    connection is forwarded whole. ``streams`` counts the requests that held the marker.
    """

    def __init__(self, upstream_port: int, *, marker: bytes, cut_after: int) -> None:
        self._upstream = upstream_port
        self._marker = marker
        self._cut_after = cut_after
        self._cut_done = False
        self._lock = threading.Lock()
        self.streams = 0
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            with self._lock:
                self._sockets += [client, upstream]
            state = {"cut_at": -1, "reset": 0}
            threading.Thread(
                target=self._pump_requests, args=(client, upstream, state), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_responses, args=(upstream, client, state), daemon=True
            ).start()

    def _pump_requests(self, src: socket.socket, dst: socket.socket, state: dict[str, int]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self._marker in data:
                    with self._lock:
                        self.streams += 1
                        if not self._cut_done:
                            self._cut_done = True
                            state["cut_at"] = self._cut_after
                            state["reset"] = 1  # count from this request's answer
                dst.sendall(data)
        _close(src, dst)

    def _pump_responses(
        self, src: socket.socket, dst: socket.socket, state: dict[str, int]
    ) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if state["reset"]:
                    state["reset"], sent = 0, 0
                limit = state["cut_at"]
                if limit >= 0 and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    with self._lock:
                        self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        _close(src, dst)

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        _close(self._listener)  # shutdown() wakes the thread blocked in accept()
        with self._lock:
            for sock in self._sockets:
                _close(sock)
        self._thread.join(5)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
