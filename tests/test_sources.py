"""streamkit.sources: text out of OpenAI- and Anthropic-style chunks, by duck typing."""

from __future__ import annotations

from types import SimpleNamespace as NS
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import streamkit as sk
from streamkit import sources

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

pytestmark = pytest.mark.anyio

EXACT = sk.StreamConfig(chunk_size=1, stream_delay=0, flush_interval=60, heartbeat_interval=None)


class SDKStream:
    """Like an SDK's stream object: async iterable, with an async ``close()``."""

    def __init__(self, chunks: Iterable[object]) -> None:
        self.chunks = list(chunks)
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[object]:
        for chunk in self.chunks:
            yield chunk

    async def close(self) -> None:
        self.closed = True


async def texts(stream: AsyncIterator[str]) -> list[str]:
    return [text async for text in stream]


def openai_chunk(content: str | None, **delta: Any) -> NS:
    return NS(choices=[NS(index=0, delta=NS(content=content, **delta))])


async def test_openai_chat_chunks_as_objects() -> None:
    chunks = [
        openai_chunk(None, role="assistant"),
        openai_chunk("Hel"),
        openai_chunk("lo"),
        openai_chunk(None, tool_calls=[NS(index=0)]),
        openai_chunk(""),
        NS(choices=[], usage=NS(total_tokens=3)),  # the usage chunk at the end
    ]
    assert await texts(sources.openai_text(SDKStream(chunks))) == ["Hel", "lo"]


async def test_openai_chunks_as_dicts_and_other_api_shapes() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "a"}}]},
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        {"choices": [{"index": 0, "text": "b", "finish_reason": None}]},  # completions
        {"type": "response.created", "response": {}},
        {"type": "response.output_text.delta", "delta": "c"},  # Responses API
        NS(type="response.output_text.delta", delta="d"),
        {"type": "response.completed"},
    ]
    assert await texts(sources.openai_text(SDKStream(chunks))) == ["a", "b", "c", "d"]


async def test_openai_errors_and_unknown_shapes() -> None:
    with pytest.raises(sk.ValidationError, match=r"chunk 1: .*got int"):
        await texts(sources.openai_text(SDKStream([openai_chunk("a"), 42])))
    with pytest.raises(sk.ValidationError, match=r"delta\.content must be a str, got list"):
        await texts(sources.openai_text(SDKStream([openai_chunk([1])])))  # type: ignore[arg-type]
    with pytest.raises(sk.StreamkitError, match="reported an error: overloaded"):
        await texts(sources.openai_text(SDKStream([{"error": {"message": "overloaded"}}])))
    with pytest.raises(sk.StreamkitError, match="reported an error: bad"):
        await texts(
            sources.openai_text(SDKStream([{"type": "error", "error": {"message": "bad"}}]))
        )


async def test_anthropic_events_as_objects_and_dicts() -> None:
    events = [
        NS(type="message_start", message=NS(id="m")),
        NS(type="content_block_start", index=0, content_block=NS(type="text", text="")),
        NS(type="ping"),
        NS(type="content_block_delta", index=0, delta=NS(type="text_delta", text="Hi")),
        NS(type="text", text="Hi", snapshot="Hi"),  # the SDK helper's repeat: skipped
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": " there"}},
        {"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": "{"}},
        {"type": "content_block_start", "content_block": {"type": "text", "text": "!"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
        {"type": "message_stop"},
    ]
    assert await texts(sources.anthropic_text(SDKStream(events))) == ["Hi", " there", "!"]


async def test_anthropic_errors_and_unknown_shapes() -> None:
    with pytest.raises(sk.ValidationError, match=r"chunk 0: .*got dict"):
        await texts(sources.anthropic_text(SDKStream([{"delta": "x"}])))
    with pytest.raises(sk.StreamkitError, match="reported an error: Overloaded"):
        await texts(
            sources.anthropic_text(
                SDKStream(
                    [
                        {
                            "type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"},
                        }
                    ]
                )
            )
        )


def test_adapters_reject_what_is_not_an_async_iterable_at_once() -> None:
    with pytest.raises(sk.ValidationError, match="list") as info:
        sources.openai_text([openai_chunk("a")])  # type: ignore[arg-type]
    assert info.value.field == "chunks"
    with pytest.raises(sk.ValidationError, match="callable"):
        sources.from_async_chunks(SDKStream([]), "text")  # type: ignore[arg-type]


async def test_from_async_chunks_with_a_custom_extractor() -> None:
    chunks = SDKStream([{"t": "a"}, {"t": None}, {"t": "b"}])
    assert await texts(sources.from_async_chunks(chunks, lambda c: c["t"])) == ["a", "b"]  # type: ignore[index]
    bad = SDKStream([{"t": 5}])
    with pytest.raises(
        sk.ValidationError, match="chunk 0: extract must return a str or None, got int"
    ):
        await texts(sources.from_async_chunks(bad, lambda c: c["t"]))  # type: ignore[index]


async def test_closing_the_adapter_closes_the_sdk_stream() -> None:
    stream = SDKStream([openai_chunk("a"), openai_chunk("b")])
    text = sources.openai_text(stream)
    assert await text.__anext__() == "a"
    await text.aclose()  # type: ignore[attr-defined]
    assert stream.closed


@pytest.mark.parametrize("owned", [False, True])
async def test_through_stream_tokens(owned: bool) -> None:
    stream = SDKStream(
        [openai_chunk(None, role="assistant"), openai_chunk("Hi"), openai_chunk("!")]
    )
    events = sk.stream_tokens(sources.openai_text(stream), EXACT)
    with anyio.fail_after(10):
        if owned:
            async with events:
                got = [event async for event in events]
        else:
            got = [event async for event in events]
    assert [e.content for e in got if e.event_type == sk.EventType.TOKEN] == ["Hi", "!"]
    assert got[-1].metadata["reason"] == "completed"
    assert stream.closed


async def test_an_unknown_chunk_ends_stream_tokens_with_an_error_event() -> None:
    stream = SDKStream([openai_chunk("Hi"), NS(something="else")])
    events = [e async for e in sk.stream_tokens(sources.openai_text(stream), EXACT)]
    assert [str(e.event_type) for e in events] == ["start", "token", "error"]
    assert events[-1].metadata["error_type"] == "ValidationError"
    assert "chunk 1" in str(events[-1].metadata["message"])
    assert "SimpleNamespace" in str(events[-1].metadata["message"])
    assert stream.closed


async def test_a_consumer_that_stops_early_closes_the_sdk_stream() -> None:
    stream = SDKStream([openai_chunk("a"), openai_chunk("b"), openai_chunk("c")])
    async with sk.stream_tokens(sources.openai_text(stream), EXACT) as events:
        async for event in events:
            if event.content == "a":
                break
    assert stream.closed
