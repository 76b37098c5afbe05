"""What streamkit.otel and streamkit.prometheus cost, against the same pipeline without them.

Run: ``.venv/bin/python bench/bench_otel.py`` (``STREAMKIT_BENCH_QUICK=1`` for a smoke
run). Needs the ``otel`` and ``prometheus`` extras and ``opentelemetry-sdk`` (all in
``streamkit[test]``).

Two workloads, each run plain, with :func:`streamkit.otel.instrument` (the real SDK: a
tracer provider with a batch span processor exporting nowhere, a meter provider with an
in-memory reader) and with :func:`streamkit.prometheus.instrument`. The variants
alternate inside every repetition, so the machine's noise falls on all of them alike;
the ratios to the plain run are what to compare across runs.

* **per token**: one session, N tokens with ``chunk_size=1`` (one event per token, the
  worst case), one subscriber; the cost per token is the difference of the elapsed
  times divided by N. The instrumentation adds one hook call and one type check per
  event here, and one span pair and a few metric records per stream.
* **per session**: M sessions of 10 tokens each, created, run and read one after the
  other; the difference per session is what the spans and per-stream metrics cost.
* **lag sampling only**: the plain run with a no-op ``delivered`` hook, so that its
  subscriptions read through the sampling cursor (it hands the events out in place of
  the log's cursor, with a take, a clock read and a hook call per 16): the share of the
  ``otel`` and ``prometheus`` costs that the delivery-lag sampling takes.
* **reading live events already logged**: N events published while a subscription
  waits, then read with nothing else running (best of the repetitions): the reading
  path's own cost per event, where the sampling cursor's difference shows.
* **one delivery-lag sample**: the registry's dispatch of the ``delivered`` hook with
  each instrumentation recording into its histogram, against the dispatch with no hook;
  divided by 16, the cost per token of the delivery-lag histogram.
* **the token hook alone**: the ``event`` hook the instrumentation registers, called
  with a ``token`` event C times, against an empty function called as often (what the
  registry's own dispatch of a hook costs is not in it: it is the same for any hook).
  On a loaded machine the two long workloads above cannot resolve a cost this small;
  this one can.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import TYPE_CHECKING, Any

import anyio
from _harness import machine, repetitions, table, us
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import streamkit as sk
import streamkit.otel
import streamkit.prometheus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

QUICK = os.environ.get("STREAMKIT_BENCH_QUICK") == "1"
N = 5_000 if QUICK else 20_000
SESSIONS = 200 if QUICK else 500
CALLS = 100_000 if QUICK else 1_000_000
REPEAT = repetitions(7)
BACKENDS = ("asyncio", "trio")
CONFIG = sk.StreamConfig(chunk_size=1, stream_delay=0)
# The reader may fall the whole stream behind: the producer is never held or refused,
# so what is measured is the work per token, not the lag policy.
REGISTRY = sk.RegistryConfig(
    max_sessions=SESSIONS + 10,
    heartbeat_interval=None,
    history_max_events=N + 10,
    history_max_bytes=1 << 30,
    max_lag=N + 10,
)


class Nowhere(SpanExporter):
    """Exports nothing: the cost measured is the instrumentation's, not a collector's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        del spans
        return SpanExportResult.SUCCESS


def with_otel(registry: sk.SessionRegistry) -> Callable[[], None]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Nowhere()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrumentation = streamkit.otel.instrument(
        registry, tracer_provider=tracer_provider, meter_provider=meter_provider
    )

    def stop() -> None:
        instrumentation.uninstrument()
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return stop


def with_prometheus(registry: sk.SessionRegistry) -> Callable[[], None]:
    return streamkit.prometheus.instrument(registry).uninstrument


def plain(registry: sk.SessionRegistry) -> Callable[[], None]:
    del registry
    return lambda: None


def lag_sampling(registry: sk.SessionRegistry) -> Callable[[], None]:
    """Only a no-op ``delivered`` hook: what the sampling cursor costs by itself."""

    def delivered(event: object, lag: float) -> None:
        del event, lag

    return registry.on("delivered", delivered)


VARIANTS: dict[str, Callable[[sk.SessionRegistry], Callable[[], None]]] = {
    "plain": plain,
    "lag sampling only": lag_sampling,
    "otel": with_otel,
    "prometheus": with_prometheus,
}


async def tokens(n: int) -> AsyncIterator[str]:
    for _ in range(n):
        yield "tok "


async def one_long_stream(setup: Callable[[sk.SessionRegistry], Callable[[], None]]) -> float:
    async with sk.SessionRegistry(REGISTRY) as registry:
        stop = setup(registry)
        session = await registry.create()
        sid = session.session_id
        async with registry.subscribe(sid) as subscription:
            started = time.perf_counter()
            registry.start(sid, tokens(N), CONFIG)
            last = None
            async for last in subscription:  # noqa: B007 - only the last one is checked
                pass
            elapsed = time.perf_counter() - started
        stop()
    assert last is not None
    assert last.event_type == "complete", last
    return elapsed


async def many_sessions(setup: Callable[[sk.SessionRegistry], Callable[[], None]]) -> float:
    async with sk.SessionRegistry(REGISTRY) as registry:
        stop = setup(registry)
        started = time.perf_counter()
        for _ in range(SESSIONS):
            session = await registry.create()
            sid = session.session_id
            async with registry.subscribe(sid) as subscription:
                registry.start(sid, tokens(10), CONFIG)
                async for _ in subscription:
                    pass
            await registry.close(sid)
        elapsed = time.perf_counter() - started
        stop()
    return elapsed


class HookCatcher:
    """Stands in for a registry: keeps the hooks a Watcher registers."""

    def __init__(self) -> None:
        self.hooks: dict[str, Callable[..., object]] = {}
        self.backend = None  # not Redis: no round trips to watch

    def on(self, name: str, callback: Callable[..., object]) -> Callable[[], None]:
        self.hooks[name] = callback
        return lambda: None


def token_hook_cost() -> dict[str, float]:
    """Seconds per call (best of the repetitions) of the event hook, and of a no-op."""
    from streamkit._observe import Watcher

    catcher = HookCatcher()
    sink: Any = object()  # a token event never reaches the sink
    Watcher(catcher, sink)  # type: ignore[arg-type]
    hook = catcher.hooks["event"]
    event = sk.StreamEvent(event_type="token", content="tok ", session_id="s" * 22)

    def noop(event: object) -> None:
        del event

    calls = {"empty function": noop, "instrumentation's event hook": hook}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(REPEAT):
        for name, fn in calls.items():  # alternating: the machine's noise falls on both
            started = time.perf_counter()
            for _ in range(CALLS):
                fn(event)
            times[name].append((time.perf_counter() - started) / CALLS)
    # The fastest repetition: what a call costs when nothing else took the core.
    return {name: min(values) for name, values in times.items()}


def lag_record_cost() -> dict[str, float]:
    """Seconds per call (best of the repetitions) of reporting one delivery-lag sample.

    What the sampling cursor calls for one event in 16: the registry's dispatch of the
    ``delivered`` hooks, with the instrumentation's hook recording into its histogram.
    """
    event = sk.StreamEvent(event_type="token", content="tok ", session_id="s" * 22)
    registries = {name: sk.SessionRegistry(REGISTRY) for name in ("no hook", "otel", "prometheus")}
    stops = [with_otel(registries["otel"]), with_prometheus(registries["prometheus"])]
    emits = {name: registry._emit for name, registry in registries.items()}
    times: dict[str, list[float]] = {name: [] for name in emits}
    calls = CALLS // 10
    for _ in range(REPEAT):
        for name, emit in emits.items():
            started = time.perf_counter()
            for _ in range(calls):
                emit("delivered", event, 0.001)
            times[name].append((time.perf_counter() - started) / calls)
    for stop in stops:
        stop()
    return {name: min(values) for name, values in times.items()}


async def read_published(setup: Callable[[sk.SessionRegistry], Callable[[], None]]) -> float:
    """Seconds to read N events already in the log, live to the subscription (no waits).

    The subscription opens before the events are published, so they are live (the
    sampling cursor reports one in 16); nothing else runs while they are read, so the
    difference between the variants is the reading path's own.
    """
    async with sk.SessionRegistry(REGISTRY) as registry:
        stop = setup(registry)
        session = await registry.create()
        sid = session.session_id
        async with registry.subscribe(sid) as subscription:
            for _ in range(N):
                await registry.publish(sid, sk.StreamEvent(event_type="token", content="tok "))
            await registry.publish(sid, sk.StreamEvent(event_type="complete"))
            started = time.perf_counter()
            count = 0
            async for _ in subscription:
                count += 1
            elapsed = time.perf_counter() - started
        stop()
    assert count == N + 1, count
    return elapsed


def measure(
    workload: Callable[[Callable[[sk.SessionRegistry], Callable[[], None]]], Any],
    backend: str,
    *,
    best: bool = False,
) -> dict[str, float]:
    """Median (or best) seconds of each variant, alternating in every repetition."""
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(REPEAT):
        for name, setup in VARIANTS.items():
            gc.collect()

            async def run(setup: Any = setup) -> float:
                return float(await workload(setup))

            times[name].append(anyio.run(run, backend=backend))
    pick = min if best else statistics.median
    return {name: pick(values) for name, values in times.items()}


def main() -> None:
    print(machine())
    print(f"N={N} tokens (chunk_size=1), {SESSIONS} sessions of 10 tokens, {REPEAT} repetitions\n")
    hook = token_hook_cost()
    rows = [[name, us(seconds) * 1000] for name, seconds in hook.items()]
    rows.append(
        ["difference", us(hook["instrumentation's event hook"] - hook["empty function"]) * 1000]
    )
    print(table(f"the token hook alone ({CALLS} calls)", ["call", "ns/call"], rows))
    lag = lag_record_cost()
    rows = [
        [name, us(seconds) * 1000, us(seconds - lag["no hook"]) * 1000 / 16]
        for name, seconds in lag.items()
    ]
    print(
        table(
            f"one delivery-lag sample ({CALLS // 10} calls)",
            ["instrumentation", "ns/sample", "+ns/token (1 in 16)"],
            rows,
        )
    )
    for backend in BACKENDS:
        reading = measure(read_published, backend, best=True)
        rows = [
            [name, us(reading[name]) / N * 1000, us(reading[name] - reading["plain"]) / N * 1000]
            for name in VARIANTS
        ]
        print(
            table(
                f"reading {N} live events already logged, {backend} (best of {REPEAT})",
                ["variant", "ns/event", "+ns/event"],
                rows,
            )
        )
    for backend in BACKENDS:
        long = measure(one_long_stream, backend)
        short = measure(many_sessions, backend)
        rows = [
            [
                name,
                us(long[name]) / N,
                long[name] / long["plain"],
                us(long[name] - long["plain"]) / N,
                us(short[name]) / SESSIONS,
                short[name] / short["plain"],
                us(short[name] - short["plain"]) / SESSIONS,
            ]
            for name in VARIANTS
        ]
        print(
            table(
                f"instrumentation cost, {backend}",
                [
                    "variant",
                    "µs/token",
                    "ratio",
                    "+µs/token",
                    "µs/session",
                    "ratio",
                    "+µs/session",
                ],
                rows,
            )
        )


if __name__ == "__main__":
    main()
