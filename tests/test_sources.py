"""streamkit.sources: text out of OpenAI- and Anthropic-style chunks, by duck typing."""

from __future__ import annotations

from types import SimpleNamespace as NS
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import streamkit as sk
from streamkit import sources
from streamkit.parts import (
    ReasoningDelta,
    SourcePart,
    StepFinish,
    StepStart,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)

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


# --- the parts adapters, on dicts (the SDK-driven cases are in test_sources_sdk.py) ---


async def parts_of(stream: AsyncIterator[object]) -> list[object]:
    return [item async for item in stream]


def chat_chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


BAD_PARTS: list[tuple[Any, list[Any], str]] = [
    (sources.openai_chat_parts, [{"choices": 3}], "chunk 0: choices must be a sequence"),
    (sources.openai_chat_parts, [{"error": {"message": "boom"}}], "boom"),
    (
        sources.openai_chat_parts,
        [chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]})],
        "chunk 0: a tool_calls delta for index 0, which no call started",
    ),
    (
        sources.openai_chat_parts,
        [chat_chunk({"tool_calls": [{"index": "0"}]})],
        "tool_calls[].index must be an int",
    ),
    (sources.openai_chat_parts, [chat_chunk({"tool_calls": 5})], "delta.tool_calls must be"),
    (sources.openai_chat_parts, [chat_chunk({"content": 5})], "delta.content must be a str"),
    (
        sources.openai_chat_parts,
        [chat_chunk(finish="stop"), chat_chunk({"content": "late"})],
        "chunk 1: a choice after the finish_reason: nothing may follow",
    ),
    (sources.openai_responses_parts, [{"no": "type"}], "chunk 0: a Responses API event must"),
    (
        sources.openai_responses_parts,
        [{"type": "response.function_call_arguments.delta", "item_id": "fc_9", "delta": "{"}],
        "chunk 0: function call arguments for item 'fc_9', which was never added",
    ),
    (
        sources.openai_responses_parts,
        [{"type": "response.failed", "response": {"error": {"message": "quota"}}}],
        "quota",
    ),
    (
        sources.openai_responses_parts,
        [{"type": "response.completed", "response": {}}, {"type": "response.created"}],
        "chunk 1: a response.created event after response.completed",
    ),
    (sources.anthropic_parts, [42], "chunk 0: an Anthropic stream event must"),
    (
        sources.anthropic_parts,
        [{"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta"}}],
        "chunk 0: an input_json_delta for block 3, which is not a tool_use block",
    ),
    (
        sources.anthropic_parts,
        [{"type": "error", "error": {"message": "overloaded"}}],
        "overloaded",
    ),
    (
        sources.anthropic_parts,
        [{"type": "message_stop"}, {"type": "ping"}, {"type": "message_start"}],
        "chunk 2: a message_start event after message_stop",
    ),
]


@pytest.mark.parametrize(("adapter", "chunks", "message"), BAD_PARTS)
async def test_parts_adapters_reject_bad_chunks(
    adapter: Any, chunks: list[Any], message: str
) -> None:
    stream = SDKStream(chunks)
    with pytest.raises(sk.StreamkitError, match=None) as info:
        await parts_of(adapter(stream))
    assert message in str(info.value)
    assert stream.closed


@pytest.mark.parametrize(
    "adapter",
    [sources.openai_chat_parts, sources.openai_responses_parts, sources.anthropic_parts],
)
async def test_parts_adapters_need_an_async_iterable(adapter: Any) -> None:
    with pytest.raises(sk.ValidationError, match="must be an async iterable"):
        adapter([])


async def test_openai_chat_parts_on_dicts() -> None:
    chunks = [
        chat_chunk({"role": "assistant", "reasoning": "hm"}),
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        chat_chunk({"refusal": "I can't."}),
        chat_chunk(
            {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}]}
        ),
        chat_chunk(finish="tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": True}},
    ]
    assert await parts_of(sources.openai_chat_parts(SDKStream(chunks))) == [
        StepStart(),
        ReasoningDelta(text="hm"),
        "I can't.",
        ToolCallStart(call_id="c1", name="f"),
        ToolCallDelta(call_id="c1", delta="{}"),
        ToolCallEnd(call_id="c1"),
        StepFinish(finish_reason="tool_calls"),
        Usage(input_tokens=3),
    ]


async def test_responses_parts_on_dicts() -> None:
    events = [
        {"type": "response.reasoning_text.delta", "delta": "think"},
        {"type": "response.refusal.delta", "delta": "no"},
        {"type": "response.output_item.added", "item": {"type": "message"}},
        {
            "type": "response.output_item.added",
            "item": {"type": "function_call", "call_id": "c1", "name": "f"},
        },
        {
            "type": "response.output_item.done",
            "item": {"type": "function_call", "call_id": "c1", "arguments": '{"a":1}'},
        },
        {"type": "response.output_item.done", "item": {"type": "message"}},
        {"type": "response.output_text.annotation.added", "annotation": {"type": "file_citation"}},
        {"type": "response.in_progress"},
        {
            "type": "response.incomplete",
            "response": {"incomplete_details": {"reason": "max_output_tokens"}},
        },
    ]
    assert await parts_of(sources.openai_responses_parts(SDKStream(events))) == [
        ReasoningDelta(text="think"),
        "no",
        ToolCallStart(call_id="c1", name="f"),
        ToolCallDelta(call_id="c1", delta='{"a":1}'),
        ToolCallEnd(call_id="c1"),
        StepFinish(finish_reason="max_output_tokens"),
    ]


async def test_anthropic_parts_on_dicts() -> None:
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 5}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "A"}},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "thinking", "thinking": "B"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "citations_delta", "citation": {"url": "https://x", "title": "X"}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "citations_delta", "citation": {"document_title": "Doc"}},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta"}},
        {"type": "text", "text": "A"},  # the SDK helper's repeat: skipped
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "refusal"}, "usage": {}},
        {"type": "message_stop"},
    ]
    assert await parts_of(sources.anthropic_parts(SDKStream(events))) == [
        StepStart(),
        "A",
        ReasoningDelta(text="B"),
        SourcePart(source_id="src-3", url="https://x", title="X"),
        SourcePart(source_id="src-4", document="Doc", title="Doc"),
        Usage(input_tokens=5),
        StepFinish(finish_reason="refusal"),
    ]
