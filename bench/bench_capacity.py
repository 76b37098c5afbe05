"""Benchmark 4: how many sessions one process streams at once, and what an idle one costs.

Run: ``.venv/bin/python bench/bench_capacity.py`` (``STREAMKIT_BENCH_QUICK=1`` for a smoke
run).

**Streaming capacity.** N sessions in one registry, each fed by a source that yields a
token every 50 ms (20 tokens/s, the pace of a fast LLM; ``chunk_size=1``, so one event
per token), each followed by one in-process subscriber. The sources start at phases
spread evenly over one 50 ms period, as independent requests would. For every token
the subscriber computes the **delivery lag**: the time it receives the token minus the
time the source was due to yield it, on the event loop's clock. The lag thus includes
the source's own timer running late on a busy loop. A step passes when the p99 lag is
under 50 ms and every subscriber got every token and the ``complete`` event. N goes up
by steps until a step fails; the table shows each step. A step that misses the lag goal
is run once more (``STREAMKIT_BENCH_TRIES``, 2 by default; the same rule for every row)
and passes if either run does: a full collection of the garbage collector lands in some
runs of a step and not in others. A step that lost anything fails at once.

**Bare baselines, same run.** The same N paced streams without streamkit: per session,
a paced async generator, a producer task putting its tokens into an ``asyncio.Queue``
(asyncio) or a ``trio`` memory channel (Trio), and a reader task computing the same lag.
Each step runs the bare loop and the registry moments apart; the capacity table gives
the largest passing N of each and their ratio, and the CPU table the µs of CPU per
token of each at the same N. The readers are the same kind of task in both rows (an
``asyncio.TaskGroup`` task, a Trio nursery task): only what carries the tokens differs.
``STREAMKIT_BENCH_STEPS=750,1000`` runs only the steps given;
``STREAMKIT_BENCH_GC_THRESHOLD=10000`` sets the garbage collector's young threshold for
every row (an operator's tuning; Python's default is 700).

**Idle sessions.** 10,000 sessions made by ``registry.create()`` and left alone; the
memory they hold is measured with ``tracemalloc`` (Python allocations, after a garbage
collection), divided by the number of sessions.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import sniffio
from _harness import machine, save, table

import streamkit as sk

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

QUICK = os.environ.get("STREAMKIT_BENCH_QUICK") == "1"
BACKENDS = ("asyncio", "trio")
_GRID: tuple[int, ...] = (100, 150, 200, 250, 300, 350, 400, 500, 600, 750, 875, 1000)
_GRID = (*_GRID, 1125, 1250, 1500, 1750, 2000, 2500, 3000, 4000)
# Steps of about 1.15x to 1.33x: the ratio of two capacities is only as fine as the grid.
# STREAMKIT_BENCH_STEPS="750,1000" runs only those steps (pairs of runs, profiles).
STEPS = tuple(
    int(n) for n in os.environ.get("STREAMKIT_BENCH_STEPS", "").split(",") if n.strip()
) or ((100, 200) if QUICK else _GRID)
RATE = 20.0  # tokens per second per session
SECONDS = 1.0 if QUICK else 3.0  # of streaming per session
LAG_GOAL = 0.050
# Runs of a step before it counts as over the lag goal, the same for every row: a full
# collection of the garbage collector (50 to 150 ms at these sizes) falls into some runs
# of a step and not into others, and would otherwise decide the result by chance.
TRIES = int(os.environ.get("STREAMKIT_BENCH_TRIES", "2"))
IDLE_SESSIONS = 1_000 if QUICK else 10_000
# The young generation's collection threshold for every row (Python's default is 700):
# an operator's setting, for the tuning table in docs/performance.md, never the default.
GC_THRESHOLD = int(os.environ.get("STREAMKIT_BENCH_GC_THRESHOLD", "0")) or None
CONFIG = sk.StreamConfig(chunk_size=1, stream_delay=0)
ROOT = str(Path(__file__).resolve().parent.parent) + os.sep


def loop_clock() -> Any:
    """The running event loop's own clock (the bare rows' ``loop.time``)."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.current_time
    import asyncio

    return asyncio.get_running_loop().time


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


def setup_margin(sessions: int) -> float:
    """Seconds from the set-up of a step to its first token.

    Long enough for every stream to start and every reader to wait first, even on a
    loaded machine (a few ms per session): a set-up that overran would count as lag.
    """
    return 1.0 + sessions * 2e-3


@contextlib.asynccontextmanager
async def reader_tasks() -> AsyncIterator[Callable[..., object]]:
    """Start the readers' tasks as the bare rows start theirs: the backend's own group.

    The reader is the application's code, the same in every row: an ``asyncio.TaskGroup``
    task on asyncio, a nursery task on Trio (anyio's task groups add a handle, a cancel
    scope and an event per task since anyio 4.14, which the bare rows do not pay).
    """
    if sniffio.current_async_library() == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            yield nursery.start_soon
    else:
        import asyncio

        async with asyncio.TaskGroup() as group:
            yield lambda fn, *args: group.create_task(fn(*args))


async def paced_source(t0: float, tokens: int) -> Any:
    """Yields token k at t0 + k / RATE (never earlier).

    It sleeps with the event loop's own call (what the bare rows' source does too), so
    that both rows pay the same for their source and differ only by what carries it.
    """
    period = 1 / RATE
    if sniffio.current_async_library() == "trio":
        import trio

        for k in range(tokens):
            await trio.sleep_until(t0 + k * period)
            yield f"{k} "
    else:
        import asyncio

        clock = asyncio.get_running_loop().time
        for k in range(tokens):
            await asyncio.sleep(max(t0 + k * period - clock(), 0))
            yield f"{k} "


async def streaming_step(sessions: int) -> dict[str, Any]:
    tokens = round(SECONDS * RATE)
    period = 1 / RATE
    lags: list[float] = []
    complete = 0
    config = sk.RegistryConfig(max_sessions=sessions)
    async with sk.SessionRegistry(config) as registry:
        ids = [(await registry.create()).session_id for _ in range(sessions)]
        # The loop's own clock, what the bare rows read (anyio.current_time() would
        # charge this row for anyio's look-up of the backend at every token).
        clock = loop_clock()
        # Time for every stream to start and every subscriber to wait before the first
        # token is due.
        start = clock() + setup_margin(sessions)
        due: dict[str, float] = {}
        cpu_at_start = 0.0

        async def mark_start() -> None:
            nonlocal cpu_at_start
            await anyio.sleep_until(start)
            cpu_at_start = time.process_time()

        async def follow(sid: str) -> None:
            nonlocal complete
            t0 = due[sid]
            received = 0
            async with registry.subscribe(sid) as subscription:
                async for event in subscription:
                    if event.event_type == "token":
                        index = event.metadata["index"]
                        assert isinstance(index, int)
                        lags.append(clock() - (t0 + index * period))
                        received += 1
                    elif event.event_type == "complete" and received == tokens:
                        complete += event.metadata["reason"] == "completed"

        begun = time.perf_counter()
        async with reader_tasks() as start_soon:
            start_soon(mark_start)
            for i, sid in enumerate(ids):
                due[sid] = start + period * i / sessions
                start_soon(follow, sid)
            for sid in ids:
                registry.start(sid, paced_source(due[sid], tokens), CONFIG)
        wall = time.perf_counter() - begun
        cpu = time.process_time() - cpu_at_start
    return {**_summary(tokens, sessions, lags, complete, cpu), "wall_s": wall}


BREAKDOWN_SESSIONS = 50 if QUICK else 250
LAYERS = {
    "bare loop: paced generator, queue or channel, reader task": "bare",
    "the paced source alone, read by async for": "source",
    "+ stream_tokens (async with)": "streamer",
    "+ registry session and log, no subscriber": "registry",
    "+ one subscriber (the benchmark above)": "full",
}

BARE_LAYER = next(iter(LAYERS))

HANDOFF_TOKENS = 2_000 if QUICK else 20_000


async def handoff(layer: str) -> float:
    """CPU µs per token of one stream whose source releases a token at a time.

    A driver task lets the source yield one token, then waits until the reader (the
    stream's consumer, or a subscriber of the session) has it: every token costs every
    wake-up of a slow source, with no timer heap and no other session to blur it. The
    low-noise view of what the capacity benchmark measures. Layer ``chunked``: a
    session with ``chunk_size=5``; the driver waits for the source to be asked for
    the next token, and for the reader only once a chunk is complete.
    """
    go = [anyio.Event()]
    got = [anyio.Event()]
    taken = [anyio.Event()]
    chunked = layer == "chunked"
    config = CONFIG_5 if chunked else CONFIG

    async def source() -> Any:
        for _ in range(HANDOFF_TOKENS):
            await go[0].wait()
            go[0] = anyio.Event()
            yield "x "
            if chunked:  # asked for the next one: this one has been handled
                event = taken[0]
                taken[0] = anyio.Event()
                event.set()

    def received() -> None:
        event = got[0]
        got[0] = anyio.Event()
        event.set()

    async def read_stream() -> None:
        async with sk.stream_tokens(source(), config) as stream:
            async for event in stream:
                if event.event_type == "token":
                    received()

    async def read_session() -> None:
        async with sk.SessionRegistry() as registry:
            sid = (await registry.create()).session_id
            async with registry.subscribe(sid) as subscription:
                registry.start(sid, source(), config)
                async for event in subscription:
                    if event.event_type == "token":
                        received()

    async def drive() -> None:
        for k in range(HANDOFF_TOKENS):
            arrived = taken[0] if chunked and (k + 1) % 5 else got[0]
            go[0].set()
            await arrived.wait()

    cpu = time.process_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(read_stream if layer == "streamer" else read_session)
        tg.start_soon(drive)
    return (time.process_time() - cpu) / HANDOFF_TOKENS * 1e6


HANDOFF_LAYERS = {
    "stream_tokens (async with), read by async for": "streamer",
    "registry session, one subscriber": "full",
    "registry session, one subscriber, chunk_size=5 (per source token)": "chunked",
}
CONFIG_5 = sk.StreamConfig(chunk_size=5, stream_delay=0)


async def cpu_per_token(layer: str, sessions: int) -> float:
    """CPU µs per token of ``sessions`` paced streams with the pipeline cut at ``layer``."""
    tokens = round(SECONDS * RATE)
    period = 1 / RATE
    async with sk.SessionRegistry(sk.RegistryConfig(max_sessions=sessions)) as registry:
        ids = [(await registry.create()).session_id for _ in range(sessions)]
        start = anyio.current_time() + setup_margin(sessions)
        cpu_at_start = 0.0

        async def mark_start() -> None:
            nonlocal cpu_at_start
            await anyio.sleep_until(start)
            cpu_at_start = time.process_time()

        async def source_only(t0: float) -> None:
            async for _ in paced_source(t0, tokens):
                pass

        async def streamer_only(t0: float) -> None:
            async with sk.stream_tokens(paced_source(t0, tokens), CONFIG) as stream:
                async for _ in stream:
                    pass

        async def follow(sid: str) -> None:
            async with registry.subscribe(sid) as subscription:
                async for _ in subscription:
                    pass

        async def wait_for_producers() -> None:
            await anyio.sleep_until(start)
            while registry.statistics().producers:
                await anyio.sleep(0.25)

        async with anyio.create_task_group() as tg:
            tg.start_soon(mark_start)
            for i, sid in enumerate(ids):
                t0 = start + period * i / sessions
                if layer == "source":
                    tg.start_soon(source_only, t0)
                elif layer == "streamer":
                    tg.start_soon(streamer_only, t0)
                else:
                    if layer == "full":
                        tg.start_soon(follow, sid)
                    registry.start(sid, paced_source(t0, tokens), CONFIG)
            if layer == "registry":
                tg.start_soon(wait_for_producers)
        return (time.process_time() - cpu_at_start) / (sessions * tokens) * 1e6


def _summary(
    tokens: int, sessions: int, lags: list[float], complete: int, cpu: float
) -> dict[str, Any]:
    lags.sort()
    lost = sessions * tokens - len(lags) + (sessions - complete)
    p99 = percentile(lags, 0.99)
    period = 1 / RATE
    return {
        "sessions": sessions,
        "events_per_s": sessions * RATE,
        "p50_ms": percentile(lags, 0.50) * 1e3,
        "p99_ms": p99 * 1e3,
        "max_ms": lags[-1] * 1e3 if lags else float("nan"),
        "lost": lost,
        "cpu_us_per_token": cpu / (sessions * tokens) * 1e6,
        "cpu_share": cpu / (SECONDS + period),
        "ok": p99 < LAG_GOAL and lost == 0,
    }


async def bare_asyncio_step(sessions: int) -> dict[str, Any]:
    """The anchor on asyncio: paced generator -> producer task -> Queue -> reader task."""
    import asyncio

    tokens = round(SECONDS * RATE)
    period = 1 / RATE
    loop = asyncio.get_running_loop()
    clock = loop.time
    start = clock() + setup_margin(sessions)
    lags: list[float] = []
    complete = 0

    async def produce(queue: asyncio.Queue[tuple[int, str] | None], t0: float) -> None:
        k = 0
        async for text in paced_source(t0, tokens):
            queue.put_nowait((k, text))
            k += 1
        queue.put_nowait(None)

    async def read(queue: asyncio.Queue[tuple[int, str] | None], t0: float) -> None:
        nonlocal complete
        received = 0
        while (item := await queue.get()) is not None:
            lags.append(clock() - (t0 + item[0] * period))
            received += 1
        complete += received == tokens

    async with asyncio.TaskGroup() as tg:
        for i in range(sessions):
            queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
            t0 = start + period * i / sessions
            tg.create_task(read(queue, t0))
            tg.create_task(produce(queue, t0))
        await asyncio.sleep(max(start - clock(), 0))
        cpu = time.process_time()
    cpu = time.process_time() - cpu
    return _summary(tokens, sessions, lags, complete, cpu)


async def bare_trio_step(sessions: int) -> dict[str, Any]:
    """The anchor on Trio: paced generator -> producer task -> memory channel -> reader."""
    import trio

    tokens = round(SECONDS * RATE)
    period = 1 / RATE
    clock = trio.current_time
    start = clock() + setup_margin(sessions)
    lags: list[float] = []
    complete = 0

    async def produce(send: Any, t0: float) -> None:
        async with send:
            k = 0
            async for text in paced_source(t0, tokens):
                send.send_nowait((k, text))
                k += 1

    async def read(receive: Any, t0: float) -> None:
        nonlocal complete
        received = 0
        async with receive:
            async for k, _ in receive:
                lags.append(clock() - (t0 + k * period))
                received += 1
        complete += received == tokens

    async with trio.open_nursery() as nursery:
        for i in range(sessions):
            send, receive = trio.open_memory_channel[tuple[int, str]](tokens)
            t0 = start + period * i / sessions
            nursery.start_soon(read, receive, t0)
            nursery.start_soon(produce, send, t0)
        await trio.sleep_until(start)
        cpu = time.process_time()
    cpu = time.process_time() - cpu
    return _summary(tokens, sessions, lags, complete, cpu)


BARE = {"asyncio": bare_asyncio_step, "trio": bare_trio_step}


def verdict(row: dict[str, Any]) -> str:
    """``ok`` or ``over`` for the table, naming a pass that took a second run."""
    if not row["ok"]:
        return "over"
    return f"ok (run {len(row['missed_p99_ms']) + 1})" if row.get("missed_p99_ms") else "ok"


def capacity(backend: str) -> dict[str, list[dict[str, Any]]]:
    """Step N up for the registry and the bare loop, each step measuring both."""
    rows: dict[str, list[dict[str, Any]]] = {"registry": [], "bare": []}
    going = {"registry": True, "bare": True}
    for sessions in STEPS:
        for kind in ("bare", "registry"):
            if not going[kind]:
                continue
            step = BARE[backend] if kind == "bare" else streaming_step
            missed: list[float] = []  # the p99 of each try that missed the lag goal
            while True:
                gc.collect()
                row = anyio.run(step, sessions, backend=backend)
                print(
                    f"  {backend} {kind:>8} {sessions:>5} sessions: p99 {row['p99_ms']:.1f} ms, "
                    f"CPU {row['cpu_us_per_token']:.1f} µs/token, "
                    f"lost {row['lost']}, {'ok' if row['ok'] else 'over the goal'}",
                    flush=True,
                )
                # A loss is never retried; a lag miss is, up to TRIES runs of the step.
                if row["ok"] or row["lost"] or len(missed) + 1 >= TRIES:
                    break
                missed.append(row["p99_ms"])
            row["missed_p99_ms"] = missed
            rows[kind].append(row)
            going[kind] = row["ok"]
        if not any(going.values()):
            break
    return rows


async def idle_sessions(count: int) -> dict[str, Any]:
    config = sk.RegistryConfig(max_sessions=count * 2)
    async with sk.SessionRegistry(config) as registry:
        for _ in range(10):  # warm caches (interned strings, free lists) first
            await registry.create(user_id="alice")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        snapshot_before = tracemalloc.take_snapshot()
        started = time.perf_counter()
        for _ in range(count):
            await registry.create(user_id="alice")
        elapsed = time.perf_counter() - started
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        top = tracemalloc.take_snapshot().compare_to(snapshot_before, "lineno")[:8]
        tracemalloc.stop()
        held = registry.statistics().sessions
    assert held == count + 10
    return {
        "sessions": count,
        "bytes_per_session": (after - before) / count,
        "us_per_create": elapsed / count * 1e6,
        "top": [[str(stat.traceback[0]).replace(ROOT, ""), stat.size_diff / count] for stat in top],
    }


def main() -> None:
    started = time.perf_counter()
    if GC_THRESHOLD is not None:
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    print(
        f"streamkit capacity, {machine()}, {RATE:g} tokens/s per session, "
        f"{SECONDS:g} s of streaming per step, collector thresholds {gc.get_threshold()}\n"
    )
    results: dict[str, Any] = {"streaming": {}, "bare": {}, "idle": {}}
    header = [
        "sessions",
        "bare p99 lag ms",
        "bare CPU µs/token",
        "bare",
        "streamkit p50 lag ms",
        "streamkit p99 lag ms",
        "streamkit max lag ms",
        "lost",
        "streamkit CPU µs/token",
        "CPU ratio",
        "CPU busy",
        "streamkit",
    ]
    for backend in BACKENDS:
        both = capacity(backend)
        results["streaming"][backend] = rows = both["registry"]
        results["bare"][backend] = bare_rows = both["bare"]
        bare_by_n = {r["sessions"]: r for r in bare_rows}
        reg_by_n = {r["sessions"]: r for r in rows}
        cells = []
        for n in sorted(bare_by_n.keys() | reg_by_n.keys()):
            b = bare_by_n.get(n)
            r = reg_by_n.get(n)
            cells.append(
                [
                    n,
                    b["p99_ms"] if b else "",
                    b["cpu_us_per_token"] if b else "",
                    verdict(b) if b else "",
                    r["p50_ms"] if r else "",
                    r["p99_ms"] if r else "",
                    r["max_ms"] if r else "",
                    r["lost"] if r else "",
                    r["cpu_us_per_token"] if r else "",
                    f"{r['cpu_us_per_token'] / b['cpu_us_per_token']:.2f}x" if r and b else "",
                    f"{r['cpu_share']:.0%}" if r else "",
                    verdict(r) if r else "",
                ]
            )
        print()
        print(
            table(
                f"{backend}: streaming sessions, in-process readers, bare loop and streamkit",
                header,
                cells,
            )
        )
    ratios = []
    for backend in BACKENDS:
        rows = results["streaming"][backend]
        bare_rows = results["bare"][backend]
        held = max((r["sessions"] for r in rows if r["ok"]), default=0)
        bare_held = max((r["sessions"] for r in bare_rows if r["ok"]), default=0)
        common = [
            r["cpu_us_per_token"] / b["cpu_us_per_token"]
            for r in rows
            for b in bare_rows
            if r["sessions"] == b["sessions"]
        ]
        cpu_ratio = statistics.median(common) if common else float("nan")
        ratios.append(
            [
                backend,
                bare_held,
                held,
                f"{held / bare_held:.2f}x" if bare_held else "n/a",
                f"{cpu_ratio:.2f}x",
            ]
        )
    results["ratios"] = ratios
    print(
        table(
            "sessions held (p99 < 50 ms, no loss), same run",
            [
                "backend",
                "bare loop",
                "streamkit",
                "streamkit ÷ bare",
                "CPU/token ÷ bare (median over the steps both ran)",
            ],
            ratios,
        )
    )
    breakdown: dict[str, dict[str, float]] = {}
    for backend in BACKENDS:
        breakdown[backend] = {}
        for name, layer in LAYERS.items():
            gc.collect()
            if layer == "bare":
                row = anyio.run(BARE[backend], BREAKDOWN_SESSIONS, backend=backend)
                breakdown[backend][name] = row["cpu_us_per_token"]
            else:
                breakdown[backend][name] = anyio.run(
                    cpu_per_token, layer, BREAKDOWN_SESSIONS, backend=backend
                )
    results["breakdown"] = breakdown
    handoffs: dict[str, dict[str, float]] = {}
    for backend in BACKENDS:
        handoffs[backend] = {}
        for name, layer in HANDOFF_LAYERS.items():
            runs = []
            for _ in range(3):
                gc.collect()
                runs.append(anyio.run(handoff, layer, backend=backend))
            handoffs[backend][name] = min(runs)
    results["handoff"] = handoffs
    print(
        table(
            f"where the CPU goes: µs per token, {BREAKDOWN_SESSIONS} sessions",
            ["pipeline cut at", *BACKENDS, *(f"{b} ÷ bare" for b in BACKENDS)],
            [
                [
                    name,
                    *(breakdown[b][name] for b in BACKENDS),
                    *(f"{breakdown[b][name] / breakdown[b][BARE_LAYER]:.2f}x" for b in BACKENDS),
                ]
                for name in LAYERS
            ],
        )
    )
    print(
        table(
            "one stream, tokens released one at a time: CPU µs per token, best of 3",
            ["reader", *BACKENDS],
            [[name, *(handoffs[b][name] for b in BACKENDS)] for name in HANDOFF_LAYERS],
        )
    )
    for backend in BACKENDS:
        gc.collect()
        idle = anyio.run(idle_sessions, IDLE_SESSIONS, backend=backend)
        results["idle"][backend] = idle
        print(
            table(
                f"{backend}: {IDLE_SESSIONS:,} idle sessions (tracemalloc)",
                ["bytes per session", "µs per create"],
                [[idle["bytes_per_session"], idle["us_per_create"]]],
            )
        )
        if backend == BACKENDS[0]:  # the same allocations on every backend
            print(table("where they are, per session", ["allocated at", "bytes"], idle["top"]))
    goals = []
    for backend, bare_held, held, _, cpu_ratio in ratios:
        share = held / bare_held if bare_held else 0.0
        goals.append(
            [
                backend,
                ">= 0.8x the bare loop's sessions (p99 < 50 ms, no loss)",
                f"{held:,} vs {bare_held:,} ({share:.2f}x)",
                "n/a (quick run)" if QUICK else "met" if share >= 0.8 else "NOT met",
            ]
        )
        ratio = float(cpu_ratio.rstrip("x"))
        goals.append(
            [
                backend,
                "CPU per token <= 1.3x the bare loop's",
                cpu_ratio,
                "n/a (quick run)" if QUICK else "met" if ratio <= 1.3 else "NOT met",
            ]
        )
        goals.append(
            [
                backend,
                ">= 2,000 streaming sessions (p99 < 50 ms, no loss)",
                f"{held:,}",
                "n/a (quick run)" if QUICK else "met" if held >= 2000 else "NOT met",
            ]
        )
    for backend, idle in results["idle"].items():
        size = idle["bytes_per_session"]
        goals.append(
            [
                backend,
                "<= 2 KiB per idle session",
                f"{size:,.0f} B",
                "met" if size <= 2048 else "NOT met",
            ]
        )
        goals.append(
            [
                backend,
                "10,000 idle sessions",
                f"{idle['sessions']:,}",
                "met" if idle["sessions"] >= 10_000 else "NOT met (quick run)",
            ]
        )
    print(table("goals", ["backend", "goal", "figure", "verdict"], goals))
    name = "capacity" if GC_THRESHOLD is None else f"capacity-gc{GC_THRESHOLD}"
    path = save(name, {"rate": RATE, "seconds": SECONDS, **results, "goals": goals})
    print(f"raw figures in {path}; took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
