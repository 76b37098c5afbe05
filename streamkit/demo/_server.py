"""Running the demo app under uvicorn: in the foreground, or in a thread for checks and tests.

Rules of this module:

* uvicorn is imported only when a server is made, so ``import streamkit.demo`` works
  without it (``--terminal`` needs no server).
* The listening socket is bound here, before uvicorn starts: the port is known at once
  (a free one when the one asked for is taken), and no other process can take it between
  a check and the bind.
* Stopping the server first ends the StreamApp's open event streams
  (:meth:`~streamkit.asgi.StreamApp.shutdown`): uvicorn waits for open responses before it
  runs the lifespan shutdown, and an SSE response only ends when it is told to.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from .._errors import ValidationError
from .._validate import check_int, check_str

if TYPE_CHECKING:
    from collections.abc import Iterator

    import uvicorn

    from ._app import DemoApp

__all__ = ["bind_socket", "make_server", "running_server", "url_for"]

_PORT_TAKEN = frozenset({errno.EADDRINUSE, errno.EACCES})


def bind_socket(host: str, port: int) -> tuple[socket.socket, bool]:
    """Bind a listening TCP socket on ``host``, on ``port`` or a free port if it is taken.

    Args:
        host: The address to listen on (an IPv4 or IPv6 address, or a name).
        port: The port; ``0`` for any free port.

    Returns:
        The listening socket, and whether the port differs from the one asked for.

    Raises:
        ValidationError: ``host`` or ``port`` is invalid.
        OSError: nothing can be bound on ``host`` at all.
    """
    check_str("host", host, allow_empty=False)
    check_int("port", port, minimum=0)
    if port > 65535:
        raise ValidationError(f"port must be at most 65535, got {port}", field="port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValidationError(f"cannot resolve host {host!r}: {exc}", field="host") from None
    family, _, _, _, address = infos[0]
    try:
        return _listen(family, address), False
    except OSError as exc:
        if port == 0 or exc.errno not in _PORT_TAKEN:
            raise
    return _listen(family, (address[0], 0, *address[2:])), True


def _listen(family: socket.AddressFamily, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform != "win32":  # on Windows this would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_for(sock: socket.socket) -> str:
    """Return the ``http://`` URL of the page served on ``sock``.

    A wildcard address (``0.0.0.0``, ``::``) is shown as the loopback address, which a
    browser on the same machine can open.
    """
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", ""):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def make_server(
    app: DemoApp, *, log_level: str = "warning"
) -> tuple[uvicorn.Server, threading.Event]:
    """Return a uvicorn server for ``app`` that ends open event streams when it stops.

    Returns:
        The server, and an event set once it serves requests (after the app's lifespan
        has started).

    Raises:
        ModuleNotFoundError: uvicorn is not installed (``pip install 'streamkit[demo]'``).
    """
    import uvicorn

    stream_app = app.stream_app
    ready = threading.Event()

    class _DemoServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                ready.set()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            stream_app.shutdown()
            await super().shutdown(sockets=sockets)

    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return _DemoServer(config), ready


@contextlib.contextmanager
def running_server(
    app: DemoApp, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 20.0
) -> Iterator[str]:
    """Serve ``app`` in a background thread for the duration of the block.

    Args:
        app: The demo app.
        host: The address to listen on.
        port: The port (``0``: a free one; a taken one is replaced by a free one).
        startup_timeout: Seconds the server may take to start.

    Yields:
        The page's URL (``http://host:port/``).

    Raises:
        ValidationError: ``host`` or ``port`` is invalid.
        ModuleNotFoundError: uvicorn is not installed.
        RuntimeError: the server did not start.
        OSError: the socket cannot be bound.
    """
    server, ready = make_server(app)
    sock, _ = bind_socket(host, port)
    url = url_for(sock)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit when the lifespan fails, for one
            failure.append(exc)
        finally:
            ready.set()  # wakes the waiter if startup never completed

    thread = threading.Thread(target=run, name="streamkit demo server", daemon=True)
    thread.start()
    try:
        if not ready.wait(startup_timeout) or not server.started:
            raise RuntimeError(f"the demo server did not start: {failure or 'timed out'}")
        yield url
    finally:
        server.should_exit = True
        thread.join(startup_timeout)
        sock.close()
