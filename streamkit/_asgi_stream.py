"""The streaming response loop: events to SSE or NDJSON over one ASGI HTTP response.

Rules of this module, and why:

* **One task on the delivery path.** The response's own task iterates the source and
  sends each event as it comes: one wake-up per delivery (the source's), one ``send``,
  and nothing made per delivery that outlives it (no cancel scope, no timer, no event,
  no task). Each event's bytes are encoded once and shared by every response that
  sends them (a small cache keyed by the event).
* **A backlog goes out in one write.** When the source can hand over what it already
  holds without waiting (a registry subscription's ``take_ready``), the events ready
  after the one just read (up to 64) are sent with it: a client that fell behind
  catches up in few writes instead of one per event (each of which yields to the loop
  on Trio).
* **One clock per event loop keeps the time, not the deliveries.** Each response stamps
  the time its last write started (one ``time.monotonic()`` per write); a single timer
  per event loop (a loop callback on asyncio, a system task on Trio) looks at every open
  response four times per interval (a quarter of the shortest ``heartbeat_interval`` or
  ``write_timeout``) and only compares times: a write blocked past its deadline ends
  its response (a half-open client that stops reading), and a response silent for a
  heartbeat interval gets its watcher woken to send the heartbeat. A busy stream has no
  timer, cancel scope or wake-up of its own; heartbeats and drops come up to a quarter
  interval late.
* **A watcher task per response waits for the disconnect**, with no deadline: it wakes
  when the client leaves, or when the clock asks for a heartbeat.
* **A client that goes away ends the subscription at once**, never the session: the
  watcher cancels the sender (in the source's wait or in a blocked ``send``).
* **Backpressure reaches the log.** A sender blocked in ``send`` pulls nothing more, so
  a slow client falls behind in the log and the log's slow-consumer policy decides
  (disconnect or block). An event taken from the source is always sent before the
  response ends, except when the client is gone or dropped, so a lagged reader's
  resume point (the error's ``after``) is exactly its last event.
* **Shutdown ends the body cleanly**: the sender is stopped in the source's wait, or
  after the write in flight, and the response finishes (``more_body: False``).
* **Every message httpx-sse (and the OpenAI SDK's decoder) yields carries data.** Those
  clients dispatch a message at every empty line once an ``id`` or ``retry`` was seen,
  data or not. So the ``retry:`` hint is a lone field line that rides with the first
  event (browsers apply it when they read it), heartbeats and the closing error note
  are comment lines without an empty line after them (ignored by every client, no
  dispatch), and only events end with an empty line.
* **gzip is flushed per write** (``Z_SYNC_FLUSH``) so compressed events still arrive live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
import zlib
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from . import ndjson, sse
from ._asgi_http import dump_json
from ._errors import StreamkitError
from ._subscription import Subscription

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Awaitable,
        Callable,
        Iterable,
        Sequence,
    )
    from types import TracebackType

    from ._asgi_http import Headers, Receive, Scope, Send
    from ._events import StreamEvent

__all__ = ["FormatEncoder", "Outcome", "StopSignal", "run_event_stream"]

#: Why a stream response ended.
Outcome = Literal["ended", "disconnected", "write_timeout", "shutdown", "failed"]

SSE_MEDIA_TYPE: Final = b"text/event-stream; charset=utf-8"
NDJSON_MEDIA_TYPE: Final = b"application/x-ndjson"

#: The SSE heartbeat: a comment line, no empty line (no client dispatches anything).
SSE_HEARTBEAT: Final = b": ping\n"
#: The NDJSON heartbeat: an empty line (NDJSON readers skip it).
NDJSON_HEARTBEAT: Final = b"\n"

#: Events whose encoded bytes are kept for the next response that sends them.
_CACHE_EVENTS: Final = 256
#: ... and at most this many bytes of them.
_CACHE_BYTES: Final = 8 * 1024 * 1024

#: Events a response takes from its source's backlog for one write (when the source
#: offers ``take_ready(limit)``, as a registry subscription does).
_BATCH_EVENTS: Final = 64


def _take_nothing(source: object, limit: int) -> Sequence[StreamEvent]:
    del source, limit
    return ()


_NO_BACKLOG: Final[Sequence[StreamEvent]] = ()


def _park_nothing(source: object) -> None:
    del source


def _take_nothing_live(source: object) -> None:
    del source


def _call(method: Callable[..., Any], *args: Any) -> Any:
    return method(*args)


def _split(method: Callable[..., Any]) -> tuple[Callable[..., Any], object]:
    """``method`` as a function and its first argument (``f(x, ...)`` calls ``method(...)``).

    The response loop keeps the function and the object, not a bound method: one object
    less kept per open response for the garbage collector to scan, at the same call cost.
    """
    if isinstance(method, types.MethodType):
        return method.__func__, method.__self__
    return _call, method


_now = time.monotonic
_NEVER: Final = float("inf")
#: How many times per interval (heartbeat, write timeout) the clock looks at a stream.
_LOOKS: Final = 4

# What the sender is doing, for the watcher and the shutdown.
_PULLING: Final = 0  # waiting for the source (cancelling it loses nothing)
_WRITING: Final = 1  # holding an event it has not finished sending
_HEARTBEAT: Final = 2  # the watcher is sending a heartbeat (the sender is pulling)


class _EncodeCache:
    """Encodes an event once for every response that sends it (bounded, by identity)."""

    __slots__ = ("_encode", "_items", "_size")

    def __init__(self, encode: Callable[[StreamEvent], bytes]) -> None:
        self._encode = encode
        self._items: dict[int, tuple[StreamEvent, bytes]] = {}
        self._size = 0

    def __call__(self, event: StreamEvent) -> bytes:
        hit = self._items.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        data = self._encode(event)
        if len(self._items) >= _CACHE_EVENTS or self._size > _CACHE_BYTES:
            self._items.clear()
            self._size = 0
        self._items[id(event)] = (event, data)
        self._size += len(data)
        return data


_encode_sse: Final = _EncodeCache(sse.encode)
_encode_ndjson: Final = _EncodeCache(ndjson.encode)


class FormatEncoder(Protocol):
    """What :func:`run_event_stream` needs of a wire format other than its own two."""

    @property
    def headers(self) -> Iterable[tuple[bytes, bytes]]:
        """The content headers of the response (its media type, caching)."""
        ...

    def encode(self, event: StreamEvent, /) -> bytes:
        """Return the bytes of one event (``b""`` for an event the format omits)."""
        ...

    def fail(self, error: StreamkitError, /) -> bytes:
        """Return the bytes that end the response after ``error``."""
        ...


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


class _Checked(Protocol):
    """What the clock looks at: anything with ``check(now)`` (a response, a WebSocket's)."""

    def check(self, now: float, /) -> None:
        """Compare the times stamped with ``now``; act on a missed deadline."""
        ...


class _Stoppable(Protocol):
    """What a :class:`StopSignal` stops: anything with ``stop()``."""

    def stop(self) -> None:
        """End cleanly, now or after the write in flight."""
        ...


@contextlib.asynccontextmanager
async def _deadline(seconds: float | None, *, trio: bool) -> AsyncIterator[None]:
    """``anyio.fail_after(seconds)``; on asyncio the loop's own timeout.

    An anyio cancel scope leaves anyio's state for the task (and a weak reference to it)
    for the task's whole life: some objects more per open response for the garbage
    collector to scan, for one write at the start of the response.
    """
    if trio:
        with anyio.fail_after(seconds):
            yield
    else:
        async with asyncio.timeout(seconds):
            yield


class _SenderScope:
    """The sender's cancel scope on asyncio: its task cancelled with a flag, taken back.

    What :class:`anyio.CancelScope` does for the sender, without its per-task state, weak
    references and sets (some 7 objects more per open response for the garbage collector
    to scan, docs/performance.md section 3b). ``cancel`` cancels the task only while it
    waits inside the ``with`` block (every caller runs in another task or in the loop's
    clock), so the cancellation lands at that wait; a cancel before the block is entered
    sets ``cancel_called``, which the sender checks before its loop.
    """

    __slots__ = ("cancel_called", "entered", "sent", "task")

    def __init__(self) -> None:
        self.cancel_called = False
        self.entered = False
        #: Whether ``task.cancel()`` was called (taken back with ``uncancel`` at exit).
        self.sent = False
        self.task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        if self.cancel_called:
            return
        self.cancel_called = True
        task = self.task
        if self.entered and task is not None and task is not asyncio.current_task():
            self.sent = True
            task.cancel()

    def __enter__(self) -> _SenderScope:
        self.task = asyncio.current_task()
        self.entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self.entered = False
        task = self.task
        self.task = None
        if not self.sent or task is None:
            return False
        # Ours taken back; a cancellation from outside (still counted) goes on.
        return (
            task.uncancel() == 0
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
        )


class _Response:
    """One streaming response: the sender's state, read by the watcher and the shutdown."""

    __slots__ = (
        "_compressor",
        "_idle",
        "beat",
        "closing",
        "finishing",
        "gzip",
        "heartbeat_interval",
        "outcome",
        "send",
        "sender",
        "since",
        "state",
        "stopping",
        "trio",
        "watch",
        "watching",
        "write_timeout",
    )

    def __init__(
        self,
        send: Send,
        *,
        gzip: bool,
        write_timeout: float | None,
        heartbeat_interval: float | None = None,
        trio: bool = False,
    ) -> None:
        self.send = send
        self.trio = trio
        self.heartbeat_interval = heartbeat_interval
        #: The watcher's wait for the client (its cancel scope on Trio, its task on
        #: asyncio); the clock cancels it when a heartbeat is due.
        self.watch: anyio.CancelScope | asyncio.Task[None] | None = None
        #: Whether the watcher task runs.
        self.watching = True
        #: Set by the clock when it cancels the watcher's wait for a heartbeat (asyncio).
        self.beat = False
        #: Set when the response cancels its watcher for good (asyncio).
        self.closing = False
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        self.gzip = gzip
        self._idle: anyio.Event | None = None
        self.write_timeout = write_timeout
        self.state = _PULLING
        #: When the last write started (the running one's, while writing).
        self.since = _now()
        self.outcome: Outcome = "ended"
        self.stopping = False
        self.finishing = False
        #: Cancels the sender: an anyio cancel scope on Trio, a lighter one on asyncio.
        self.sender: anyio.CancelScope | _SenderScope = (
            anyio.CancelScope() if trio else _SenderScope()
        )

    def _body(self, data: bytes) -> dict[str, object]:
        compressor = self._compressor
        if compressor is not None:
            data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return {"type": "http.response.body", "body": data, "more_body": True}

    async def write(self, data: bytes) -> None:
        """Send ``data`` (the sender's path: no timer; the watcher keeps the deadline)."""
        if self.state == _HEARTBEAT:
            await self.wait_idle()
        self.state = _WRITING
        self.since = _now()
        await self.send(self._body(data))
        self.state = _PULLING

    async def wait_idle(self) -> None:
        """Wait for the watcher's heartbeat to be sent (rare: only after a silence)."""
        self.state = _WRITING  # the shutdown must not cancel the event it holds
        idle = self._idle = anyio.Event()
        await idle.wait()

    async def heartbeat(self, data: bytes) -> None:
        """Send a heartbeat while the sender waits for the source (the watcher's path)."""
        self.state = _HEARTBEAT
        self.since = _now()
        try:
            async with _deadline(self.write_timeout, trio=self.trio):
                await self.send(self._body(data))
        finally:
            if self.state == _HEARTBEAT:
                self.state = _PULLING
            idle = self._idle
            if idle is not None:
                self._idle = None
                idle.set()

    async def start(self, message: dict[str, object], prelude: bytes) -> None:
        async with _deadline(self.write_timeout, trio=self.trio):
            await self.send(message)
            if prelude:
                await self.send(self._body(prelude))
        self.since = _now()

    async def end_body(self) -> None:
        """End the body in the sender's scope (the clock keeps the write's deadline)."""
        if self.state == _HEARTBEAT:
            await self.wait_idle()
        compressor = self._compressor
        tail = compressor.flush() if compressor is not None else b""
        self.state = _WRITING
        self.since = _now()
        await self.send({"type": "http.response.body", "body": tail, "more_body": False})
        # Servers report a disconnect once the body is complete: from here on it is none.
        self.finishing = True

    async def finish(self, tail: bytes) -> None:
        """End the body, ``tail`` last (the sender's path, once)."""
        if self.state == _HEARTBEAT:
            await self.wait_idle()
        self.finishing = True
        compressor = self._compressor
        if compressor is not None:
            tail = compressor.compress(tail) + compressor.flush()
        async with _deadline(self.write_timeout, trio=self.trio):
            await self.send({"type": "http.response.body", "body": tail, "more_body": False})

    def end(self, outcome: Outcome) -> None:
        """Stop the sender now (the client left, or a write missed its deadline)."""
        if not self.finishing:  # once the body is complete, servers report a disconnect
            self.outcome = outcome
            self.sender.cancel()

    def stop(self) -> None:
        """End the response cleanly: now if the sender is waiting, else after its write."""
        self.stopping = True
        if self.state != _WRITING and not self.finishing:
            self.outcome = "shutdown"
            self.sender.cancel()

    def check(self, now: float) -> None:
        """The clock's look: drop a write past its deadline, or wake the watcher to beat."""
        state = self.state
        if state == _WRITING:
            limit = self.write_timeout
            if limit is not None and now - self.since >= limit:
                self.end("write_timeout")
        elif state == _PULLING:
            interval = self.heartbeat_interval
            if interval is not None and now - self.since >= interval:
                watch = self.watch
                if watch is None or self.stopping or self.finishing or self.beat:
                    return
                if isinstance(watch, anyio.CancelScope):
                    watch.cancel()
                    return
                # A plain task (asyncio): cancel its wait only while it waits, so that a
                # message the server already handed over is never lost to the wake-up.
                waiter = getattr(watch, "_fut_waiter", None)
                if waiter is not None and not waiter.done():
                    self.beat = True
                    watch.cancel()


class _Clock:
    """One timer per event loop keeps the heartbeats and write deadlines of its streams.

    It looks at every open stream a few times per interval (a quarter of the shortest
    heartbeat interval or write timeout among them) and compares the times the senders
    stamped: a write blocked past its deadline ends its response, and a stream silent
    for a heartbeat interval gets its watcher woken to send the heartbeat. A busy stream
    costs nothing between two looks: no timer, cancel scope or wake-up per stream. On
    asyncio it is a loop callback; on Trio a system task. It stops when no stream is
    left.
    """

    __slots__ = ("handle", "key", "period", "responses", "running")

    def __init__(self, key: object) -> None:
        self.key = key
        #: The pending loop callback (asyncio).
        self.handle: Any = None
        self.responses: set[_Checked] = set()
        self.period = _NEVER
        self.running = False

    def add(self, response: _Checked, period: float) -> None:
        self.responses.add(response)
        self.period = min(self.period, period)
        if not self.running:
            self.running = True
            _start_clock(self)

    def remove(self, response: _Checked) -> None:
        responses = self.responses
        responses.discard(response)
        if not responses:  # the last one: this loop's clock stops now
            self.stop()

    def stop(self) -> None:
        self.running = False
        self.period = _NEVER
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.cancel()
        if _CLOCKS.get(self.key) is self:
            del _CLOCKS[self.key]

    def tick(self) -> bool:
        """Look at every stream; return whether to go on (streams are left)."""
        responses = self.responses
        if not responses or not self.running:
            return False
        now = _now()
        for response in list(responses):
            response.check(now)
        return True


#: The clock of each running event loop (by the loop, or the Trio run's token).
_CLOCKS: dict[object, _Clock] = {}


def _loop_key() -> tuple[object, bool]:
    """The running loop (key of its clock), and whether it is Trio."""
    if anyio.lowlevel.current_token().backend_class.__module__.endswith("_trio"):
        import trio

        return trio.lowlevel.current_trio_token(), True
    import asyncio

    return asyncio.get_running_loop(), False


def _clock() -> _Clock:
    key, _ = _loop_key()
    clock = _CLOCKS.get(key)
    if clock is None:
        clock = _CLOCKS[key] = _Clock(key)
    return clock


def clock_for_this_loop() -> _Clock:
    """The running event loop's clock (see :class:`_Clock`): ``add(x, period)``, ``remove(x)``."""
    return _clock()


def _start_clock(clock: _Clock) -> None:
    key, trio_run = _loop_key()
    if trio_run:
        import trio

        async def run() -> None:
            while clock.running:
                await trio.sleep(clock.period)
                clock.tick()

        trio.lowlevel.spawn_system_task(run, name="streamkit stream clock")
        return
    import asyncio

    loop = asyncio.get_running_loop()
    assert key is loop

    def tick() -> None:
        if clock.tick():
            clock.handle = loop.call_later(clock.period, tick)

    clock.handle = loop.call_later(clock.period, tick)


class StopSignal:
    """An app's shutdown signal: set once, it ends every stream registered with it.

    Like an :class:`anyio.Event` (``set``, ``is_set``, ``wait``), but a streaming response
    registers itself instead of keeping a task that waits for it: ``set`` stops each
    registered response directly.
    """

    __slots__ = ("_event", "_flag", "responses")

    def __init__(self) -> None:
        self._flag = False
        self._event: anyio.Event | None = None
        #: The open responses (and WebSocket connections) to stop.
        self.responses: set[_Stoppable] = set()

    def set(self) -> None:
        """Stop every registered response (each ends cleanly), and wake the waiters."""
        if self._flag:
            return
        self._flag = True
        for response in list(self.responses):
            response.stop()
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        """Whether :meth:`set` was called."""
        return self._flag

    async def wait(self) -> None:
        """Wait until :meth:`set` is called."""
        if self._flag:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


async def _watch(response: _Response, receive: Receive, heartbeat: bytes) -> None:
    """Wait for the disconnect; send a heartbeat when the clock wakes us for one."""
    try:
        while True:
            with anyio.CancelScope() as watch:
                response.watch = watch
                message = await receive()
                if message["type"] == "http.disconnect":
                    # Also what servers say once the body is complete: then a no-op.
                    response.end("disconnected")
                    return
                continue
            # The clock cancelled the wait: the stream was silent for a heartbeat interval.
            response.watch = None
            if not await _beat(response, heartbeat):
                return
    finally:
        response.watching = False


async def _beat(response: _Response, heartbeat: bytes) -> bool:
    """Send the heartbeat a silent interval calls for; ``False``: the watcher stops."""
    if response.stopping or response.finishing:
        return False  # the sender ends the body itself, under a deadline of its own
    try:
        await response.heartbeat(heartbeat)
    except TimeoutError:
        response.end("write_timeout")
        return False
    except OSError:
        response.end("disconnected")
        return False
    return True


async def _watch_task(response: _Response, receive: Receive, heartbeat: bytes) -> None:
    """:func:`_watch` as a plain asyncio task: no task group, no cancel scope per wait.

    The clock wakes it for a heartbeat by cancelling its wait with ``response.beat`` set
    (the cancellation is then taken back); any other cancellation ends it.
    """
    task = asyncio.current_task()
    assert task is not None
    response.watch = task
    try:
        while True:
            try:
                message = await receive()
            except asyncio.CancelledError:
                if response.closing or not response.beat:
                    raise
                task.uncancel()
                response.beat = False
            else:
                if message["type"] == "http.disconnect":
                    # Also what servers say once the body is complete: then a no-op.
                    response.end("disconnected")
                    return
                continue
            # The clock woke us: the stream was silent for a heartbeat interval.
            if not await _beat(response, heartbeat):
                return
    except Exception:
        response.end("failed")  # the sender stops; the error is raised when it has
        raise
    finally:
        response.watch = None
        response.watching = False


class _Watching:
    """Runs the watcher beside the sender for the body of an ``async with``.

    On asyncio the watcher is a plain task (:func:`_watch_task`): a task group, its
    cancel scopes and its task's bookkeeping would be some 30 objects more per open
    response, for the garbage collector to scan again and again (docs/performance.md,
    section 3b). On Trio it runs in a task group.
    """

    __slots__ = ("group", "heartbeat", "receive", "response", "task")

    def __init__(self, response: _Response, receive: Receive, heartbeat: bytes) -> None:
        self.response = response
        self.receive = receive
        self.heartbeat = heartbeat
        self.task: asyncio.Task[None] | None = None
        self.group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> None:
        if _loop_key()[1]:
            group = self.group = anyio.create_task_group()
            await group.__aenter__()
            group.start_soon(_watch, self.response, self.receive, self.heartbeat)
        else:
            self.task = asyncio.get_running_loop().create_task(
                _watch_task(self.response, self.receive, self.heartbeat)
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        response = self.response
        if exc is None and response.watching and response.finishing:
            # Servers tell the watcher that the body is complete (uvicorn does): let it
            # end by itself rather than cancel it.
            await anyio.lowlevel.checkpoint()
        group = self.group
        if group is not None:
            if response.watching:
                group.cancel_scope.cancel()
            return await group.__aexit__(exc_type, exc, traceback)
        task = self.task
        assert task is not None
        if not task.done():
            response.closing = True
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait((task,))
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error
        return None


def _stopped_after(event: StreamEvent) -> Outcome:
    """The outcome of a stream stopped once ``event`` was written: ended if it was the last."""
    return "ended" if event.is_final else "shutdown"


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
    stop: StopSignal | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    encoder: FormatEncoder | None = None,
) -> Outcome:
    """Send ``events`` as one streaming response until they end or the client leaves.

    The response starts at once (status 200 and the headers of :func:`stream_headers`),
    with a ``retry:`` line first for SSE. Each event is sent as it comes; a comment line
    (SSE) or an empty line (NDJSON) is sent after each ``heartbeat_interval`` seconds of
    silence.

    With an ``encoder`` (another SSE format, such as the AI SDK's UI message stream),
    its ``encode`` makes each event's bytes and its ``fail`` the error's, its
    ``headers`` replace the content headers, and the heartbeat is an SSE comment.

    Returns:
        Why the response ended. ``"failed"``: the source raised a streamkit error (a
        lagged reader, for example); SSE clients get it as a comment before the end.
    """
    del scope  # the caller negotiated everything the scope says
    content_headers: Iterable[tuple[bytes, bytes]]
    if encoder is not None:
        encode = encoder.encode
        heartbeat = SSE_HEARTBEAT
        prelude = b""
        content_headers = encoder.headers
    elif ndjson_format:
        encode = _encode_ndjson
        heartbeat = NDJSON_HEARTBEAT
        prelude = b""
    else:
        encode = _encode_sse
        heartbeat = SSE_HEARTBEAT
        # A lone field line: applied by EventSource at once, dispatched with the
        # first event by the clients that dispatch field-only blocks.
        prelude = f"retry: {retry_ms}\n".encode() if retry_ms is not None else b""
    if encoder is None:
        content_headers = stream_headers(ndjson_format=ndjson_format, gzip=gzip)

    response = _Response(
        send,
        gzip=gzip,
        write_timeout=write_timeout,
        heartbeat_interval=heartbeat_interval,
        trio=_loop_key()[1],
    )
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [*content_headers, *headers],
    }
    try:
        await response.start(start, prelude)
    except TimeoutError:
        return "write_timeout"
    del start, content_headers  # not kept for the life of the stream

    if isinstance(events, Subscription):
        # Entered by the caller (StreamApp): its cursor, one coroutine fewer per event.
        events = events._direct()
    # What each event is awaited from: the memory log's cursor hands out its own coroutine
    # function (no ``__anext__`` call per event); any other source its ``__anext__``.
    # Each is kept as a function and its object (see _split): ``step(source)``,
    # ``take(taker, limit)``.
    owned_by = getattr(events, "owned_by", None)
    step: Callable[[Any], Awaitable[StreamEvent]]
    source: Any
    if owned_by is not None:
        step, source = _split(owned_by(None))
    else:
        source = aiter(events)
        step = type(source).__anext__  # the protocol's own lookup: on the type
    del owned_by
    take_ready = getattr(events, "take_ready", None)
    take: Callable[[Any, int], Sequence[StreamEvent]]
    take, taker = (_take_nothing, None) if take_ready is None else _split(take_ready)
    del take_ready
    park_method = getattr(events, "park", None)
    take_live_method = getattr(events, "take_live", None)
    park: Callable[[Any], Any]
    take_live: Callable[[Any], StreamEvent | None]
    if park_method is not None and take_live_method is not None:
        park, parker = _split(park_method)
        take_live, _ = _split(take_live_method)
    else:
        park, parker, take_live = _park_nothing, None, _take_nothing_live
    del park_method, take_live_method
    # The shared encodings (SSE, NDJSON): looked up in place, no call per event.
    encoded: dict[int, tuple[StreamEvent, bytes]] = (
        encode._items if isinstance(encode, _EncodeCache) else {}
    )
    clock: _Clock | None = None
    period = min(heartbeat_interval or _NEVER, write_timeout or _NEVER) / _LOOKS
    if period != _NEVER:
        clock = _clock()
        clock.add(response, period)
    if stop is not None:
        stop.responses.add(response)
        if stop.is_set():
            response.stop()
    try:
        async with _Watching(response, receive, heartbeat):
            error: StreamkitError | None = None
            try:
                with response.sender:
                    if response.sender.cancel_called:
                        # Stopped before the stream began (on asyncio the scope cancels
                        # only a wait inside it): the body ends below.
                        pass
                    elif response.gzip:
                        while True:
                            try:
                                event = await step(source)
                            except StopAsyncIteration:
                                break
                            backlog = take(taker, _BATCH_EVENTS)
                            data = encode(event)
                            if backlog:
                                data = b"".join([data, *map(encode, backlog)])
                            await response.write(data)
                            if response.stopping:
                                response.outcome = _stopped_after(backlog[-1] if backlog else event)
                                break
                        await response.end_body()
                    else:
                        # The hot path, inlined: no coroutine or dict made per event but
                        # the message itself. A write cut short by a cancellation ends the
                        # response, so its state needs no reset.
                        send = response.send
                        while True:
                            # A source that can say "wait on this future" (the memory
                            # log's cursor, read by several responses) is awaited without
                            # a coroutine of its own; the event is then taken at once.
                            waiter = park(parker)
                            if waiter is not None:
                                await waiter
                                event = take_live(parker)
                            else:
                                event = None
                            if event is None:
                                try:
                                    event = await step(source)
                                except StopAsyncIteration:
                                    break
                                backlog = take(taker, _BATCH_EVENTS)
                            else:  # the one new event: nothing else is ready
                                backlog = _NO_BACKLOG
                            hit = encoded.get(id(event))
                            data = hit[1] if hit is not None and hit[0] is event else encode(event)
                            if backlog:  # the client fell behind: one write for what is ready
                                data = b"".join([data, *map(encode, backlog)])
                            if response.state == _HEARTBEAT:
                                await response.wait_idle()
                            response.state = _WRITING
                            response.since = _now()
                            await send(
                                {"type": "http.response.body", "body": data, "more_body": True}
                            )
                            response.state = _PULLING
                            if response.stopping:
                                response.outcome = _stopped_after(backlog[-1] if backlog else event)
                                break
                        # The source ended, or a shutdown came during a write: the body
                        # ends here, its deadline kept by the clock like every other write.
                        await response.end_body()
                if not response.finishing and response.outcome in ("ended", "shutdown"):
                    await response.finish(b"")  # stopped while waiting for the source
            except StreamkitError as exc:
                # A lagged reader, a trimmed resume point, a session removed while read: the
                # response ends and says why; the client resumes from its last id.
                error = exc
            except TimeoutError:
                response.outcome = "write_timeout"
            except OSError:
                # The server's "client disconnected" error (hypercorn, some uvicorn paths).
                response.outcome = "disconnected"
            if error is not None:
                try:
                    tail = b""
                    if encoder is not None:
                        tail = encoder.fail(error)
                    elif not ndjson_format:
                        tail = b": error " + dump_json(error.to_dict()) + b"\n"
                    await response.finish(tail)
                    response.outcome = "failed"
                except TimeoutError:
                    response.outcome = "write_timeout"
                except OSError:
                    response.outcome = "disconnected"
    finally:
        if clock is not None:
            clock.remove(response)
        if stop is not None:
            stop.responses.discard(response)
    return response.outcome
