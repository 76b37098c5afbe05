"""The streaming response loop: events to SSE or NDJSON over one ASGI HTTP response.

Rules of this module, and why:

* **A pump decouples reading from writing.** One task pulls events from the source (a
  registry subscription) into a small bounded buffer; the sender takes *everything*
  that is ready at once and writes it as one ``http.response.body`` message. A burst of
  events thus costs one ASGI ``send`` (and one TCP write), not one per event. The pump
  also lets the sender wait with a deadline (for heartbeats) without ever cancelling the
  source's ``__anext__``, which not every iterator survives.
* **The first of "send events" and "wait for http.disconnect" to end cancels the other.**
  A client that goes away ends the subscription at once, never the session.
* **Every write has a deadline** (``write_timeout``): a half-open client that stops
  reading fills the server's buffers, ``send`` stops returning, and the response is
  dropped instead of pinning a subscription forever.
* **Backpressure reaches the log.** When the client is slow the buffer (256 events)
  fills, the pump stops pulling, and the log's slow-consumer policy decides (disconnect
  or block). Events already pulled are always sent before the response ends, so a
  lagged reader's resume point (the error's ``after``) is exactly its last event.
* **gzip is flushed per batch** (``Z_SYNC_FLUSH``) so compressed events still arrive live.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import TYPE_CHECKING, Final, Literal

import anyio

from . import ndjson, sse
from ._asgi_http import dump_json
from ._errors import StreamkitError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable, Iterable

    from ._asgi_http import Headers, Receive, Scope, Send
    from ._events import StreamEvent

__all__ = ["Outcome", "run_event_stream"]

#: Why a stream response ended.
Outcome = Literal["ended", "disconnected", "write_timeout", "shutdown", "failed"]

#: Events the pump holds for the sender before it stops pulling from the source.
_BUFFER_EVENTS: Final = 256
#: A batch is cut once its encoded size passes this many bytes.
_MAX_BATCH_BYTES: Final = 256 * 1024

SSE_MEDIA_TYPE: Final = b"text/event-stream; charset=utf-8"
NDJSON_MEDIA_TYPE: Final = b"application/x-ndjson"


class _Pump:
    """Moves events from a source into a bounded deque, waking the sender once per batch."""

    __slots__ = ("_limit", "_ready", "_room", "done", "error", "items", "stopped")

    def __init__(self, limit: int) -> None:
        self.items: deque[StreamEvent] = deque()
        self._limit = limit
        self._ready: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self.done = False
        self.stopped = False
        self.error: StreamkitError | None = None

    def _wake(self) -> None:
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set()

    async def run(self, events: AsyncIterable[StreamEvent]) -> None:
        items = self.items
        try:
            async for event in events:
                items.append(event)
                self._wake()
                if len(items) >= self._limit:
                    room = self._room = anyio.Event()
                    await room.wait()
        except StreamkitError as exc:
            # A lagged reader, a trimmed resume point, a session removed while read: the
            # response ends and says why; the client resumes from its last id.
            self.error = exc
        self.done = True
        self._wake()

    def stop(self) -> None:
        self.stopped = True
        self._wake()

    async def wait(self) -> None:
        """Wait until there are events, the source ended or the stream was stopped."""
        if not self.items and not self.done and not self.stopped:
            ready = self._ready = anyio.Event()
            await ready.wait()

    def take(self, encode: Callable[[StreamEvent], bytes]) -> bytes:
        """Encode and remove ready events, up to about ``_MAX_BATCH_BYTES``."""
        items = self.items
        if len(items) == 1:
            data = encode(items.popleft())
        else:
            parts: list[bytes] = []
            size = 0
            while items and size < _MAX_BATCH_BYTES:
                part = encode(items.popleft())
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        room = self._room
        if room is not None:
            self._room = None
            room.set()
        return data


class _Writer:
    """Sends body chunks with a deadline each, compressing them if asked."""

    __slots__ = ("_compressor", "_send", "_timeout")

    def __init__(self, send: Send, *, gzip: bool, write_timeout: float | None) -> None:
        self._send = send
        self._timeout = write_timeout
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None

    async def message(self, message: dict[str, object]) -> None:
        with anyio.fail_after(self._timeout):
            await self._send(message)

    async def chunk(self, data: bytes) -> None:
        compressor = self._compressor
        if compressor is not None:
            data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        await self.message({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self) -> None:
        compressor = self._compressor
        tail = compressor.flush() if compressor is not None else b""
        await self.message({"type": "http.response.body", "body": tail, "more_body": False})


def stream_headers(*, ndjson_format: bool, gzip: bool) -> Headers:
    """Return the response headers of an event stream."""
    headers: Headers = [
        (b"content-type", NDJSON_MEDIA_TYPE if ndjson_format else SSE_MEDIA_TYPE),
        (b"cache-control", b"no-store"),
        (b"x-accel-buffering", b"no"),
        (b"vary", b"accept, accept-encoding"),
    ]
    if gzip:
        headers.append((b"content-encoding", b"gzip"))
    return headers


async def _watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


async def run_event_stream(
    scope: Scope,
    receive: Receive,
    send: Send,
    events: AsyncIterable[StreamEvent],
    *,
    ndjson_format: bool = False,
    gzip: bool = False,
    heartbeat_interval: float | None = 15.0,
    write_timeout: float | None = 30.0,
    retry_ms: int | None = None,
    stop: anyio.Event | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    buffer_events: int = _BUFFER_EVENTS,
) -> Outcome:
    """Send ``events`` as one streaming response until they end or the client leaves.

    The response starts at once (status 200 and the headers of :func:`stream_headers`),
    with a ``retry:`` hint first for SSE. Ready events are coalesced into one body
    message; a comment (SSE) or an empty line (NDJSON) is sent after each
    ``heartbeat_interval`` seconds of silence.

    Returns:
        Why the response ended. ``"failed"``: the source raised a streamkit error (a
        lagged reader, for example); SSE clients get it as a comment before the end.
    """
    del scope  # the caller negotiated everything the scope says
    if ndjson_format:
        encode: Callable[[StreamEvent], bytes] = ndjson.encode
        heartbeat = b"\n"
        prelude = b""
    else:
        encode = sse.encode
        heartbeat = sse.encode_comment("ping")
        prelude = sse.encode_retry(retry_ms) if retry_ms is not None else b""

    writer = _Writer(send, gzip=gzip, write_timeout=write_timeout)
    pump = _Pump(buffer_events)
    outcome: Outcome = "ended"
    try:
        await writer.message(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*stream_headers(ndjson_format=ndjson_format, gzip=gzip), *headers],
            }
        )
        if prelude:
            await writer.chunk(prelude)
    except TimeoutError:
        return "write_timeout"

    async with anyio.create_task_group() as tg:
        finishing = False

        def disconnected() -> None:
            nonlocal outcome
            if not finishing:  # once the body is complete, servers report a disconnect
                outcome = "disconnected"
                tg.cancel_scope.cancel()

        tg.start_soon(_watch_disconnect, receive, disconnected)
        tg.start_soon(pump.run, events)
        if stop is not None:

            async def watch_stop(stop: anyio.Event) -> None:
                await stop.wait()
                pump.stop()

            tg.start_soon(watch_stop, stop)
        try:
            while True:
                if not pump.items and not pump.done and not pump.stopped:
                    with anyio.move_on_after(heartbeat_interval):
                        await pump.wait()
                if pump.items:
                    await writer.chunk(pump.take(encode))
                elif pump.done:
                    error = pump.error
                    if error is not None:
                        outcome = "failed"
                        if not ndjson_format:
                            comment = f"error {dump_json(error.to_dict()).decode()}"
                            await writer.chunk(sse.encode_comment(comment))
                    break
                elif pump.stopped:
                    outcome = "shutdown"
                    break
                else:
                    await writer.chunk(heartbeat)
            finishing = True
            await writer.finish()
        except TimeoutError:
            outcome = "write_timeout"
        except OSError:
            # The server's "client disconnected" error (hypercorn, some uvicorn paths).
            outcome = "disconnected"
        tg.cancel_scope.cancel()
    return outcome
