"""Shared pieces of the benchmarks: timing, baselines measured in the same run, tables.

These machines are noisy, so every benchmark reports medians of several repetitions and
ratios against baselines measured in the same process, moments apart. Only the ratios
compare across runs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = os.environ.get("STREAMKIT_BENCH_QUICK") == "1"


def repetitions(default: int = 5) -> int:
    """How many repetitions to take the median of (fewer with STREAMKIT_BENCH_QUICK=1)."""
    return 2 if QUICK else default


def median_time(run: Callable[[], Awaitable[Any]], backend: str, repeat: int) -> float:
    """Run the coroutine function ``repeat`` times on ``backend``; return the median seconds."""
    times = []
    for _ in range(repeat):
        gc.collect()

        async def timed() -> float:
            start = time.perf_counter()
            await run()
            return time.perf_counter() - start

        times.append(anyio.run(timed, backend=backend))
    return statistics.median(times)


def median_measured(run: Callable[[], Awaitable[float]], backend: str, repeat: int) -> float:
    """Like :func:`median_time`, for a coroutine function that times itself.

    ``run`` returns the seconds of the part worth timing (set-up and tear-down left out).
    """
    times = []
    for _ in range(repeat):
        gc.collect()
        times.append(anyio.run(run, backend=backend))
    return statistics.median(times)


# -- baselines: the same number of items through the simplest alternatives -----------


async def bare_async_generator(n: int) -> None:
    """The floor: a bare async generator consumed by ``async for``."""

    async def gen() -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async for _ in gen():
        pass


async def asyncio_queue(n: int) -> None:
    """A producer task and a consumer through ``asyncio.Queue(1024)`` (asyncio only)."""
    queue: asyncio.Queue[int | None] = asyncio.Queue(1024)

    async def produce() -> None:
        for i in range(n):
            await queue.put(i)
        await queue.put(None)

    task = asyncio.ensure_future(produce())
    while await queue.get() is not None:
        pass
    await task


async def anyio_memory_stream(n: int, buffer: int) -> None:
    """A producer task and a consumer through an anyio memory object stream."""
    send, receive = anyio.create_memory_object_stream[int](buffer)

    async def produce() -> None:
        async with send:
            for i in range(n):
                await send.send(i)

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(produce)
        async for _ in receive:
            pass


async def trio_memory_channel(n: int) -> None:
    """A producer task and a consumer through ``trio.open_memory_channel(1024)`` (Trio only).

    Trio's own queue: its counterpart of ``asyncio.Queue(1024)``.
    """
    import trio

    send, receive = trio.open_memory_channel[int](1024)

    async def produce() -> None:
        async with send:
            for i in range(n):
                await send.send(i)

    async with trio.open_nursery() as nursery, receive:
        nursery.start_soon(produce)
        async for _ in receive:
            pass


def baselines(n: int, backend: str, repeat: int) -> dict[str, float]:
    """Seconds per item of each baseline on ``backend`` (median of ``repeat``)."""
    out = {
        "bare async generator": median_time(lambda: bare_async_generator(n), backend, repeat) / n,
        "anyio stream buffer=0": median_time(
            lambda: anyio_memory_stream(n // 4, 0), backend, repeat
        )
        / (n // 4),
        "anyio stream buffer=1024": median_time(
            lambda: anyio_memory_stream(n, 1024), backend, repeat
        )
        / n,
    }
    if backend == "asyncio":
        out["asyncio.Queue(1024)"] = median_time(lambda: asyncio_queue(n), backend, repeat) / n
    else:
        out["trio memory channel(1024)"] = (
            median_time(lambda: trio_memory_channel(n), backend, repeat) / n
        )
    return out


# -- reporting -------------------------------------------------------------------------


def machine() -> str:
    """One line naming the machine, for the tables in docs/performance.md."""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{platform.system()} {platform.release()}"
    )


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Format a Markdown table (printed, and pasted into docs/performance.md)."""
    cells = [[str(c) for c in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"### {title}", ""]
    for index, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def us(seconds: float) -> float:
    """Seconds to microseconds."""
    return seconds * 1e6


def save(name: str, data: dict[str, Any]) -> Path:
    """Write raw figures to bench/results/NAME.json (for plots and docs)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), **data}
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return path
