"""Benchmark 1: the in-process pipeline against the simplest ways to pass items between tasks.

Run: ``.venv/bin/python bench/bench_pipeline.py`` (``STREAMKIT_BENCH_QUICK=1`` for a
smoke run). Medians of several repetitions; the baselines are measured in the same
process, so the ratios are what to compare across runs.

The pipeline: an async generator yields N tokens as fast as it can; ``registry.start``
runs it through ``stream_tokens`` (``stream_delay=0``) into a session's log; one
subscriber, subscribed before the start, reads every event with ``async for``. The
clock runs from ``registry.start`` to the subscriber's last event.

**Per event** is the elapsed time divided by the events the subscriber received
(``start``, the ``token`` events and ``complete``); with ``chunk_size=1`` that is one
event per token, the worst case. **Per token** divides by the source's items instead,
which is what the default ``chunk_size=5`` saves.

The baselines move the same number of plain ints (``bench/_harness.py``): a bare async
generator (the floor), a producer task and a consumer through ``asyncio.Queue(1024)`` on
asyncio or ``trio.open_memory_channel(1024)`` on Trio, and through anyio memory object
streams with buffers of 0 and 1024.
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from _harness import baselines, machine, median_measured, repetitions, save, table, us

import streamkit as sk
from streamkit._events import make_event

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

QUICK = os.environ.get("STREAMKIT_BENCH_QUICK") == "1"
N = 10_000 if QUICK else 100_000
REPEAT = repetitions(5)
BACKENDS = ("asyncio", "trio")

CASES: dict[str, sk.StreamConfig] = {
    "chunk_size=1, metadata on": sk.StreamConfig(
        chunk_size=1, stream_delay=0, enable_metadata=True
    ),
    "chunk_size=1, metadata off": sk.StreamConfig(
        chunk_size=1, stream_delay=0, enable_metadata=False
    ),
    "defaults (chunk_size=5, metadata on)": sk.StreamConfig(stream_delay=0),
}


async def token_source(n: int) -> Any:
    """A source with no latency of its own: the pipeline is all that is measured."""
    for _ in range(n):
        yield "tok "


async def pipeline(config: sk.StreamConfig, n: int) -> tuple[float, int]:
    """Seconds from ``start`` to the subscriber's last event, and the events it got."""
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        sid = session.session_id
        received = tokens = 0
        async with registry.subscribe(sid) as subscription:
            started = time.perf_counter()
            registry.start(sid, token_source(n), config)
            async for event in subscription:
                received += 1
                tokens += event.event_type == "token"
            elapsed = time.perf_counter() - started
    assert event.event_type == "complete", event
    assert tokens == n // config.chunk_size, (tokens, n)
    return elapsed, received


def agent_items(n: int) -> list[Any]:
    """``n`` source items of an agent's stream: reasoning, tool calls, then text, repeated.

    Per group of 10: 3 reasoning pieces, a tool call (start, 2 argument pieces, end) and
    3 text pieces. Made before the clock starts, as the text source's constant is.
    """
    from streamkit.parts import ReasoningDelta, ToolCallDelta, ToolCallEnd, ToolCallStart

    items: list[Any] = []
    for group in range(n // 10):
        call = f"call_{group}"
        items += [ReasoningDelta(text="hm ")] * 3
        items += [
            ToolCallStart(call_id=call, name="search"),
            ToolCallDelta(call_id=call, delta='{"q": '),
            ToolCallDelta(call_id=call, delta='"x"}'),
            ToolCallEnd(call_id=call),
        ]
        items += ["tok "] * 3
    return items


async def agent_pipeline(config: sk.StreamConfig, items: list[Any]) -> tuple[float, int]:
    """The pipeline with an agent's source (parts): seconds and events received."""

    async def source() -> Any:
        for index, item in enumerate(items):
            yield item
            if index % 256 == 255:  # as a real source does, let the reader run
                await anyio.lowlevel.checkpoint()

    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        sid = session.session_id
        received = 0
        last = None
        async with registry.subscribe(sid) as subscription:
            started = time.perf_counter()
            registry.start(sid, source(), config)
            async for event in subscription:
                received += 1
                last = event
            elapsed = time.perf_counter() - started
    assert last is not None
    assert last.event_type == "complete", last
    return elapsed, received


async def streamer_alone(config: sk.StreamConfig, n: int) -> tuple[float, int]:
    """``stream_tokens`` inside ``async with``, consumed by ``async for`` (no log)."""
    received = 0
    started = time.perf_counter()
    async with sk.stream_tokens(token_source(n), config) as stream:
        async for _ in stream:
            received += 1
    return time.perf_counter() - started, received


async def log_alone(n: int) -> tuple[float, int]:
    """``InMemoryEventLog.append`` in a producer task, one cursor reading.

    The events are made before the clock starts; the producer lets the reader run
    every 256 appends, as a producer with a real source would.
    """
    events = [make_event(sk.EventType.TOKEN, "tok ") for _ in range(n)]
    events.append(make_event(sk.EventType.COMPLETE))
    log = sk.InMemoryEventLog()
    received = 0

    async def produce() -> None:
        for index, event in enumerate(events):
            await log.append(event)
            if index % 256 == 255:
                await anyio.lowlevel.checkpoint()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        async for _ in log.read():
            received += 1
    return time.perf_counter() - started, received


def per_event(run: Callable[[], Awaitable[tuple[float, int]]], backend: str) -> tuple[float, int]:
    """Median seconds per event of ``run`` (a coroutine function returning (s, events))."""
    counts: list[int] = []

    async def timed() -> float:
        elapsed, received = await run()
        counts.append(received)
        return elapsed

    seconds = median_measured(timed, backend, REPEAT)
    return seconds / counts[0], counts[0]


def bench_backend(backend: str) -> dict[str, Any]:
    base = baselines(N, backend, REPEAT)
    queue_name = "asyncio.Queue(1024)" if backend == "asyncio" else "trio memory channel(1024)"
    queue = base[queue_name]
    bare = base["bare async generator"]
    anyio0 = base["anyio stream buffer=0"]
    rows: list[list[Any]] = []
    figures: dict[str, Any] = {"baselines": {k: us(v) for k, v in base.items()}, "cases": {}}
    for name, seconds in base.items():
        rows.append([f"baseline: {name}", us(seconds), "", f"{seconds / queue:.2f}x", "", ""])
    for name, config in CASES.items():
        seconds, events = per_event(partial(pipeline, config, N), backend)
        per_token = seconds * events / N
        figures["cases"][name] = {"us_per_event": us(seconds), "us_per_token": us(per_token)}
        rows.append(
            [
                f"pipeline, {name}",
                us(seconds),
                us(per_token),
                f"{seconds / queue:.2f}x",
                f"{anyio0 / seconds:.1f}x",
                f"{seconds / bare:.1f}x",
            ]
        )
    metadata_on = CASES["chunk_size=1, metadata on"]
    items = agent_items(N)
    seconds, events = per_event(partial(agent_pipeline, metadata_on, items), backend)
    figures["agent_parts"] = {"us_per_event": us(seconds), "us_per_item": us(seconds * events / N)}
    rows.append(
        [
            "pipeline, parts: reasoning + tool calls + text, chunk_size=1",
            us(seconds),
            us(seconds * events / N),
            f"{seconds / queue:.2f}x",
            f"{anyio0 / seconds:.1f}x",
            f"{seconds / bare:.1f}x",
        ]
    )
    seconds, _ = per_event(partial(streamer_alone, metadata_on, N), backend)
    figures["streamer_alone"] = us(seconds)
    rows.append(["part: stream_tokens alone, chunk_size=1", us(seconds), "", "", "", ""])
    seconds, _ = per_event(partial(log_alone, N), backend)
    figures["log_alone"] = us(seconds)
    rows.append(["part: log append + 1 cursor, events made before", us(seconds), "", "", "", ""])
    figures["rows"] = rows
    figures["queue_name"] = queue_name
    return figures


def verdicts(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per goal and backend, for the worst case (chunk_size=1, metadata on).

    Trio has no asyncio.Queue: its rows compare with the asyncio.Queue measured on
    asyncio in the same run, and with Trio's own memory channel.
    """
    asyncio_queue = results["asyncio"]["baselines"]["asyncio.Queue(1024)"]
    out = []
    for backend, figures in results.items():
        case = figures["cases"]["chunk_size=1, metadata on"]["us_per_event"]
        base = figures["baselines"]
        goals = [
            ("<= asyncio.Queue(1024)", case / asyncio_queue, case <= asyncio_queue),
            (
                ">= 8x faster than anyio buffer=0",
                base["anyio stream buffer=0"] / case,
                base["anyio stream buffer=0"] / case >= 8,
            ),
            (
                "within 5x of a bare async generator",
                case / base["bare async generator"],
                case / base["bare async generator"] <= 5,
            ),
        ]
        if backend == "trio":
            channel = base["trio memory channel(1024)"]
            goals.insert(1, ("(<= trio memory channel(1024))", case / channel, case <= channel))
        for goal, ratio, met in goals:
            out.append([backend, goal, f"{ratio:.2f}x", "met" if met else "NOT met"])
    return out


def main() -> None:
    started = time.perf_counter()
    print(f"streamkit in-process pipeline, {machine()}, {N:,} tokens, medians of {REPEAT}\n")
    header = ["case", "µs/event", "µs/token", "x queue", "anyio buf=0 ÷ this", "x bare gen"]
    results = {}
    for backend in BACKENDS:
        figures = bench_backend(backend)
        results[backend] = figures
        print(table(f"{backend}: 1 subscriber, per event", header, figures["rows"]))
    goals = verdicts(results)
    print(
        table("goals (chunk_size=1, metadata on)", ["backend", "goal", "ratio", "verdict"], goals)
    )
    path = save("pipeline", {"tokens": N, "repeat": REPEAT, "results": results, "goals": goals})
    print(f"raw figures in {path}; took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
