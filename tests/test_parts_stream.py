"""stream_tokens with typed parts: chunking per segment, tool calls, stats, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import pytest

import streamkit as sk
from streamkit.parts import (
    DataPart,
    Part,
    ReasoningDelta,
    StepFinish,
    StepStart,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    Usage,
)

pytestmark = pytest.mark.anyio


def stats_of(event: sk.StreamEvent) -> Any:
    """The final event's statistics, as plain data."""
    return event.to_dict()["metadata"]["stats"]


async def _agen(items: Iterable[object]) -> AsyncIterator[object]:
    for item in items:
        yield item
        await anyio.lowlevel.checkpoint()


async def run(items: list[object], mode: str = "direct", **config: Any) -> list[sk.StreamEvent]:
    cfg = sk.StreamConfig(**{"chunk_size": 1, **config})
    events: list[sk.StreamEvent] = []
    with anyio.fail_after(10):
        if mode == "sync":
            async with sk.stream_tokens(items, cfg) as stream:  # type: ignore[arg-type]
                events = [event async for event in stream]
        elif mode == "task":
            async with sk.stream_tokens(_agen(items), cfg) as stream:  # type: ignore[arg-type]
                events = [event async for event in stream]
        else:
            events = [event async for event in sk.stream_tokens(_agen(items), cfg)]  # type: ignore[arg-type]
    return events


def shape(events: list[sk.StreamEvent]) -> list[object]:
    """Each event as its text (token) or its part; start and final events as their type."""
    out: list[object] = []
    for event in events:
        if event.event_type == "token":
            out.append(event.content)
        elif event.event_type == "part":
            out.append(event.part)
        else:
            out.append(str(event.event_type))
    return out


AGENT: list[object] = [
    StepStart(),
    ReasoningDelta(text="Let me "),
    ReasoningDelta(text="think."),
    ToolCallStart(call_id="a", name="weather"),
    ToolCallStart(call_id="b", name="time"),
    ToolCallDelta(call_id="a", delta='{"city"'),
    ToolCallDelta(call_id="a", delta=': "Paris"}'),
    ToolCallDelta(call_id="b", delta='{"tz": "CET"}'),
    ToolCallEnd(call_id="a"),
    ToolCallEnd(call_id="b"),
    StepFinish(finish_reason="tool_calls"),
    ToolResult(call_id="a", output={"temp": 12}),
    ToolResult(call_id="b", error="clock broken"),
    StepStart(),
    "It is ",
    TextDelta(text="12 degrees."),
    Usage(input_tokens=10, output_tokens=5, reasoning_tokens=2),
    Usage(input_tokens=1, output_tokens=1, cached_tokens=4),
    DataPart(name="status", value="done", transient=True),
]


@pytest.mark.parametrize("mode", ["direct", "task", "sync"])
async def test_chunks_never_cross_a_part_boundary(mode: str) -> None:
    events = await run(AGENT, mode, chunk_size=8, flush_interval=60)
    assert shape(events) == [
        "start",
        StepStart(),
        ReasoningDelta(text="Let me think."),
        ToolCallStart(call_id="a", name="weather"),
        ToolCallStart(call_id="b", name="time"),
        ToolCallDelta(call_id="a", delta='{"city": "Paris"}'),
        ToolCallDelta(call_id="b", delta='{"tz": "CET"}'),
        ToolCallEnd(call_id="a", name="weather", arguments={"city": "Paris"}),
        ToolCallEnd(call_id="b", name="time", arguments={"tz": "CET"}),
        StepFinish(finish_reason="tool_calls"),
        ToolResult(call_id="a", output={"temp": 12}),
        ToolResult(call_id="b", error="clock broken"),
        StepStart(),
        "It is 12 degrees.",
        Usage(input_tokens=10, output_tokens=5, reasoning_tokens=2),
        Usage(input_tokens=1, output_tokens=1, cached_tokens=4),
        DataPart(name="status", value="done", transient=True),
        "complete",
    ]
    stats = stats_of(events[-1])
    assert stats["tokens"] == 2
    assert stats["reasoning_tokens"] == 2
    assert stats["tool_calls"] == 2
    assert stats["usage"] == {
        "type": "usage",
        "input_tokens": 11,
        "output_tokens": 6,
        "reasoning_tokens": 2,
        "cached_tokens": 4,
    }
    assert stats["chunks"] == 1


async def test_interleaved_deltas_of_two_calls_never_merge() -> None:
    items: list[object] = [
        ToolCallStart(call_id="a", name="f"),
        ToolCallStart(call_id="b", name="g"),
        ToolCallDelta(call_id="a", delta="[1"),
        ToolCallDelta(call_id="b", delta="[2"),
        ToolCallDelta(call_id="a", delta="]"),
        ToolCallDelta(call_id="b", delta="]"),
        ToolCallEnd(call_id="b"),
        ToolCallEnd(call_id="a"),
    ]
    got = shape(await run(items, chunk_size=10, flush_interval=60))
    assert got[3:7] == [
        ToolCallDelta(call_id="a", delta="[1"),
        ToolCallDelta(call_id="b", delta="[2"),
        ToolCallDelta(call_id="a", delta="]"),
        ToolCallDelta(call_id="b", delta="]"),
    ]
    assert got[7:9] == [
        ToolCallEnd(call_id="b", name="g", arguments=(2,)),
        ToolCallEnd(call_id="a", name="f", arguments=(1,)),
    ]


async def test_reasoning_and_text_are_chunked_each_on_its_own() -> None:
    items: list[object] = [ReasoningDelta(text=c) for c in "abcde"] + list("vwxyz")
    got = shape(await run(items, chunk_size=2, flush_interval=60))
    assert got == [
        "start",
        ReasoningDelta(text="ab"),
        ReasoningDelta(text="cd"),
        ReasoningDelta(text="e"),
        "vw",
        "xy",
        "z",
        "complete",
    ]


async def test_chunk_by_word_applies_to_reasoning() -> None:
    items: list[object] = [ReasoningDelta(text="one two"), ReasoningDelta(text=" three four")]
    got = shape(await run(items, chunk_size=2, chunk_by="word", flush_interval=60))
    assert got[1:-1] == [ReasoningDelta(text="one two"), ReasoningDelta(text=" three four")]


async def test_explicit_arguments_are_kept_and_no_deltas_mean_empty_object() -> None:
    items: list[object] = [
        ToolCallStart(call_id="a", name="f"),
        ToolCallEnd(call_id="a"),
        ToolCallStart(call_id="b", name="g"),
        ToolCallEnd(call_id="b", name="g", arguments={"x": 1}),
    ]
    got = shape(await run(items))
    assert got[2] == ToolCallEnd(call_id="a", name="f", arguments={})
    assert got[4] == ToolCallEnd(call_id="b", name="g", arguments={"x": 1})


async def test_time_to_first_token_counts_reasoning() -> None:
    events = await run([ReasoningDelta(text="hm"), "ok"])
    stats = stats_of(events[-1])
    assert stats["time_to_first_token"] is not None
    assert stats["mean_inter_token_latency"] is not None


async def test_text_only_stats_keep_their_shape() -> None:
    events = await run(["a", TextDelta(text="b")])
    assert shape(events) == ["start", "a", "b", "complete"]
    assert "reasoning_tokens" not in stats_of(events[-1])
    assert "tool_calls" not in stats_of(events[-1])


BAD: list[tuple[list[object], str]] = [
    ([ToolCallDelta(call_id="x", delta="{")], "source item 1 (tool-call-delta, call 'x')"),
    ([ToolCallEnd(call_id="x")], "source item 1 (tool-call-end, call 'x'): the end of an unknown"),
    (
        [
            ToolCallStart(call_id="x", name="f"),
            ToolCallDelta(call_id="x", delta="{nope"),
            ToolCallEnd(call_id="x"),
        ],
        "source item 3 (tool-call-end, call 'x'): the call's arguments are not JSON",
    ),
    (
        [ToolCallStart(call_id="x", name="f"), ToolCallStart(call_id="x", name="f")],
        "source item 2 (tool-call-start, call 'x'): a second start",
    ),
    (
        [ToolCallStart(call_id="x", name="f"), ToolCallEnd(call_id="x"), ToolCallEnd(call_id="x")],
        "source item 3 (tool-call-end, call 'x'): a second end",
    ),
    (
        [
            ToolCallStart(call_id="x", name="f"),
            ToolCallEnd(call_id="x"),
            ToolCallDelta(call_id="x", delta="1"),
        ],
        "source item 3 (tool-call-delta, call 'x'): an argument delta after the call's end",
    ),
    ([ToolResult(call_id="x", output=1)], "source item 1 (tool-result, call 'x')"),
    ([{"type": "text-delta"}], "source item 1 must be str or bytes, got dict"),
]


@pytest.mark.parametrize(("tail", "message"), BAD)
@pytest.mark.parametrize("mode", ["direct", "task"])
async def test_bad_parts_end_with_an_error_naming_them(
    tail: list[object], message: str, mode: str
) -> None:
    events = await run([ReasoningDelta(text="kept"), *tail, "never"], mode, flush_interval=60)
    assert shape(events)[1] == ReasoningDelta(text="kept")  # nothing delivered is lost
    final = events[-1]
    assert final.event_type == "error"
    assert final.metadata["error_type"] == "ValidationError"
    assert str(final.metadata["message"]).startswith(message)
    assert "never" not in shape(events)


async def test_parts_flush_on_timer_while_the_source_is_silent() -> None:
    gate = anyio.Event()

    async def source() -> AsyncIterator[Part | str]:
        yield ReasoningDelta(text="partial")
        await gate.wait()
        yield "done"

    cfg = sk.StreamConfig(chunk_size=100, flush_interval=0.01)
    with anyio.fail_after(10):
        async with sk.stream_tokens(source(), cfg) as stream:
            seen = []
            async for event in stream:
                seen.append(event)
                if event.event_type == "part":
                    gate.set()
    assert shape(seen) == ["start", ReasoningDelta(text="partial"), "done", "complete"]


async def test_part_events_round_trip_through_the_codecs() -> None:
    events = await run(AGENT)
    decoder: sk.sse.SSEDecoder[Any] = sk.sse.SSEDecoder()
    ndjson = sk.ndjson.NDJSONDecoder()
    for event in events:
        again = sk.StreamEvent.from_json(event.to_json())
        assert again == event
        assert again.part == event.part
    sse_out = decoder.feed(b"".join(sk.sse.encode(e) for e in events))
    nd_out = ndjson.feed(b"".join(sk.ndjson.encode(e) for e in events))
    assert [e.part for e in nd_out] == [e.part for e in events]
    assert len(sse_out) == len(events)


@pytest.mark.parametrize("mode", ["direct", "task", "sync"])
async def test_text_held_before_the_first_part_comes_first(mode: str) -> None:
    items: list[object] = ["Hello ", "there.", ToolCallStart(call_id="c", name="f"), "end"]
    got = shape(await run(items, mode, chunk_size=4, flush_interval=60))
    assert got == ["start", "Hello there.", ToolCallStart(call_id="c", name="f"), "end", "complete"]
