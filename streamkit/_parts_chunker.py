"""The streamer's handling of typed parts: chunking per segment, tool-call bookkeeping.

Rules of this module:

* A stream that never sees a part never touches this module: the streamer's text path
  stays as it is. The first part replaces the streamer's chunker by a
  :class:`PartsChunker`, which keeps the text chunker and adds one for the current
  *segment*: the answer's text, the reasoning, or one tool call's arguments.
* Deltas are chunked (``chunk_size``, ``chunk_by``, the flush timer) within their
  segment only. Any change of segment, and any other part, first flushes the current
  segment, so no chunk ever spans a part boundary or two tool calls.
* A tool call is started, takes argument deltas, and ends; its end carries the tool's
  name and the complete arguments, parsed from the deltas when the source did not give
  them. A delta or an end for a call never started, a second start of the same call,
  arguments that are not JSON and a tool result for an unknown call are errors naming
  the part and its position in the source.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._errors import PayloadTooLarge, ValidationError
from ._events import StreamEvent, make_part_event
from ._parts import (
    Part,
    ReasoningDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    Usage,
)
from ._validate import freeze_json

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable

    from ._streamer import TokenStream

__all__ = ["PartsChunker", "accept_part", "part_event", "too_large"]


class _ChunkerLike(Protocol):
    feed: Callable[[str], None]

    @property
    def has_partial(self) -> bool: ...

    def flush(self) -> None: ...


class _Wrap:
    """An ``out`` for a chunker that wraps each chunk into a delta part."""

    __slots__ = ("_make", "_out")

    def __init__(self, out: deque[Any], make: Callable[[str], Part]) -> None:
        self._out = out
        self._make = make

    def append(self, text: str) -> None:
        self._out.append(self._make(text))


_TEXT: Final = "text"
_REASONING: Final = "reasoning"


class _Call:
    __slots__ = ("args", "ended", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.args: list[str] = []
        self.ended = False


class PartsChunker:
    """The streamer's chunker once a part has been seen (same interface, and parts)."""

    __slots__ = (
        "_make_chunker",
        "_segment",
        "_segment_chunker",
        "_text",
        "calls",
        "delta_events",
        "out",
        "reasoning_tokens",
        "tool_calls",
        "usage",
    )

    def __init__(
        self,
        out: deque[Any],
        text_chunker: _ChunkerLike,
        make_chunker: Callable[[Any], _ChunkerLike],
    ) -> None:
        self.out = out
        self._text = text_chunker
        self._make_chunker = make_chunker
        # The current segment: "text", "reasoning", a tool call's id, or None. Text
        # first: the text chunker may hold a partial chunk from before the first part.
        self._segment: str | None = _TEXT
        self._segment_chunker: _ChunkerLike | None = text_chunker
        self.calls: dict[str, _Call] = {}
        self.reasoning_tokens = 0
        self.tool_calls = 0
        self.delta_events = 0
        self.usage: Usage | None = None

    # the chunker interface the streamer uses

    def feed(self, text: str) -> None:
        if self._segment != _TEXT:
            self._switch(_TEXT, self._text)
        self._text.feed(text)

    @property
    def has_partial(self) -> bool:
        chunker = self._segment_chunker
        return chunker is not None and chunker.has_partial

    def flush(self) -> None:
        chunker = self._segment_chunker
        if chunker is not None:
            chunker.flush()

    # parts

    def _switch(self, segment: str | None, chunker: _ChunkerLike | None) -> None:
        current = self._segment_chunker
        if current is not None:
            current.flush()
        self._segment = segment
        self._segment_chunker = chunker

    def feed_part(self, part: Part, index: int) -> ValidationError | None:
        """Take one part; return an error naming it and its position if it is invalid."""
        if type(part) is ReasoningDelta:
            if self._segment != _REASONING:
                self._switch(
                    _REASONING,
                    self._make_chunker(_Wrap(self.out, lambda t: ReasoningDelta(text=t))),
                )
            if part.text:
                self.reasoning_tokens += 1
                assert self._segment_chunker is not None
                self._segment_chunker.feed(part.text)
            return None
        if type(part) is ToolCallDelta:
            call = self.calls.get(part.call_id)
            if call is None or call.ended:
                return _error(
                    part,
                    index,
                    "an argument delta for an unknown call"
                    if call is None
                    else "an argument delta after the call's end",
                )
            if self._segment != part.call_id:
                call_id = part.call_id
                self._switch(
                    call_id,
                    self._make_chunker(
                        _Wrap(self.out, lambda t: ToolCallDelta(call_id=call_id, delta=t))
                    ),
                )
            if part.delta:
                call.args.append(part.delta)
                assert self._segment_chunker is not None
                self._segment_chunker.feed(part.delta)
            return None
        self._switch(None, None)
        if type(part) is ToolCallStart:
            if part.call_id in self.calls:
                return _error(part, index, "a second start of the same call")
            self.calls[part.call_id] = _Call(part.name)
            self.tool_calls += 1
        elif type(part) is ToolCallEnd:
            call = self.calls.get(part.call_id)
            if call is None or call.ended:
                return _error(
                    part,
                    index,
                    "the end of an unknown call" if call is None else "a second end of the call",
                )
            call.ended = True
            arguments = part.arguments
            if arguments is None:
                text = "".join(call.args)
                try:
                    arguments = freeze_json("arguments", json.loads(text)) if text.strip() else {}
                except ValueError as exc:
                    return _error(
                        part, index, f"the call's arguments are not JSON ({exc}): {text[:200]!r}"
                    )
            part = ToolCallEnd(
                call_id=part.call_id, name=part.name or call.name, arguments=arguments
            )
        elif type(part) is ToolResult:
            if part.call_id not in self.calls:
                return _error(part, index, "a result for an unknown call")
        elif type(part) is Usage:
            self.usage = part if self.usage is None else self.usage + part
        self.out.append(part)
        return None


def _error(part: Part, index: int, what: str) -> ValidationError:
    call_id = getattr(part, "call_id", None)
    return ValidationError(
        f"source item {index} ({part.type}"
        + (f", call {call_id!r}" if call_id is not None else "")
        + f"): {what}",
        field="source",
    )


def accept_part(stream: TokenStream, part: Part, index: int) -> bool:
    """The streamer's hook for a part other than text: ``False`` (and an error) if bad."""
    parts = stream._parts
    if parts is None:
        chunker = stream._chunker
        size, by = chunker._size, chunker._by
        make = type(chunker)
        parts = stream._parts = PartsChunker(stream._out, chunker, lambda out: make(out, size, by))
        stream._chunker = parts  # type: ignore[assignment]
    error = parts.feed_part(part, index)
    if error is None:
        return True
    error.session_id = stream._session_id
    stream._exception = error
    return False


def part_event(stream: TokenStream, part: Part, now: float) -> StreamEvent:
    """The streamer's hook that makes the event of a part taken from its output queue."""
    if type(part) is ReasoningDelta:
        parts = stream._parts
        assert parts is not None
        parts.delta_events += 1
        last = stream._last_token_at
        if last is None:
            stream._first_token_at = now
        else:
            stream._itl_max = max(stream._itl_max, now - last)
        stream._last_token_at = now
    return make_part_event(part, stream._session_id)


def too_large(exc: PayloadTooLarge, event: StreamEvent) -> PayloadTooLarge:
    """Return ``exc`` again, its message naming the event (and part) that was too large."""
    what = f"a {event.event_type} event"
    part = event.part
    if part is not None:
        call_id = getattr(part, "call_id", None)
        what = f"a {part.type} part" + (f" (call {call_id!r})" if call_id is not None else "")
    if event.seq is not None:
        what += f" at seq {event.seq}"
    return PayloadTooLarge(f"{what}: {exc.message}", field=exc.field, session_id=exc.session_id)
