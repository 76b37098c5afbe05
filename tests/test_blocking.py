"""The blocking facade, from plain sync code (as in a thread, a script or a notebook)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Literal

import pytest

import streamkit as sk
from streamkit.blocking import BlockingRegistry, stream_tokens
from streamkit.testing import SimulatedAgent

FAST = sk.StreamConfig(stream_delay=0, heartbeat_interval=None)
LOOPS: list[Literal["asyncio", "trio"]] = ["asyncio", "trio"]


@pytest.fixture(params=LOOPS)
def event_loop(request: pytest.FixtureRequest) -> Literal["asyncio", "trio"]:
    return request.param  # type: ignore[no-any-return]


def test_stream_tokens_in_a_for_loop(event_loop: Literal["asyncio", "trio"]) -> None:
    agent = SimulatedAgent(seed=2, realtime=False)
    events = list(stream_tokens(agent.stream_sync("p"), FAST, backend=event_loop))
    assert events[0].event_type == sk.EventType.START
    assert events[-1].event_type == sk.EventType.COMPLETE
    text = "".join(e.content for e in events if e.event_type == sk.EventType.TOKEN)
    assert text == agent.answer("p")


def test_leaving_the_loop_early_closes_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[str]:
        try:
            while True:
                yield "tick "
        finally:
            closed.set()

    for event in stream_tokens(source(), FAST):
        if event.event_type == sk.EventType.TOKEN:
            break
    assert closed.wait(10)


def test_registry_round_trip(event_loop: Literal["asyncio", "trio"]) -> None:
    agent = SimulatedAgent(seed=4, realtime=False)
    with BlockingRegistry(sk.RegistryConfig(max_sessions=3), event_loop=event_loop) as registry:
        session = registry.create(user_id="alice", context={"k": 1})
        registry.start(session.session_id, agent("q"), FAST)
        with registry.subscribe(session.session_id, user_id="alice") as events:
            received = list(events)
        assert received[-1].is_final
        text = "".join(e.content for e in received if e.event_type == sk.EventType.TOKEN)
        assert text == agent.answer("q")
        assert registry.get(session.session_id, user_id="alice").status is sk.SessionState.COMPLETED
        resumed = list(registry.subscribe(session.session_id, user_id="alice", after=2))
        assert resumed == received[2:]
        with pytest.raises(sk.PermissionDenied):
            registry.get(session.session_id, user_id="bob")
        other = registry.create(user_id="bob")
        registry.publish(other.session_id, sk.StreamEvent(event_type="x-note"), user_id="bob")
        assert registry.pause(other.session_id, user_id="bob").status is sk.SessionState.PAUSED
        assert registry.resume(other.session_id, user_id="bob").status is sk.SessionState.ACTIVE
        assert registry.cancel(other.session_id, user_id="bob").status is sk.SessionState.CANCELLED
        assert [s.session_id for s in registry.list("bob")] == [other.session_id]
        assert registry.statistics().sessions == 2
        assert registry.session_statistics(other.session_id, user_id="bob").log.last_seq == 2
        registry.close(other.session_id, user_id="bob")
        registry.create()
        registry.create()
        with pytest.raises(sk.SessionLimitExceeded):
            registry.create()
    with pytest.raises(sk.ClosedError):
        registry.create()
    with pytest.raises(sk.ClosedError):
        registry.subscribe("x")


def test_a_reader_in_another_thread_gets_the_final_event_when_the_registry_is_left() -> None:
    got: list[sk.StreamEvent] = []
    reading = threading.Event()

    def reader(events: Iterator[sk.StreamEvent]) -> None:
        for event in events:
            got.append(event)
            reading.set()

    with BlockingRegistry() as registry:
        session = registry.create(user_id="alice")
        registry.publish(session.session_id, sk.StreamEvent(event_type="x-note"), user_id="alice")
        thread = threading.Thread(
            target=reader, args=(registry.subscribe(session.session_id, user_id="alice"),)
        )
        thread.start()
        assert reading.wait(10)
    thread.join(10)
    assert not thread.is_alive()
    assert got[-1].is_final
    assert got[-1].metadata["reason"] == "shutdown"
