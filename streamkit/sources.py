"""Adapters from LLM SDK streams to text, by duck typing (no SDK is imported).

Each adapter takes the async iterable an SDK's streaming call returns and gives an
async iterator of the text pieces in it, ready for :func:`streamkit.stream_tokens`::

    stream = await client.chat.completions.create(..., stream=True)
    async for event in sk.stream_tokens(sk.sources.openai_text(stream)):
        ...

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
from typing import TypeVar

from ._errors import StreamkitError, ValidationError
from ._validate import type_name

__all__ = [
    "anthropic_event_text",
    "anthropic_text",
    "from_async_chunks",
    "openai_chunk_text",
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
