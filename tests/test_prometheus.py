"""streamkit.prometheus: the /metrics app under uvicorn, read with prometheus-client's parser."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import streamkit as sk
import streamkit._observe
import streamkit.prometheus
from streamkit import sse
from streamkit.asgi import StreamApp
from streamkit.testing import SimulatedAgent

from .asgi_helpers import auth, bearer_authenticate, serve
from .redis_server import free_port, start_redis, stop_redis
from .test_otel import Telemetry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from .asgi_helpers import ServerThread

pytestmark = pytest.mark.anyio

SECRET = "the-secret-prompt-text"


def agent(prompt: str) -> Any:
    if prompt == "fail":

        async def fail() -> AsyncIterator[str]:
            yield "partial "
            raise RuntimeError(SECRET)

        return fail()
    return SimulatedAgent(seed=5, realtime=False)(prompt)


class Site:
    """The application: its registry entered in the lifespan, /metrics beside the app."""

    def __init__(self, registry: sk.SessionRegistry, app: Any, metrics_app: Any) -> None:
        self.registry = registry
        self.app = app
        self.metrics_app = metrics_app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            async with self.registry:
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/metrics":
            await self.metrics_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def admin_only(scope: Any) -> str | None:
    user = bearer_authenticate(scope)
    if user is not None and user != "admin":
        raise sk.PermissionDenied("only the admin reads the metrics")
    return user


@pytest.fixture
def served() -> Iterator[ServerThread]:
    registry = sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None))
    stream_app = StreamApp(
        registry,
        agent=agent,
        authenticate=bearer_authenticate,
        stream_config=sk.StreamConfig(stream_delay=0, chunk_size=3, heartbeat_interval=None),
    )
    metrics = streamkit.prometheus.instrument(registry, stream_apps=[stream_app])
    site = Site(registry, metrics.wrap(stream_app), metrics.app(authenticate=admin_only))
    with serve(site) as server:
        yield server


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def sse_events(http: httpx.AsyncClient, session_id: str) -> list[sk.StreamEvent]:
    async with http.stream(
        "GET", f"/sessions/{session_id}/events", headers=auth("alice")
    ) as response:
        assert response.status_code == 200
        return [event async for event in sse.aiter_events(response.aiter_bytes())]


async def test_metrics_endpoint_shows_a_whole_session_life(served: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers=auth("alice"))).status_code == 403
        response = await http.post("/sessions", json={"prompt": "hi"}, headers=auth("alice"))
        good = response.json()["session"]["session_id"]
        events = await sse_events(http, good)
        response = await http.post("/sessions", json={"prompt": "fail"}, headers=auth("alice"))
        bad = response.json()["session"]["session_id"]
        assert (await sse_events(http, bad))[-1].event_type == sk.EventType.ERROR
        assert (
            await http.post(f"/sessions/{bad}/cancel", headers=auth("alice"))
        ).status_code == 409
        assert (await http.get("/sessions")).status_code == 401
        response = await http.get("/metrics", headers=auth("admin"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        head = await http.head("/metrics", headers=auth("admin"))
        assert head.status_code == 200
        assert head.content == b""
        refused = await http.post("/metrics", headers=auth("admin"))
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD"

    found = samples(text)
    stats: Any = events[-1].metadata["stats"]
    done = (("streamkit_stream_outcome", "completed"),)
    failed = (("error_type", "RuntimeError"), ("streamkit_stream_outcome", "error"))
    assert found[("streamkit_sessions_created_total", ())] == 2
    assert found[("streamkit_stream_tokens_total", done)] == stats["tokens"]
    assert found[("streamkit_stream_chunks_total", done)] == stats["chunks"]
    assert found[("streamkit_stream_tokens_total", (("streamkit_stream_outcome", "error"),))] == 1
    assert found[("gen_ai_server_time_to_first_token_seconds_count", done)] == 1
    assert found[("gen_ai_server_time_to_first_token_seconds_sum", done)] == pytest.approx(
        stats["time_to_first_token"]
    )
    assert found[("gen_ai_server_time_per_output_token_seconds_count", done)] == 1
    assert found[("streamkit_streams_total", (("error_type", ""), *done))] == 1
    assert found[("streamkit_streams_total", failed)] == 1
    assert found[("gen_ai_server_request_duration_seconds_count", failed)] == 1
    ended = "streamkit_sessions_ended_total"
    assert (
        found[
            (
                ended,
                (
                    ("error_type", ""),
                    ("streamkit_session_end_reason", "completed"),
                    ("streamkit_session_state", "completed"),
                ),
            )
        ]
        == 1
    )
    assert (
        found[
            (
                ended,
                (
                    ("error_type", "RuntimeError"),
                    ("streamkit_session_end_reason", "error"),
                    ("streamkit_session_state", "error"),
                ),
            )
        ]
        == 1
    )
    assert found[("streamkit_sessions", (("streamkit_session_state", "completed"),))] == 1
    assert found[("streamkit_sessions", (("streamkit_session_state", "error"),))] == 1
    assert found[("streamkit_sessions", (("streamkit_session_state", "active"),))] == 0
    assert found[("streamkit_subscribers", ())] == 0
    assert found[("streamkit_producers", ())] == 0
    assert found[("streamkit_log_retained_bytes", ())] > 0
    assert found[("streamkit_events_appended_total", ())] == len(events) + 3
    assert found[("streamkit_http_open_streams", (("streamkit_connection_kind", "stream"),))] == 0
    streams_ended = (
        "streamkit_http_streams_ended_total",
        (("streamkit_connection_outcome", "ended"),),
    )
    assert found[streams_ended] == 2
    rejected = "streamkit_requests_rejected_total"
    http_kind = ("streamkit_request_kind", "http")
    assert (
        found[
            (
                rejected,
                (
                    ("error_type", "unauthenticated"),
                    ("http_response_status_code", "401"),
                    http_kind,
                ),
            )
        ]
        == 1
    )
    assert (
        found[
            (
                rejected,
                (
                    ("error_type", "invalid_transition"),
                    ("http_response_status_code", "409"),
                    http_kind,
                ),
            )
        ]
        == 1
    )
    assert len([key for key in found if key[0] == rejected]) == 2
    assert SECRET not in text
    assert good not in text
    assert "alice" not in text


async def test_metrics_app_answers_lifespan_and_refuses_websockets() -> None:
    registry = sk.SessionRegistry()
    metrics = streamkit.prometheus.instrument(registry)
    app = metrics.app(allow_anonymous=True)
    sent: list[dict[str, Any]] = []
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> Any:
        return next(incoming)

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    await app({"type": "websocket", "path": "/metrics"}, receive, send)
    await app({"type": "http", "method": "GET", "path": "/metrics", "headers": []}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
        "http.response.start",
        "http.response.body",
    ]
    assert sent[3]["status"] == 200
    with pytest.raises(sk.ValidationError, match="scope"):
        await app({"type": "other"}, receive, send)
    metrics.uninstrument()


async def test_async_authenticate_and_uninstrument() -> None:
    registry = sk.SessionRegistry()
    target = CollectorRegistry()
    metrics = streamkit.prometheus.instrument(registry, collector_registry=target)
    assert metrics.collector_registry is target

    async def authenticate(scope: Any) -> str | None:
        return None

    app = metrics.app(authenticate=authenticate)
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request"}

    await app({"type": "http", "method": "HEAD", "headers": []}, receive, send)
    assert sent[0]["status"] == 401
    assert sent[1]["body"] == b""
    async with registry:
        await registry.create()
        assert b"streamkit_sessions_created_total 1.0" in metrics.exposition()
        metrics.uninstrument()
        metrics.uninstrument()
        assert b"streamkit_sessions_created_total" not in metrics.exposition()


def test_bad_arguments_are_refused() -> None:
    registry = sk.SessionRegistry()
    with pytest.raises(sk.ValidationError, match="registry"):
        streamkit.prometheus.instrument(object())  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="collector_registry"):
        streamkit.prometheus.instrument(registry, collector_registry=object())  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="stream_apps"):
        streamkit.prometheus.instrument(registry, stream_apps=[object()])
    metrics = streamkit.prometheus.instrument(registry)
    with pytest.raises(sk.ValidationError, match="allow_anonymous"):
        metrics.app()
    with pytest.raises(sk.ValidationError, match="authenticate"):
        metrics.app(authenticate=42)  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="metrics"):
        streamkit.prometheus.MetricsApp(object(), allow_anonymous=True)  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="app"):
        metrics.wrap(42)  # type: ignore[arg-type]
    metrics.uninstrument()


async def test_delivery_lag_and_dropped_subscribers_under_uvicorn(served: ServerThread) -> None:
    registry: sk.SessionRegistry = served.app.registry
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
        response = await http.post("/sessions", json={}, headers=auth("alice"))
        assert response.status_code == 201, response.text
        sid = response.json()["session"]["session_id"]
        async with http.stream("GET", f"/sessions/{sid}/events", headers=auth("alice")) as stream:
            assert stream.status_code == 200  # subscribed: what comes now is live
            live = samples((await http.get("/metrics", headers=auth("admin"))).text)

            async def start() -> None:
                registry.start(sid, ["x"] * 40, sk.StreamConfig(chunk_size=1))

            await served.call(start)
            events = [event async for event in sse.aiter_events(stream.aiter_bytes())]
        assert len(events) == 42  # start, 40 tokens, complete
        text = (await http.get("/metrics", headers=auth("admin"))).text
    state = response.json()["session"]["status"]
    assert live[("streamkit_sessions", (("streamkit_session_state", state),))] == 1
    assert live[("streamkit_subscribers", ())] == 1
    assert live[("streamkit_producers", ())] == 0
    assert live[("streamkit_http_open_streams", (("streamkit_connection_kind", "stream"),))] == 1
    found = samples(text)
    assert found[("streamkit_sessions", (("streamkit_session_state", state),))] == 0
    assert found[("streamkit_sessions", (("streamkit_session_state", "completed"),))] == 1
    assert found[("streamkit_subscribers", ())] == 0
    assert found[("streamkit_http_open_streams", (("streamkit_connection_kind", "stream"),))] == 0
    # The first live event of the subscription, then one in 16: seq 1, 17 and 33.
    assert found[("streamkit_delivery_lag_seconds_count", ())] == 3
    assert found[("streamkit_delivery_lag_seconds_sum", ())] >= 0
    dropped = "streamkit_subscribers_dropped_total"
    assert found[(dropped, (("streamkit_subscriber_drop_reason", "lagged"),))] == 0
    assert found[(dropped, (("streamkit_subscriber_drop_reason", "history_gap"),))] == 0
    assert ("streamkit_redis_round_trip_duration_seconds_count", ()) in found
    assert found[("streamkit_redis_round_trip_duration_seconds_count", ())] == 0


async def test_dropped_subscribers_count_by_reason() -> None:
    config = sk.RegistryConfig(max_lag=2, history_max_events=3, heartbeat_interval=None)
    async with sk.SessionRegistry(config) as registry:
        metrics = streamkit.prometheus.instrument(registry)
        session = await registry.create()
        sid = session.session_id
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
        found = samples(metrics.exposition().decode())
        metrics.uninstrument()
    dropped = "streamkit_subscribers_dropped_total"
    assert found[(dropped, (("streamkit_subscriber_drop_reason", "lagged"),))] == 1
    assert found[(dropped, (("streamkit_subscriber_drop_reason", "history_gap"),))] == 1


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py is asyncio-only
async def test_redis_round_trips_and_retries(tmp_path: Path) -> None:
    from streamkit.backends.redis import RedisBackend

    port = free_port()
    process, url = start_redis(tmp_path, port=port)
    retried = anyio.Event()
    try:
        backend = RedisBackend(url, prefix=f"metrics{port}", retry_for=30)
        async with sk.SessionRegistry(
            sk.RegistryConfig(heartbeat_interval=None), backend=backend
        ) as registry:
            metrics = streamkit.prometheus.instrument(registry)
            telemetry = Telemetry()  # and OpenTelemetry, from the same observers
            instrumentation = telemetry.instrument(registry)
            other = streamkit.prometheus.instrument(sk.SessionRegistry())  # memory: not Redis
            session = await registry.create()
            registry.start(session.session_id, ["a", "b", "c"])
            with anyio.fail_after(20):
                events = [event async for event in registry.subscribe(session.session_id)]
            assert events[-1].event_type == sk.EventType.COMPLETE
            found = samples(metrics.exposition().decode())
            trips = found[("streamkit_redis_round_trip_duration_seconds_count", ())]
            assert trips >= 3  # create, appends, reads: each at least one round trip
            assert found[("streamkit_redis_round_trip_duration_seconds_sum", ())] > 0
            assert not [key for key in found if key[0] == "streamkit_redis_retries_total"]
            assert b"streamkit_redis_round_trip_duration_seconds_count 0.0" in (other.exposition())

            # Redis goes away: the next call is retried until it is back.
            stop_redis(process)
            unwatch = streamkit._observe.watch_redis(
                backend, lambda kind, value: retried.set() if kind == "retry" else None
            )
            assert unwatch is not None

            async def restart_when_retried() -> None:
                nonlocal process
                await retried.wait()
                process, _ = await anyio.to_thread.run_sync(
                    lambda: start_redis(tmp_path, port=port)
                )

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(restart_when_retried)
                    await registry.create()
            unwatch()
            found = samples(metrics.exposition().decode())
            retries = [
                (dict(labels), count)
                for (name, labels), count in found.items()
                if name == "streamkit_redis_retries_total"
            ]
            assert retries
            assert all(count >= 1 for _, count in retries)
            points = telemetry.points()
            assert sum(p.value for p in points["streamkit.redis.retries"]) >= sum(
                count for _, count in retries
            )
            (durations,) = points["streamkit.redis.round_trip.duration"]
            assert (
                durations.count == found[("streamkit_redis_round_trip_duration_seconds_count", ())]
            )
            instrumentation.uninstrument()
            telemetry.tracer_provider.shutdown()
            telemetry.meter_provider.shutdown()
            assert {labels["error_type"] for labels, _ in retries} <= {
                "ConnectionError",
                "TimeoutError",
                "OSError",
                "ConnectionRefusedError",
            }
            metrics.uninstrument()
            other.uninstrument()
            from streamkit.backends import redis as redis_backend

            assert redis_backend._observers == []
    finally:
        stop_redis(process)
