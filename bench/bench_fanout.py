"""Benchmark 2: one producer, many subscribers of the same session.

Run: ``.venv/bin/python bench/bench_fanout.py`` (``STREAMKIT_BENCH_QUICK=1`` for a smoke
run). Medians of several repetitions.

A registry session runs ``stream_tokens`` over a source with no latency of its own
(``chunk_size=1``, ``stream_delay=0``, metadata on: one event per token); S subscribers,
each an ``async for`` in its own task, subscribed before the start, read every event.

* **per delivery**: the time from ``registry.start`` until every subscriber has its last
  event, divided by events x subscribers;
* **producer per append**: the time the producer spends inside the log's append,
  divided by the events. That is where waking the subscribers is paid, once per batch
  of events; it must not grow with the number of subscribers. It is timed by a log
  subclass around the append the registry calls (two ``perf_counter`` calls included).

A last table measures the in-memory log exactly as ``bench/bench_redis.py`` measures
the Redis log (same cases, same event count, events built by the public constructor
inside the timed loop), so that the two can be compared.
"""

from __future__ import annotations

import os
import statistics
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from _harness import machine, median_measured, repetitions, save, table, us

import streamkit as sk

if TYPE_CHECKING:
    from streamkit._events import StreamEvent

QUICK = os.environ.get("STREAMKIT_BENCH_QUICK") == "1"
SUBSCRIBERS = (1, 10, 100, 1000)
# About two million deliveries per run (fewer in quick mode), at least 2,000 events.
DELIVERIES = 200_000 if QUICK else 2_000_000
MAX_EVENTS = 10_000 if QUICK else 100_000
REPEAT = repetitions(5)
BACKENDS = ("asyncio", "trio")
CONFIG = sk.StreamConfig(chunk_size=1, stream_delay=0)


class TimedLog(sk.InMemoryEventLog):
    """An in-memory log that records how long each of its producer's appends takes."""

    __slots__ = ("durations",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.durations: list[float] = []

    def append_nowait(self, event: StreamEvent, *, owned: bool = False) -> StreamEvent | None:
        started = time.perf_counter()
        stored = super().append_nowait(event, owned=owned)
        self.durations.append(time.perf_counter() - started)
        return stored


class TimedBackend(sk.MemoryBackend):
    """The memory backend, with :class:`TimedLog` logs."""

    __slots__ = ("logs",)

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[TimedLog] = []

    async def make_log(self, session_id: str, config: sk.RegistryConfig) -> sk.abc.EventLog:
        log = TimedLog(
            session_id,
            history_max_events=config.history_max_events,
            history_max_bytes=config.history_max_bytes,
            max_event_bytes=config.max_event_bytes,
            slow_consumer_policy=config.slow_consumer_policy,
            max_lag=config.max_lag,
        )
        self.logs.append(log)
        return log


async def token_source(n: int) -> Any:
    for _ in range(n):
        yield "tok "


def events_for(subscribers: int) -> int:
    return max(2_000, min(MAX_EVENTS, DELIVERIES // subscribers))


async def fanout(subscribers: int, tokens: int, producer: list[tuple[float, float]]) -> float:
    """Seconds until every subscriber has every event.

    Appends the mean and the median time of the producer's appends to ``producer``.
    """
    backend = TimedBackend()
    config = sk.RegistryConfig(max_subscribers_per_session=max(subscribers, 1))
    async with sk.SessionRegistry(config, backend=backend) as registry:
        session = await registry.create()
        sid = session.session_id
        counts: list[int] = []
        ready = anyio.Event()
        subscriptions = [registry.subscribe(sid) for _ in range(subscribers)]
        for subscription in subscriptions:
            await subscription.__aenter__()

        async def read(subscription: sk.Subscription) -> None:
            await ready.wait()
            received = 0
            async with subscription:
                async for _ in subscription:
                    received += 1
            counts.append(received)

        async with anyio.create_task_group() as tg:
            for subscription in subscriptions:
                tg.start_soon(read, subscription)
            await anyio.sleep(0)  # every reader is waiting for the start
            started = time.perf_counter()
            registry.start(sid, token_source(tokens), CONFIG)
            ready.set()
        elapsed = time.perf_counter() - started
    assert counts == [tokens + 2] * subscribers, (counts[:3], tokens)
    durations = backend.logs[0].durations
    producer.append((statistics.fmean(durations), statistics.median(durations)))
    return elapsed


def bench_backend(backend: str) -> list[dict[str, Any]]:
    results = []
    for subscribers in SUBSCRIBERS:
        tokens = events_for(subscribers)
        producer: list[tuple[float, float]] = []
        seconds = median_measured(partial(fanout, subscribers, tokens, producer), backend, REPEAT)
        events = tokens + 2
        results.append(
            {
                "subscribers": subscribers,
                "events": events,
                "us_per_delivery": us(seconds / (events * subscribers)),
                "deliveries_per_s": events * subscribers / seconds,
                "us_per_event_all_subscribers": us(seconds / events),
                "producer_us_per_append_mean": us(statistics.median(p[0] for p in producer)),
                "producer_us_per_append_median": us(statistics.median(p[1] for p in producer)),
            }
        )
    return results


REDIS_EVENTS = 1_000 if QUICK else 10_000  # as in bench/bench_redis.py


def _token(i: int) -> sk.StreamEvent:
    return sk.StreamEvent(event_type=sk.EventType.TOKEN, content=f"tok{i} ")


async def memory_like_redis() -> dict[str, float]:
    """The cases of bench/bench_redis.py over an InMemoryEventLog (seconds per event)."""
    results: dict[str, float] = {}
    log = sk.InMemoryEventLog(history_max_events=REDIS_EVENTS + 10)
    start = time.perf_counter()
    for i in range(REDIS_EVENTS):
        await log.append(_token(i))
    results["append"] = (time.perf_counter() - start) / REDIS_EVENTS
    await log.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
    start = time.perf_counter()
    async with log.read(0) as cursor:
        count = sum([1 async for _ in cursor])
    results["replay"] = (time.perf_counter() - start) / count
    for followers in (1, 10):
        live = sk.InMemoryEventLog(history_max_events=REDIS_EVENTS + 10)
        ready = [anyio.Event() for _ in range(followers)]

        async def follow(
            i: int, live: sk.InMemoryEventLog = live, ready: list[anyio.Event] = ready
        ) -> None:
            async with live.read(0) as cursor:
                ready[i].set()
                async for _ in cursor:
                    pass

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(followers):
                tg.start_soon(follow, i)
            for event in ready:
                await event.wait()
            for i in range(REDIS_EVENTS):
                await live.append(_token(i))
            await live.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
        elapsed = time.perf_counter() - start
        results[f"fan-out x{followers}"] = elapsed / ((REDIS_EVENTS + 1) * followers)
    return results


def main() -> None:
    started = time.perf_counter()
    print(f"streamkit fan-out, {machine()}, medians of {REPEAT}\n")
    header = [
        "subscribers",
        "events",
        "µs/delivery",
        "deliveries/s",
        "µs/event (all subscribers)",
        "producer µs/append, mean",
        "producer µs/append, median",
    ]
    results = {}
    for backend in BACKENDS:
        rows = bench_backend(backend)
        results[backend] = rows
        print(
            table(f"{backend}: 1 producer, S subscribers", header, [list(r.values()) for r in rows])
        )
    goals = []
    for backend, rows in results.items():
        at100 = next(r for r in rows if r["subscribers"] == 100)["us_per_delivery"]
        means = [r["producer_us_per_append_mean"] for r in rows]
        medians = [r["producer_us_per_append_median"] for r in rows]
        goals.append(
            [
                backend,
                "<= 0.5 µs per delivery at 100 subscribers",
                f"{at100:.2f} µs",
                "met" if at100 <= 0.5 else "NOT met",
            ]
        )
        for kind, figures in (("mean", means), ("median", medians)):
            flat = max(figures) / min(figures)
            goals.append(
                [
                    backend,
                    f"producer per append flat ({kind}, max/min over 1..1000 subscribers)",
                    f"{flat:.2f}x",
                    "met" if flat <= 1.5 else "NOT met",
                ]
            )
    print(table("goals", ["backend", "goal", "figure", "verdict"], goals))
    runs = [anyio.run(memory_like_redis, backend="asyncio") for _ in range(REPEAT)]
    like_redis = {case: us(statistics.median(run[case] for run in runs)) for case in runs[0]}
    print(
        table(
            f"in-memory log, the cases of bench/bench_redis.py, {REDIS_EVENTS} events, asyncio",
            ["case", "µs per event"],
            list(like_redis.items()),
        )
    )
    path = save(
        "fanout",
        {"repeat": REPEAT, "results": results, "goals": goals, "memory_like_redis": like_redis},
    )
    print(f"raw figures in {path}; took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
