"""streamkit.testing.SimulatedAgent: a seeded, deterministic fake LLM."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit as sk
import streamkit.testing
from streamkit.testing import SimulatedAgent, SimulatedToolAgent

pytestmark = pytest.mark.anyio


def stats_of(event: sk.StreamEvent) -> Any:
    """The final event's statistics, as plain data."""
    return event.to_dict()["metadata"]["stats"]


def test_the_same_seed_and_prompt_give_the_same_tokens_and_delays() -> None:
    one, two = SimulatedAgent(seed=7), SimulatedAgent(seed=7)
    assert one.tokens("Hi") == two.tokens("Hi")
    assert one.delays("Hi") == two.delays("Hi")
    assert SimulatedAgent(seed=8).tokens("Hi") != one.tokens("Hi")
    assert one.tokens("Hello") != one.tokens("Hi")


def test_tokens_are_word_pieces_that_join_into_the_answer() -> None:
    agent = SimulatedAgent(seed=3)
    tokens = agent.tokens("Tell me about streams")
    assert "".join(tokens) == agent.answer("Tell me about streams")
    assert len(tokens) > 10
    assert all(tokens)
    assert any(token.startswith(" ") for token in tokens)  # leading spaces, like BPE
    assert len(agent.delays("Tell me about streams")) == len(tokens)


@given(text=st.text(max_size=200), seed=st.integers(0, 2**32))
def test_fixed_answers_are_streamed_losslessly(text: str, seed: int) -> None:
    agent = SimulatedAgent(seed=seed, answers={"q": text})
    assert "".join(agent.tokens("q")) == text
    assert agent.answer("q") == text


def test_delays_follow_the_configured_timing() -> None:
    agent = SimulatedAgent(tokens_per_second=50, first_token_latency=0.4, jitter=0.25)
    first, *rest = agent.delays("x")
    assert 0.3 <= first <= 0.5
    assert rest
    assert all(0.015 <= delay <= 0.025 for delay in rest)
    exact = SimulatedAgent(tokens_per_second=10, first_token_latency=0.5, jitter=0)
    first, *rest = exact.delays("x")
    assert first == 0.5
    assert set(rest) == {0.1}


async def test_realtime_false_streams_without_delay() -> None:
    # At one token a second this answer would take minutes in real time.
    agent = SimulatedAgent(tokens_per_second=1, first_token_latency=5, realtime=False)
    with anyio.fail_after(5):
        assert [token async for token in agent("x")] == agent.tokens("x")
        assert list(agent.stream_sync("x")) == agent.tokens("x")


async def test_realtime_waits_before_the_first_token() -> None:
    agent = SimulatedAgent(tokens_per_second=1000, first_token_latency=0.05, jitter=0)
    started = anyio.current_time()
    stream = agent.stream("x")
    first = await stream.__anext__()
    assert anyio.current_time() - started >= 0.05 - 1e-3
    rest = [token async for token in stream]
    assert [first, *rest] == agent.tokens("x")


def test_stream_sync_sleeps_like_a_blocking_model() -> None:
    agent = SimulatedAgent(tokens_per_second=2000, first_token_latency=0.001, jitter=0.5)
    assert list(agent.stream_sync("y")) == agent.tokens("y")


async def test_error_after_tokens_simulates_a_failing_model() -> None:
    agent = SimulatedAgent(realtime=False, error_after_tokens=3)
    got: list[str] = []

    async def consume() -> None:
        got.extend([token async for token in agent("x")])

    with pytest.raises(RuntimeError, match="after 3 tokens"):
        await consume()
    assert got == []  # nothing reached the list: the comprehension raised
    tokens = agent("x")
    assert [await tokens.__anext__() for _ in range(3)] == agent.tokens("x")[:3]
    with pytest.raises(RuntimeError, match="after 3 tokens"):
        await tokens.__anext__()
    with pytest.raises(RuntimeError, match="after 3 tokens"):
        list(agent.stream_sync("x"))


@pytest.mark.parametrize("sync", [False, True])
async def test_as_a_source_for_stream_tokens(sync: bool) -> None:
    agent = SimulatedAgent(seed=2, realtime=False)
    source = agent.stream_sync("q") if sync else agent("q")
    config = sk.StreamConfig(chunk_size=4, stream_delay=0)
    with anyio.fail_after(10):
        events = [event async for event in sk.stream_tokens(source, config)]
    text = "".join(e.content for e in events if e.event_type == sk.EventType.TOKEN)
    assert text == agent.answer("q")
    assert events[-1].metadata["reason"] == "completed"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": "1"}, "seed"),
        ({"tokens_per_second": 0}, "tokens_per_second"),
        ({"first_token_latency": -1}, "first_token_latency"),
        ({"jitter": 1.5}, "jitter"),
        ({"realtime": 1}, "realtime"),
        ({"answers": ["a"]}, "answers"),
        ({"error_after_tokens": -1}, "error_after_tokens"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(sk.ValidationError) as info:
        SimulatedAgent(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_rejects_a_prompt_that_is_not_text() -> None:
    agent = SimulatedAgent()
    with pytest.raises(sk.ValidationError, match="prompt"):
        agent.stream(5)  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="prompt"):
        agent.answer(None)  # type: ignore[arg-type]


def test_public_surface() -> None:
    assert streamkit.testing.__all__ == sorted(streamkit.testing.__all__)
    assert SimulatedAgent.__module__ == "streamkit.testing"
    assert "SimulatedAgent(seed=0" in repr(SimulatedAgent())


# --- SimulatedToolAgent ----------------------------------------------------------------


def test_tool_agent_is_deterministic_and_complete() -> None:
    from streamkit.parts import StepStart, ToolCallStart, ToolResult

    agent = SimulatedToolAgent(seed=4, realtime=False)
    parts = agent.parts("a trip")
    assert parts == SimulatedToolAgent(seed=4).parts("a trip")
    assert parts != SimulatedToolAgent(seed=5).parts("a trip")
    assert sum(isinstance(p, StepStart) for p in parts) == 3
    starts = [p.name for p in parts if isinstance(p, ToolCallStart)]
    assert starts == ["search", "get_weather", "get_time"]
    results = [p for p in parts if isinstance(p, ToolResult)]
    assert [r.failed for r in results] == [False, False, True]
    assert agent.answer("a trip").startswith("In ")
    assert "SimulatedToolAgent(seed=4" in repr(agent)
    assert len(agent._plan("a trip")[1]) == len(parts)


@pytest.mark.parametrize("sync", [False, True])
async def test_tool_agent_streams_through_stream_tokens(sync: bool) -> None:
    from streamkit.parts import ReasoningDelta, ToolCallDelta, ToolCallEnd, Usage

    agent = SimulatedToolAgent(seed=2, realtime=False)
    source = agent.stream_sync("go") if sync else agent("go")
    config = sk.StreamConfig(chunk_size=4, flush_interval=60)
    with anyio.fail_after(10):
        async with sk.stream_tokens(source, config) as stream:
            events = [event async for event in stream]
    assert events[-1].event_type == "complete"
    assert "".join(e.content for e in events) == agent.answer("go")
    parts = [e.part for e in events if e.part is not None]
    ends = {p.call_id: p for p in parts if isinstance(p, ToolCallEnd)}
    assert ends["call_1"].name == "search"
    city = ends["call_3"].to_dict()["arguments"]["city"]
    assert ends["call_2"].arguments == {"city": city, "unit": "celsius"}
    # Interleaved argument pieces of the parallel pair are never merged together.
    deltas = [p for p in parts if isinstance(p, ToolCallDelta)]
    for delta in deltas:
        assert delta.call_id in ends
    reasoning = "".join(p.text for p in parts if isinstance(p, ReasoningDelta))
    assert reasoning.startswith("The user asks about go.")
    stats = stats_of(events[-1])
    assert stats["tool_calls"] == 3
    usage = [p for p in parts if isinstance(p, Usage)]
    assert stats["usage"]["output_tokens"] == sum(u.output_tokens for u in usage)


async def test_tool_agent_realtime_uses_the_clock() -> None:
    agent = SimulatedToolAgent(seed=1, tokens_per_second=10_000, first_token_latency=0)
    with anyio.fail_after(10):
        items = [item async for item in agent.stream("x")]
    assert items == agent.parts("x")


def test_tool_agent_rejects_bad_arguments() -> None:
    with pytest.raises(sk.ValidationError, match="jitter"):
        SimulatedToolAgent(jitter=2)
    with pytest.raises(sk.ValidationError, match="prompt"):
        SimulatedToolAgent().parts(3)  # type: ignore[arg-type]
