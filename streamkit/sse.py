"""Server-Sent Events, sans-I/O: events to bytes and bytes to messages, exactly.

Rules of this module:

- The codec (:func:`encode`, :func:`encode_message`, :func:`encode_comment`,
  :func:`encode_retry`, :class:`SSEDecoder`) is pure: no I/O, no clock, no async. Bytes
  go in through one method and messages come back, in the style of h11 and wsproto.
- The decoder follows the WHATWG HTML rules "Interpreting an event stream" to the
  letter, and the way the bytes are split into chunks never changes its output: the
  same messages come back, then the same error if there is one.
- Local misuse (a bad argument, a CR in an event name) raises
  :class:`~streamkit.ValidationError`; bytes from the peer that break the format or a
  size bound raise :class:`~streamkit.RemoteProtocolError` with the line number.
- Every buffer a peer can fill is bounded, and parsing is O(n): each byte is looked at
  a constant number of times, whatever the chunking.

The async helpers at the end (:func:`aiter_sse`, :func:`aiter_events`) wrap the codec
for clients without touching anyio. The reconnecting client (:func:`connect`,
:class:`EventSource`, :class:`Fetch`, :class:`SSEResponse`, :func:`httpx_fetch`) lives
in ``streamkit._sse_client``, which imports this module and anyio; its names are
re-exported here and load when first read, so importing the codec costs the model
and the codec only.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, NamedTuple, Self, TypeVar, overload

from ._decoded import DecodedChunks, DecoderState
from ._errors import RemoteProtocolError, ValidationError
from ._events import StreamEvent
from ._lazy import lazy_exports
from ._validate import check_int, check_str, check_wire_str, type_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator

    # The client, re-exported (see the end of this module).
    from ._sse_client import EventSource, Fetch, SSEResponse, connect, httpx_fetch

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "DEFAULT_MAX_LINE_SIZE",
    "MEDIA_TYPE",
    "EventSource",
    "Fetch",
    "SSEComment",
    "SSEDecoder",
    "SSEMessage",
    "SSEResponse",
    "aiter_events",
    "aiter_sse",
    "connect",
    "encode",
    "encode_comment",
    "encode_message",
    "encode_retry",
    "httpx_fetch",
]

#: The ``Content-Type`` of an event stream.
MEDIA_TYPE: Final = "text/event-stream"
#: The longest line :class:`SSEDecoder` accepts by default, in bytes (2 MiB: room for
#: an event of the registry's default 1 MiB ``max_event_bytes`` and its framing).
DEFAULT_MAX_LINE_SIZE: Final = 2 * 1024 * 1024
#: The largest event :class:`SSEDecoder` accepts by default, in bytes of its data lines.
DEFAULT_MAX_EVENT_SIZE: Final = 2 * 1024 * 1024

_BOM: Final = b"\xef\xbb\xbf"
# Browsers read `retry` into a 64-bit integer and ignore a value that does not fit.
_MAX_RETRY: Final = 2**63 - 1


# --- encoder ------------------------------------------------------------------------


def _lines(name: str, text: str) -> str:
    """Return ``text`` as ``name: line`` lines, one per CR, LF or CRLF-separated line.

    An empty line is written as ``name:`` (no trailing space). Every line of the value,
    empty ones and a trailing one included, gets its own field, so that a decoder gives
    ``text`` back exactly (CR and CRLF as LF).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" not in text:
        return f"{name}: {text}\n" if text else f"{name}:\n"
    return "".join(f"{name}: {line}\n" if line else f"{name}:\n" for line in text.split("\n"))


def _to_bytes(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"{what} holds a lone surrogate and cannot be encoded as UTF-8", field=what
        ) from exc


def encode(event: StreamEvent, *, data: Literal["json", "content"] = "json") -> bytes:
    r"""Encode a stream event as one SSE message.

    The bytes are ``id: <seq>\\n`` (left out while the event has no ``seq``), then
    ``event: <event_type>\\n``, then the data, then an empty line. With
    ``data="json"`` the data is one ``data:`` line holding :meth:`StreamEvent.to_json`
    (cached on the event, and never holding a raw line break); with ``data="content"``
    it is the event's ``content``, one ``data:`` line per line of text.

    Args:
        event: The event to encode.
        data: What the ``data:`` lines carry: the event as JSON, or only its content.

    Returns:
        The UTF-8 bytes of the message.

    Raises:
        ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`, ``data`` is
            neither ``"json"`` nor ``"content"``, or the event holds a lone surrogate.
    """
    if not isinstance(event, StreamEvent):
        raise ValidationError(f"event must be a StreamEvent, got {type_name(event)}", field="event")
    seq = event.seq
    if data == "json":
        body = f"data: {event.to_json()}\n\n"
    elif data == "content":
        body = _lines("data", event.content) + "\n"
    else:
        raise ValidationError(f"data must be 'json' or 'content', got {data!r}", field="data")
    if seq is None:
        return _to_bytes(f"event: {event.event_type}\n{body}", "event")
    return _to_bytes(f"id: {seq}\nevent: {event.event_type}\n{body}", "event")


def encode_message(
    data: str,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one SSE message from its fields.

    The lines come in this order: the comment (one ``:`` line per line of it),
    ``retry:``, ``id:``, ``event:``, the ``data:`` lines, then an empty line. ``data`` is
    split on CR, LF and CRLF and every line, empty or trailing ones included, gets its
    own ``data:`` line, so a decoder gives it back exactly (with CR and CRLF as LF).
    Fields are written ``name: value``, or ``name:`` when the value is empty.

    Args:
        data: The message's data; may be empty, may hold line breaks.
        event: The event type; ``None`` leaves it out (a browser then sees
            ``"message"``). Must not be empty nor hold CR, LF or NUL.
        id: The event id the client will resend as ``Last-Event-ID``; an ``int`` is
            written in decimal, ``""`` resets the client's last event id. Must not hold
            CR, LF or NUL.
        retry: The reconnection time to ask of the client, in milliseconds (>= 0).
        comment: A comment sent before the fields (ignored by clients); may hold line
            breaks.

    Returns:
        The UTF-8 bytes of the message.

    Raises:
        ValidationError: a value has the wrong type, ``event`` is empty, ``event`` or
            ``id`` holds CR, LF or NUL, ``retry`` is negative, or a value holds a lone
            surrogate; the error names the field. Nothing is ever silently rewritten.
    """
    if type(data) is not str:
        check_str("data", data)
    head = ""
    if comment is not None:
        head = _lines("", check_str("comment", comment))
    if retry is not None:
        head += f"retry: {check_int('retry', retry, minimum=0)}\n"
    if id is not None:
        if type(id) is int or (isinstance(id, int) and not isinstance(id, bool)):
            head += f"id: {int(id)}\n"
        else:
            checked = check_wire_str("id", id, max_len=None, allow_empty=True)
            head += f"id: {checked}\n" if checked else "id:\n"
    if event is not None:
        if type(event) is not str or not event or "\n" in event or "\r" in event or "\x00" in event:
            check_wire_str("event", event, max_len=None)
        head += f"event: {event}\n"
    if "\r" in data or "\n" in data or not data:
        text = f"{head}{_lines('data', data)}\n"
    else:
        text = f"{head}data: {data}\n\n"
    try:
        return text.encode()
    except UnicodeEncodeError:
        # `id` and `comment` were checked above; only `data` or `event` can hold it.
        _to_bytes(data, "data")
        _to_bytes(event or "", "event")
        raise  # pragma: no cover - one of the two fields above must hold the surrogate


def encode_comment(text: str) -> bytes:
    r"""Encode a comment followed by an empty line, such as the heartbeat ``: ping\\n\\n``.

    Clients ignore comments; they keep idle connections and proxies alive. Each line of
    ``text`` becomes its own ``:`` line (``":"`` alone for an empty one).

    Args:
        text: The comment; may be empty or hold line breaks.

    Returns:
        The UTF-8 bytes.

    Raises:
        ValidationError: ``text`` is not a ``str`` or holds a lone surrogate.
    """
    return _to_bytes(_lines("", check_str("comment", text)) + "\n", "comment")


def encode_retry(milliseconds: int) -> bytes:
    r"""Encode a reconnection-time hint, ``retry: <milliseconds>\\n\\n``.

    Args:
        milliseconds: How long clients should wait before reconnecting (>= 0).

    Returns:
        The bytes.

    Raises:
        ValidationError: ``milliseconds`` is not an ``int`` or is negative.
    """
    return f"retry: {check_int('retry', milliseconds, minimum=0)}\n\n".encode()


# --- decoder ------------------------------------------------------------------------


class SSEMessage(NamedTuple):
    """One event dispatched by an :class:`SSEDecoder`.

    A named tuple: cheap to make (the decoder makes one per event), immutable, and
    comparable by value.

    Attributes:
        event: The event type; ``"message"`` when the event gave none.
        data: The data lines joined with LF (CR and CRLF in the data came as line ends).
        id: The last event id in force when the event was dispatched (``""`` if none).
        retry: The reconnection time set by a ``retry:`` field of this event, in
            milliseconds, or ``None``.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None

    def to_event(self) -> StreamEvent:
        """Read the data as a :class:`~streamkit.StreamEvent` sent by :func:`encode`.

        Returns:
            The event, checked like :meth:`StreamEvent.from_json`.

        Raises:
            RemoteProtocolError: the data is not the JSON of a valid event (the
                :class:`~streamkit.ValidationError` is chained as its cause).
        """
        try:
            return StreamEvent.from_json(self.data)
        except ValidationError as exc:
            raise RemoteProtocolError(
                f"SSE {self.event!r} message (id {self.id!r}) is not a stream event: {exc}"
            ) from exc


class SSEComment(NamedTuple):
    """A comment line, returned by an :class:`SSEDecoder` made with ``comments=True``.

    Attributes:
        text: The line after its ``:``, one leading space removed.
    """

    text: str


# Makes a message without NamedTuple.__new__'s argument handling: the hot path.
_new_tuple: Any = tuple.__new__

# The form encode() and most servers send an event in: optional `id` and `event` lines,
# one `data` line, the empty line. Read with these patterns an event gives the same
# result as read line by line; the decoder only does so when no event is pending and
# no size bound can be crossed, and on bytes without CR (line ends normalised to LF).
# The `(:)` groups tell an absent `id` or `event` line from an empty one.
_CANONICAL: Final = re.compile(
    rb"^(?:id(:) ?([^\n\x00]*)\n)?(?:event(:) ?([^\n]*)\n)?data: ?([^\n]*)\n\n", re.MULTILINE
)
# How far from a line start the events are all canonical. No groups: they slow sre.
_CANONICAL_RUN: Final = re.compile(
    rb"(?:(?:id: ?[^\n\x00]*\n)?(?:event: ?[^\n]*\n)?data: ?[^\n]*\n\n)*"
)
# Event types seen by a decoder, decoded once (most streams use a handful).
_MAX_CACHED_TYPES: Final = 64

_T_co = TypeVar("_T_co", covariant=True)


def _parse_retry(value: bytes) -> int | None:
    if not value.isdigit():  # bytes.isdigit() is ASCII digits only, and False when empty
        return None
    digits = value.lstrip(b"0") or b"0"
    if len(digits) > 19:
        return None
    number = int(digits)
    return number if number <= _MAX_RETRY else None


class SSEDecoder(DecoderState, Generic[_T_co]):
    """Turn the bytes of an event stream into messages, incrementally.

    Feed bytes as they come with :meth:`feed`; it returns the messages those bytes
    complete. Call :meth:`feed_eof` when the stream ends. The rules are those of the
    WHATWG HTML standard, "Interpreting an event stream":

    - one leading UTF-8 byte order mark is removed (a second one is data);
    - lines end with CR, LF or CRLF, even when a CRLF is split between two chunks;
    - invalid UTF-8 is replaced with U+FFFD;
    - field names are case-sensitive; one space after the colon is removed; a line
      without a colon is a field with an empty value; unknown fields are ignored;
    - ``id`` values holding NUL are ignored; the last event id persists from event to
      event, and an empty ``id`` resets it to ``""``;
    - ``retry`` is used only when it is all ASCII digits (and fits in 64 bits);
    - an event without any ``data`` line is not dispatched; the event type does not
      carry over to the next event;
    - comment lines (starting with ``:``) are ignored, or returned as
      :class:`SSEComment` values when the decoder is made with ``comments=True``;
    - at the end of the stream an incomplete event is discarded.

    Sizes are bounded: a line longer than ``max_line_size`` bytes (without its line
    end), or an event whose ``data`` lines add up to more than ``max_event_size``
    bytes (each counted as its value and 6 bytes for ``data:`` and its line end),
    raises :class:`~streamkit.RemoteProtocolError` naming the line. Other lines are not
    kept past their own line (a later ``id`` or ``event`` replaces an earlier one), so
    only the line bound applies to them.

    When bad bytes come in a chunk that also completes messages, :meth:`feed` returns
    those messages and the next call raises the error, so the messages and the error
    are the same however the bytes were split. After an error the decoder is unusable:
    the first call after it raises the error itself, later calls a copy chained to it.

    Args:
        comments: Return comment lines as :class:`SSEComment` values (for example, to
            see heartbeats) instead of ignoring them.
        max_line_size: The longest line accepted, in bytes.
        max_event_size: The largest event accepted, in bytes (see above).
        last_event_id: The last event id to start from, as a client that reconnects
            with ``Last-Event-ID`` knows it (the standard starts from ``""``).

    Raises:
        ValidationError: an argument has the wrong type or value.
    """

    __slots__ = (
        "_bom",
        "_buf",
        "_clean",
        "_comments",
        "_event_retry",
        "_event_size",
        "_id",
        "_last_event_id",
        "_limit",
        "_line",
        "_max_event",
        "_max_line",
        "_parts",
        "_retry",
        "_skip_lf",
        "_type",
        "_types",
    )
    _format = "SSE"

    @overload
    def __init__(
        self: SSEDecoder[SSEMessage],
        *,
        comments: Literal[False] = False,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        last_event_id: str = "",
    ) -> None: ...

    @overload
    def __init__(
        self: SSEDecoder[SSEMessage | SSEComment],
        *,
        comments: bool,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        last_event_id: str = "",
    ) -> None: ...

    def __init__(
        self,
        *,
        comments: bool = False,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        last_event_id: str = "",
    ) -> None:
        if not isinstance(comments, bool):
            raise ValidationError(
                f"comments must be a bool, got {type_name(comments)}", field="comments"
            )
        self._comments = comments
        self._max_line = check_int("max_line_size", max_line_size, minimum=1)
        self._max_event = check_int("max_event_size", max_event_size, minimum=1)
        # A canonical event at most this long cannot break a size bound.
        self._limit = min(max_line_size, max_event_size)
        self._id = check_wire_str("last_event_id", last_event_id, max_len=None, allow_empty=True)
        self._last_event_id = last_event_id
        self._retry: int | None = None
        # Bytes seen so far while they may still be the start of a byte order mark;
        # None once the question is settled.
        self._bom: bytes | None = b""
        self._buf = bytearray()  # the incomplete last line, never holding CR or LF
        self._skip_lf = False  # the last line ended with a CR: an LF next is its end
        self._parts: list[bytes] = []  # the data lines of the pending event
        self._type = ""
        self._types: dict[bytes, str] = {}
        self._event_size = 0
        self._event_retry: int | None = None
        self._line = 0  # complete lines so far
        DecoderState.__init__(self)
        # Nothing buffered or pending, no error: a chunk that is one whole canonical
        # event can take the fast path in feed().
        self._clean = False

    @property
    def last_event_id(self) -> str:
        """The last event id set by a dispatched event (what to send as ``Last-Event-ID``)."""
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The reconnection time the stream asked for, in milliseconds, or ``None``."""
        return self._retry

    @property
    def line(self) -> int:
        """The number of complete lines read so far."""
        return self._line

    def _fail(self, error: RemoteProtocolError, done: list[Any]) -> list[Any]:
        self._clean = False  # the fast path in feed() must not run past an error
        return DecoderState._fail(self, error, done)

    def _line_too_long(self, line: int) -> RemoteProtocolError:
        # No measured length in the message: it would depend on the chunking.
        return RemoteProtocolError(
            f"SSE line {line} is longer than max_line_size ({self._max_line} bytes)", line=line
        )

    def feed(self, data: bytes | bytearray | memoryview) -> list[_T_co]:
        """Take the next bytes of the stream; return the messages they complete.

        Args:
            data: Any number of bytes, split anywhere.

        Returns:
            The messages (and comments, if asked for) completed by these bytes, in
            order; often an empty list.

        Raises:
            RemoteProtocolError: the bytes break a size bound (the error names the line);
                also raised by every later call.
            ClosedError: :meth:`feed_eof` was already called.
            ValidationError: ``data`` is not bytes-like.
        """
        # The live case: a server flushes each event, so a chunk is often exactly one
        # canonical event. One regex call reads it.
        if (
            self._clean
            and type(data) is bytes
            and len(data) <= self._limit
            and data.endswith(b"\n\n")
            and 13 not in data  # no CR: line ends need no normalising
        ):
            match = _CANONICAL.fullmatch(data)
            if match is not None:
                has_id, new_id, has_type, new_type, value = match.groups()
                line = self._line + 2
                if has_id:
                    self._id = new_id.decode("utf-8", "replace")
                    line += 1
                if has_type:
                    try:
                        event_type = self._types[new_type]
                    except KeyError:
                        event_type = self._event_type(new_type)
                    line += 1
                else:
                    event_type = self._type
                    self._type = ""
                self._line = line
                self._last_event_id = event_id = self._id
                return [
                    _new_tuple(
                        SSEMessage,
                        (event_type or "message", value.decode("utf-8", "replace"), event_id, None),
                    )
                ]
        self._check_usable()
        if type(data) is not bytes:
            if not isinstance(data, bytearray | memoryview):
                raise ValidationError(f"data must be bytes, got {type_name(data)}", field="data")
            data = bytes(data)
        if not data:
            return []
        if self._bom is not None:
            data = self._bom + data
            if len(data) < 3 and _BOM.startswith(data):
                self._bom = data
                return []
            self._bom = None
            if data.startswith(_BOM):
                data = data[3:]
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if 13 in data:
            # A CR ends its line at once; remember it, so that an LF starting the next
            # chunk is taken as the second half of a CRLF.
            self._skip_lf = data[-1] == 13
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        last = data.rfind(10) + 1
        buf = self._buf
        if not last:
            buf += data
            if len(buf) > self._max_line:
                return self._fail(self._line_too_long(self._line + 1), [])
            self._clean = False
            return []
        # Whole lines go on; the rest waits in the buffer.
        if buf:
            block = bytes(buf) + data[:last]
            buf.clear()
        else:
            block = data[:last]
        tail = data[last:]
        out: list[Any] = []
        error = self._block(block, out)
        if error is None and len(tail) > self._max_line:
            error = self._line_too_long(self._line + 1)
        if error is not None:
            return self._fail(error, out)
        buf += tail
        self._clean = (
            not tail and not self._parts and self._event_retry is None and not self._skip_lf
        )
        return out

    def _event_type(self, raw: bytes) -> str:
        """Decode an event type, and remember it while there are few."""
        event_type = raw.decode("utf-8", "replace")
        if len(self._types) < _MAX_CACHED_TYPES:
            self._types[raw] = event_type
        return event_type

    def _block(self, block: bytes, out: list[Any]) -> RemoteProtocolError | None:
        """Read ``block``, whole lines each ending with LF; return the error, if any.

        Every byte is scanned a bounded number of times: the whole block is tried as
        canonical events once, runs of canonical events are looked for at most
        ``_limit`` bytes ahead, and what is read line by line is consumed.
        """
        pos = 0
        size = len(block)
        whole = True
        while pos < size:
            if (self._parts or self._event_retry is not None) and block[pos] == 10:
                # An event is pending and an empty line ends it.
                stop = pos + 1
            elif self._parts or self._event_retry is not None:
                # An event is pending: read up to and with the next empty line.
                blank = block.find(b"\n\n", pos)
                stop = size if blank < 0 else blank + 2
            else:
                if whole:
                    # Most often everything up to the last empty line is canonical.
                    whole = False
                    stop = block.rfind(b"\n\n", pos) + 2
                    if stop > pos + 1 and self._canonical(block, pos, stop, out):
                        pos = stop
                        continue
                run = _CANONICAL_RUN.match(block, pos, pos + self._limit).end()  # type: ignore[union-attr]
                if run > pos:
                    # A run checked by the scan always reads as canonical events.
                    read = self._canonical(block, pos, run, out)
                    assert read
                    pos = run
                    continue
                blank = block.find(b"\n\n", pos)
                stop = size if blank < 0 else blank + 2
            error = self._lines(block[pos:stop], out)
            if error is not None:
                return error
            pos = stop
        return None

    def _canonical(self, block: bytes, start: int, end: int, out: list[Any]) -> bool:
        """Read ``block[start:end]`` if it is all canonical events, and say if it was.

        The events found are all the region holds when they hold all its lines.
        """
        if end - start > self._limit:
            # Too long to know that no event in it breaks a bound: read line by line.
            return False
        types = self._types
        event_id = self._id
        event_type = self._type
        lines = 0
        mark = len(out)
        append = out.append
        for has_id, new_id, has_type, new_type, value in _CANONICAL.findall(block, start, end):
            lines += 2
            if has_id:
                event_id = new_id.decode("utf-8", "replace")
                lines += 1
            if has_type:
                try:
                    event_type = types[new_type]
                except KeyError:
                    event_type = self._event_type(new_type)
                lines += 1
            append(
                _new_tuple(
                    SSEMessage,
                    (event_type or "message", value.decode("utf-8", "replace"), event_id, None),
                )
            )
            event_type = ""
        if lines != block.count(b"\n", start, end):
            del out[mark:]
            return False
        self._id = self._last_event_id = event_id
        self._type = ""
        self._line += lines
        return True

    def _lines(self, block: bytes, out: list[Any]) -> RemoteProtocolError | None:
        """Read ``block`` line by line, by the standard's rules; return the error, if any."""
        lines = block.split(b"\n")
        lines.pop()  # the block ends with an LF: the last item is empty
        parts = self._parts
        max_line = self._max_line
        max_event = self._max_event
        size = self._event_size
        event_type = self._type
        event_id = self._id
        event_retry = self._event_retry
        comments = self._comments
        n = self._line
        error: RemoteProtocolError | None = None
        for line in lines:
            n += 1
            if not line:
                # Dispatch: the id in force becomes the last event id even when there
                # is no data; without data nothing else happens.
                self._last_event_id = event_id
                if parts:
                    text = (
                        parts[0].decode("utf-8", "replace")
                        if len(parts) == 1
                        else b"\n".join(parts).decode("utf-8", "replace")
                    )
                    out.append(
                        _new_tuple(
                            SSEMessage, (event_type or "message", text, event_id, event_retry)
                        )
                    )
                    parts.clear()
                event_type = ""
                event_retry = None
                size = 0
                continue
            if len(line) > max_line:
                error = self._line_too_long(n)
                break
            if line[0] == 58:  # b":", a comment
                if comments:
                    note = line[2:] if line[1:2] == b" " else line[1:]
                    out.append(_new_tuple(SSEComment, (note.decode("utf-8", "replace"),)))
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                size += len(value) + 6
                if size > max_event:
                    error = RemoteProtocolError(
                        f"SSE event with data up to line {n} is larger than max_event_size "
                        f"({size} > {max_event} bytes)",
                        line=n,
                    )
                    break
                parts.append(value)
            elif name == b"id":
                if b"\x00" not in value:
                    event_id = value.decode("utf-8", "replace")
            elif name == b"event":
                event_type = value.decode("utf-8", "replace")
            elif name == b"retry":
                number = _parse_retry(value)
                if number is not None:
                    self._retry = event_retry = number
        self._line = n
        self._event_size = size
        self._type = event_type
        self._id = event_id
        self._event_retry = event_retry
        return error

    def feed_eof(self) -> list[_T_co]:
        """End the stream: discard an incomplete event; later calls to :meth:`feed` fail.

        Returns:
            Always an empty list: the standard dispatches nothing at the end of the
            stream. (It is a list so that both decoders have the same shape.)

        Raises:
            RemoteProtocolError: an earlier call failed with it.
            ClosedError: :meth:`feed_eof` was already called.
        """
        self._check_usable()
        self._closed = True
        self._clean = False
        self._buf.clear()
        self._parts.clear()
        self._bom = None
        return []


# --- async helpers --------------------------------------------------------------------


class _Events:
    """The iterator of :func:`aiter_events`: messages read as stream events."""

    __slots__ = ("_messages",)

    def __init__(self, messages: AsyncIterator[SSEMessage]) -> None:
        self._messages = messages

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        message = await anext(self._messages)
        return message.to_event()


@overload
def aiter_sse(
    chunks: AsyncIterable[bytes],
    *,
    comments: Literal[False] = False,
    max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> AsyncIterator[SSEMessage]: ...


@overload
def aiter_sse(
    chunks: AsyncIterable[bytes],
    *,
    comments: bool,
    max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> AsyncIterator[SSEMessage | SSEComment]: ...


def aiter_sse(
    chunks: AsyncIterable[bytes],
    *,
    comments: bool = False,
    max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> AsyncIterator[Any]:
    """Decode an async iterable of bytes (an HTTP response body) into SSE messages.

    For example ``aiter_sse(response.aiter_bytes())`` with httpx. The iterable is not
    closed here: whoever opened it closes it.

    Args:
        chunks: The bytes of the stream, split anywhere.
        comments: Also yield comment lines as :class:`SSEComment` values.
        max_line_size: See :class:`SSEDecoder`.
        max_event_size: See :class:`SSEDecoder`.

    Returns:
        An async iterator of the messages, ending with the bytes.

    Raises:
        ValidationError: an argument is invalid (raised at once); iterating raises what
            :meth:`SSEDecoder.feed` raises, and what the iterable raises.
    """
    decoder = SSEDecoder(
        comments=comments, max_line_size=max_line_size, max_event_size=max_event_size
    )
    return DecodedChunks(chunks, decoder)


def aiter_events(
    chunks: AsyncIterable[bytes],
    *,
    max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> AsyncIterator[StreamEvent]:
    """Decode the bytes of a stream sent with :func:`encode` into stream events.

    Args:
        chunks: The bytes of the stream, split anywhere.
        max_line_size: See :class:`SSEDecoder`.
        max_event_size: See :class:`SSEDecoder`.

    Returns:
        An async iterator of the events, ending with the bytes.

    Raises:
        ValidationError: an argument is invalid (raised at once); iterating raises
            :class:`~streamkit.RemoteProtocolError` for bytes that break the format or
            a message that is not a stream event, and what the iterable raises.
    """
    return _Events(aiter_sse(chunks, max_line_size=max_line_size, max_event_size=max_event_size))


# --- the client, re-exported ------------------------------------------------------------

# The reconnecting client lives in streamkit._sse_client (it needs anyio); its names
# stay importable from here and load when first read.
_LAZY: Final = dict.fromkeys(
    ("EventSource", "Fetch", "SSEResponse", "connect", "httpx_fetch"), "._sse_client"
)
# Type checkers read the imports at the top instead, so that a misspelt name is an error.
if not TYPE_CHECKING:  # pragma: no branch
    __getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
