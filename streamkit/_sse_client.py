"""The reconnecting Server-Sent Events client: :func:`connect` and :class:`EventSource`.

Rules of this module, and why:

- It is a client that uses the codec, as httpx uses h11: it imports
  :mod:`streamkit.sse` and anyio; the codec imports neither this module nor anyio, so
  ``import streamkit.sse`` stays sans-I/O. Its names are re-exported by
  :mod:`streamkit.sse` (loaded when first read): ``sk.sse.connect`` is the entry point.
- The options are defined once, by :class:`EventSource`; :func:`connect` takes the
  same arguments and forwards them.
- HTTP goes through a :class:`Fetch` callable, so any HTTP client fits; the default,
  :func:`httpx_fetch`, imports httpx (``streamkit[httpx]``) when it is made.
"""

from __future__ import annotations

import inspect
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, Self, TypeVar

import anyio

from ._errors import Disconnected, RemoteProtocolError, ValidationError
from ._validate import check_int, check_number, check_str, check_wire_str, type_name
from .sse import DEFAULT_MAX_EVENT_SIZE, DEFAULT_MAX_LINE_SIZE, MEDIA_TYPE, SSEDecoder, SSEMessage

if TYPE_CHECKING:
    from types import TracebackType

    import httpx

    from ._events import StreamEvent

__all__ = ["EventSource", "Fetch", "SSEResponse", "connect", "httpx_fetch"]

_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_P = ParamSpec("_P")
_R = TypeVar("_R")


class SSEResponse(Protocol):
    """What a :class:`Fetch` callable yields: an HTTP response with a streamed body.

    An ``httpx.Response`` is one. ``headers`` lookups are made with lower-case names;
    a mapping that is not case-insensitive is searched in full.
    """

    @property
    def status_code(self) -> int:
        """The HTTP status."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers."""
        ...

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Return the body's bytes as they arrive."""
        ...


class Fetch(Protocol):
    """How :func:`connect` makes one HTTP GET request.

    ``fetch(url, headers)`` returns an async context manager that sends the request and
    yields an :class:`SSEResponse`; leaving it closes the response. Network failures,
    when connecting or while reading the body, must be raised as :class:`OSError` or
    :class:`~streamkit.Disconnected`: :func:`connect` retries after those and lets any
    other exception through. :func:`httpx_fetch` makes the default one::

        @contextlib.asynccontextmanager
        async def fetch(url, headers):
            async with client.stream("GET", url, headers=headers) as response:
                yield response
    """

    def __call__(
        self, url: str, headers: Mapping[str, str], /
    ) -> AbstractAsyncContextManager[SSEResponse]:
        """Open ``url`` with ``headers``."""
        ...


_Errors = tuple[type[BaseException], ...]


class _HTTPXResponse:
    """An httpx response whose transient transport errors come out as ``Disconnected``."""

    __slots__ = ("_response", "_transient")

    def __init__(self, response: httpx.Response, transient: _Errors) -> None:
        self._response = response
        self._transient = transient

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return _HTTPXBody(self._response.aiter_bytes(), self._transient)


class _HTTPXBody:
    __slots__ = ("_chunks", "_transient")

    def __init__(self, chunks: AsyncIterator[bytes], transient: _Errors) -> None:
        self._chunks = chunks
        self._transient = transient

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._chunks)
        except self._transient as exc:
            raise Disconnected(f"the SSE response broke off: {exc!r}") from exc


def httpx_fetch(client: httpx.AsyncClient | None = None) -> Fetch:
    """Return a :class:`Fetch` that makes its requests with httpx.

    Needs the ``streamkit[httpx]`` extra. httpx transport errors (refused connection,
    dropped stream) are raised as :class:`~streamkit.Disconnected`, so that
    :func:`connect` retries after them.

    Args:
        client: The client to send requests with (you keep closing it). ``None``: each
            request gets its own client, with a 10 s connect timeout and no read
            timeout (an event stream may stay quiet for long).

    Returns:
        The fetch callable.

    Raises:
        ImportError: httpx is not installed.
        ValidationError: ``client`` is not an ``httpx.AsyncClient``.
    """
    try:
        import httpx
    except ImportError as exc:
        raise ImportError(
            "streamkit.sse needs httpx to connect by default: install 'streamkit[httpx]' "
            "or pass fetch="
        ) from exc
    if client is not None and not isinstance(client, httpx.AsyncClient):
        raise ValidationError(
            f"client must be an httpx.AsyncClient, got {type_name(client)}", field="client"
        )

    # Worth another attempt; a bad URL scheme or a proxy refusal is not.
    transient = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)

    @asynccontextmanager
    async def fetch(url: str, headers: Mapping[str, str]) -> AsyncIterator[SSEResponse]:
        async with AsyncExitStack() as stack:
            own = client
            if own is None:
                own = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
                )
            # Header values as UTF-8 bytes: an event id may hold any character.
            raw = [(key.encode("ascii"), value.encode()) for key, value in headers.items()]
            try:
                response = await stack.enter_async_context(own.stream("GET", url, headers=raw))
            except transient as exc:
                raise Disconnected(f"could not open {url}: {exc!r}") from exc
            yield _HTTPXResponse(response, transient)

    return fetch


#: Statuses after which :func:`connect` tries again instead of giving up.
_RETRY_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is not None:
        return value
    for key, item in headers.items():
        if key.lower() == name:
            return item
    return ""


class EventSource:
    """A reconnecting SSE client; :func:`connect` makes one with the same arguments.

    Use it as an async context manager and iterate over it for :class:`SSEMessage`
    values, or over :meth:`events` for :class:`~streamkit.StreamEvent` values. The
    reconnection policy and the errors of the iteration are described at
    :func:`connect`.

    Args:
        url: The stream's URL.
        fetch: Makes each request; default: :func:`httpx_fetch` (``streamkit[httpx]``).
        headers: Extra request headers (for example ``Authorization``).
        last_event_id: Resume after this event id from the first request on.
        delay: Seconds to wait before reconnecting until the server sends ``retry:``.
        min_delay: The shortest wait, whatever the server asks (a floor against
            reconnection storms).
        max_delay: The longest wait, backoff included.
        backoff: The factor (>= 1) applied to the wait for each failure in a row.
        jitter: How much (0 to 1, as a fraction) each wait is varied at random.
        max_retries: Give up with :class:`~streamkit.Disconnected` after this many
            failures in a row; ``None``: never give up.
        sleep: ``await sleep(seconds)`` waits between attempts; default:
            ``anyio.sleep`` (tests pass their own to control time).
        random: Returns a float in ``[0, 1)`` for the jitter; default:
            ``random.random``.
        max_line_size: See :class:`~streamkit.sse.SSEDecoder`.
        max_event_size: See :class:`~streamkit.sse.SSEDecoder`.

    Raises:
        ValidationError: an argument is invalid (for example a header or
            ``last_event_id`` holding CR, LF or NUL, or ``min_delay > max_delay``).
        ImportError: ``fetch`` is left out and httpx is not installed.
    """

    def __init__(
        self,
        url: str,
        *,
        fetch: Fetch | None = None,
        headers: Mapping[str, str] | None = None,
        last_event_id: str = "",
        delay: float = 3.0,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        backoff: float = 2.0,
        jitter: float = 0.2,
        max_retries: int | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        random: Callable[[], float] | None = None,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        check_str("url", url, allow_empty=False)
        if fetch is not None and not callable(fetch):
            raise ValidationError(f"fetch must be callable, got {type_name(fetch)}", field="fetch")
        checked: dict[str, str] = {}
        if headers is not None:
            if not isinstance(headers, Mapping):
                raise ValidationError(
                    f"headers must be a mapping, got {type_name(headers)}", field="headers"
                )
            for key, value in headers.items():
                if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key):
                    raise ValidationError(
                        f"header names must be HTTP tokens, got {key!r}", field="headers"
                    )
                check_wire_str(f"headers[{key!r}]", value, max_len=None, allow_empty=True)
                if key.lower() == "last-event-id":
                    raise ValidationError(
                        "pass the Last-Event-ID as last_event_id=, not in headers",
                        field="headers",
                    )
                checked[key] = value
        check_wire_str("last_event_id", last_event_id, max_len=None, allow_empty=True)
        low = _check_delay("min_delay", min_delay)
        high = _check_delay("max_delay", max_delay)
        if low > high:
            raise ValidationError(
                f"min_delay must be <= max_delay, got {min_delay!r} > {max_delay!r}",
                field="min_delay",
            )
        if check_number("backoff", backoff, minimum=1) > 1000:
            raise ValidationError(f"backoff must be <= 1000, got {backoff!r}", field="backoff")
        if check_number("jitter", jitter, minimum=0) > 1:
            raise ValidationError(f"jitter must be <= 1, got {jitter!r}", field="jitter")
        if max_retries is not None:
            check_int("max_retries", max_retries, minimum=0)
        for field, function in (("sleep", sleep), ("random", random)):
            if function is not None and not callable(function):
                raise ValidationError(
                    f"{field} must be callable, got {type_name(function)}", field=field
                )
        check_int("max_line_size", max_line_size, minimum=1)
        check_int("max_event_size", max_event_size, minimum=1)
        self._url = url
        self._fetch = httpx_fetch() if fetch is None else fetch
        self._headers = checked
        self._last_event_id = last_event_id
        self._delay = _check_delay("delay", delay)
        self._min_delay = low
        self._max_delay = high
        self._backoff = float(backoff)
        self._jitter = float(jitter)
        self._max_retries = max_retries
        self._sleep = sleep
        self._random = random
        self._max_line_size = max_line_size
        self._max_event_size = max_event_size
        self._server_retry: int | None = None
        self._failures = 0  # consecutive attempts that failed or gave nothing
        self._connections = 0
        self._wait: float | None = None  # seconds to wait before the next attempt
        self._stack: AsyncExitStack | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._decoder: SSEDecoder[SSEMessage] | None = None
        self._delivered = False  # this connection gave at least one message
        self._pending: deque[SSEMessage] = deque()
        self._closed = False

    @property
    def url(self) -> str:
        """The URL the client connects to."""
        return self._url

    @property
    def last_event_id(self) -> str:
        """The last event id received, sent as ``Last-Event-ID`` when reconnecting."""
        if self._decoder is not None:
            return self._decoder.last_event_id
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The reconnection time the server last asked for, in milliseconds, or ``None``."""
        if self._decoder is not None and self._decoder.retry is not None:
            return self._decoder.retry
        return self._server_retry

    @property
    def connections(self) -> int:
        """How many times a connection was opened with a ``200`` answer."""
        return self._connections

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the open connection, if any, and end the iteration."""
        self._closed = True
        self._pending.clear()
        await self._drop()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SSEMessage:
        while True:
            if self._pending:
                self._delivered = True
                return self._pending.popleft()
            if self._closed:
                raise StopAsyncIteration
            if self._chunks is None:
                await self._open()
                continue
            assert self._decoder is not None
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._decoder.feed_eof()
                await self._lost(None)
                continue
            except (OSError, Disconnected) as exc:
                await self._lost(exc)
                continue
            self._pending.extend(self._decoder.feed(chunk))

    def events(self) -> AsyncIterator[StreamEvent]:
        """Iterate over the stream's :class:`~streamkit.StreamEvent` values.

        The data of each message is read with :meth:`SSEMessage.to_event`. The
        iteration, and the client, end after a final event (``complete`` or ``error``),
        so a finished stream is not reconnected to.

        Returns:
            An async iterator of the events.
        """
        return _SourceEvents(self)

    def _next_delay(self) -> float:
        base = self._delay if self._server_retry is None else self._server_retry / 1000
        delay = base * self._backoff ** min(self._failures, 100)
        if self._jitter:
            draw = self._random() if self._random is not None else _default_random()
            delay *= 1 + self._jitter * (2 * draw - 1)
        return min(max(delay, self._min_delay), self._max_delay)

    async def _drop(self) -> None:
        if self._decoder is not None:
            self._last_event_id = self._decoder.last_event_id
            if self._decoder.retry is not None:
                self._server_retry = self._decoder.retry
            self._decoder = None
        chunks, self._chunks = self._chunks, None
        stack, self._stack = self._stack, None
        if stack is not None:
            # Closing must finish even when the caller is being cancelled.
            with anyio.CancelScope(shield=True):
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
                await stack.aclose()

    async def _lost(self, error: BaseException | None) -> None:
        """The connection ended (``error`` is None) or failed: plan the next attempt."""
        delivered = self._delivered
        await self._drop()
        if delivered:
            # A connection that gave messages was healthy, however it ended.
            self._failures = 0
        else:
            self._failures += 1
            if self._max_retries is not None and self._failures > self._max_retries:
                self._closed = True
                what = "ended without an event" if error is None else f"failed: {error!r}"
                raise Disconnected(
                    f"gave up on {self._url} after {self._failures} attempts in a row; "
                    f"the last one {what}"
                ) from error
        self._wait = self._next_delay()

    async def _open(self) -> None:
        if self._wait is not None:
            wait, self._wait = self._wait, None
            if self._sleep is not None:
                await self._sleep(wait)
            else:
                await anyio.sleep(wait)
        headers = {"Accept": MEDIA_TYPE, "Cache-Control": "no-store", **self._headers}
        if self._last_event_id:
            headers["Last-Event-ID"] = self._last_event_id
        stack = AsyncExitStack()
        self._stack = stack
        self._delivered = False
        try:
            response = await stack.enter_async_context(self._fetch(self._url, headers))
        except (OSError, Disconnected) as exc:
            await self._lost(exc)
            return
        status = response.status_code
        if status == 204:  # the server says: do not reconnect
            await self.aclose()
            return
        if status in _RETRY_STATUSES:
            await self._lost(Disconnected(f"{self._url} answered HTTP {status}"))
            return
        if status != 200:
            await self.aclose()
            raise RemoteProtocolError(f"{self._url} answered HTTP {status}; not reconnecting")
        media_type = _header(response.headers, "content-type").partition(";")[0].strip()
        if media_type.lower() != MEDIA_TYPE:
            await self.aclose()
            raise RemoteProtocolError(
                f"{self._url} answered with Content-Type {media_type!r}, not {MEDIA_TYPE!r}"
            )
        self._connections += 1
        self._decoder = SSEDecoder(
            max_line_size=self._max_line_size,
            max_event_size=self._max_event_size,
            last_event_id=self._last_event_id,
        )
        self._chunks = aiter(response.aiter_bytes())


def _default_random() -> float:
    return random.random()  # noqa: S311 - jitter, not cryptography


class _SourceEvents:
    __slots__ = ("_done", "_source")

    def __init__(self, source: EventSource) -> None:
        self._source = source
        self._done = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._done:
            await self._source.aclose()
            raise StopAsyncIteration
        event = (await anext(self._source)).to_event()
        if event.is_final:
            self._done = True
        return event


def _check_delay(field: str, value: object) -> float:
    return check_number(field, value, minimum=0)


def _takes_the_arguments_of(
    target: Callable[_P, object],
) -> Callable[[Callable[..., _R]], Callable[_P, _R]]:
    """Give the decorated forwarder ``target``'s parameters, for type checkers and docs.

    The parameters stay defined once, on ``target``; the forwarder's
    ``__signature__`` shows them to ``inspect.signature``, help() and the API reference.
    """

    def decorate(function: Callable[..., _R]) -> Callable[_P, _R]:
        returns = inspect.signature(function).return_annotation
        signature = inspect.signature(target).replace(return_annotation=returns)
        vars(function)["__signature__"] = signature
        return function

    return decorate


@_takes_the_arguments_of(EventSource)
def connect(*args: Any, **kwargs: Any) -> EventSource:
    """Follow an event stream over HTTP, reconnecting as a browser's ``EventSource`` does.

    ::

        async with sk.sse.connect("http://localhost:8000/sessions/abc/events") as source:
            async for event in source.events():
                print(event.event_type, event.content)

    Takes the arguments of :class:`EventSource` (the URL, then keyword options such as
    ``headers``, ``last_event_id``, ``max_retries`` and the delays) and returns
    ``EventSource(*args, **kwargs)``.

    Each request is a GET with ``Accept: text/event-stream``, ``Cache-Control:
    no-store``, your ``headers`` and, once an event id is known, ``Last-Event-ID``,
    so a streamkit server resumes after the last event received.

    When the connection ends or fails, the client waits and connects again. The wait
    is the server's last ``retry:`` (else ``delay``), multiplied by ``backoff`` for
    each attempt in a row that failed or gave no message, varied by up to ``jitter``
    (a fraction) either way, and finally clamped to ``[min_delay, max_delay]``.
    Transient failures are network errors (see :class:`Fetch`) and the statuses 408,
    425, 429, 500, 502, 503 and 504.

    The iteration ends when the server answers ``204 No Content``, when
    :meth:`EventSource.events` has seen a final event, or when you leave the ``async
    with``. Bound the whole wait with ``anyio.fail_after`` if you need a deadline.

    Args:
        *args: The positional arguments of :class:`EventSource` (``url``).
        **kwargs: Its keyword arguments.

    Returns:
        The client, an async context manager and an async iterator of
        :class:`~streamkit.sse.SSEMessage` values. Iterating raises
        :class:`~streamkit.RemoteProtocolError` for a status other than 200, 204 and
        the transient ones, for a response that is not ``text/event-stream``, and for
        bytes that break the format or its bounds; and
        :class:`~streamkit.Disconnected` when ``max_retries`` is reached.

    Raises:
        ValidationError: an argument is invalid (see :class:`EventSource`).
        ImportError: ``fetch`` is left out and httpx is not installed.
    """
    return EventSource(*args, **kwargs)
