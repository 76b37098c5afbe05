"""Real servers for the ASGI tests: uvicorn (and hypercorn) in a thread with its own loop.

The server runs on asyncio in a background thread, so the test body can run on either
anyio backend and talk to it over loopback with real clients. ``call`` runs a coroutine
function inside the server's loop (where the app's registry lives) and returns its
result to the test.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import h11
import uvicorn

import streamkit as sk
from streamkit.asgi import StreamApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

T = TypeVar("T")

_START_TIMEOUT = 10.0


class ServerThread:
    """A uvicorn or hypercorn server serving ``app`` on a free loopback port."""

    def __init__(self, app: Any, *, kind: str = "uvicorn") -> None:
        self.app = app
        self.kind = kind
        # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say
        # so, and without it every response sent in two writes (start, then body)
        # waits ~40 ms for the client's delayed ACK (Nagle).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"{kind}-test-server", daemon=True)
        self._uvicorn: uvicorn.Server | None = None
        self._stop_hypercorn: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._stopped.set()

    async def _serve(self) -> None:
        if self.kind == "uvicorn":
            config = uvicorn.Config(
                self.app,
                lifespan="on",
                log_level="warning",
                timeout_graceful_shutdown=5,
                # Longer than any test: a pooled connection the server closes for
                # idleness just as the client reuses it fails the request (a race of
                # HTTP/1.1 keep-alive, not of the app).
                timeout_keep_alive=120,
                ws="wsproto",
            )
            server = self._uvicorn = uvicorn.Server(config)
            serving = asyncio.ensure_future(server.serve(sockets=[self._sock]))
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            self._started.set()
            await serving
        else:
            from hypercorn.asyncio import serve
            from hypercorn.config import Config

            hyper_config = Config()
            hyper_config.bind = [f"127.0.0.1:{self.port}"]
            hyper_config.loglevel = "WARNING"
            hyper_config.graceful_timeout = 5
            hyper_config.keep_alive_timeout = 120  # as uvicorn's above
            self._sock.close()
            stop = self._stop_hypercorn = asyncio.Event()
            serving = asyncio.ensure_future(
                serve(self.app, hyper_config, shutdown_trigger=stop.wait)
            )
            await self._wait_listening()
            self._started.set()
            await serving

    async def _wait_listening(self) -> None:
        for _ in range(500):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError("hypercorn did not start listening")

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            raise RuntimeError("the test server did not start")
        if self._error is not None:
            raise RuntimeError("the test server failed to start") from self._error

    def request_stop(self) -> None:
        """Ask the server to stop (it waits for open responses, up to its grace time)."""
        loop = self.loop
        assert loop is not None
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        elif self._stop_hypercorn is not None:
            loop.call_soon_threadsafe(self._stop_hypercorn.set)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.request_stop()
            self._thread.join(30)
        self._sock.close()
        if self._error is not None:
            raise RuntimeError("the test server failed") from self._error

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # -- running code in the server's loop ------------------------------------------------

    def call_blocking(self, fn: Callable[[], Awaitable[T]]) -> T:
        loop = self.loop
        assert loop is not None

        async def run() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=30)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` in the server's loop and return its result."""
        return await anyio.to_thread.run_sync(self.call_blocking, fn)

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run a plain function in the server's loop, without waiting."""
        loop = self.loop
        assert loop is not None
        loop.call_soon_threadsafe(fn)

    async def wait_stopped(self) -> None:
        await anyio.to_thread.run_sync(self._stopped.wait, 30.0)


@contextmanager
def serve(app: Any, *, kind: str = "uvicorn") -> Iterator[ServerThread]:
    """Serve ``app`` on a loopback port for the duration of the block."""
    server = ServerThread(app, kind=kind)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- shared helpers for the ASGI tests ------------------------------------------------------


def bearer_authenticate(scope: Any) -> str | None:
    """The tests' authenticate: ``Authorization: Bearer <user>`` names the user."""
    for name, value in scope["headers"]:
        if name == b"authorization" and value.startswith(b"Bearer "):
            return str(value[7:].decode("latin-1"))
    return None


def make_stream_app(agent: Any, /, **options: Any) -> StreamApp:
    """A StreamApp as the HTTP and WebSocket tests serve it: no delays, Bearer users.

    ``options`` are StreamApp options that replace or add to these (``agent`` too).
    """
    settings: dict[str, Any] = {
        "registry_config": sk.RegistryConfig(max_sessions=1000, heartbeat_interval=None),
        "agent": agent,
        "authenticate": bearer_authenticate,
        "stream_config": sk.StreamConfig(stream_delay=0, chunk_size=3, heartbeat_interval=None),
    }
    settings.update(options)
    return StreamApp(**settings)


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user}"}


async def publish(
    server: ServerThread, app: Any, session_id: str, *events: Any, user: str = "alice"
) -> None:
    """Publish events into a session of ``app``'s registry, in the server's loop."""

    async def run() -> None:
        for event in events:
            await app.registry.publish(session_id, event, user_id=user)

    await server.call(run)


def token(text: str) -> sk.StreamEvent:
    """A ``token`` event carrying ``text``."""
    return sk.StreamEvent(event_type="token", content=text)


def complete() -> sk.StreamEvent:
    """A ``complete`` event."""
    return sk.StreamEvent(event_type="complete")


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait for a condition the server changes (polled: it lives in another thread)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


class RawStream:
    """A minimal HTTP/1.1 client over a socket (h11), for streams the test cuts short.

    httpx's nested body generators cannot all be closed when a test stops reading
    early, and Trio warns when they are collected; a raw connection has no generators.
    """

    def __init__(self, stream: anyio.abc.ByteStream, conn: h11.Connection) -> None:
        self._stream = stream
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls, port: int, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[RawStream]:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="GET",
                target=path,
                headers=[("Host", "127.0.0.1"), *(headers or {}).items()],
            )
            await stream.send(conn.send(request) + conn.send(h11.EndOfMessage()))
            raw = cls(stream, conn)
            while True:
                event = await raw._next_event()
                if isinstance(event, h11.Response):
                    raw.status = event.status_code
                    raw.headers = {k.decode(): v.decode() for k, v in event.headers}
                    break
            yield raw

    async def _next_event(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self._stream.receive()
                except anyio.EndOfStream:
                    data = b""
                self._conn.receive_data(data)
                continue
            return event

    async def chunk(self) -> bytes | None:
        """Return the next piece of the body, ``None`` at its end."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return None
