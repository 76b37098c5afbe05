"""Newline-delimited JSON, sans-I/O: one JSON object per line, events in and out.

Rules of this module:

- :func:`encode` writes :meth:`StreamEvent.to_json` and one LF: the JSON never holds a
  raw line break, so a line is always exactly one event.
- :class:`NDJSONDecoder` takes bytes through :meth:`~NDJSONDecoder.feed` and returns
  the values the completed lines hold; :meth:`~NDJSONDecoder.feed_eof` ends the stream.
  No I/O, no async; the chunking of the bytes never changes the result.
- The decoder is strict: a line that is not UTF-8, not JSON, or not a valid event
  raises :class:`~streamkit.RemoteProtocolError` naming its line number, with the
  cause chained. It is lenient only where the format leaves room: CRLF line ends, one
  leading byte order mark, blank lines (skipped: a client may send them to keep a
  connection alive) and a last line without its LF.
- Every buffer is bounded (``max_line_size``) and parsing is O(n).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, overload

from ._decoded import DecodedChunks, DecoderState
from ._errors import RemoteProtocolError, ValidationError
from ._events import StreamEvent
from ._validate import check_int, type_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable

__all__ = [
    "DEFAULT_MAX_LINE_SIZE",
    "MEDIA_TYPE",
    "NDJSONDecoder",
    "aiter_events",
    "encode",
]

#: The ``Content-Type`` of an NDJSON stream.
MEDIA_TYPE: Final = "application/x-ndjson"
#: The longest line :class:`NDJSONDecoder` accepts by default, in bytes (2 MiB).
DEFAULT_MAX_LINE_SIZE: Final = 2 * 1024 * 1024

_BOM: Final = b"\xef\xbb\xbf"
_BLANK: Final = b" \t\r"

_T_co = TypeVar("_T_co", covariant=True)


def encode(event: StreamEvent) -> bytes:
    r"""Encode a stream event as one NDJSON line: its JSON and an LF.

    Args:
        event: The event to encode.

    Returns:
        The UTF-8 bytes of the line, for example
        ``b'{"event_id":"...","event_type":"token",...,"seq":3}\\n'``.

    Raises:
        ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`, or holds
            a lone surrogate (which UTF-8 cannot carry).
    """
    if not isinstance(event, StreamEvent):
        raise ValidationError(f"event must be a StreamEvent, got {type_name(event)}", field="event")
    try:
        return f"{event.to_json()}\n".encode()
    except UnicodeEncodeError as exc:
        raise ValidationError(
            "event holds a lone surrogate and cannot be encoded as UTF-8", field="event"
        ) from exc


class NDJSONDecoder(DecoderState, Generic[_T_co]):
    """Turn NDJSON bytes into values, one per line, incrementally.

    By default each line is read with :meth:`StreamEvent.from_json`, so the decoder
    returns :class:`~streamkit.StreamEvent` values. Pass ``parse`` to read lines some
    other way: ``NDJSONDecoder(parse=json.loads)`` returns plain JSON values.

    Lines end with LF (a CR before it is ignored, as JSON whitespace). Blank lines are
    skipped; one UTF-8 byte order mark at the start is removed; a last line without
    an LF is read at :meth:`feed_eof`.

    When a bad line comes in a chunk that also completes good ones, :meth:`feed`
    returns the values before it and the next call raises the error, so the values and
    the error are the same however the bytes were split. After an error the decoder
    is unusable: the first call after it raises the error itself, later calls a copy
    chained to it (the rules both decoders share).

    Args:
        parse: Turns the text of one line into a value; raises :class:`ValueError`
            (:class:`~streamkit.ValidationError` is one) for a bad line.
        max_line_size: The longest line accepted, in bytes (without its line end).

    Raises:
        ValidationError: an argument has the wrong type or value.
    """

    __slots__ = ("_buf", "_line", "_max_line", "_parse")
    _format = "NDJSON"

    @overload
    def __init__(
        self: NDJSONDecoder[StreamEvent], *, max_line_size: int = DEFAULT_MAX_LINE_SIZE
    ) -> None: ...

    @overload
    def __init__(
        self, *, parse: Callable[[str], _T_co], max_line_size: int = DEFAULT_MAX_LINE_SIZE
    ) -> None: ...

    def __init__(
        self,
        *,
        parse: Callable[[str], Any] = StreamEvent.from_json,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    ) -> None:
        if not callable(parse):
            raise ValidationError(f"parse must be callable, got {type_name(parse)}", field="parse")
        self._parse = parse
        self._max_line = check_int("max_line_size", max_line_size, minimum=1)
        self._buf = bytearray()  # the incomplete last line
        self._line = 0  # complete lines so far
        DecoderState.__init__(self)

    @property
    def line(self) -> int:
        """The number of complete lines read so far."""
        return self._line

    def _too_long(self, line: int) -> RemoteProtocolError:
        # No measured length in the message: it would depend on the chunking.
        return RemoteProtocolError(
            f"NDJSON line {line} is longer than max_line_size ({self._max_line} bytes)", line=line
        )

    def _read(self, line: bytes, n: int, out: list[_T_co]) -> RemoteProtocolError | None:
        """Append the value of line ``n`` to ``out``; return the error if it is bad."""
        if n == 1 and line.startswith(_BOM):
            line = line[3:]
        if not line or (line[0] in _BLANK and not line.strip(_BLANK)):
            return None
        try:
            text = line.decode()
        except UnicodeDecodeError as exc:
            error = RemoteProtocolError(f"NDJSON line {n} is not valid UTF-8: {exc}", line=n)
            error.__cause__ = exc
            return error
        try:
            out.append(self._parse(text))
        except ValueError as exc:
            error = RemoteProtocolError(f"NDJSON line {n} is invalid: {exc}", line=n)
            error.__cause__ = exc
            return error
        return None

    def feed(self, data: bytes | bytearray | memoryview) -> list[_T_co]:
        """Take the next bytes of the stream; return the values of the lines they complete.

        Args:
            data: Any number of bytes, split anywhere.

        Returns:
            The values, in order; often an empty list.

        Raises:
            RemoteProtocolError: a line is too long, not UTF-8, or rejected by
                ``parse``; the error names the line and chains the cause. Also raised
                by every later call.
            ClosedError: :meth:`feed_eof` was already called.
            ValidationError: ``data`` is not bytes-like.
        """
        self._check_usable()
        if type(data) is not bytes:
            if not isinstance(data, bytearray | memoryview):
                raise ValidationError(f"data must be bytes, got {type_name(data)}", field="data")
            data = bytes(data)
        lines = data.split(b"\n")
        tail = lines.pop()
        max_line = self._max_line
        if not lines:
            buf = self._buf
            buf += tail
            if len(buf) > max_line:
                return self._fail(self._too_long(self._line + 1), [])
            return []
        if self._buf:
            lines[0] = bytes(self._buf) + lines[0]
            self._buf.clear()
        out: list[_T_co] = []
        n = self._line
        for line in lines:
            n += 1
            if len(line) > max_line:
                self._line = n
                return self._fail(self._too_long(n), out)
            error = self._read(line, n, out)
            if error is not None:
                self._line = n
                return self._fail(error, out)
        self._line = n
        if len(tail) > max_line:
            return self._fail(self._too_long(n + 1), out)
        self._buf += tail
        return out

    def feed_eof(self) -> list[_T_co]:
        """End the stream; return the value of a last line left without its LF.

        Returns:
            The value of the unterminated last line, if there is one and it is not
            blank; else an empty list.

        Raises:
            RemoteProtocolError: the last line is bad (a stream cut in the middle of a
                line usually is), or an earlier call failed with it.
            ClosedError: :meth:`feed_eof` was already called.
        """
        self._check_usable()
        self._closed = True
        out: list[_T_co] = []
        if self._buf:
            line = bytes(self._buf)
            self._buf.clear()
            self._line += 1
            error = self._read(line, self._line, out)
            if error is not None:
                self._fail(error, [])
        return out


def aiter_events(
    chunks: AsyncIterable[bytes], *, max_line_size: int = DEFAULT_MAX_LINE_SIZE
) -> AsyncIterator[StreamEvent]:
    """Decode an async iterable of NDJSON bytes (an HTTP response body) into events.

    The iterable is not closed here: whoever opened it closes it.

    Args:
        chunks: The bytes of the stream, split anywhere.
        max_line_size: See :class:`NDJSONDecoder`.

    Returns:
        An async iterator of the events, ending with the bytes.

    Raises:
        ValidationError: ``max_line_size`` is invalid (raised at once); iterating
            raises what :class:`NDJSONDecoder` raises, and what the iterable raises.
    """
    return DecodedChunks(chunks, NDJSONDecoder(max_line_size=max_line_size))
