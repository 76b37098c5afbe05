"""The Vercel AI SDK UI message stream (what ``useChat`` reads), as a sans-I/O encoder.

One :class:`UIMessageStreamEncoder` per response: feed it a stream's events in order
with :meth:`~UIMessageStreamEncoder.encode`; it returns the bytes to send (zero or more
SSE events, ``data: <json>`` then a blank line, one chunk each), and ``data: [DONE]``
after the final event. It opens and closes the text and reasoning blocks the protocol
needs around the deltas, so the output is always in the order the AI SDK's reader
checks (a ``text-delta`` after its ``text-start``, a tool's output after its input).

Mapping: ``start`` -> ``start`` (``messageId`` is the session id); ``token`` ->
``text-start``/``text-delta``; reasoning -> ``reasoning-start``/``reasoning-delta``;
a step -> ``start-step``/``finish-step``; a tool call -> ``tool-input-start``,
``tool-input-delta``, ``tool-input-available``; a tool result ->
``tool-output-available`` or ``tool-output-error``; a source -> ``source-url`` or
``source-document``; app data -> ``data-<name>``; usage -> ``message-metadata`` with
``{"usage": {...}}`` (summed); ``complete`` -> ``finish`` (``abort`` when the session was
cancelled, as by the chat's stop route); ``error`` -> ``error``;
a heartbeat -> an SSE comment (``: ping``). Other events carry nothing the protocol
has a place for and give no bytes.

Tested with the ``ai`` npm package 6.x (its ``parseJsonEventStream`` with
``uiMessageChunkSchema``, then ``readUIMessageStream``).
"""

from __future__ import annotations

import json
from typing import Any, Final

from ._errors import ValidationError
from ._events import StreamEvent
from ._parts import (
    DataPart,
    ReasoningDelta,
    SourcePart,
    StepFinish,
    StepStart,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    Usage,
)
from ._validate import thaw_json, type_name

__all__ = ["HEADERS", "UIMessageStreamEncoder"]

#: The response headers the AI SDK's own server sends with this stream.
HEADERS: Final = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-vercel-ai-ui-message-stream", b"v1"),
    (b"x-accel-buffering", b"no"),
)

_FINISH_REASONS: Final = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "content_filter": "content-filter",
}
_DONE: Final = b"data: [DONE]\n\n"
_PING: Final = b": ping\n\n"


def _chunk(data: dict[str, Any]) -> bytes:
    return (
        b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )


class UIMessageStreamEncoder:
    """Turns one stream's events into the AI SDK UI message stream, in order.

    Raises from :meth:`encode`:
        ValidationError: the argument is not a StreamEvent, or an event comes after
            the final one.
    """

    __slots__ = ("_block", "_blocks", "_done", "_finish", "_names", "_usage")

    def __init__(self) -> None:
        self._block: tuple[str, str] | None = None  # ("text" | "reasoning", id)
        self._blocks = 0
        self._names: dict[str, str] = {}  # tool call id -> tool name
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the final event was encoded (the stream is complete)."""
        return self._done

    def encode(self, event: StreamEvent) -> bytes:
        """Return the bytes for ``event`` (possibly empty).

        Raises:
            ValidationError: ``event`` is not a StreamEvent, or comes after the final
                event.
        """
        if not isinstance(event, StreamEvent):
            raise ValidationError(
                f"event must be a StreamEvent, got {type_name(event)}", field="event"
            )
        if self._done:
            raise ValidationError(
                f"a {event.event_type} event after the final event", field="event"
            )
        kind = event.event_type
        out: list[bytes] = []
        if kind == "token":
            if event.content:
                self._delta(out, "text", event.content)
        elif kind == "part":
            part = event.part
            assert part is not None
            self._part(out, part)
        elif kind == "start":
            start: dict[str, Any] = {"type": "start"}
            if event.session_id is not None:
                start["messageId"] = event.session_id
            out.append(_chunk(start))
        elif kind == "heartbeat":
            out.append(_PING)
        elif kind == "complete" and event.metadata.get("reason") == "cancelled":
            # Stopped (cancelled): the AI SDK's own stream says "abort", not "finish".
            self._close(out)
            out += [_chunk({"type": "abort"}), _DONE]
            self._done = True
        elif kind == "complete":
            self._close(out)
            finish: dict[str, Any] = {"type": "finish"}
            reason = _FINISH_REASONS.get(self._finish or "stop", "other")
            finish["finishReason"] = reason
            out += [_chunk(finish), _DONE]
            self._done = True
        elif kind == "error":
            self._close(out)
            message = event.metadata.get("message")
            text = message if isinstance(message, str) else "the stream failed"
            out += [_chunk({"type": "error", "errorText": text}), _DONE]
            self._done = True
        return b"".join(out)

    def _close(self, out: list[bytes]) -> None:
        block = self._block
        if block is not None:
            self._block = None
            out.append(_chunk({"type": f"{block[0]}-end", "id": block[1]}))

    def _delta(self, out: list[bytes], kind: str, text: str) -> None:
        block = self._block
        if block is None or block[0] != kind:
            self._close(out)
            self._blocks += 1
            block = self._block = (kind, f"{kind}-{self._blocks}")
            out.append(_chunk({"type": f"{kind}-start", "id": block[1]}))
        out.append(_chunk({"type": f"{kind}-delta", "id": block[1], "delta": text}))

    def _part(self, out: list[bytes], part: object) -> None:
        if isinstance(part, ReasoningDelta):
            if part.text:
                self._delta(out, "reasoning", part.text)
            return
        if isinstance(part, TextDelta):
            if part.text:
                self._delta(out, "text", part.text)
            return
        if isinstance(part, ToolCallDelta):
            if part.delta and part.call_id in self._names:
                out.append(
                    _chunk(
                        {
                            "type": "tool-input-delta",
                            "toolCallId": part.call_id,
                            "inputTextDelta": part.delta,
                        }
                    )
                )
            return
        self._close(out)
        if isinstance(part, ToolCallStart):
            self._names[part.call_id] = part.name
            out.append(
                _chunk(
                    {"type": "tool-input-start", "toolCallId": part.call_id, "toolName": part.name}
                )
            )
        elif isinstance(part, ToolCallEnd):
            name = part.name or self._names.get(part.call_id)
            if name is None:  # an end without a start: announce the call first
                name = "tool"
                out.append(
                    _chunk(
                        {"type": "tool-input-start", "toolCallId": part.call_id, "toolName": name}
                    )
                )
            self._names[part.call_id] = name
            out.append(
                _chunk(
                    {
                        "type": "tool-input-available",
                        "toolCallId": part.call_id,
                        "toolName": name,
                        "input": thaw_json(part.arguments),
                    }
                )
            )
        elif isinstance(part, ToolResult):
            if part.call_id not in self._names:
                return  # the reader refuses a result for a call it has not seen
            if part.error is not None:
                out.append(
                    _chunk(
                        {
                            "type": "tool-output-error",
                            "toolCallId": part.call_id,
                            "errorText": part.error,
                        }
                    )
                )
            else:
                out.append(
                    _chunk(
                        {
                            "type": "tool-output-available",
                            "toolCallId": part.call_id,
                            "output": thaw_json(part.output),
                        }
                    )
                )
        elif isinstance(part, StepStart):
            out.append(_chunk({"type": "start-step"}))
        elif isinstance(part, StepFinish):
            self._finish = part.finish_reason
            out.append(_chunk({"type": "finish-step"}))
        elif isinstance(part, Usage):
            self._usage = part if self._usage is None else self._usage + part
            usage = self._usage.to_dict()
            del usage["type"]
            out.append(_chunk({"type": "message-metadata", "messageMetadata": {"usage": usage}}))
        elif isinstance(part, SourcePart):
            if part.url is not None:
                source: dict[str, Any] = {
                    "type": "source-url",
                    "sourceId": part.source_id,
                    "url": part.url,
                }
                if part.title is not None:
                    source["title"] = part.title
            else:
                source = {
                    "type": "source-document",
                    "sourceId": part.source_id,
                    "mediaType": "text/plain",
                    "title": part.title or part.document,
                }
            out.append(_chunk(source))
        elif isinstance(part, DataPart):
            data: dict[str, Any] = {"type": part.type, "data": thaw_json(part.value)}
            if part.data_id is not None:
                data["id"] = part.data_id
            if part.transient:
                data["transient"] = True
            out.append(_chunk(data))
