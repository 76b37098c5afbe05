"""streamkit.prometheus: the /metrics app under uvicorn, read with prometheus-client's parser."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import streamkit as sk
import streamkit.prometheus
from streamkit import sse
from streamkit.asgi import StreamApp
from streamkit.testing import SimulatedAgent

from .asgi_helpers import auth, bearer_authenticate, serve

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
