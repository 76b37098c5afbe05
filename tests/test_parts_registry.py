"""Parts through a session: usage in the session's statistics, bad parts end one session only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import streamkit as sk
from streamkit.parts import ReasoningDelta, ToolCallEnd, ToolCallStart, ToolResult, Usage

pytestmark = pytest.mark.anyio

FAST = sk.StreamConfig(chunk_size=1)


async def collect(events: AsyncIterator[sk.StreamEvent]) -> list[sk.StreamEvent]:
    with anyio.fail_after(10):
        return [event async for event in events]


async def agen(items: list[object]) -> AsyncIterator[Any]:
    for item in items:
        yield item
        await anyio.lowlevel.checkpoint()


async def test_usage_is_kept_in_the_session_statistics() -> None:
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        items: list[object] = [
            ReasoningDelta(text="hm"),
            "hello",
            Usage(input_tokens=7, output_tokens=3),
        ]
        registry.start(session.session_id, agen(items), FAST)
        events = await collect(registry.subscribe(session.session_id))
        assert [e.event_type for e in events] == ["start", "part", "token", "part", "complete"]
        stats = await registry.session_statistics(session.session_id)
        assert stats.usage == Usage(input_tokens=7, output_tokens=3)
        assert stats.stream is not None
        assert stats.stream.reasoning_tokens == 1
        assert stats.stream.tokens == 1


async def test_a_part_over_max_event_bytes_ends_its_session_only() -> None:
    config = sk.RegistryConfig(max_event_bytes=2000)
    big = ToolResult(call_id="c1", output="x" * 5000)
    bad: list[object] = [
        "kept ",
        ToolCallStart(call_id="c1", name="f"),
        ToolCallEnd(call_id="c1"),
        big,
        "lost",
    ]
    async with sk.SessionRegistry(config) as registry:
        one = await registry.create()
        two = await registry.create()
        registry.start(one.session_id, agen(bad), FAST)
        events = await collect(registry.subscribe(one.session_id))
        registry.start(two.session_id, agen(["still ", "serving"]), FAST)
        others = await collect(registry.subscribe(two.session_id))
    assert [e.content for e in events if e.event_type == "token"] == ["kept "]
    assert [e.part for e in events if e.event_type == "part"] == [
        ToolCallStart(call_id="c1", name="f"),
        ToolCallEnd(call_id="c1", name="f", arguments={}),
    ]
    final = events[-1]
    assert final.event_type == "error"
    assert final.metadata["error_type"] == "PayloadTooLarge"
    assert str(final.metadata["message"]).startswith("a tool-result part (call 'c1') at seq 5")
    assert "".join(e.content for e in others) == "still serving"
    assert others[-1].event_type == "complete"
