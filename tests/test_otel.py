"""streamkit.otel with the real OpenTelemetry SDK: spans and metrics by exact counts.

In-process tests drive a registry directly; the ASGI tests run a StreamApp under a real
uvicorn (tests/asgi_helpers.py) and read the in-memory exporter and metric reader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import streamkit as sk
import streamkit.otel
from streamkit import sse
from streamkit.asgi import StreamApp
from streamkit.testing import SimulatedAgent

from .asgi_helpers import auth, bearer_authenticate, serve, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from .asgi_helpers import ServerThread

pytestmark = pytest.mark.anyio

SECRET = "the-secret-prompt-text"


class Telemetry:
    """A tracer provider and a meter provider recording in memory."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def instrument(
        self, registry: sk.SessionRegistry, **options: Any
    ) -> streamkit.otel.Instrumentation:
        return streamkit.otel.instrument(
            registry,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            **options,
        )

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def points(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        if data is None:
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    out[metric.name] = list(metric.data.data_points)
        return out

    def everything_recorded(self) -> str:
        """Every attribute, event, status and metric label as one text, to search."""
        parts: list[str] = []
        for span in self.spans.get_finished_spans():
            parts.append(repr(dict(span.attributes or {})))
            parts.append(repr(span.status.description))
            parts.extend(repr((e.name, dict(e.attributes or {}))) for e in span.events)
        for points in self.points().values():
            parts.extend(repr(dict(p.attributes or {})) for p in points)
        return "\n".join(parts)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    made = Telemetry()
    yield made
    made.tracer_provider.shutdown()
    made.meter_provider.shutdown()


def value(points: list[Any], **attributes: Any) -> Any:
    """The value (sum, or histogram count) of the one point with exactly ``attributes``."""
    found = [p for p in points if dict(p.attributes or {}) == attributes]
    assert len(found) == 1, (attributes, [dict(p.attributes or {}) for p in points])
    point = found[0]
    if isinstance(point, HistogramDataPoint):
        return point.count
    assert isinstance(point, NumberDataPoint)
    return point.value


async def read_to_end(
    registry: sk.SessionRegistry, session_id: str, user: str
) -> list[sk.StreamEvent]:
    with anyio.fail_after(10):
        return [event async for event in registry.subscribe(session_id, user_id=user)]


def final_stats(events: list[sk.StreamEvent]) -> dict[str, Any]:
    stats = events[-1].metadata["stats"]
    assert isinstance(stats, dict) or hasattr(stats, "items")
    return dict(stats)  # type: ignore[arg-type]


# -- a session's whole life ---------------------------------------------------------------


async def test_session_life_gives_two_spans_and_exact_metrics(telemetry: Telemetry) -> None:
    async with sk.SessionRegistry() as registry:
        telemetry.instrument(registry)
        session = await registry.create(user_id="alice", context={"note": SECRET})
        await registry.pause(session.session_id, user_id="alice")
        await registry.resume(session.session_id, user_id="alice")
        registry.start(
            session.session_id, ["Hel", "lo ", "wor", "ld"], sk.StreamConfig(chunk_size=1)
        )
        events = await read_to_end(registry, session.session_id, "alice")
        stats = final_stats(events)

    (session_span,) = telemetry.finished("streamkit.session")
    (stream_span,) = telemetry.finished("streamkit.stream")
    assert stream_span.parent is not None
    assert stream_span.parent.span_id == session_span.context.span_id
    assert stream_span.context.trace_id == session_span.context.trace_id
    assert [e.name for e in session_span.events] == [
        "streamkit.session.paused",
        "streamkit.session.resumed",
        "streamkit.stream.started",
        "streamkit.session.ended",
    ]
    assert dict(session_span.attributes or {}) == {
        "streamkit.session.state": "completed",
        "streamkit.session.end_reason": "completed",
        "streamkit.session.pauses": 1,
    }
    assert session_span.status.status_code is StatusCode.UNSET
    attributes = dict(stream_span.attributes or {})
    assert attributes["streamkit.stream.outcome"] == "completed"
    assert attributes["streamkit.stream.tokens"] == 4
    assert attributes["streamkit.stream.chunks"] == 4
    assert attributes["streamkit.stream.characters"] == 11
    assert attributes["streamkit.stream.time_to_first_token"] == stats["time_to_first_token"]
    assert attributes["streamkit.stream.duration"] == stats["duration"]

    points = telemetry.points()
    done = {"streamkit.stream.outcome": "completed"}
    assert value(points["gen_ai.server.time_to_first_token"], **done) == 1
    assert value(points["gen_ai.server.time_per_output_token"], **done) == 1
    assert value(points["gen_ai.server.request.duration"], **done) == 1
    assert points["gen_ai.server.time_to_first_token"][0].sum == pytest.approx(
        stats["time_to_first_token"]
    )
    assert points["gen_ai.server.time_per_output_token"][0].sum == pytest.approx(
        (stats["duration"] - stats["time_to_first_token"]) / 3
    )
    assert value(points["streamkit.stream.tokens"], **done) == 4
    assert value(points["streamkit.stream.chunks"], **done) == 4
    assert value(points["streamkit.streams"], **done) == 1
    assert (
        value(
            points["streamkit.sessions.ended"],
            **{"streamkit.session.state": "completed", "streamkit.session.end_reason": "completed"},
        )
        == 1
    )
    assert value(points["streamkit.sessions.created"]) == 1
    # start, four tokens, complete
    assert value(points["streamkit.events.appended"]) == 6
    assert value(points["streamkit.events.delivered"]) == 6
    assert value(points["streamkit.subscribers"]) == 0
    assert value(points["streamkit.producers"]) == 0
    assert value(points["streamkit.sessions"], **{"streamkit.session.state": "completed"}) == 1
    assert value(points["streamkit.sessions"], **{"streamkit.session.state": "active"}) == 0
    assert "streamkit.requests.rejected" not in points
    recorded = telemetry.everything_recorded()
    assert session.session_id not in recorded
    assert "alice" not in recorded
    assert SECRET not in recorded
    assert "Hel" not in recorded


async def test_failed_stream_records_its_error_type_but_not_its_message(
    telemetry: Telemetry,
) -> None:
    def failing() -> Iterator[str]:
        yield "one"
        raise RuntimeError(SECRET)

    async with sk.SessionRegistry() as registry:
        telemetry.instrument(registry)
        session = await registry.create(user_id="bob")
        registry.start(session.session_id, failing())
        events = await read_to_end(registry, session.session_id, "bob")
        assert events[-1].event_type == sk.EventType.ERROR

    (session_span,) = telemetry.finished("streamkit.session")
    (stream_span,) = telemetry.finished("streamkit.stream")
    for span in (session_span, stream_span):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "RuntimeError"
        assert (span.attributes or {})["error.type"] == "RuntimeError"
        (exception,) = [e for e in span.events if e.name == "exception"]
        assert dict(exception.attributes or {}) == {"exception.type": "RuntimeError"}
    assert (session_span.attributes or {})["streamkit.session.state"] == "error"
    assert (session_span.attributes or {})["streamkit.session.end_reason"] == "error"
    assert (stream_span.attributes or {})["streamkit.stream.outcome"] == "error"
    points = telemetry.points()
    failed = {"streamkit.stream.outcome": "error", "error.type": "RuntimeError"}
    assert value(points["streamkit.streams"], **failed) == 1
    assert value(points["gen_ai.server.request.duration"], **failed) == 1
    assert (
        value(
            points["streamkit.sessions.ended"],
            **{
                "streamkit.session.state": "error",
                "streamkit.session.end_reason": "error",
                "error.type": "RuntimeError",
            },
        )
        == 1
    )
    recorded = telemetry.everything_recorded()
    assert SECRET not in recorded
    assert session.session_id not in recorded
    assert "bob" not in recorded


async def test_record_content_opts_in_to_ids_and_error_messages(telemetry: Telemetry) -> None:
    def failing() -> Iterator[str]:
        yield "one"
        raise RuntimeError(SECRET)

    async with sk.SessionRegistry() as registry:
        instrumentation = telemetry.instrument(registry, record_content=True)
        assert instrumentation.record_content is True
        session = await registry.create(user_id="carol")
        registry.start(session.session_id, failing())
        await read_to_end(registry, session.session_id, "carol")

    (session_span,) = telemetry.finished("streamkit.session")
    attributes = dict(session_span.attributes or {})
    assert attributes["streamkit.session.id"] == session.session_id
    assert attributes["enduser.id"] == "carol"
    assert session_span.status.description == f"RuntimeError: {SECRET}"
    (exception,) = [e for e in session_span.events if e.name == "exception"]
    assert (exception.attributes or {})["exception.message"] == SECRET
    # Metrics never carry ids, whatever the option.
    labels = "".join(
        repr(dict(p.attributes or {})) for ps in telemetry.points().values() for p in ps
    )
    assert session.session_id not in labels
    assert "carol" not in labels


async def test_cancelled_session_ends_its_open_stream_span(telemetry: Telemetry) -> None:
    never = anyio.Event()

    async def endless() -> AsyncIterator[str]:
        yield "first"
        await never.wait()
        yield "never"  # pragma: no cover - the wait is cancelled

    async with sk.SessionRegistry() as registry:
        telemetry.instrument(registry)
        session = await registry.create(user_id="dave")
        registry.start(session.session_id, endless(), sk.StreamConfig(chunk_size=1))
        with anyio.fail_after(10):
            async with registry.subscribe(session.session_id, user_id="dave") as events:
                async for event in events:
                    if event.event_type == sk.EventType.TOKEN:
                        break
        await registry.cancel(session.session_id, user_id="dave")

    (session_span,) = telemetry.finished("streamkit.session")
    (stream_span,) = telemetry.finished("streamkit.stream")
    assert dict(stream_span.attributes or {}) == {"streamkit.stream.outcome": "cancelled"}
    assert (session_span.attributes or {})["streamkit.session.state"] == "cancelled"
    assert (session_span.attributes or {})["streamkit.session.end_reason"] == "cancelled"
    points = telemetry.points()
    assert value(points["streamkit.streams"], **{"streamkit.stream.outcome": "cancelled"}) == 1
    assert "gen_ai.server.time_to_first_token" not in points


async def test_expired_and_published_sessions(telemetry: Telemetry) -> None:
    config = sk.RegistryConfig(session_timeout=1, cleanup_interval=3600)
    now = [0.0]
    async with sk.SessionRegistry(config, clock=lambda: now[0]) as registry:
        telemetry.instrument(registry)
        idle = await registry.create()
        published = await registry.create()
        await registry.publish(
            published.session_id, sk.StreamEvent(event_type="token", content="x")
        )
        await registry.publish(published.session_id, sk.StreamEvent(event_type="complete"))
        now[0] = 5.0
        assert await registry.sweep() == 1
        assert (await registry.get(idle.session_id)).status is sk.SessionState.EXPIRED

    spans = telemetry.finished("streamkit.session")
    assert sorted(str((s.attributes or {})["streamkit.session.end_reason"]) for s in spans) == [
        "completed",
        "expired",
    ]
    assert telemetry.finished("streamkit.stream") == []
    points = telemetry.points()
    assert value(points["streamkit.sessions.expired"]) == 1
    assert (
        value(
            points["streamkit.sessions.ended"],
            **{"streamkit.session.state": "expired", "streamkit.session.end_reason": "expired"},
        )
        == 1
    )


# -- context, attributes, uninstrument ------------------------------------------------------


async def test_session_created_in_a_traced_request_joins_its_trace(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("test")
    async with sk.SessionRegistry() as registry:
        telemetry.instrument(registry)
        with tracer.start_as_current_span("request") as request:
            session = await registry.create()
        registry.start(session.session_id, ["a"])
        async for _ in registry.subscribe(session.session_id):
            pass
    (session_span,) = telemetry.finished("streamkit.session")
    assert session_span.parent is not None
    assert session_span.parent.span_id == request.get_span_context().span_id
    assert session_span.context.trace_id == request.get_span_context().trace_id


async def test_attributes_callable_labels_spans_and_stream_metrics(telemetry: Telemetry) -> None:
    def model_of(session: sk.StreamSession) -> dict[str, Any]:
        return {"gen_ai.request.model": session.context["model"], "dropped": [1, 2]}

    async with sk.SessionRegistry() as registry:
        telemetry.instrument(registry, attributes=model_of)
        session = await registry.create(context={"model": "demo-1"})
        registry.start(session.session_id, ["a", "b"])
        async for _ in registry.subscribe(session.session_id):
            pass
    (session_span,) = telemetry.finished("streamkit.session")
    (stream_span,) = telemetry.finished("streamkit.stream")
    assert (session_span.attributes or {})["gen_ai.request.model"] == "demo-1"
    assert (stream_span.attributes or {})["gen_ai.request.model"] == "demo-1"
    assert "dropped" not in (session_span.attributes or {})
    points = telemetry.points()
    labels = {"gen_ai.request.model": "demo-1", "streamkit.stream.outcome": "completed"}
    assert value(points["gen_ai.server.time_to_first_token"], **labels) == 1


async def test_uninstrument_stops_everything(telemetry: Telemetry) -> None:
    async with sk.SessionRegistry() as registry:
        instrumentation = telemetry.instrument(registry)
        live = await registry.create()
        assert instrumentation.live_sessions == 1
        instrumentation.uninstrument()
        instrumentation.uninstrument()  # idempotent
        assert instrumentation.live_sessions == 0
        (ended,) = telemetry.finished("streamkit.session")
        assert "streamkit.session.state" not in (ended.attributes or {})
        later = await registry.create()
        registry.start(later.session_id, ["a"])
        async for _ in registry.subscribe(later.session_id):
            pass
        await registry.cancel(live.session_id)

        async def refuse(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 401})
            await send({"type": "http.response.body", "body": b""})

        async def receive() -> Any:
            return {"type": "http.request"}

        async def ignore(message: Any) -> None:
            pass

        await instrumentation.wrap(refuse)({"type": "http", "headers": []}, receive, ignore)
    assert len(telemetry.finished("streamkit.session")) == 1
    assert "streamkit.requests.rejected" not in telemetry.points()
    assert telemetry.finished("streamkit.stream") == []
    points = telemetry.points()
    assert "streamkit.sessions.ended" not in points
    for name in ("streamkit.sessions.created", "streamkit.subscribers"):
        assert points.get(name, []) == []


async def test_sessions_made_before_instrumenting_still_count(telemetry: Telemetry) -> None:
    gate = anyio.Event()

    async def gated() -> AsyncIterator[str]:
        yield "a"
        await gate.wait()
        yield "b"

    async with sk.SessionRegistry() as registry:
        early = await registry.create()
        registry.start(early.session_id, gated(), sk.StreamConfig(chunk_size=1))
        with anyio.fail_after(10):
            async with registry.subscribe(early.session_id) as events:
                async for event in events:
                    if event.event_type == sk.EventType.TOKEN:
                        break
        telemetry.instrument(registry)
        gate.set()
        async for _ in registry.subscribe(early.session_id):
            pass
    assert telemetry.finished("streamkit.session") == []
    points = telemetry.points()
    assert value(points["streamkit.streams"], **{"streamkit.stream.outcome": "completed"}) == 1
    assert (
        value(points["streamkit.stream.tokens"], **{"streamkit.stream.outcome": "completed"}) == 2
    )
    assert (
        value(
            points["streamkit.sessions.ended"],
            **{"streamkit.session.state": "completed", "streamkit.session.end_reason": "completed"},
        )
        == 1
    )


def test_bad_arguments_are_refused() -> None:
    registry = sk.SessionRegistry()
    with pytest.raises(sk.ValidationError, match="registry"):
        streamkit.otel.instrument(object())  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="record_content"):
        streamkit.otel.instrument(registry, record_content="yes")  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="attributes"):
        streamkit.otel.instrument(registry, attributes=42)  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="stream_apps"):
        streamkit.otel.instrument(registry, stream_apps=[object()])
    instrumentation = streamkit.otel.instrument(registry)
    with pytest.raises(sk.ValidationError, match="app"):
        instrumentation.wrap(42)  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="propagate_context"):
        instrumentation.wrap(StreamApp(registry), propagate_context=1)  # type: ignore[arg-type]
    instrumentation.uninstrument()


# -- under uvicorn ---------------------------------------------------------------------------


class Site:
    """The application: a registry it enters in its lifespan, a wrapped StreamApp."""

    def __init__(self, registry: sk.SessionRegistry, app: Any, stream_app: StreamApp) -> None:
        self.registry = registry
        self.app = app
        self.stream_app = stream_app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            async with self.registry:
                await send({"type": "lifespan.startup.complete"})
                await receive()
                self.stream_app.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self.app(scope, receive, send)


def failing_agent(prompt: str) -> Any:
    if prompt == "fail":

        async def fail() -> AsyncIterator[str]:
            yield "partial "
            raise RuntimeError(SECRET)

        return fail()
    return SimulatedAgent(seed=3, realtime=False)(prompt)


@pytest.fixture
def served(telemetry: Telemetry) -> Iterator[tuple[ServerThread, Telemetry, Any]]:
    registry = sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None))
    stream_app = StreamApp(
        registry,
        agent=failing_agent,
        authenticate=bearer_authenticate,
        stream_config=sk.StreamConfig(stream_delay=0, chunk_size=3, heartbeat_interval=None),
    )
    instrumentation = telemetry.instrument(registry, stream_apps=[stream_app])
    with serve(Site(registry, instrumentation.wrap(stream_app), stream_app)) as server:
        yield server, telemetry, stream_app


async def sse_events(http: httpx.AsyncClient, session_id: str, user: str) -> list[sk.StreamEvent]:
    async with http.stream("GET", f"/sessions/{session_id}/events", headers=auth(user)) as response:
        assert response.status_code == 200
        return [event async for event in sse.aiter_events(response.aiter_bytes())]


async def test_under_uvicorn_trace_joins_and_rejections_count(
    served: tuple[ServerThread, Telemetry, Any],
) -> None:
    server, telemetry, _ = served
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.post(
            "/sessions",
            json={"prompt": "hello"},
            headers={**auth("alice"), "traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        assert response.status_code == 201, response.text
        good = response.json()["session"]["session_id"]
        events = await sse_events(http, good, "alice")
        assert events[-1].event_type == sk.EventType.COMPLETE
        response = await http.post("/sessions", json={"prompt": "fail"}, headers=auth("alice"))
        bad = response.json()["session"]["session_id"]
        failed = await sse_events(http, bad, "alice")
        assert failed[-1].event_type == sk.EventType.ERROR
        for _ in range(3):
            assert (await http.get("/sessions")).status_code == 401
        missing = await http.get("/sessions/" + "x" * 22, headers=auth("alice"))
        assert missing.status_code == 404
        assert (
            await http.post(f"/sessions/{good}/pause", headers=auth("alice"))
        ).status_code == 409

    spans = telemetry.finished("streamkit.session")
    assert len(spans) == 2
    joined = [s for s in spans if s.parent is not None and s.parent.is_remote]
    assert len(joined) == 1
    assert joined[0].context.trace_id == int(trace_id, 16)
    assert joined[0].parent is not None
    assert joined[0].parent.span_id == int(parent_id, 16)
    assert len(telemetry.finished("streamkit.stream")) == 2

    async def collect() -> dict[str, list[Any]]:
        return telemetry.points()

    points = await server.call(collect)
    stats: Any = events[-1].metadata["stats"]
    done = {"streamkit.stream.outcome": "completed"}
    assert value(points["streamkit.stream.tokens"], **done) == stats["tokens"]
    assert value(points["gen_ai.server.time_to_first_token"], **done) == 1
    failed_labels = {"streamkit.stream.outcome": "error", "error.type": "RuntimeError"}
    assert value(points["streamkit.streams"], **failed_labels) == 1
    assert value(points["streamkit.sessions.created"]) == 2
    rejected = points["streamkit.requests.rejected"]
    kind = {"streamkit.request.kind": "http"}
    assert (
        value(
            rejected, **kind, **{"error.type": "unauthenticated", "http.response.status_code": 401}
        )
        == 3
    )
    assert (
        value(rejected, **kind, **{"error.type": "not_found", "http.response.status_code": 404})
        == 1
    )
    assert (
        value(
            rejected,
            **kind,
            **{"error.type": "invalid_transition", "http.response.status_code": 409},
        )
        == 1
    )
    assert len(rejected) == 3
    assert (
        value(points["streamkit.http.open_streams"], **{"streamkit.connection.kind": "stream"}) == 0
    )
    ended = points["streamkit.http.streams.ended"]
    assert value(ended, **{"streamkit.connection.outcome": "ended"}) == 2
    recorded = telemetry.everything_recorded()
    assert SECRET not in recorded
    assert good not in recorded
    assert "alice" not in recorded


async def test_websocket_refusals_count(served: tuple[ServerThread, Telemetry, Any]) -> None:
    server, telemetry, _ = served
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        # A plain GET to a WebSocket route is not found over HTTP.
        assert (await http.get("/ws", headers=auth("alice"))).status_code == 404
    stream = await anyio.connect_tcp("127.0.0.1", server.port)
    async with stream:
        await stream.send(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        with anyio.fail_after(10):
            answer = await stream.receive()
    assert answer.startswith(b"HTTP/1.1 4")

    async def collect() -> dict[str, list[Any]]:
        return telemetry.points()

    points = await server.call(collect)
    kinds = [
        dict(p.attributes or {})["streamkit.request.kind"]
        for p in points["streamkit.requests.rejected"]
    ]
    assert sorted(kinds) == ["http", "websocket"]


async def test_a_current_span_is_kept_over_the_traceparent_header(telemetry: Telemetry) -> None:
    seen: list[trace.SpanContext] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(trace.get_current_span().get_span_context())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        pass

    async def receive() -> Any:
        return {"type": "http.request"}

    registry = sk.SessionRegistry()
    wrapped = telemetry.instrument(registry).wrap(app)
    header = [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        await wrapped({"type": "http", "headers": header}, receive, send)
    await wrapped({"type": "http", "headers": header}, receive, send)
    await wrapped({"type": "http", "headers": []}, receive, send)
    await wrapped({"type": "lifespan"}, receive, send)
    assert seen[0] == outer.get_span_context()
    assert seen[1].trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert not seen[2].is_valid
    assert len(seen) == 4
    assert not trace.get_current_span().get_span_context().is_valid


async def test_delivery_lag_and_dropped_subscribers(telemetry: Telemetry) -> None:
    config = sk.RegistryConfig(max_lag=2, history_max_events=3, heartbeat_interval=None)
    async with sk.SessionRegistry(config) as registry:
        telemetry.instrument(registry)
        streaming = await registry.create()
        with anyio.fail_after(10):
            async with registry.subscribe(streaming.session_id) as reader:
                registry.start(streaming.session_id, ["x"] * 40, sk.StreamConfig(chunk_size=1))
                assert len([event async for event in reader]) == 42
        lagging = await registry.create()
        sid = lagging.session_id
        await registry.publish(sid, sk.StreamEvent(event_type="token", content="a"))
        with anyio.fail_after(10):
            async with registry.subscribe(sid) as slow:
                await slow.__anext__()
                for _ in range(3):
                    await registry.publish(sid, sk.StreamEvent(event_type="token", content="b"))
                with pytest.raises(sk.SubscriberLagged):
                    await slow.__anext__()
            with pytest.raises(sk.HistoryGap):
                async for _ in registry.subscribe(sid, after=0):
                    pass  # pragma: no cover - refused before the first event
        points = telemetry.points()
    # The 42 live events of the first subscription: seq 1, 17 and 33. The lagging one
    # read only an event appended before it subscribed: history, not late.
    assert value(points["streamkit.delivery.lag"]) == 3
    assert points["streamkit.delivery.lag"][0].min >= 0
    dropped = points["streamkit.subscribers.dropped"]
    assert value(dropped, **{"streamkit.subscriber.drop_reason": "lagged"}) == 1
    assert value(dropped, **{"streamkit.subscriber.drop_reason": "history_gap"}) == 1
    assert "streamkit.redis.round_trip.duration" not in points  # not a Redis registry


async def test_under_uvicorn_delivery_lag_of_a_live_subscriber(
    served: tuple[ServerThread, Telemetry, Any],
) -> None:
    server, telemetry, _ = served
    registry: sk.SessionRegistry = server.app.registry
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.post("/sessions", json={}, headers=auth("alice"))
        sid = response.json()["session"]["session_id"]
        async with http.stream("GET", f"/sessions/{sid}/events", headers=auth("alice")) as stream:
            assert stream.status_code == 200  # subscribed: what comes now is live

            async def collect() -> dict[str, list[Any]]:
                return telemetry.points()

            live = await server.call(collect)

            async def start() -> None:
                registry.start(sid, ["x"] * 20, sk.StreamConfig(chunk_size=1))

            await server.call(start)
            events = [event async for event in sse.aiter_events(stream.aiter_bytes())]
    assert len(events) == 22
    state = response.json()["session"]["status"]
    assert value(live["streamkit.sessions"], **{"streamkit.session.state": state}) == 1
    assert value(live["streamkit.subscribers"]) == 1
    assert value(live["streamkit.producers"]) == 0
    stream_kind = {"streamkit.connection.kind": "stream"}
    assert value(live["streamkit.http.open_streams"], **stream_kind) == 1
    # The client has the whole body a moment before the server records the stream's end.
    app: StreamApp = server.app.stream_app
    await wait_until(lambda: app.statistics()["stream_outcomes"].get("ended") == 1)
    points = await server.call(collect)
    assert value(points["streamkit.http.open_streams"], **stream_kind) == 0
    assert value(points["streamkit.delivery.lag"]) == 2  # seq 1 and 17
    dropped = points["streamkit.subscribers.dropped"]
    assert value(dropped, **{"streamkit.subscriber.drop_reason": "lagged"}) == 0
    assert value(dropped, **{"streamkit.subscriber.drop_reason": "history_gap"}) == 0
    assert value(points["streamkit.subscribers"]) == 0
    assert value(points["streamkit.sessions"], **{"streamkit.session.state": "completed"}) == 1
