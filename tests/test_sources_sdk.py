"""The parts adapters read the real openai and anthropic SDKs, fed byte-exact provider streams.

The SDKs' own HTTP clients and SSE parsers build every object the adapters read: the
streams come from a local server (tests/provider_streams.py) the clients reach through
``base_url``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import streamkit as sk
from streamkit import sources
from streamkit.parts import (
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

from .provider_streams import provider_server

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

pytestmark = [
    pytest.mark.anyio,
    # Under trio, the SDKs leave their own async generators (the HTTP body, the SSE
    # decoder) to the garbage collector once a stream has ended, and trio reports that.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <async_generator object "
        "(AsyncStream|Response|SSEDecoder|HTTP|_iter|async_iter):"
        "pytest.PytestUnraisableExceptionWarning"
    ),
]

EXACT = sk.StreamConfig(chunk_size=1, flush_interval=60, heartbeat_interval=None)


def stats_of(event: sk.StreamEvent) -> Any:
    """The final event's statistics, as plain data."""
    return event.to_dict()["metadata"]["stats"]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[tuple[str, dict[str, object]]]]]:
    with provider_server() as found:
        yield found


@asynccontextmanager
async def chat(root: str, name: str) -> AsyncIterator[Any]:
    base_url = f"{root}/{name}"
    async with openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, max_retries=0) as client:
        yield await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )


@asynccontextmanager
async def responses(root: str, name: str) -> AsyncIterator[Any]:
    base_url = f"{root}/{name}"
    async with openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, max_retries=0) as client:
        yield await client.responses.create(model="gpt-5", input="hi", stream=True)


@asynccontextmanager
async def messages(root: str, name: str) -> AsyncIterator[Any]:
    base_url = f"{root}/{name}"
    async with anthropic.AsyncAnthropic(
        api_key="sk-test", base_url=base_url, max_retries=0
    ) as client:
        yield await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=1024,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )


async def items(source: AsyncIterator[str | Part]) -> list[str | Part]:
    with anyio.fail_after(10):
        return [item async for item in source]


async def events_of(source: AsyncIterator[str | Part]) -> list[sk.StreamEvent]:
    with anyio.fail_after(10):
        async with sk.stream_tokens(source, EXACT) as stream:
            return [event async for event in stream]


CHAT_USAGE = Usage(input_tokens=19, output_tokens=10, reasoning_tokens=4, cached_tokens=8)
RESPONSES_USAGE = Usage(input_tokens=30, output_tokens=20, reasoning_tokens=12, cached_tokens=10)
ANTHROPIC_USAGE = Usage(input_tokens=35, output_tokens=42, cached_tokens=10)


async def test_openai_chat_text(server: Any) -> None:
    root, requests = server
    async with chat(root, "chat-text") as stream:
        got = await items(sources.openai_chat_parts(stream))
    assert got == [
        StepStart(),
        "Hello",
        " world",
        StepFinish(finish_reason="stop"),
        CHAT_USAGE,
    ]
    assert requests[-1][1]["stream_options"] == {"include_usage": True}


async def test_openai_chat_reasoning_then_text(server: Any) -> None:
    async with chat(server[0], "chat-reasoning") as stream:
        got = await items(sources.openai_chat_parts(stream))
    assert got == [
        StepStart(),
        ReasoningDelta(text="The user"),
        ReasoningDelta(text=" greets me."),
        "Hi!",
        StepFinish(finish_reason="stop"),
        CHAT_USAGE,
    ]


async def test_openai_chat_parallel_tool_calls(server: Any) -> None:
    async with chat(server[0], "chat-tools") as stream:
        got = await items(sources.openai_chat_parts(stream))
    assert got == [
        StepStart(),
        ToolCallStart(call_id="call_a", name="get_weather"),
        ToolCallDelta(call_id="call_a", delta='{"ci'),
        ToolCallDelta(call_id="call_a", delta='ty": "Paris"}'),
        ToolCallStart(call_id="call_b", name="get_time"),
        ToolCallDelta(call_id="call_b", delta='{"tz": "CET"}'),
        ToolCallEnd(call_id="call_a"),
        ToolCallEnd(call_id="call_b"),
        StepFinish(finish_reason="tool_calls"),
        CHAT_USAGE,
    ]
    async with chat(server[0], "chat-tools") as stream:
        events = await events_of(sources.openai_chat_parts(stream))
    ends = [e.part for e in events if isinstance(e.part, ToolCallEnd)]
    assert ends == [
        ToolCallEnd(call_id="call_a", name="get_weather", arguments={"city": "Paris"}),
        ToolCallEnd(call_id="call_b", name="get_time", arguments={"tz": "CET"}),
    ]
    assert stats_of(events[-1])["tool_calls"] == 2


async def test_openai_responses_text(server: Any) -> None:
    async with responses(server[0], "responses-text") as stream:
        got = await items(sources.openai_responses_parts(stream))
    assert got == [
        StepStart(),
        "Hello",
        " world",
        RESPONSES_USAGE,
        StepFinish(finish_reason="stop"),
    ]


async def test_openai_responses_reasoning_then_text(server: Any) -> None:
    async with responses(server[0], "responses-reasoning") as stream:
        got = await items(sources.openai_responses_parts(stream))
    assert got == [
        StepStart(),
        ReasoningDelta(text="**Greeting** "),
        ReasoningDelta(text="the user."),
        "Hello",
        " world",
        SourcePart(source_id="src-11", url="https://example.com/hello", title="Hello"),
        RESPONSES_USAGE,
        StepFinish(finish_reason="stop"),
    ]


async def test_openai_responses_parallel_tool_calls(server: Any) -> None:
    async with responses(server[0], "responses-tools") as stream:
        events = await events_of(sources.openai_responses_parts(stream))
    parts = [e.part for e in events if e.part is not None]
    assert parts == [
        StepStart(),
        ToolCallStart(call_id="call_a", name="get_weather"),
        ToolCallDelta(call_id="call_a", delta='{"ci'),
        ToolCallDelta(call_id="call_a", delta='ty": "Paris"}'),
        ToolCallEnd(call_id="call_a", name="get_weather", arguments={"city": "Paris"}),
        ToolCallStart(call_id="call_b", name="get_time"),
        ToolCallDelta(call_id="call_b", delta='{"tz": "CET"}'),
        ToolCallEnd(call_id="call_b", name="get_time", arguments={"tz": "CET"}),
        RESPONSES_USAGE,
        StepFinish(finish_reason="tool_calls"),
    ]
    assert events[-1].event_type == "complete"


async def test_anthropic_text(server: Any) -> None:
    async with messages(server[0], "anthropic-text") as stream:
        got = await items(sources.anthropic_parts(stream))
    assert got == [
        StepStart(),
        "Hello",
        " world",
        ANTHROPIC_USAGE,
        StepFinish(finish_reason="stop"),
    ]


async def test_anthropic_thinking_then_text(server: Any) -> None:
    async with messages(server[0], "anthropic-reasoning") as stream:
        got = await items(sources.anthropic_parts(stream))
    assert got == [
        StepStart(),
        ReasoningDelta(text="The user"),
        ReasoningDelta(text=" greets me."),
        "Hi!",
        ANTHROPIC_USAGE,
        StepFinish(finish_reason="stop"),
    ]


async def test_anthropic_parallel_tool_use(server: Any) -> None:
    async with messages(server[0], "anthropic-tools") as stream:
        events = await events_of(sources.anthropic_parts(stream))
    shape = [e.content if e.event_type == "token" else e.part for e in events[1:-1]]
    assert shape == [
        StepStart(),
        "Checking.",
        ToolCallStart(call_id="toolu_a", name="get_weather"),
        ToolCallDelta(call_id="toolu_a", delta='{"ci'),
        ToolCallDelta(call_id="toolu_a", delta='ty": "Paris"}'),
        ToolCallEnd(call_id="toolu_a", name="get_weather", arguments={"city": "Paris"}),
        ToolCallStart(call_id="toolu_b", name="get_time"),
        ToolCallDelta(call_id="toolu_b", delta='{"tz": "CET"}'),
        ToolCallEnd(call_id="toolu_b", name="get_time", arguments={"tz": "CET"}),
        ANTHROPIC_USAGE,
        StepFinish(finish_reason="tool_calls"),
    ]


@pytest.mark.parametrize(
    ("open_stream", "adapter", "name", "error_type", "message"),
    [
        (chat, sources.openai_chat_parts, "chat-error", "APIError", "The server had an error"),
        (chat, sources.openai_chat_parts, "chat-cut", "StreamkitError", "before its finish_reason"),
        (chat, sources.openai_chat_parts, "chat-cut-dropped", "APIConnectionError", ""),
        (
            responses,
            sources.openai_responses_parts,
            "responses-error",
            "StreamkitError",
            "The model failed mid-stream.",
        ),
        (
            responses,
            sources.openai_responses_parts,
            "responses-cut",
            "StreamkitError",
            "before its response.completed",
        ),
        (messages, sources.anthropic_parts, "anthropic-error", "APIStatusError", "Overloaded"),
        (messages, sources.anthropic_parts, "anthropic-cut", "StreamkitError", "message_stop"),
        (messages, sources.anthropic_parts, "anthropic-cut-dropped", "APIConnectionError", ""),
    ],
)
async def test_errors_and_cut_streams_end_with_an_error_event(
    server: Any, open_stream: Any, adapter: Any, name: str, error_type: str, message: str
) -> None:
    async with open_stream(server[0], name) as stream:
        events = await events_of(adapter(stream))
    assert "".join(e.content for e in events) == "Hel"  # what came before is delivered
    final = events[-1]
    assert final.event_type == "error"
    assert final.metadata["error_type"] == error_type
    assert message in str(final.metadata["message"])


async def test_text_wrappers_still_read_the_sdks(server: Any) -> None:
    async with chat(server[0], "chat-text") as stream:
        text = [t async for t in sources.openai_text(stream)]
    assert text == ["Hello", " world"]
    async with messages(server[0], "anthropic-text") as stream:
        text = [t async for t in sources.anthropic_text(stream)]
    assert text == ["Hello", " world"]
