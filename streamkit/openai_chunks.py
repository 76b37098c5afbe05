"""OpenAI Chat Completions chunks (``chat.completion.chunk``), as a sans-I/O encoder.

One :class:`ChatCompletionChunkEncoder` per response: feed it a stream's events in
order with :meth:`~ChatCompletionChunkEncoder.encode`; it returns the bytes to send,
``data: <chunk JSON>`` then a blank line per chunk, and ``data: [DONE]`` after the
final event, so that any OpenAI client (``chat.completions.create(stream=True)``)
reads a streamkit stream. The framing is ``data:`` only (no ``id:``, no comments):
the ``openai`` SDK's decoder turns a comment after an event id into an empty event
that fails to parse in the user's loop.

Mapping: ``start`` -> a first chunk with ``{"role": "assistant", "content": ""}``;
``token`` -> ``delta.content``; reasoning -> ``delta.reasoning_content`` (the field
OpenAI-compatible servers use; the SDK keeps unknown fields); a tool call ->
``delta.tool_calls`` by index (``id``, ``type``, ``function.name`` and ``""`` first,
then the argument pieces), indexes from 0 in the order the calls start; ``complete`` ->
a chunk with an empty delta and the ``finish_reason`` (that of the last step, else
``"tool_calls"`` when the stream made calls and ``"stop"`` otherwise), then, when
``include_usage``, a chunk with ``choices: []`` and the summed ``usage``; ``error`` ->
``{"error": {"message": ..., "type": "server_error"}}``, which the SDK raises as
``APIError``. Tool results, sources, steps, app data and heartbeats have no place in
this format and give no bytes.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

from ._errors import ValidationError
from ._events import StreamEvent
from ._parts import (
    ReasoningDelta,
    StepFinish,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ._validate import check_bool, check_str, check_wire_str, type_name

__all__ = ["ChatCompletionChunkEncoder"]

_DONE: Final = b"data: [DONE]\n\n"


class ChatCompletionChunkEncoder:
    """Turns one stream's events into ``chat.completion.chunk`` SSE bytes.

    Args:
        model: The ``model`` field of every chunk.
        completion_id: The ``id`` of every chunk; ``"chatcmpl-"`` and the session id
            (or a timestamp) when left out.
        include_usage: Send the usage chunk before ``[DONE]``, as OpenAI does when the
            request sets ``stream_options={"include_usage": True}``.
        created: The ``created`` Unix time; now when left out.

    Raises:
        ValidationError: an argument has the wrong type.
    """

    __slots__ = (
        "_calls",
        "_created",
        "_done",
        "_finish",
        "_head",
        "_id",
        "_include_usage",
        "_model",
        "_streamed",
        "_usage",
    )

    def __init__(
        self,
        *,
        model: str = "streamkit",
        completion_id: str | None = None,
        include_usage: bool = False,
        created: int | None = None,
    ) -> None:
        self._model = check_str("model", model)
        self._id = None if completion_id is None else check_wire_str("completion_id", completion_id)
        self._include_usage = check_bool("include_usage", include_usage)
        if created is not None and (isinstance(created, bool) or not isinstance(created, int)):
            raise ValidationError(
                f"created must be an int, got {type_name(created)}", field="created"
            )
        self._created = int(time.time()) if created is None else created
        self._calls: dict[str, int] = {}  # call id -> index
        self._streamed: set[str] = set()  # calls whose arguments came as deltas
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._head: str | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the final event was encoded."""
        return self._done

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        head = self._head
        if head is None:
            head = self._head = (
                f'"id":{json.dumps(self._id or f"chatcmpl-{self._created}")},'
                f'"object":"chat.completion.chunk","created":{self._created},'
                f'"model":{json.dumps(self._model, ensure_ascii=False)}'
            )
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = json.dumps([choice], ensure_ascii=False, separators=(",", ":"))
        return f'data: {{{head},"choices":{body}}}\n\n'.encode()

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
        if kind == "token":
            return self._chunk({"content": event.content}) if event.content else b""
        if kind == "part":
            return self._part(event.part)
        if kind == "start":
            if self._id is None and event.session_id is not None:
                self._id = f"chatcmpl-{event.session_id}"
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "complete":
            self._done = True
            reason = self._finish or ("tool_calls" if self._calls else "stop")
            out = [self._chunk({}, reason)]
            if self._include_usage:
                usage = self._usage or Usage()
                data = {
                    "id": self._id or f"chatcmpl-{self._created}",
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": usage.input_tokens,
                        "completion_tokens": usage.output_tokens,
                        "total_tokens": usage.input_tokens + usage.output_tokens,
                        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
                        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
                    },
                }
                out.append(b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")
            out.append(_DONE)
            return b"".join(out)
        if kind == "error":
            self._done = True
            message = event.metadata.get("message")
            error = {
                "message": message if isinstance(message, str) else "the stream failed",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            return b"data: " + json.dumps({"error": error}, ensure_ascii=False).encode() + b"\n\n"
        return b""

    def _part(self, part: object) -> bytes:
        if isinstance(part, TextDelta):
            return self._chunk({"content": part.text}) if part.text else b""
        if isinstance(part, ReasoningDelta):
            return self._chunk({"reasoning_content": part.text}) if part.text else b""
        if isinstance(part, ToolCallStart):
            index = self._calls.setdefault(part.call_id, len(self._calls))
            call = {
                "index": index,
                "id": part.call_id,
                "type": "function",
                "function": {"name": part.name, "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if isinstance(part, ToolCallDelta):
            index_of = self._calls.get(part.call_id)
            if index_of is None or not part.delta:
                return b""
            self._streamed.add(part.call_id)
            return self._chunk(
                {"tool_calls": [{"index": index_of, "function": {"arguments": part.delta}}]}
            )
        if isinstance(part, ToolCallEnd):
            out = b""
            if part.call_id not in self._calls:  # an end without a start: start it here
                out = self._part(ToolCallStart(call_id=part.call_id, name=part.name or "tool"))
            if part.call_id not in self._streamed:
                arguments = json.dumps(part.to_dict()["arguments"], ensure_ascii=False)
                out += self._part(ToolCallDelta(call_id=part.call_id, delta=arguments))
            return out
        if isinstance(part, StepFinish):
            self._finish = part.finish_reason
        elif isinstance(part, Usage):
            self._usage = part if self._usage is None else self._usage + part
        return b""
