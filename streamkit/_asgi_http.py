"""HTTP plumbing for the pure ASGI 3 app: types, request parsing, JSON responses.

Rules of this module:

* Everything a peer sends is bounded before it is parsed: bodies by a byte limit (checked
  against ``Content-Length`` first, then while reading), query strings by their number
  of fields, header values such as ``Last-Event-ID`` by their length.
* A bad request raises a streamkit error (:class:`~streamkit.ValidationError` and its
  subclasses) naming what was wrong; the app turns it into a JSON error body with the
  error's ``status_hint``. Nothing here sends an error itself except the helpers named
  ``send_*``.
* No web framework is imported: the ASGI types are local aliases.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias
from urllib.parse import parse_qsl

import anyio.lowlevel

from ._errors import Disconnected, HistoryGap, PayloadTooLarge, StreamkitError, ValidationError
from ._events import loads_json

if TYPE_CHECKING:
    from ._session import StreamSession

__all__ = [
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
]

#: The connection scope an ASGI server passes to an application.
Scope: TypeAlias = MutableMapping[str, Any]
#: One ASGI event, received or sent.
Message: TypeAlias = MutableMapping[str, Any]
#: Awaits the next message from the server.
Receive: TypeAlias = Callable[[], Awaitable[Message]]
#: Sends one message to the server.
Send: TypeAlias = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application.
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

Headers: TypeAlias = list[tuple[bytes, bytes]]

_MAX_QUERY_FIELDS: Final = 32
_MAX_LAST_EVENT_ID: Final = 20
_MAX_SEQ_DIGITS: Final = 19


class HTTPError(StreamkitError):
    """An HTTP-level refusal that is not a streamkit domain error (401, 404 route, 405, 503).

    Private to the ASGI layer: it never leaves the app, it only shapes a response.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = code
        self.headers = list(headers)

    def to_dict(self) -> dict[str, Any]:
        """Return ``code`` and ``message`` for the JSON error body."""
        return {"code": self.error_code, "message": self.message}


# -- requests ------------------------------------------------------------------------------


def route_path(scope: Scope) -> str:
    """Return the request path relative to where the app is mounted.

    Servers and frameworks disagree on whether ``path`` already excludes ``root_path``:
    recent Starlette and uvicorn pass the full path together with ``root_path``, older
    ones and some servers pass the path relative to the mount point. Both work here.
    """
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")) :] or "/"
    return path


def get_header(scope: Scope, name: bytes) -> str | None:
    """Return a request header (``name`` in lower case), repeated values joined by ``,``."""
    values = [value for key, value in scope.get("headers", ()) if key == name]
    if not values:
        return None
    return b", ".join(values).decode("latin-1")


def parse_query(scope: Scope) -> dict[str, str]:
    """Parse the query string; a repeated parameter or too many fields is an error.

    Raises:
        ValidationError: the query string has more than 32 fields or a repeated name.
    """
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return {}
    try:
        pairs = parse_qsl(
            raw.decode("latin-1"),
            keep_blank_values=True,
            max_num_fields=_MAX_QUERY_FIELDS,
        )
    except ValueError as exc:
        raise ValidationError(f"query string rejected: {exc}", field="query") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise ValidationError(f"query parameter {key!r} is repeated", field=key)
        query[key] = value
    return query


def parse_seq(field: str, text: str) -> int:
    """Parse a sequence number from a query parameter or header: ASCII digits only.

    Raises:
        ValidationError: ``text`` is not a non-negative integer of at most 19 digits.
    """
    if not (0 < len(text) <= _MAX_SEQ_DIGITS and text.isascii() and text.isdigit()):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValidationError(
            f"{field} must be a non-negative integer (a sequence number), got {shown!r}",
            field=field,
        )
    return int(text)


def resume_point(scope: Scope, query: Mapping[str, str]) -> int:
    """Return where a stream resumes: ``Last-Event-ID``, else ``after``, else ``0``.

    The header wins because a browser's ``EventSource`` reconnects to the same URL (with
    the original ``after``) and names its real position in the header. An empty header
    counts as absent.

    Raises:
        ValidationError: the header or the parameter is not a valid sequence number, or
            the header is longer than 20 characters.
    """
    header = get_header(scope, b"last-event-id")
    if header is not None and header.strip():
        header = header.strip()
        if len(header) > _MAX_LAST_EVENT_ID:
            raise ValidationError(
                f"Last-Event-ID must be at most {_MAX_LAST_EVENT_ID} characters, got {len(header)}",
                field="Last-Event-ID",
            )
        return parse_seq("Last-Event-ID", header)
    after = query.get("after")
    if after is None:
        return 0
    return parse_seq("after", after)


def check_resume_point(session: StreamSession, after: int) -> int:
    """Refuse a resume point outside the session's retained history; return its last ``seq``.

    Checked before a stream starts (HTTP) or is acknowledged (WebSocket), so that a
    client asking for a point past the last event gets an error instead of a stream
    that would silently skip the events up to it.

    Raises:
        ValidationError: ``after`` is past the session's last event.
        HistoryGap: the events just after ``after`` are no longer retained.
    """
    events = session.events
    last = (events[-1].seq or 0) if events else 0
    if after > last:
        raise ValidationError(
            f"cannot resume after {after}: the last event is {last}",
            field="after",
            session_id=session.session_id,
        )
    oldest = (events[0].seq or 1) if events else last + 1
    if after < oldest - 1:
        raise HistoryGap(
            f"cannot resume after {after}: the oldest retained event is {oldest}",
            after=after,
            oldest_seq=oldest,
            session_id=session.session_id,
        )
    return last


def _media_qualities(header: str | None) -> dict[str, float]:
    """Parse an ``Accept``-style header into ``{token: q}`` (bad q values count as 0)."""
    found: dict[str, float] = {}
    if not header:
        return found
    for item in header.split(",")[:64]:
        parts = item.split(";")
        token = parts[0].strip().lower()
        if not token:
            continue
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        found[token] = max(q, found.get(token, 0.0))
    return found


_NDJSON_TYPES: Final = ("application/x-ndjson", "application/ndjson", "application/jsonl")


def wants_ndjson(scope: Scope) -> bool:
    """Whether the client asked for NDJSON rather than SSE.

    NDJSON is chosen when ``Accept`` names ``application/x-ndjson`` (or
    ``application/ndjson``, ``application/jsonl``) explicitly with a quality above zero
    and at least that of an explicit ``text/event-stream``. Anything else gets SSE.
    """
    qualities = _media_qualities(get_header(scope, b"accept"))
    ndjson = max((qualities.get(name, 0.0) for name in _NDJSON_TYPES), default=0.0)
    return ndjson > 0.0 and ndjson >= qualities.get("text/event-stream", 0.0)


def accepts_gzip(scope: Scope) -> bool:
    """Whether ``Accept-Encoding`` allows ``gzip`` (explicitly, or through ``*``)."""
    qualities = _media_qualities(get_header(scope, b"accept-encoding"))
    if "gzip" in qualities:
        return qualities["gzip"] > 0.0
    return qualities.get("*", 0.0) > 0.0


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes.

    ``Content-Length`` is checked before anything is read, so an honest oversize request
    is refused at once; the running total is checked while reading, for chunked bodies
    and dishonest lengths.

    Raises:
        PayloadTooLarge: the body is larger than ``limit``.
        ValidationError: ``Content-Length`` is not a number.
        Disconnected: the client went away before the body ended.
    """
    declared = get_header(scope, b"content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit() and len(declared) <= 19):
            raise ValidationError("Content-Length must be a number", field="Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"the request body is {int(declared)} bytes; the limit is {limit}",
                field="body",
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.disconnect":
            raise Disconnected("the client went away while sending the request body")
        if kind != "http.request":  # pragma: no cover - not sent by conforming servers
            continue
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the request body is larger than the limit of {limit} bytes", field="body"
            )
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_json_object(scope: Scope, receive: Receive, limit: int) -> dict[str, Any]:
    """Read a JSON object body (an empty body counts as ``{}``).

    Raises:
        PayloadTooLarge: the body is larger than ``limit``.
        ValidationError: the content type is not JSON, the body is not strict JSON
            (``NaN`` and ``Infinity`` refused) or not an object.
        Disconnected: the client went away before the body ended.
    """
    body = await read_body(scope, receive, limit)
    if not body.strip():
        return {}
    content_type = (get_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ValidationError(
            f"the request body must be application/json, got {content_type!r}",
            field="Content-Type",
        )
    data = loads_json("the request body", body)
    if not isinstance(data, dict):
        raise ValidationError(
            f"the request body must be a JSON object, got {type(data).__name__}", field="body"
        )
    return data


# -- responses -----------------------------------------------------------------------------

_JSON_HEADERS: Final = (
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
)


def dump_json(data: object) -> bytes:
    """Encode ``data`` as compact UTF-8 JSON."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


async def send_response(
    send: Send,
    status: int,
    body: bytes = b"",
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> None:
    """Send a complete response; with ``head`` the body is left out (its length is kept)."""
    all_headers: Headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_json(
    send: Send,
    status: int,
    data: object,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> None:
    """Send ``data`` as a JSON response."""
    await send_response(
        send, status, dump_json(data), headers=[*_JSON_HEADERS, *headers], head=head
    )


def error_status(error: StreamkitError) -> int:
    """Return the HTTP status for ``error``."""
    if isinstance(error, HTTPError):
        return error.status
    return error.status_hint


async def send_error(send: Send, error: StreamkitError, *, head: bool = False) -> None:
    """Send ``{"error": error.to_dict()}`` with the error's status."""
    headers = error.headers if isinstance(error, HTTPError) else []
    await send_json(
        send, error_status(error), {"error": error.to_dict()}, headers=headers, head=head
    )


# -- server shutdown -----------------------------------------------------------------------

#: The signals servers stop on (Ctrl-C, ``kill``).
_EXIT_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name)
)


@contextlib.contextmanager
def on_exit_signals(callback: Callable[[], object]) -> Iterator[None]:
    """Run ``callback`` in this event loop when the process gets SIGINT or SIGTERM.

    Servers (uvicorn, hypercorn with ``--workers 0``) wait for open responses before
    they tell the app to shut down, and an event stream never ends by itself: without
    this, Ctrl-C waits for the server's grace time. The signal handler found in place
    (the server's own, or Python's ``KeyboardInterrupt``) is chained, not replaced: it
    still runs, after ``callback`` was scheduled, and it is put back when the block
    ends. Nothing happens outside the main thread (signals only reach that one), nor
    for a signal whose handler is the default action or ignored.

    Must be entered in a running event loop (asyncio or Trio).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    native: Any = anyio.lowlevel.current_token().native_token
    # Both are safe to call from a signal handler: they queue and wake the loop.
    call_soon: Callable[[Callable[[], object]], object] = (
        native.call_soon_threadsafe  # asyncio
        if hasattr(native, "call_soon_threadsafe")
        else native.run_sync_soon  # Trio
    )
    chained: dict[int, Callable[[int, Any], Any]] = {}

    def handler(signum: int, frame: Any) -> None:
        call_soon(callback)
        original = chained.get(signum)
        if original is not None:
            original(signum, frame)

    for signum in _EXIT_SIGNALS:
        current = signal.getsignal(signum)
        if callable(current):
            chained[signum] = current
            signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, original in chained.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, original)
