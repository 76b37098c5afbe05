"""The chat.completion.chunk encoder, read by the real openai client (sync and async).

The encoder's bytes are served by the replaying server of tests/provider_streams.py;
the client parses them with its own SSE decoder and chunk models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import streamkit as sk
from streamkit.openai_chunks import ChatCompletionChunkEncoder
from streamkit.parts import ToolCallEnd, ToolCallStart
from streamkit.testing import SimulatedToolAgent

from .provider_streams import STREAMS, provider_server

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object "
    "(AsyncStream|Response|SSEDecoder|HTTP|_iter|async_iter):"
    "pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with provider_server() as (root, _):
        yield root


async def encode(source: Any, *, include_usage: bool = True) -> bytes:
    encoder = ChatCompletionChunkEncoder(model="sim-1", include_usage=include_usage)
    out = b""
    with anyio.fail_after(10):
        config = sk.StreamConfig(chunk_size=4, flush_interval=60)
        async with sk.stream_tokens(source, config, session_id="abc") as stream:
            async for event in stream:
                out += encoder.encode(event)
    assert encoder.done
    return out


def serve(name: str, data: bytes) -> None:
    STREAMS[name] = data


def accumulate(chunks: list[Any]) -> dict[str, Any]:
    """What an OpenAI client builds from chunks: content, reasoning, tool calls, usage."""
    content, reasoning, finish, usage = "", "", None, None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == "sim-1"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            reasoning += getattr(delta, "reasoning_content", None) or ""
            for call in delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                if call.id:
                    entry["id"] = call.id
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
            finish = choice.finish_reason or finish
    return {
        "content": content,
        "reasoning": reasoning,
        "calls": [calls[i] for i in sorted(calls)],
        "finish": finish,
        "usage": usage,
    }


@pytest.mark.anyio
async def test_async_client_reads_an_agent_run(server: str) -> None:
    agent = SimulatedToolAgent(seed=3, realtime=False)
    serve("sk-agent", await encode(agent("go")))
    async with openai.AsyncOpenAI(
        api_key="k", base_url=f"{server}/sk-agent", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="sim-1", messages=[{"role": "user", "content": "go"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    got = accumulate(chunks)
    assert chunks[0].id == "chatcmpl-abc"
    assert got["content"] == agent.answer("go")
    assert got["reasoning"].startswith("The user asks about go.")
    starts = [p for p in agent.parts("go") if isinstance(p, ToolCallStart)]
    assert [(c["id"], c["name"]) for c in got["calls"]] == [(s.call_id, s.name) for s in starts]
    assert json.loads(got["calls"][1]["arguments"])["unit"] == "celsius"
    assert got["finish"] == "stop"
    assert got["usage"].completion_tokens > 0
    assert got["usage"].completion_tokens_details.reasoning_tokens > 0


def test_sync_client_reads_text_and_tool_calls(server: str) -> None:
    async def source() -> Any:
        yield "Hello "
        yield "there."
        yield ToolCallStart(call_id="call_x", name="lookup")
        yield ToolCallEnd(call_id="call_x", arguments={"q": "été"})

    serve("sk-sync", anyio.run(lambda: encode(source(), include_usage=False)))
    with openai.OpenAI(api_key="k", base_url=f"{server}/sk-sync", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="sim-1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        got = accumulate(list(stream))
    assert got["content"] == "Hello there."
    assert got["calls"] == [{"id": "call_x", "name": "lookup", "arguments": '{"q": "été"}'}]
    assert got["finish"] == "tool_calls"
    assert got["usage"] is None


@pytest.mark.anyio
async def test_an_error_event_raises_in_the_client(server: str) -> None:
    async def failing() -> Any:
        yield "partial"
        raise RuntimeError("model down")

    serve("sk-error", await encode(failing()))
    async with openai.AsyncOpenAI(
        api_key="k", base_url=f"{server}/sk-error", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="sim-1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        seen: list[Any] = []

        async def read() -> None:
            async for chunk in stream:
                seen.append(chunk)  # noqa: PERF401 - keep what came before the error

        with pytest.raises(openai.APIError, match="model down"):
            await read()
    assert accumulate(seen)["content"] == "partial"


@pytest.mark.anyio
async def test_the_chat_adapter_reads_the_encoder_back(server: str) -> None:
    agent = SimulatedToolAgent(seed=9, realtime=False)
    serve("sk-round", await encode(agent("x")))
    async with openai.AsyncOpenAI(
        api_key="k", base_url=f"{server}/sk-round", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="sim-1", messages=[{"role": "user", "content": "x"}], stream=True
        )
        async with sk.stream_tokens(sk.sources.openai_chat_parts(stream)) as events:
            back = [event async for event in events]
    assert "".join(e.content for e in back) == agent.answer("x")
    ends = [e.part for e in back if isinstance(e.part, ToolCallEnd)]
    assert [end.name for end in ends] == ["search", "get_weather", "get_time"]


def test_encoder_rejects_bad_input() -> None:
    with pytest.raises(sk.ValidationError, match="created must be an int"):
        ChatCompletionChunkEncoder(created=True)
    encoder = ChatCompletionChunkEncoder(completion_id="c1", created=1)
    with pytest.raises(sk.ValidationError, match="must be a StreamEvent"):
        encoder.encode("x")  # type: ignore[arg-type]
    assert encoder.encode(sk.StreamEvent(event_type="heartbeat")) == b""
    assert encoder.encode(sk.StreamEvent(event_type="token", content="")) == b""
    assert encoder.encode(sk.StreamEvent.from_part(ToolCallEnd(call_id="z", arguments=1)))
    error = encoder.encode(sk.StreamEvent(event_type="error"))
    assert json.loads(error[6:])["error"]["message"] == "the stream failed"
    assert encoder.done
    with pytest.raises(sk.ValidationError, match="after the final event"):
        encoder.encode(sk.StreamEvent(event_type="complete"))
