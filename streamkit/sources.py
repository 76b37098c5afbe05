"""Adapters from LLM SDK streams to text and typed parts, by duck typing (no SDK import).

Each adapter takes the async iterable an SDK's streaming call returns and gives an
async iterator ready for :func:`streamkit.stream_tokens`. The ``*_parts`` adapters keep
everything the model sent: the answer's text as ``str``, and reasoning, tool calls with
their streamed arguments, usage, citations and the finish reason as typed parts
(:mod:`streamkit.parts`)::

    stream = await client.chat.completions.create(..., stream=True)
    async for event in sk.stream_tokens(sk.sources.openai_chat_parts(stream)):
        ...

A ``*_parts`` adapter raises :class:`~streamkit.StreamkitError` when the stream ends
before its final event (a cut connection the SDK took for a clean end), so that the
stream ends with an ``error`` event instead of a silently short answer.

The ``*_text`` adapters give the text only:

Chunks may be the SDKs' typed objects (read by attribute) or plain dicts (parsed
JSON). Chunks that carry no text (a role, a tool call, usage, a ping) are skipped;
a chunk of a shape the adapter does not know raises
:class:`~streamkit.ValidationError` naming its type and position, and an error
reported inside the stream raises :class:`~streamkit.StreamkitError`, so that
``stream_tokens`` ends with an ``error`` event instead of a silently short text.
Closing the adapter closes the SDK stream (its ``aclose()``, or an async ``close()``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from typing import Final, TypeVar

from ._errors import StreamkitError, ValidationError
from ._parts import (
    Part,
    ReasoningDelta,
    SourcePart,
    StepFinish,
    StepStart,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ._validate import type_name

__all__ = [
    "anthropic_event_text",
    "anthropic_parts",
    "anthropic_text",
    "from_async_chunks",
    "openai_chat_parts",
    "openai_chunk_text",
    "openai_responses_parts",
    "openai_text",
]

_T = TypeVar("_T")


def _field(obj: object, name: str) -> object:
    """Read ``name`` from a dict key or an attribute; ``None`` when absent."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _text(value: object, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValidationError(f"{where} must be a str, got {type_name(value)}", field=where)


def _reported_error(error: object) -> StreamkitError:
    message = _field(error, "message")
    if not isinstance(message, str):
        message = repr(error)
    return StreamkitError(f"the model stream reported an error: {message}")


def openai_chunk_text(chunk: object) -> str | None:
    """Return the text in one OpenAI streaming chunk, or ``None`` if it has none.

    Understands Chat Completions chunks (``choices[0].delta.content``; only the
    choice with ``index`` 0 when several are streamed), legacy Completions chunks
    (``choices[0].text``) and Responses API events (``type`` is
    ``"response.output_text.delta"``, text in ``delta``; other event types carry no
    text).

    Args:
        chunk: A chunk object or dict.

    Returns:
        The text, or ``None``.

    Raises:
        ValidationError: the chunk has neither ``choices`` nor a ``type``, or a text
            field is not a string.
        StreamkitError: the chunk reports an error (an ``error`` field or event).
    """
    choices = _field(chunk, "choices")
    if choices is not None:
        if not isinstance(choices, Sequence) or isinstance(choices, str):
            raise ValidationError(
                f"choices must be a sequence, got {type_name(choices)}", field="choices"
            )
        for choice in choices:
            if _field(choice, "index") not in (None, 0):
                continue
            delta = _field(choice, "delta")
            if delta is not None:
                return _text(_field(delta, "content"), "delta.content")
            return _text(_field(choice, "text"), "choices.text")
        return None
    kind = _field(chunk, "type")
    if isinstance(kind, str):
        if kind == "response.output_text.delta":
            return _text(_field(chunk, "delta"), "delta")
        if kind in ("error", "response.failed"):
            raise _reported_error(_field(chunk, "error") or _field(chunk, "response") or chunk)
        return None
    error = _field(chunk, "error")
    if error is not None:
        raise _reported_error(error)
    raise ValidationError(
        f"an OpenAI stream chunk must have `choices` or a `type`, got {type_name(chunk)}",
        field="chunk",
    )


def anthropic_event_text(event: object) -> str | None:
    """Return the text in one Anthropic streaming event, or ``None`` if it has none.

    Text comes from ``content_block_delta`` events whose ``delta.type`` is
    ``"text_delta"`` (and from a ``content_block_start`` whose text block is not
    empty). Other events (``message_start``, ``ping``, tool input and thinking
    deltas, ...) carry no text. The SDK's helper stream also yields ``"text"``
    events that repeat the deltas: they are skipped, so text is never doubled.

    Args:
        event: An event object or dict.

    Returns:
        The text, or ``None``.

    Raises:
        ValidationError: the event has no string ``type``, or a text field is not a
            string.
        StreamkitError: the event is an ``error`` event.
    """
    kind = _field(event, "type")
    if not isinstance(kind, str):
        raise ValidationError(
            f"an Anthropic stream event must have a string `type`, got {type_name(event)}",
            field="event",
        )
    if kind == "content_block_delta":
        delta = _field(event, "delta")
        if _field(delta, "type") == "text_delta":
            return _text(_field(delta, "text"), "delta.text")
        return None
    if kind == "content_block_start":
        block = _field(event, "content_block")
        if _field(block, "type") == "text":
            return _text(_field(block, "text"), "content_block.text") or None
        return None
    if kind == "error":
        raise _reported_error(_field(event, "error") or event)
    return None


def from_async_chunks(
    chunks: AsyncIterable[_T], extract: Callable[[_T], str | None]
) -> AsyncIterator[str]:
    """Yield the text ``extract`` finds in each chunk, skipping chunks without any.

    Args:
        chunks: Any async iterable of chunks.
        extract: Returns a chunk's text, or ``None`` (or ``""``) when it has none.

    Returns:
        An async iterator of text; closing it closes ``chunks``.

    Raises:
        ValidationError: at once, if ``chunks`` is not an async iterable or
            ``extract`` is not callable; while iterating, if ``extract`` returns
            something else than a ``str`` or ``None``, or rejects a chunk (the
            message names the chunk's position).
    """
    if not isinstance(chunks, AsyncIterable):
        raise ValidationError(
            f"chunks must be an async iterable, got {type_name(chunks)}", field="chunks"
        )
    if not callable(extract):
        raise ValidationError(
            f"extract must be callable, got {type_name(extract)}", field="extract"
        )
    return _extract_all(chunks, extract)


async def _extract_all(
    chunks: AsyncIterable[_T], extract: Callable[[_T], str | None]
) -> AsyncIterator[str]:
    iterator = aiter(chunks)
    try:
        index = 0
        async for chunk in iterator:
            try:
                text = extract(chunk)
            except ValidationError as exc:
                raise ValidationError(f"chunk {index}: {exc.message}", field=exc.field) from exc
            if text is not None:
                if not isinstance(text, str):
                    raise ValidationError(
                        f"chunk {index}: extract must return a str or None, got {type_name(text)}",
                        field="extract",
                    )
                if text:
                    yield text
            index += 1
    finally:
        await _close(iterator)
        if iterator is not chunks:
            await _close(chunks)


async def _close(obj: object) -> None:
    close = getattr(obj, "aclose", None) or getattr(obj, "close", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result


def openai_text(chunks: AsyncIterable[object]) -> AsyncIterator[str]:
    """Yield the text of an OpenAI stream (see :func:`openai_chunk_text`).

    Args:
        chunks: What ``create(..., stream=True)`` returns, or any async iterable of
            chunk objects or dicts.

    Returns:
        An async iterator of text; closing it closes ``chunks``.

    Raises:
        ValidationError: at once, if ``chunks`` is not an async iterable; while
            iterating, for a chunk of an unknown shape.
        StreamkitError: while iterating, if the stream reports an error.
    """
    return from_async_chunks(chunks, openai_chunk_text)


def anthropic_text(events: AsyncIterable[object]) -> AsyncIterator[str]:
    """Yield the text of an Anthropic stream (see :func:`anthropic_event_text`).

    Args:
        events: What ``messages.create(..., stream=True)`` or ``messages.stream()``
            gives, or any async iterable of event objects or dicts.

    Returns:
        An async iterator of text; closing it closes ``events``.

    Raises:
        ValidationError: at once, if ``events`` is not an async iterable; while
            iterating, for an event of an unknown shape.
        StreamkitError: while iterating, if the stream reports an error.
    """
    return from_async_chunks(events, anthropic_event_text)


# --- adapters that keep everything -----------------------------------------------------

_Item = str | Part


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _str_field(obj: object, name: str, where: str) -> str | None:
    value = _field(obj, name)
    if value is None:
        return None
    return _req(obj, name, where)


def _req(obj: object, name: str, where: str) -> str:
    value = _field(obj, name)
    if not isinstance(value, str):
        raise ValidationError(f"{where} must be a str, got {type_name(value)}", field=where)
    return value


def _after_end(what: str) -> ValidationError:
    return ValidationError(f"{what}: nothing may follow the stream's final event", field="type")


def _cut(provider: str, what: str) -> StreamkitError:
    return StreamkitError(
        f"the {provider} stream ended before its {what}: the connection was cut or the "
        "stream is incomplete"
    )


_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "pause_turn": "pause",
}


def _adapter(
    chunks: object, what: str, run: Callable[[AsyncIterator[object]], AsyncIterator[_Item]]
) -> AsyncIterator[_Item]:
    if not isinstance(chunks, AsyncIterable):
        raise ValidationError(
            f"{what} must be an async iterable, got {type_name(chunks)}", field=what
        )
    return _run_adapter(chunks, run)


async def _run_adapter(
    chunks: AsyncIterable[object], run: Callable[[AsyncIterator[object]], AsyncIterator[_Item]]
) -> AsyncIterator[_Item]:
    iterator = aiter(chunks)
    try:
        async for item in run(iterator):
            yield item
    finally:
        await _close(iterator)
        if iterator is not chunks:
            await _close(chunks)


def _positioned(index: int, exc: ValidationError) -> ValidationError:
    return ValidationError(f"chunk {index}: {exc.message}", field=exc.field)


def openai_chat_parts(chunks: AsyncIterable[object]) -> AsyncIterator[str | Part]:
    """Yield everything in an OpenAI Chat Completions stream: text and typed parts.

    ``delta.content`` and ``delta.refusal`` become text; ``delta.reasoning_content``
    or ``delta.reasoning`` (sent by OpenAI-compatible servers that stream reasoning)
    a :class:`~streamkit.parts.ReasoningDelta`; ``delta.tool_calls`` (by ``index``,
    parallel calls included) a :class:`~streamkit.parts.ToolCallStart`, argument
    deltas, and a :class:`~streamkit.parts.ToolCallEnd` per call once the choice's
    ``finish_reason`` comes; then a :class:`~streamkit.parts.StepFinish` with that
    reason, and a :class:`~streamkit.parts.Usage` from the last chunk when the request
    set ``stream_options={"include_usage": True}``. Only the choice with index 0 is read.

    Args:
        chunks: What ``create(..., stream=True)`` returns, or any async iterable of
            chunk objects or dicts.

    Returns:
        An async iterator of ``str`` and parts; closing it closes ``chunks``.

    Raises:
        ValidationError: at once, if ``chunks`` is not an async iterable; while
            iterating, for a chunk of an unknown shape or a tool-call delta of an
            index never started (the message names the chunk's position).
        StreamkitError: while iterating, if a chunk reports an error, or the stream
            ends before a ``finish_reason``.
    """
    return _adapter(chunks, "chunks", _openai_chat)


async def _openai_chat(iterator: AsyncIterator[object]) -> AsyncIterator[_Item]:
    calls: dict[int, str] = {}  # index -> call id, open calls
    finished = False
    index = -1
    async for chunk in iterator:
        index += 1
        try:
            if index == 0:
                yield StepStart()
            error = _field(chunk, "error")
            if error is not None:
                raise _reported_error(error)
            choices = _field(chunk, "choices")
            if not isinstance(choices, Sequence) or isinstance(choices, str):
                raise ValidationError(
                    f"choices must be a sequence, got {type_name(choices)}", field="choices"
                )
            for choice in choices:
                if _field(choice, "index") not in (None, 0):
                    continue
                if finished:
                    raise _after_end("a choice after the finish_reason")
                delta = _field(choice, "delta")
                if delta is not None:
                    for name in ("reasoning_content", "reasoning"):
                        text = _field(delta, name)
                        if isinstance(text, str) and text:
                            yield ReasoningDelta(text=text)
                    for name in ("content", "refusal"):
                        text = _str_field(delta, name, f"delta.{name}")
                        if text:
                            yield text
                    tool_calls = _field(delta, "tool_calls")
                    if tool_calls is not None and not isinstance(tool_calls, Sequence):
                        raise ValidationError(
                            f"delta.tool_calls must be a sequence, got {type_name(tool_calls)}",
                            field="delta.tool_calls",
                        )
                    for call in tool_calls or ():
                        for part in _openai_tool_delta(call, calls):
                            yield part
                reason = _str_field(choice, "finish_reason", "finish_reason")
                if reason is not None:
                    for call_id in calls.values():
                        yield ToolCallEnd(call_id=call_id)
                    calls.clear()
                    finished = True
                    yield StepFinish(finish_reason=reason)
            usage = _field(chunk, "usage")
            if usage is not None:
                yield Usage(
                    input_tokens=_int(_field(usage, "prompt_tokens")),
                    output_tokens=_int(_field(usage, "completion_tokens")),
                    reasoning_tokens=_int(
                        _field(_field(usage, "completion_tokens_details"), "reasoning_tokens")
                    ),
                    cached_tokens=_int(
                        _field(_field(usage, "prompt_tokens_details"), "cached_tokens")
                    ),
                )
        except ValidationError as exc:
            raise _positioned(index, exc) from exc
    if not finished:
        raise _cut("OpenAI", "finish_reason")


def _openai_tool_delta(call: object, calls: dict[int, str]) -> list[Part]:
    position = _field(call, "index")
    if not isinstance(position, int):
        raise ValidationError(
            f"tool_calls[].index must be an int, got {type_name(position)}",
            field="tool_calls.index",
        )
    out: list[Part] = []
    function = _field(call, "function")
    call_id = calls.get(position)
    new_id = _str_field(call, "id", "tool_calls.id")
    if call_id is None or (new_id is not None and new_id != call_id):
        if new_id is None:
            raise ValidationError(
                f"a tool_calls delta for index {position}, which no call started",
                field="tool_calls.id",
            )
        name = _req(function, "name", "tool_calls.function.name")
        calls[position] = call_id = new_id
        out.append(ToolCallStart(call_id=new_id, name=name))
    arguments = _str_field(function, "arguments", "tool_calls.function.arguments")
    if arguments:
        out.append(ToolCallDelta(call_id=call_id, delta=arguments))
    return out


def openai_responses_parts(events: AsyncIterable[object]) -> AsyncIterator[str | Part]:
    """Yield everything in an OpenAI Responses API event stream: text and typed parts.

    ``response.output_text.delta`` and ``response.refusal.delta`` become text;
    ``response.reasoning_summary_text.delta`` and ``response.reasoning_text.delta`` a
    :class:`~streamkit.parts.ReasoningDelta`; a ``function_call`` output item a
    :class:`~streamkit.parts.ToolCallStart` (``response.output_item.added``), its
    ``response.function_call_arguments.delta`` events argument deltas, and a
    :class:`~streamkit.parts.ToolCallEnd` (``response.output_item.done``); a
    ``url_citation`` annotation a :class:`~streamkit.parts.SourcePart`;
    ``response.completed`` (or ``response.incomplete``) a
    :class:`~streamkit.parts.Usage` and a :class:`~streamkit.parts.StepFinish`. Other
    event types carry nothing to keep and are skipped.

    Args:
        events: What ``responses.create(..., stream=True)`` returns, or any async
            iterable of event objects or dicts.

    Returns:
        An async iterator of ``str`` and parts; closing it closes ``events``.

    Raises:
        ValidationError: at once, if ``events`` is not an async iterable; while
            iterating, for an event without a string ``type``, or arguments of an
            item never added (the message names the event's position).
        StreamkitError: while iterating, for an ``error`` or ``response.failed``
            event, or if the stream ends before ``response.completed``.
    """
    return _adapter(events, "events", _openai_responses)


async def _openai_responses(iterator: AsyncIterator[object]) -> AsyncIterator[_Item]:
    items: dict[str, str] = {}  # output item id -> call id
    streamed: set[str] = set()  # call ids whose arguments came as deltas
    calls = 0
    finished = False
    index = -1
    async for event in iterator:
        index += 1
        try:
            kind = _field(event, "type")
            if not isinstance(kind, str):
                raise ValidationError(
                    f"a Responses API event must have a string `type`, got {type_name(event)}",
                    field="type",
                )
            if finished:
                raise _after_end(f"a {kind} event after response.completed")
            if kind in ("response.output_text.delta", "response.refusal.delta"):
                text = _req(event, "delta", "delta")
                if text:
                    yield text
            elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
                text = _req(event, "delta", "delta")
                if text:
                    yield ReasoningDelta(text=text)
            elif kind == "response.created":
                yield StepStart()
            elif kind == "response.output_item.added":
                item = _field(event, "item")
                if _field(item, "type") == "function_call":
                    call_id = _req(item, "call_id", "item.call_id")
                    name = _req(item, "name", "item.name")
                    item_id = _str_field(item, "id", "item.id") or call_id
                    items[item_id] = call_id
                    calls += 1
                    yield ToolCallStart(call_id=call_id, name=name)
            elif kind == "response.function_call_arguments.delta":
                item_id = _req(event, "item_id", "item_id")
                found = items.get(item_id)
                if found is None:
                    raise ValidationError(
                        f"function call arguments for item {item_id!r}, which was never added",
                        field="item_id",
                    )
                call_id = found
                text = _req(event, "delta", "delta")
                if text:
                    streamed.add(call_id)
                    yield ToolCallDelta(call_id=call_id, delta=text)
            elif kind == "response.output_item.done":
                item = _field(event, "item")
                if _field(item, "type") == "function_call":
                    call_id = _req(item, "call_id", "item.call_id")
                    if call_id not in streamed:
                        arguments = _str_field(item, "arguments", "item.arguments")
                        if arguments:
                            yield ToolCallDelta(call_id=call_id, delta=arguments)
                    yield ToolCallEnd(call_id=call_id)
            elif kind == "response.output_text.annotation.added":
                annotation = _field(event, "annotation")
                url = _field(annotation, "url")
                if _field(annotation, "type") == "url_citation" and isinstance(url, str):
                    title = _field(annotation, "title")
                    yield SourcePart(
                        source_id=f"src-{index}",
                        url=url,
                        title=title if isinstance(title, str) else None,
                    )
            elif kind in ("response.completed", "response.incomplete"):
                response = _field(event, "response")
                usage = _field(response, "usage")
                if usage is not None:
                    yield Usage(
                        input_tokens=_int(_field(usage, "input_tokens")),
                        output_tokens=_int(_field(usage, "output_tokens")),
                        reasoning_tokens=_int(
                            _field(_field(usage, "output_tokens_details"), "reasoning_tokens")
                        ),
                        cached_tokens=_int(
                            _field(_field(usage, "input_tokens_details"), "cached_tokens")
                        ),
                    )
                reason = "tool_calls" if calls else "stop"
                if kind == "response.incomplete":
                    detail = _field(_field(response, "incomplete_details"), "reason")
                    reason = detail if isinstance(detail, str) else "incomplete"
                finished = True
                yield StepFinish(finish_reason=reason)
            elif kind in ("error", "response.failed"):
                raise _reported_error(
                    _field(_field(event, "response"), "error") or _field(event, "error") or event
                )
        except ValidationError as exc:
            raise _positioned(index, exc) from exc
    if not finished:
        raise _cut("OpenAI Responses", "response.completed event")


def anthropic_parts(events: AsyncIterable[object]) -> AsyncIterator[str | Part]:
    """Yield everything in an Anthropic Messages stream: text and typed parts.

    ``message_start`` gives a :class:`~streamkit.parts.StepStart`; ``text_delta``
    text; ``thinking_delta`` a :class:`~streamkit.parts.ReasoningDelta`; a
    ``tool_use`` block a :class:`~streamkit.parts.ToolCallStart`, its
    ``input_json_delta`` argument deltas and, at ``content_block_stop``, a
    :class:`~streamkit.parts.ToolCallEnd`; a citation with a URL or a document title
    a :class:`~streamkit.parts.SourcePart`; ``message_stop`` a
    :class:`~streamkit.parts.Usage` (input from ``message_start``, output from the
    last ``message_delta``) and a :class:`~streamkit.parts.StepFinish` (``end_turn``
    reads ``"stop"``, ``tool_use`` ``"tool_calls"``, ``max_tokens`` ``"length"``).
    Pings, signatures and the SDK helper's own repeated events are skipped.

    Args:
        events: What ``messages.create(..., stream=True)`` or ``messages.stream()``
            gives, or any async iterable of event objects or dicts.

    Returns:
        An async iterator of ``str`` and parts; closing it closes ``events``.

    Raises:
        ValidationError: at once, if ``events`` is not an async iterable; while
            iterating, for an event without a string ``type``, or a JSON delta for a
            block that is not a tool call (the message names the event's position).
        StreamkitError: while iterating, for an ``error`` event, or if the stream
            ends before ``message_stop``.
    """
    return _adapter(events, "events", _anthropic)


async def _anthropic(iterator: AsyncIterator[object]) -> AsyncIterator[_Item]:
    blocks: dict[object, str] = {}  # block index -> tool call id
    input_tokens = cached = output_tokens = 0
    reason: str | None = None
    finished = False
    index = -1
    async for event in iterator:
        index += 1
        try:
            kind = _field(event, "type")
            if not isinstance(kind, str):
                raise ValidationError(
                    f"an Anthropic stream event must have a string `type`, got {type_name(event)}",
                    field="type",
                )
            if finished and kind != "ping":
                raise _after_end(f"a {kind} event after message_stop")
            if kind == "content_block_delta":
                delta = _field(event, "delta")
                delta_type = _field(delta, "type")
                if delta_type == "text_delta":
                    text = _req(delta, "text", "delta.text")
                    if text:
                        yield text
                elif delta_type == "thinking_delta":
                    text = _req(delta, "thinking", "delta.thinking")
                    if text:
                        yield ReasoningDelta(text=text)
                elif delta_type == "input_json_delta":
                    call_id = blocks.get(_field(event, "index"))
                    if call_id is None:
                        raise ValidationError(
                            f"an input_json_delta for block {_field(event, 'index')!r}, "
                            "which is not a tool_use block",
                            field="index",
                        )
                    text = _req(delta, "partial_json", "delta.partial_json")
                    if text:
                        yield ToolCallDelta(call_id=call_id, delta=text)
                elif delta_type == "citations_delta":
                    source = _anthropic_citation(_field(delta, "citation"), index)
                    if source is not None:
                        yield source
            elif kind == "content_block_start":
                block = _field(event, "content_block")
                block_type = _field(block, "type")
                if block_type == "text":
                    first = _str_field(block, "text", "content_block.text")
                    if first:
                        yield first
                elif block_type == "thinking":
                    first = _str_field(block, "thinking", "content_block.thinking")
                    if first:
                        yield ReasoningDelta(text=first)
                elif block_type == "tool_use":
                    call_id = _req(block, "id", "content_block.id")
                    name = _req(block, "name", "content_block.name")
                    position = _field(event, "index")
                    blocks[position] = call_id
                    yield ToolCallStart(call_id=call_id, name=name)
            elif kind == "content_block_stop":
                call_id = blocks.pop(_field(event, "index"), None)
                if call_id is not None:
                    yield ToolCallEnd(call_id=call_id)
            elif kind == "message_start":
                usage = _field(_field(event, "message"), "usage")
                input_tokens = _int(_field(usage, "input_tokens"))
                cached = _int(_field(usage, "cache_read_input_tokens"))
                output_tokens = _int(_field(usage, "output_tokens"))
                yield StepStart()
            elif kind == "message_delta":
                stop = _field(_field(event, "delta"), "stop_reason")
                if isinstance(stop, str):
                    reason = _FINISH.get(stop, stop)
                usage = _field(event, "usage")
                output_tokens = _int(_field(usage, "output_tokens")) or output_tokens
                input_tokens = _int(_field(usage, "input_tokens")) or input_tokens
            elif kind == "message_stop":
                finished = True
                yield Usage(
                    input_tokens=input_tokens + cached,
                    output_tokens=output_tokens,
                    cached_tokens=cached,
                )
                yield StepFinish(finish_reason=reason)
            elif kind == "error":
                raise _reported_error(_field(event, "error") or event)
        except ValidationError as exc:
            raise _positioned(index, exc) from exc
    if not finished:
        raise _cut("Anthropic", "message_stop event")


def _anthropic_citation(citation: object, index: int) -> SourcePart | None:
    url = _field(citation, "url")
    title = _field(citation, "title") or _field(citation, "document_title")
    title = title if isinstance(title, str) else None
    if isinstance(url, str):
        return SourcePart(source_id=f"src-{index}", url=url, title=title)
    if title is not None:
        return SourcePart(source_id=f"src-{index}", document=title, title=title)
    return None
