"""The shared bookkeeping of streamkit.otel and streamkit.prometheus, driven directly.

The hooks are called as a registry calls them, in orders a shared backend can produce
(a final event with no session id, a removal of a live session), and the request watcher
with the messages an ASGI app sends.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import pytest

import streamkit as sk
from streamkit._observe import (
    METRICS,
    RequestWatcher,
    SessionEnd,
    StreamEnd,
    Watcher,
    read_statistics,
    time_per_output_token,
)

pytestmark = pytest.mark.anyio


class FakeRegistry:
    """Only what a Watcher uses: ``on`` (and ``statistics`` for read_statistics)."""

    def __init__(self, failures: int = 0) -> None:
        self.hooks: dict[str, Any] = {}
        self.failures = failures
        self.backend = object()

    def on(self, name: str, callback: Any) -> Any:
        self.hooks[name] = callback
        return lambda: self.hooks.pop(name)

    def statistics(self) -> str:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("dictionary changed size during iteration")
        return "stats"


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def session_created(self, session: sk.StreamSession) -> object:
        self.calls.append(("created", session.session_id))
        return session.session_id

    def session_paused(self, handle: object) -> None:
        self.calls.append(("paused", handle))

    def session_resumed(self, handle: object) -> None:
        self.calls.append(("resumed", handle))

    def stream_started(self, handle: object) -> None:
        self.calls.append(("stream_started", handle))

    def stream_ended(self, handle: object | None, end: StreamEnd) -> None:
        self.calls.append(("stream_ended", (handle, end)))

    def session_ended(self, handle: object | None, end: SessionEnd) -> None:
        self.calls.append(("session_ended", (handle, end)))

    def delivered(self, lag: float) -> None:
        self.calls.append(("delivered", lag))

    def redis_round_trip(self, seconds: float) -> None:
        self.calls.append(("redis_round_trip", seconds))

    def redis_retry(self, error_type: str) -> None:
        self.calls.append(("redis_retry", error_type))


def state(session: sk.StreamSession, status: str) -> sk.StreamSession:
    return session.transition(sk.SessionState(status))


def event(kind: str, session_id: str | None, **metadata: Any) -> sk.StreamEvent:
    return sk.StreamEvent(event_type=kind, session_id=session_id, metadata=metadata)


def test_watcher_follows_a_session_through_every_hook() -> None:
    registry = FakeRegistry()
    sink = RecordingSink()
    watcher = Watcher(registry, sink)  # type: ignore[arg-type]
    session = sk.StreamSession()
    sid = session.session_id
    registry.hooks["created"](session)
    paused = state(session, "paused")
    registry.hooks["state_changed"](session, paused)
    registry.hooks["state_changed"](paused, session)
    registry.hooks["event"](event("start", sid))
    registry.hooks["event"](event("start", sid))  # a second start is not a second stream
    registry.hooks["event"](event("token", sid))
    registry.hooks["event"](event("metadata", sid))
    registry.hooks["event"](event("heartbeat", sid))
    # An error event with no stats (published by the app) leaves the stream open...
    registry.hooks["event"](event("error", sid, error_type="Boom", message="m"))
    assert watcher.followed == 1
    # ...and the terminal state then ends both, the stream without figures.
    registry.hooks["state_changed"](session, state(session, "error"))
    assert watcher.followed == 0
    assert [name for name, _ in sink.calls] == [
        "created",
        "paused",
        "resumed",
        "stream_started",
        "stream_ended",
        "session_ended",
    ]
    assert sink.calls[4][1] == (sid, StreamEnd(outcome="error"))
    assert sink.calls[5][1] == (
        sid,
        SessionEnd(state="error", reason="error", error_type="Boom", error_message="m"),
    )
    assert watcher.close() == []
    assert registry.hooks == {}


def test_a_final_event_without_session_id_goes_with_the_next_state_change() -> None:
    registry = FakeRegistry()
    sink = RecordingSink()
    Watcher(registry, sink)  # type: ignore[arg-type]
    session = sk.StreamSession()
    registry.hooks["created"](session)
    registry.hooks["event"](event("complete", None, reason="cancelled"))
    registry.hooks["state_changed"](session, state(session, "cancelled"))
    assert sink.calls[-1] == (
        "session_ended",
        (session.session_id, SessionEnd(state="cancelled", reason="cancelled")),
    )
    # Unfollowed sessions: ends are told with no handle, their other changes not at all.
    other = sk.StreamSession()
    registry.hooks["state_changed"](other, state(other, "paused"))
    registry.hooks["event"](event("complete", other.session_id))  # no stats: nothing
    registry.hooks["event"](event("start", other.session_id))
    registry.hooks["state_changed"](other, state(other, "expired"))
    assert sink.calls[-1] == (
        "session_ended",
        (None, SessionEnd(state="expired", reason="expired")),
    )
    assert len(sink.calls) == 3


def test_a_removed_live_session_ends_its_spans() -> None:
    registry = FakeRegistry()
    sink = RecordingSink()
    watcher = Watcher(registry, sink)  # type: ignore[arg-type]
    session = sk.StreamSession()
    quiet = sk.StreamSession()
    registry.hooks["created"](session)
    registry.hooks["created"](quiet)
    registry.hooks["event"](event("start", session.session_id))
    registry.hooks["removed"](state(session, "completed"))
    registry.hooks["removed"](quiet)
    registry.hooks["removed"](quiet)  # already gone: nothing
    names = [name for name, _ in sink.calls]
    assert names == [
        "created",
        "created",
        "stream_started",
        "stream_ended",
        "session_ended",
        "session_ended",
    ]
    assert sink.calls[3][1] == (session.session_id, StreamEnd(outcome="removed"))
    assert sink.calls[4][1][1] == SessionEnd(state="completed", reason="removed")
    assert watcher.followed == 0


def test_read_statistics_retries_then_gives_up() -> None:
    assert read_statistics(FakeRegistry(failures=2)) == "stats"  # type: ignore[arg-type, comparison-overlap]
    assert read_statistics(FakeRegistry(failures=5)) is None  # type: ignore[arg-type]


def test_metric_names_follow_the_prometheus_conversion() -> None:
    names = {metric.name: metric.prometheus_name for metric in METRICS}
    assert names["gen_ai.server.time_to_first_token"] == "gen_ai_server_time_to_first_token_seconds"
    assert names["streamkit.log.retained"] == "streamkit_log_retained_bytes"
    assert names["streamkit.stream.tokens"] == "streamkit_stream_tokens"
    assert len(names) == len(METRICS)


async def run_app(messages: list[dict[str, Any]], kind: str = "http") -> list[Any]:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        pass

    watcher = RequestWatcher(app, lambda *args: seen.append(args))
    await watcher({"type": kind, "headers": []}, receive, send)
    return seen


async def test_request_watcher_finds_the_cause_of_error_answers() -> None:
    start = {"type": "http.response.start", "status": 429}
    assert await run_app(
        [
            start,
            {"type": "http.response.body", "body": b'{"error": {"co', "more_body": True},
            {"type": "http.response.body", "body": b'de": "limit_exceeded"}}'},
        ]
    ) == [("limit_exceeded", 429, "http")]
    assert await run_app([start, {"type": "http.response.body", "body": b"not json"}]) == [
        ("http_429", 429, "http")
    ]
    assert await run_app(
        [start, {"type": "http.response.body", "body": b'{"error": {"code": "a b"}}'}]
    ) == [("http_429", 429, "http")]
    assert await run_app([start, {"type": "http.response.body", "body": b"[1]"}]) == [
        ("http_429", 429, "http")
    ]
    big = b"x" * 5000
    assert await run_app(
        [
            start,
            {"type": "http.response.body", "body": big, "more_body": True},
            {"type": "http.response.body", "body": big},
        ]
    ) == [("http_429", 429, "http")]
    ok: list[dict[str, Any]] = [
        {"type": "http.response.start", "status": 200},
        {"type": "http.response.body", "body": b'{"error": {"code": "x"}}'},
    ]
    assert await run_app(ok) == []
    assert (
        await run_app([{"type": "websocket.accept"}, {"type": "websocket.close"}], "websocket")
        == []
    )
    assert await run_app([{"type": "websocket.close", "code": 1013}], "websocket") == [
        ("websocket_close_1013", None, "websocket")
    ]


def test_time_per_output_token_follows_the_convention() -> None:
    stats = {"tokens": 5, "time_to_first_token": 0.5, "duration": 1.5}
    assert time_per_output_token(StreamEnd(outcome="completed", stats=stats)) == 0.25
    assert time_per_output_token(StreamEnd(outcome="error", stats=stats)) is None
    assert time_per_output_token(StreamEnd(outcome="cancelled")) is None
    one = {**stats, "tokens": 1}
    assert time_per_output_token(StreamEnd(outcome="completed", stats=one)) is None
    no_first = {**stats, "time_to_first_token": None}
    assert time_per_output_token(StreamEnd(outcome="completed", stats=no_first)) is None


@pytest.mark.parametrize(
    ("module", "dependency", "extra"),
    [
        ("streamkit.otel", "opentelemetry", "otel"),
        ("streamkit.prometheus", "prometheus_client", "prometheus"),
    ],
)
def test_missing_extra_names_what_to_install(module: str, dependency: str, extra: str) -> None:
    code = f"import sys; sys.modules[{dependency!r}] = None; import {module}"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert f"install 'streamkit[{extra}]'" in result.stderr


# -- the registry's figures for observers: dropped subscribers, delivery lag -----------------


def token(text: str) -> sk.StreamEvent:
    return sk.StreamEvent(event_type="token", content=text)


async def test_lagged_and_gapped_subscriptions_are_counted() -> None:
    config = sk.RegistryConfig(max_lag=5, history_max_events=4, heartbeat_interval=None)
    async with sk.SessionRegistry(config) as registry:
        session = await registry.create()
        sid = session.session_id
        await registry.publish(sid, token("a"))
        with anyio.fail_after(10):
            async with registry.subscribe(sid) as slow:
                assert (await slow.__anext__()).content == "a"
                for _ in range(6):  # one more than max_lag while the reader waits
                    await registry.publish(sid, token("b"))
                with pytest.raises(sk.SubscriberLagged):
                    await slow.__anext__()
            with pytest.raises(sk.HistoryGap):
                async for _ in registry.subscribe(sid, after=1):
                    pass  # pragma: no cover - refused before the first event
            with pytest.raises(sk.HistoryGap):
                async for _ in registry.subscribe(sid, after=0):
                    pass  # pragma: no cover - refused before the first event
            async with registry.subscribe(sid, after=3) as resumed:  # retained: no gap
                assert (await resumed.__anext__()).seq == 4
        stats = registry.statistics()
        assert stats.subscribers_lagged == 1
        assert stats.history_gaps == 2
        per_session = await registry.session_statistics(sid)
        assert per_session.log.readers_lagged == 1


async def test_delivered_hook_samples_live_events_only() -> None:
    seen: list[tuple[int, float]] = []
    async with sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None)) as registry:
        before = await registry.create()
        # Opened before any hook: never sampled, whatever comes later.
        unsampled = registry.subscribe(before.session_id)
        await unsampled.__aenter__()
        unhook = registry.on("delivered", lambda event, lag: seen.append((event.seq, lag)))
        session = await registry.create()
        with anyio.fail_after(10):
            async with registry.subscribe(session.session_id) as reader:
                registry.start(session.session_id, ["x"] * 40, sk.StreamConfig(chunk_size=1))
                events = [event async for event in reader]
        assert len(events) == 42  # start, 40 tokens, complete
        # The first live event, then one in 16.
        assert [seq for seq, _ in seen] == [1, 17, 33]
        assert all(lag >= 0.0 for _, lag in seen)
        # Replayed history is not late: a reader of an ended session reports nothing.
        seen.clear()
        with anyio.fail_after(10):
            replayed = [event async for event in registry.subscribe(session.session_id)]
        assert len(replayed) == 42
        assert seen == []
        registry.start(before.session_id, ["y"])
        with anyio.fail_after(10):
            assert len([event async for event in unsampled]) == 3
        assert seen == []
        unhook()


async def test_delivered_hook_samples_events_taken_in_batches_too() -> None:
    seen: list[int] = []
    async with sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None)) as registry:
        registry.on("delivered", lambda event, lag: seen.append(event.seq))
        session = await registry.create()
        sid = session.session_id
        with anyio.fail_after(10):
            async with registry.subscribe(sid) as reader:
                for _ in range(40):
                    await registry.publish(sid, token("x"))
                first = await reader.__anext__()
                assert first.seq == 1
                assert reader.position == 1
                assert reader.take_ready(0) == []
                ahead = reader.take_ready(5)  # what the reader holds before seq 17
                assert [event.seq for event in ahead] == [2, 3, 4, 5, 6]
                assert reader.position == 6
                rest = list(reader.take_ready(10))
                rest += reader.take_ready(100)
                assert [event.seq for event in rest] == list(range(7, 41))
                assert reader.position == 40
                await registry.publish(sid, token("y"))
                assert (await reader.__anext__()).seq == 41
                assert reader.position == 41
        assert seen == [1, 17, 33]


def test_the_docs_list_every_metric_under_both_names() -> None:
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "observability.md").read_text()
    for metric in METRICS:
        assert f"`{metric.name}`" in page, metric.name
        suffix = "_total" if "counter" in metric.kind else ""
        assert f"`{metric.prometheus_name}{suffix}`" in page, metric.prometheus_name
        for attribute in metric.attributes:
            assert f"`{attribute}`" in page, attribute
