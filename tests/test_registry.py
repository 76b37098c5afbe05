"""SessionRegistry through its public API, on asyncio and Trio."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamkit as sk
from streamkit.testing import SimulatedAgent

pytestmark = pytest.mark.anyio

FAST = sk.StreamConfig(stream_delay=0, chunk_size=1, heartbeat_interval=None)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def gated(tokens: list[str], gate: anyio.Event) -> AsyncIterator[str]:
    """Yield the first token, then wait for ``gate`` before the rest."""
    yield tokens[0]
    await gate.wait()
    for token in tokens[1:]:
        yield token


async def forever() -> AsyncIterator[str]:
    while True:
        yield "x"
        await anyio.sleep(0.001)


async def unpaced() -> AsyncIterator[str]:
    while True:
        yield "x"


async def collect(subscription: sk.Subscription) -> list[sk.StreamEvent]:
    async with subscription:
        return [event async for event in subscription]


def text_of(events: list[sk.StreamEvent]) -> str:
    return "".join(e.content for e in events if e.event_type == sk.EventType.TOKEN)


async def test_a_session_streams_its_agent_to_the_end() -> None:
    agent = SimulatedAgent(seed=3, realtime=False)
    async with sk.SessionRegistry() as registry:
        session = await registry.create(user_id="alice", context={"model": "sim"})
        assert session.status is sk.SessionState.ACTIVE
        assert session.context == {"model": "sim"}
        registry.start(session.session_id, agent("hi"), FAST)
        events = await collect(registry.subscribe(session.session_id, user_id="alice"))
        assert events[0].event_type == sk.EventType.START
        assert events[-1].event_type == sk.EventType.COMPLETE
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert all(e.session_id == session.session_id for e in events)
        assert text_of(events) == agent.answer("hi")
        done = await registry.get(session.session_id, user_id="alice")
        assert done.status is sk.SessionState.COMPLETED
        assert list(done.events) == events


async def test_fan_out_gives_every_subscriber_the_same_sequence() -> None:
    agent = SimulatedAgent(seed=5, realtime=False)
    results: list[list[sk.StreamEvent]] = []
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        gate = anyio.Event()
        ready = [anyio.Event() for _ in range(50)]

        async def reader(i: int) -> None:
            async with registry.subscribe(session.session_id) as sub:
                ready[i].set()
                results.append([e async for e in sub])

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(reader, i)
            for event in ready:
                await event.wait()
            registry.start(session.session_id, gated(agent.tokens("q"), gate), FAST)
            gate.set()
    assert len(results) == 50
    assert all(r == results[0] for r in results)
    assert text_of(results[0]) == agent.answer("q")


@settings(max_examples=15)
@given(cut=st.integers(min_value=0, max_value=40))
def test_resume_from_any_position_gives_exactly_the_rest(cut: int) -> None:
    async def scenario(backend: str) -> None:
        agent = SimulatedAgent(seed=9, realtime=False)
        with anyio.fail_after(20):
            await run(agent)

    async def run(agent: SimulatedAgent) -> None:
        async with sk.SessionRegistry() as registry:
            session = await registry.create()
            gate = anyio.Event()
            registry.start(session.session_id, gated(agent.tokens("r"), gate), FAST)
            first: list[sk.StreamEvent] = []
            async with registry.subscribe(session.session_id) as sub:
                async for event in sub:
                    first.append(event)
                    if len(first) == 2:
                        gate.set()  # the rest of the stream is produced while we read
                    if event.seq == cut or event.is_final:
                        break
            gate.set()
            position = first[-1].seq if first else 0
            assert position is not None
            rest = await collect(registry.subscribe(session.session_id, after=position))
            whole = await collect(registry.subscribe(session.session_id))
            assert first + rest == whole
            assert [e.seq for e in rest] == list(range(position + 1, whole[-1].seq + 1))  # type: ignore[operator]

    for backend in ("asyncio", "trio"):
        anyio.run(scenario, backend, backend=backend)


async def test_history_gap_past_retention() -> None:
    config = sk.RegistryConfig(history_max_events=5)
    async with sk.SessionRegistry(config) as registry:
        session = await registry.create()
        ended = anyio.Event()

        def on_change(before: sk.StreamSession, after: sk.StreamSession) -> None:
            if after.is_terminal:
                ended.set()

        registry.on("state_changed", on_change)
        registry.start(session.session_id, [f"t{i} " for i in range(20)], FAST)
        with anyio.fail_after(10):
            await ended.wait()
        last = (await registry.get(session.session_id)).events[-1].seq
        assert last is not None
        assert await collect(registry.subscribe(session.session_id, after=last)) == []
        with pytest.raises(sk.ValidationError):  # past the last event
            await collect(registry.subscribe(session.session_id, after=last + 1))
        with pytest.raises(sk.HistoryGap) as info:
            await collect(registry.subscribe(session.session_id, after=1))
        assert info.value.oldest_seq is not None
        assert info.value.oldest_seq > 2
        assert info.value.status_hint == 410
        kept = await collect(
            registry.subscribe(session.session_id, after=info.value.oldest_seq - 1)
        )
        assert len(kept) == 5
        assert kept[-1].is_final


async def test_slow_subscriber_is_disconnected_and_can_resume() -> None:
    config = sk.RegistryConfig(max_lag=10, history_max_events=1000)
    async with sk.SessionRegistry(config) as registry:
        session = await registry.create()
        await registry.publish(
            session.session_id, sk.StreamEvent(event_type="x-n", content="first")
        )
        sub = registry.subscribe(session.session_id)
        async with sub:
            first = await sub.__anext__()
            assert first.seq == 1
            for i in range(30):  # the reader does not read while these arrive
                await registry.publish(
                    session.session_id, sk.StreamEvent(event_type="x-n", content=str(i))
                )
            with pytest.raises(sk.SubscriberLagged) as info:
                async for _ in sub:
                    pass
        assert info.value.after == 1
        await registry.publish(session.session_id, sk.StreamEvent(event_type="complete"))
        rest = await collect(registry.subscribe(session.session_id, after=info.value.after))
        assert [e.seq for e in rest] == list(range(2, 33))
        assert rest[-1].is_final


async def test_block_policy_makes_the_producer_wait_for_the_slow_reader() -> None:
    config = sk.RegistryConfig(max_lag=4, slow_consumer_policy="block")
    async with sk.SessionRegistry(config) as registry:
        session = await registry.create()
        await registry.publish(
            session.session_id, sk.StreamEvent(event_type="x-n", content="first")
        )
        sub = registry.subscribe(session.session_id)
        published = 0

        async def producer() -> None:
            nonlocal published
            for i in range(20):
                await registry.publish(
                    session.session_id, sk.StreamEvent(event_type="x-n", content=str(i))
                )
                published += 1
            await registry.publish(session.session_id, sk.StreamEvent(event_type="complete"))

        async with sub, anyio.create_task_group() as tg:
            first = await sub.__anext__()
            tg.start_soon(producer)
            with anyio.fail_after(5):
                while published < 3:
                    await anyio.sleep(0)
            for _ in range(50):
                await anyio.sleep(0)
            assert published < 20  # held back by the reader that does not read
            rest = [e async for e in sub]
        assert [first.seq] + [e.seq for e in rest] == list(range(1, 23))
        assert rest[-1].is_final


async def test_max_sessions_is_exact_under_concurrency() -> None:
    created: list[sk.StreamSession] = []
    refused: list[sk.SessionLimitExceeded] = []
    async with sk.SessionRegistry(sk.RegistryConfig(max_sessions=100)) as registry:

        async def create() -> None:
            try:
                created.append(await registry.create(user_id="u"))
            except sk.SessionLimitExceeded as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(create)
        assert len(created) == 100
        assert len(refused) == 900
        assert refused[0].status_hint == 429
        assert len({s.session_id for s in created}) == 100
        await registry.close(created[0].session_id, user_id="u")
        await registry.create(user_id="u")  # room again


async def test_per_user_limit() -> None:
    async with sk.SessionRegistry(sk.RegistryConfig(max_sessions_per_user=2)) as registry:
        await registry.create(user_id="a")
        await registry.create(user_id="a")
        with pytest.raises(sk.SessionLimitExceeded):
            await registry.create(user_id="a")
        await registry.create(user_id="b")
        await registry.create()  # anonymous sessions are not counted per user


async def test_ownership_and_authorize() -> None:
    calls: list[tuple[str | None, str]] = []

    def authorize(user: str | None, session: sk.StreamSession, action: str) -> bool:
        calls.append((user, action))
        return user == "admin" and action == "read"

    async with sk.SessionRegistry(authorize=authorize) as registry:
        session = await registry.create(user_id="alice")
        sid = session.session_id
        for call in (
            registry.get(sid, user_id="bob"),
            registry.pause(sid, user_id="bob"),
            registry.cancel(sid),
            registry.publish(sid, sk.StreamEvent(event_type="token"), user_id="bob"),
        ):
            with pytest.raises(sk.PermissionDenied):
                await call
        with pytest.raises(sk.PermissionDenied):
            await collect(registry.subscribe(sid, user_id="bob"))
        assert (await registry.get(sid, user_id="admin")).session_id == sid
        with pytest.raises(sk.PermissionDenied):
            await registry.cancel(sid, user_id="admin")
        assert ("admin", "read") in calls
        assert [s.session_id for s in await registry.list(user_id="alice")] == [sid]
        assert await registry.list(user_id="bob") == []
        with pytest.raises(sk.SessionNotFound):
            await registry.get("no-such-session", user_id="alice")
        with pytest.raises(sk.ValidationError):
            await registry.get("bad id!", user_id="alice")


async def test_pause_resume_cancel_and_illegal_moves() -> None:
    async with sk.SessionRegistry() as registry:
        session = await registry.create(user_id="u")
        sid = session.session_id
        registry.start(sid, forever(), FAST)
        paused = await registry.pause(sid, user_id="u")
        assert paused.status is sk.SessionState.PAUSED
        with pytest.raises(sk.InvalidTransition):
            await registry.pause(sid, user_id="u")
        assert (await registry.resume(sid, user_id="u")).status is sk.SessionState.ACTIVE
        with pytest.raises(sk.InvalidTransition):
            await registry.resume(sid, user_id="u")
        done = await registry.cancel(sid, user_id="u")
        assert done.status is sk.SessionState.CANCELLED
        events = await collect(registry.subscribe(sid, user_id="u"))
        finals = [e for e in events if e.is_final]
        assert len(finals) == 1
        assert finals[0].metadata["reason"] == "cancelled"
        with pytest.raises(sk.InvalidTransition):
            await registry.cancel(sid, user_id="u")
        with pytest.raises(sk.InvalidTransition):
            registry.start(sid, ["late"])
        with pytest.raises(sk.ClosedError):
            await registry.publish(sid, sk.StreamEvent(event_type="token"), user_id="u")
        await registry.close(sid, user_id="u")
        with pytest.raises(sk.SessionNotFound):
            await registry.get(sid, user_id="u")


async def test_a_paused_session_stops_pulling() -> None:
    pulled = 0

    async def counting() -> AsyncIterator[str]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield f"{i} "
            await anyio.sleep(0)

    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        registry.start(session.session_id, counting(), FAST)
        await registry.pause(session.session_id)
        at_pause = pulled
        for _ in range(2000):
            await anyio.sleep(0)
        # at most the item being produced when the pause came
        assert pulled - at_pause <= 1
        assert pulled < 10_000
        await registry.resume(session.session_id)
        events = await collect(registry.subscribe(session.session_id))
        assert events[-1].event_type == sk.EventType.COMPLETE
        assert pulled == 10_000


async def test_source_error_ends_the_session_in_error() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "ok "
        raise RuntimeError("model fell over")

    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        registry.start(session.session_id, broken(), FAST)
        events = await collect(registry.subscribe(session.session_id))
        assert events[-1].event_type == sk.EventType.ERROR
        assert events[-1].metadata["error_type"] == "RuntimeError"
        assert (await registry.get(session.session_id)).status is sk.SessionState.ERROR


async def test_start_checks_its_arguments() -> None:
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        with pytest.raises(sk.ValidationError):
            registry.start(session.session_id, 42)  # type: ignore[arg-type]
        registry.start(session.session_id, ["a"], FAST)
        with pytest.raises(sk.ValidationError, match="producer"):
            registry.start(session.session_id, ["b"], FAST)
        with pytest.raises(sk.SessionNotFound):
            registry.start("unknown", ["b"])
        with pytest.raises(sk.ValidationError):
            registry.subscribe(session.session_id, after=-1)
    with pytest.raises(sk.ClosedError):
        await registry.create()


async def test_sweeper_expires_idle_sessions_and_removes_ended_ones() -> None:
    clock = FakeClock()
    config = sk.RegistryConfig(session_timeout=60, ended_session_ttl=30, cleanup_interval=3600)
    removed: list[str] = []
    async with sk.SessionRegistry(config, clock=clock) as registry:
        registry.on("removed", lambda s: removed.append(s.session_id))
        idle = await registry.create()
        busy = await registry.create()
        clock.now += 50
        await registry.publish(busy.session_id, sk.StreamEvent(event_type="x-ping"))
        clock.now += 20  # idle: 70 s without activity; busy: 20 s
        assert await registry.sweep() == 1
        assert (await registry.get(idle.session_id)).status is sk.SessionState.EXPIRED
        assert (await registry.get(busy.session_id)).status is sk.SessionState.ACTIVE
        events = await collect(registry.subscribe(idle.session_id))
        assert events[-1].metadata["reason"] == "expired"
        clock.now += 31
        await registry.sweep()
        assert removed == [idle.session_id]
        with pytest.raises(sk.SessionNotFound):
            await registry.get(idle.session_id)
        stats = registry.statistics()
        assert stats.sessions_expired == 1
        assert stats.sessions_removed == 1
        assert stats.sweeps == 2


async def test_idle_producers_are_cancelled_after_the_grace() -> None:
    clock = FakeClock()
    config = sk.RegistryConfig(idle_producer_grace=10)
    async with sk.SessionRegistry(config, clock=clock) as registry:
        session = await registry.create()
        registry.start(session.session_id, forever(), FAST)
        clock.now += 11
        assert await registry.sweep() == 1
        events = await collect(registry.subscribe(session.session_id))
        assert events[-1].metadata["reason"] == "unwatched"


async def test_heartbeats_reach_watched_silent_sessions() -> None:
    clock = FakeClock()
    config = sk.RegistryConfig(heartbeat_interval=5)
    async with sk.SessionRegistry(config, clock=clock) as registry:
        watched = await registry.create()
        unwatched = await registry.create()
        async with registry.subscribe(watched.session_id) as sub:
            clock.now += 2
            assert await registry.emit_heartbeats() == 0
            clock.now += 4
            assert await registry.emit_heartbeats() == 1
            beat = await sub.__anext__()
            assert beat.event_type == sk.EventType.HEARTBEAT
        assert len((await registry.get(unwatched.session_id)).events) == 0
        assert registry.statistics().heartbeats == 1


async def test_hooks_see_the_lifecycle_and_a_raising_hook_is_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def boom(*_: object) -> None:
        raise ValueError("hook bug")

    async with sk.SessionRegistry() as registry:
        registry.on("created", boom)
        registry.on("created", lambda s: seen.append("created"))
        registry.on("state_changed", lambda a, b: seen.append(f"{a.status}->{b.status}"))
        unregister = registry.on("event", lambda e: seen.append(e.event_type))
        with caplog.at_level(logging.ERROR, logger="streamkit.registry"):
            session = await registry.create()
        assert "hook bug" in caplog.text
        registry.start(session.session_id, ["a"], FAST)
        await collect(registry.subscribe(session.session_id))
        unregister()
        unregister()
        with pytest.raises(sk.ValidationError):
            registry.on("nope", print)  # type: ignore[arg-type]
    assert seen[0] == "created"
    assert "start" in seen
    assert "active->completed" in seen


async def test_shutdown_ends_everything() -> None:
    results: list[list[sk.StreamEvent]] = []
    # The readers belong to the application (outside the registry block): leaving the
    # registry gives each session its final event, and the readers end by themselves.
    async with anyio.create_task_group() as app, sk.SessionRegistry() as registry:
        sessions = [await registry.create() for _ in range(20)]
        reading = [anyio.Event() for _ in sessions]

        async def reader(sid: str, started: anyio.Event) -> None:
            async with registry.subscribe(sid) as sub:
                events = [await sub.__anext__()]
                started.set()
                events.extend([e async for e in sub])
            results.append(events)

        for session, started in zip(sessions, reading, strict=True):
            registry.start(session.session_id, forever(), FAST)
            app.start_soon(reader, session.session_id, started)
        for started in reading:
            await started.wait()
    assert len(results) == 20
    for events in results:
        finals = [e for e in events if e.is_final]
        assert finals == [events[-1]]
        assert finals[0].metadata["reason"] == "shutdown"
    stats = registry.statistics()
    assert stats.producers == 0
    assert stats.subscribers == 0
    assert stats.by_state["cancelled"] == 20


async def test_leaving_the_registry_waits_for_every_producer_and_source() -> None:
    # Sources that are busy at the exit (waiting for a token, pausing, mid-close) have
    # run their cleanup by the time `async with` returns: nothing runs on after it.
    closed: list[int] = []
    release = anyio.Event()

    async def source(index: int) -> AsyncIterator[str]:
        try:
            yield "a "
            await anyio.sleep_forever()
            yield "never"
        finally:
            with anyio.CancelScope(shield=True):
                if index % 2:
                    await release.wait()  # a source that takes its time to close
            closed.append(index)

    async with sk.SessionRegistry() as registry:
        sessions = [await registry.create() for _ in range(6)]
        for index, session in enumerate(sessions):
            registry.start(session.session_id, source(index), FAST)
        with anyio.fail_after(10):
            for session in sessions:
                async with registry.subscribe(session.session_id) as sub:
                    async for event in sub:
                        if event.event_type == "token":
                            break
        await registry.pause(sessions[0].session_id)
        release.set()
    assert sorted(closed) == list(range(6))
    assert registry.statistics().producers == 0


class _Escape(BaseException):
    """Not an Exception: neither the stream nor the registry catches it."""


async def test_a_base_exception_from_a_source_is_raised_by_the_registrys_exit() -> None:
    async def source() -> AsyncIterator[str]:
        yield "a "
        raise _Escape("out")

    body_cancelled = True

    async def run() -> None:
        nonlocal body_cancelled
        async with sk.SessionRegistry() as registry:
            session = await registry.create()
            registry.start(session.session_id, source(), FAST)
            with anyio.fail_after(10):
                await anyio.sleep_forever()  # cancelled, as by a failing task of a group
            body_cancelled = False

    with pytest.raises(BaseExceptionGroup) as caught:
        await run()
    assert body_cancelled
    assert [type(e) for e in caught.value.exceptions] == [_Escape]


async def test_events_appended_counts_the_tokens_of_a_running_stream() -> None:
    # The stream's source task appends its tokens itself (the sink): they count in the
    # registry's statistics while the stream runs, and once it has ended.
    more = anyio.Event()

    async def source() -> AsyncIterator[str]:
        for text in ("a", "b", "c"):
            yield text
        await more.wait()
        yield "d"

    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        seen: list[sk.StreamEvent] = []
        with anyio.fail_after(10):
            async with registry.subscribe(session.session_id) as sub:
                registry.start(session.session_id, source(), FAST)
                async for event in sub:
                    seen.append(event)
                    if event.content == "c":
                        break
            assert registry.statistics().events_appended == len(seen) == 4  # start, a, b, c
            more.set()
            events = await collect(registry.subscribe(session.session_id))
        assert [e.content for e in events if e.event_type == "token"] == ["a", "b", "c", "d"]
        assert registry.statistics().events_appended == len(events) == 6


async def test_statistics() -> None:
    agent = SimulatedAgent(seed=1, realtime=False)
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        registry.start(session.session_id, agent("s"), FAST)
        events = await collect(registry.subscribe(session.session_id))
        stats = registry.statistics()
        assert stats.sessions == 1
        assert stats.by_state["completed"] == 1
        assert stats.events_appended == len(events)
        assert stats.events_delivered == len(events)
        assert stats.mean_time_to_first_token is not None
        per = await registry.session_statistics(session.session_id)
        assert per.log.last_seq == len(events)
        assert per.stream is not None
        assert per.stream.chunks > 0


async def test_bad_construction() -> None:
    with pytest.raises(sk.ValidationError):
        sk.SessionRegistry({"max_sessions": 1})  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError):
        sk.SessionRegistry(backend=object())  # type: ignore[arg-type]
    registry = sk.SessionRegistry()
    async with registry:
        with pytest.raises(sk.ValidationError):
            await registry.create(context={"x": object()})
    with pytest.raises(RuntimeError):
        async with registry:
            pass


async def test_the_memory_backend_has_no_leases() -> None:
    # A process-local backend: the registry runs no lease task and shares nothing.
    backend = sk.MemoryBackend()
    assert backend.lease_ttl is None
    assert list(await backend.renew_leases(["a"])) == []
    assert list(await backend.claim_orphans(10)) == []
    assert list(await backend.claim_removals(10)) == []
    await backend.schedule_removal("a", 1.0)
    session = sk.StreamSession(created_at=1.0)
    await backend.store.add(session, max_sessions=2, max_sessions_per_user=None)
    assert list(await backend.store.get_many([session.session_id, "missing"])) == [
        session,
        None,
    ]
    async with sk.SessionRegistry(backend=backend) as registry:
        assert [s.session_id for s in await registry.list()] == []  # its own sessions only


# -- a slow source's tokens, appended from the stream's own task ----------------------


async def stepped(steps: list[tuple[str, anyio.Event]]) -> AsyncIterator[str]:
    """Yield each text only once its event is set: a source the test paces exactly."""
    for text, go in steps:
        await go.wait()
        yield text


async def test_a_partial_chunk_is_flushed_while_the_source_is_silent() -> None:
    config = sk.StreamConfig(
        stream_delay=0, chunk_size=5, flush_interval=0.02, heartbeat_interval=None
    )
    steps = [(text, anyio.Event()) for text in ("alpha ", "beta ")]
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, stepped(steps), config)
            steps[0][1].set()
            with anyio.fail_after(10):
                tokens = [e async for e in _until_token(sub)]
            assert tokens[-1].content == "alpha "  # flushed with the source silent
            steps[1][1].set()
            rest = [e async for e in sub]
        assert text_of(tokens + rest) == "alpha beta "
        assert rest[-1].event_type == sk.EventType.COMPLETE


async def _until_token(sub: sk.Subscription) -> AsyncIterator[sk.StreamEvent]:
    async for event in sub:
        yield event
        if event.event_type == sk.EventType.TOKEN:
            return


async def test_no_token_is_appended_while_paused() -> None:
    steps = [(f"t{i} ", anyio.Event()) for i in range(3)]
    yielded = anyio.Event()

    async def source() -> AsyncIterator[str]:
        async for text in stepped(steps):
            if text == "t1 ":
                yielded.set()
            yield text

    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, source(), FAST)
            steps[0][1].set()
            with anyio.fail_after(10):
                first = [e async for e in _until_token(sub)]
            # The source is already waiting for its next item: the pause cannot stop it
            # before it yields, so the item must be held back, not appended.
            await registry.pause(sid)
            steps[1][1].set()
            with anyio.fail_after(10):
                await yielded.wait()
            await anyio.wait_all_tasks_blocked()
            stats = await registry.session_statistics(sid)
            assert stats.log.last_seq == first[-1].seq
            await registry.resume(sid)
            steps[2][1].set()
            with anyio.fail_after(10):
                rest = [e async for e in sub]
        assert text_of(first + rest) == "t0 t1 t2 "
        assert [e.seq for e in first + rest] == list(range(1, len(first) + len(rest) + 1))


async def test_a_session_paused_before_its_producer_starts_appends_nothing_until_resumed() -> None:
    # An active session's producer has no resume signal until a pause: a pause before
    # the producer starts must still hold it (its start event too).
    async with sk.SessionRegistry() as registry:
        session = await registry.create(context={})
        sid = session.session_id
        assert session.context == {}
        await registry.pause(sid)
        registry.start(sid, ["a ", "b "], FAST)
        await anyio.wait_all_tasks_blocked()
        assert (await registry.session_statistics(sid)).log.last_seq == 0
        assert (await registry.get(sid)).status is sk.SessionState.PAUSED
        await registry.resume(sid)
        with anyio.fail_after(10):
            events = await collect(registry.subscribe(sid))
        assert events[0].event_type == sk.EventType.START
        assert text_of(events) == "a b "
        assert events[-1].event_type == sk.EventType.COMPLETE
        # ... and a second session, started active, is paused the same way later on.
        other = (await registry.create()).session_id
        registry.start(other, forever(), FAST)
        await registry.pause(other)
        await anyio.wait_all_tasks_blocked()
        held = (await registry.session_statistics(other)).log.last_seq
        await anyio.wait_all_tasks_blocked()
        assert (await registry.session_statistics(other)).log.last_seq == held
        await registry.cancel(other)


async def test_no_token_is_appended_while_paused_a_second_time() -> None:
    # The sink remembers the last "resumed" signal it saw set; a second pause replaces
    # the signal that the first resume set, and must hold tokens back again.
    steps = [(f"t{i} ", anyio.Event()) for i in range(5)]
    yielded = {text: anyio.Event() for text, _ in steps}

    async def source() -> AsyncIterator[str]:
        async for text in stepped(steps):
            yielded[text].set()
            yield text

    async def until(sub: sk.Subscription, content: str) -> list[sk.StreamEvent]:
        got = []
        async for event in sub:
            got.append(event)
            if event.content == content:
                break
        return got

    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, source(), FAST)
            events: list[sk.StreamEvent] = []
            for pause_at in (1, 3):
                steps[pause_at - 1][1].set()
                with anyio.fail_after(10):
                    events += await until(sub, f"t{pause_at - 1} ")
                await registry.pause(sid)
                steps[pause_at][1].set()
                with anyio.fail_after(10):
                    await yielded[f"t{pause_at} "].wait()
                await anyio.wait_all_tasks_blocked()
                stats = await registry.session_statistics(sid)
                assert stats.log.last_seq == events[-1].seq, f"appended in pause {pause_at}"
                await registry.resume(sid)
            steps[4][1].set()
            with anyio.fail_after(10):
                events += [e async for e in sub]
        assert text_of(events) == "t0 t1 t2 t3 t4 "
        assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_block_policy_delivers_every_token_of_a_source_in_order() -> None:
    config = sk.RegistryConfig(max_lag=3, slow_consumer_policy="block")
    async with sk.SessionRegistry(config) as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, (f"{i} " for i in range(200)), FAST)
            events = []
            with anyio.fail_after(20):
                async for event in sub:
                    events.append(event)
                    await anyio.sleep(0)  # a reader slower than the producer
        assert text_of(events) == "".join(f"{i} " for i in range(200))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].event_type == sk.EventType.COMPLETE


async def test_block_policy_holds_a_streamed_final_event_until_the_reader_makes_room() -> None:
    # The producer's own final event is appended in place when the log has room; here
    # it has none, and the session ends only once the reader has read.
    config = sk.RegistryConfig(max_lag=3, slow_consumer_policy="block")
    async with sk.SessionRegistry(config) as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, ["a ", "b "], FAST)
            with anyio.fail_after(5):
                events = [await sub.__anext__()]
                await anyio.wait_all_tasks_blocked()
            held = await registry.get(sid)
            assert held.status is sk.SessionState.ACTIVE
            assert not any(e.is_final for e in held.events)  # the final event waits
            with anyio.fail_after(5):
                events += [e async for e in sub]
        assert text_of(events) == "a b "
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        final = events[-1]
        assert final.event_type == sk.EventType.COMPLETE
        assert final.session_id == sid
        assert final.metadata["stats"]
        assert (await registry.get(sid)).status is sk.SessionState.COMPLETED
        assert registry.statistics().events_appended == len(events)


async def _shut_down_while_the_reader_pauses(
    source: AsyncIterator[str] | list[str],
) -> tuple[sk.SessionRegistry, str, list[sk.StreamEvent]]:
    """Shut a block-policy registry down while its session's one reader stops reading.

    The reader (the application's, outside the registry block) reads the first event,
    then reads on only once the registry has been left.
    """
    config = sk.RegistryConfig(max_lag=3, slow_consumer_policy="block")
    events: list[sk.StreamEvent] = []
    read_on = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as app:
            async with sk.SessionRegistry(config) as registry:
                sid = (await registry.create()).session_id
                started = anyio.Event()

                async def reader() -> None:
                    async with registry.subscribe(sid) as sub:
                        events.append(await sub.__anext__())
                        started.set()
                        await read_on.wait()
                        events.extend([e async for e in sub])

                app.start_soon(reader)
                await anyio.wait_all_tasks_blocked()  # the reader waits for the start
                registry.start(sid, source, FAST)
                await started.wait()
                await anyio.wait_all_tasks_blocked()  # the producer waits for room
                assert (await registry.get(sid)).status is sk.SessionState.ACTIVE
            read_on.set()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    return registry, sid, events


async def test_shutdown_ends_a_session_whose_block_log_waits_for_a_reader() -> None:
    # The shutdown's final event waited for room as the producer does: for ever.
    registry, sid, events = await _shut_down_while_the_reader_pauses(unpaced())
    assert events[-1].event_type == sk.EventType.COMPLETE
    assert events[-1].metadata["reason"] == "shutdown"
    assert (await registry.get(sid)).status is sk.SessionState.CANCELLED


async def test_shutdown_lets_a_producer_end_its_own_session_on_a_full_block_log() -> None:
    # The producer's own final event waits for room when the registry shuts down: the
    # session still ends with it (it was cut short, and the session left active).
    registry, sid, events = await _shut_down_while_the_reader_pauses(["a ", "b "])
    assert text_of(events) == "a b "
    assert events[-1].event_type == sk.EventType.COMPLETE
    assert events[-1].metadata["reason"] == "completed"
    assert (await registry.get(sid)).status is sk.SessionState.COMPLETED


async def test_a_streamed_final_event_is_stored_once_with_its_seq_and_session() -> None:
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, ["a ", "b "], FAST)
            with anyio.fail_after(5):
                events = [e async for e in sub]
        session = await registry.get(sid)
        assert session.status is sk.SessionState.COMPLETED
        assert list(session.events) == events
        final = events[-1]
        assert final.is_final
        assert final.session_id == sid
        assert final.seq == len(events)
        assert session.events[-1].to_json() == final.to_json()


async def test_event_hooks_fire_once_per_event_in_seq_order() -> None:
    seen: list[int | None] = []
    steps = [(f"w{i} ", anyio.Event()) for i in range(20)]
    async with sk.SessionRegistry() as registry:
        registry.on("event", lambda event: seen.append(event.seq))
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, stepped(steps), FAST)
            got = []
            with anyio.fail_after(20):
                for _, go in steps:
                    go.set()
                    got += [e async for e in _until_token(sub)]
                got += [e async for e in sub]
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    assert seen == [e.seq for e in got]


async def test_a_source_that_never_waits_lets_its_subscriber_keep_up() -> None:
    # The stream's source task appends through the sink; a source that never yields to
    # the event loop must still let the subscriber read before the log trims its events.
    async def burst() -> AsyncIterator[str]:
        for _ in range(20_000):
            yield "t"

    config = sk.RegistryConfig(history_max_events=2_000, max_lag=1_000)
    with anyio.fail_after(30):
        async with sk.SessionRegistry(config) as registry:
            sid = (await registry.create()).session_id
            async with registry.subscribe(sid) as subscription:
                registry.start(sid, burst(), FAST)
                events = [event async for event in subscription]
    assert sum(e.event_type == "token" for e in events) == 20_000
    assert events[-1].event_type == "complete"


async def test_a_subscription_that_reaches_the_end_lets_go_of_the_session() -> None:
    # The log's cursor ends by itself after the final event: the subscription closes
    # (subscriber count, position) without the cursor's aclose().
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        sid = session.session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, ["a", "b", "c"], FAST)
            with anyio.fail_after(5):
                events = [e async for e in sub]
            assert registry.statistics().subscribers == 0
            assert sub.position == events[-1].seq
            assert events[-1].event_type == "complete"
            assert [e async for e in sub] == []  # ended: stays ended
        after = registry.subscribe(sid, after=sub.position)
        with anyio.fail_after(5):
            assert [e async for e in after] == []


@pytest.mark.parametrize("deadline", [None, 60.0])
async def test_a_held_partial_chunk_is_flushed_while_the_source_is_silent(
    deadline: float | None,
) -> None:
    # chunk_size=5 holds "ab" back; the flush timer must deliver it while the source
    # waits, with or without another timer (no heartbeat; a deadline or none).
    config = sk.StreamConfig(
        stream_delay=0,
        chunk_size=5,
        heartbeat_interval=None,
        max_stream_time=deadline,
        flush_interval=0.01,
    )
    gate = anyio.Event()
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, gated(["ab", "cdefg"], gate), config)
            with anyio.fail_after(5):
                tokens = []
                async for event in sub:
                    if event.event_type == "token":
                        tokens.append(event.content)
                        if tokens == ["ab"]:
                            gate.set()  # the source goes on only once "ab" came alone
                    elif event.is_final:
                        assert event.metadata["reason"] == "completed"
    assert tokens == ["ab", "cdefg"]


async def test_a_streams_history_read_back_later_equals_what_the_live_reader_got() -> None:
    # The log packs each streamer token its only reader has passed (only what differs
    # from token to token); a late reader, a resume and the retained view rebuild them
    # equal to the live ones: seq, session, id, time, metadata, and any JSON made.
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, (f"{i} " for i in range(40)), FAST)
            live = []
            with anyio.fail_after(10):
                async for event in sub:
                    if event.seq == 5:
                        event.to_json()  # cached on the event before it is passed
                    live.append(event)
        with anyio.fail_after(10):
            async with registry.subscribe(sid) as late:
                again = [e async for e in late]
            async with registry.subscribe(sid, after=17) as resumed:
                rest = [e async for e in resumed]
        assert again == live
        assert [e.to_json() for e in again] == [e.to_json() for e in live]
        assert [e.metadata for e in again] == [e.metadata for e in live]
        assert rest == live[17:]
        assert all(e.session_id == sid for e in again)


# A session's source waits while its timers act: on asyncio the registry's producer
# task pulls the source itself (one task per session), and the timers are alarms that
# act while it waits; on Trio the stream's source task runs beside the producer.


async def endless(closed: list[bool]) -> AsyncIterator[str]:
    """Yield ``"x"`` for ever, never waiting; note that it was closed."""
    try:
        while True:
            yield "x"
    finally:
        closed.append(True)


async def shielded_after(
    seconds: float, finished: list[str], entered: anyio.Event
) -> AsyncIterator[str]:
    """Yield ``"a"``, work ``seconds`` in a shielded scope (closing a connection, say),
    yield ``"b"``, then wait for ever; ``entered`` is set in the scope, ``finished`` noted
    at its end."""
    yield "a"
    with anyio.CancelScope(shield=True):
        entered.set()
        await anyio.sleep(seconds)
        finished.append("shielded")
    yield "b"
    await anyio.sleep_forever()


async def silent_after(first: str, closed: list[bool], go: anyio.Event) -> AsyncIterator[str]:
    """Yield ``first``, then wait for ``go`` before ``"b"``; note that it was closed."""
    try:
        yield first
        await go.wait()
        yield "b"
    finally:
        closed.append(True)


async def test_a_heartbeat_arrives_while_the_source_is_silent() -> None:
    config = sk.StreamConfig(stream_delay=0, chunk_size=1, heartbeat_interval=0.02)
    closed: list[bool] = []
    go = anyio.Event()
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, silent_after("a", closed, go), config)
            kinds = []
            with anyio.fail_after(10):
                async for event in sub:
                    kinds.append(str(event.event_type))
                    if event.event_type == sk.EventType.HEARTBEAT and not go.is_set():
                        go.set()
    assert kinds[:2] == ["start", "token"]
    assert kinds[2] == "heartbeat"
    assert kinds[-2:] == ["token", "complete"]
    assert closed == [True]
    session = await registry.get(sid)
    assert session.status is sk.SessionState.COMPLETED
    stats = session.events[-1].metadata["stats"]
    assert isinstance(stats, Mapping)
    assert stats["heartbeats"] == kinds.count("heartbeat")


@pytest.mark.parametrize(
    ("config", "final_type", "key", "value", "status"),
    [
        pytest.param(
            sk.StreamConfig(
                stream_delay=0, chunk_size=1, heartbeat_interval=None, stall_timeout=0.05
            ),
            sk.EventType.ERROR,
            "error_type",
            "TimeoutError",
            sk.SessionState.ERROR,
            id="stall",
        ),
        pytest.param(
            sk.StreamConfig(
                stream_delay=0, chunk_size=1, heartbeat_interval=0.02, max_stream_time=0.1
            ),
            sk.EventType.COMPLETE,
            "reason",
            "deadline",
            sk.SessionState.COMPLETED,
            id="deadline",
        ),
    ],
)
async def test_the_stall_watchdog_and_the_deadline_end_a_session_whose_source_is_silent(
    config: sk.StreamConfig,
    final_type: sk.EventType,
    key: str,
    value: str,
    status: sk.SessionState,
) -> None:
    closed: list[bool] = []
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, silent_after("a", closed, anyio.Event()), config)
            with anyio.fail_after(10):
                events = [e async for e in sub]
    assert text_of(events) == "a"
    final = events[-1]
    assert final.event_type == final_type
    assert final.metadata[key] == value
    assert closed == [True]
    assert (await registry.get(sid)).status is status


@pytest.mark.parametrize(
    ("config", "final_type", "key", "value"),
    [
        pytest.param(
            sk.StreamConfig(stream_delay=0, chunk_size=1, stall_timeout=0.2),
            sk.EventType.ERROR,
            "error_type",
            "TimeoutError",
            id="stall",
        ),
        pytest.param(
            sk.StreamConfig(stream_delay=0, chunk_size=1, max_stream_time=0.2),
            sk.EventType.COMPLETE,
            "reason",
            "deadline",
            id="deadline",
        ),
    ],
)
async def test_the_stall_and_the_deadline_wait_for_a_source_to_leave_its_shielded_scope(
    config: sk.StreamConfig, final_type: sk.EventType, key: str, value: str
) -> None:
    # A source's shielded work (closing its connection, say) that outlasts the timeout is
    # not cut short, on either backend: the stream ends once the source leaves it.
    finished: list[str] = []
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            # The shielded work lasts three times the timeout.
            registry.start(sid, shielded_after(0.6, finished, anyio.Event()), config)
            with anyio.fail_after(10):
                events = [e async for e in sub]
    assert finished == ["shielded"]
    assert text_of(events).startswith("a")
    final = events[-1]
    assert final.event_type == final_type
    assert final.metadata[key] == value


async def test_cancelling_a_session_lets_its_source_leave_its_shielded_scope_first() -> None:
    finished: list[str] = []
    entered = anyio.Event()
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, shielded_after(0.3, finished, entered), FAST)
            with anyio.fail_after(10):
                events = [await sub.__anext__(), await sub.__anext__()]
                await entered.wait()
                await registry.cancel(sid)
                events += [e async for e in sub]
    assert finished == ["shielded"]
    assert text_of(events).startswith("a")
    assert events[-1].metadata["reason"] == "cancelled"
    assert (await registry.get(sid)).status is sk.SessionState.CANCELLED


async def test_a_heartbeat_made_during_a_pause_is_delivered_after_the_resume() -> None:
    config = sk.StreamConfig(stream_delay=0, chunk_size=1, heartbeat_interval=0.02)
    closed: list[bool] = []
    go = anyio.Event()
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, silent_after("a", closed, go), config)
            with anyio.fail_after(10):
                events = [await sub.__anext__(), await sub.__anext__()]
                assert text_of(events) == "a"
                await registry.pause(sid)
                while True:  # until the stream has made a heartbeat, held by the pause
                    stats = (await registry.session_statistics(sid)).stream
                    assert stats is not None
                    if stats.heartbeats:
                        break
                    await anyio.sleep(0.01)
                last = (await registry.session_statistics(sid)).log.last_seq
                assert last == 2  # nothing appended during the pause
                await registry.resume(sid)
                beat = await sub.__anext__()
                assert beat.event_type == sk.EventType.HEARTBEAT
                assert beat.seq == 3
                go.set()
                events += [beat] + [e async for e in sub]
    assert text_of(events) == "ab"
    assert events[-1].metadata["reason"] == "completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_cancelling_a_session_whose_source_is_silent_closes_the_source() -> None:
    closed: list[bool] = []
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, silent_after("a", closed, anyio.Event()), FAST)
            with anyio.fail_after(10):
                events = [await sub.__anext__(), await sub.__anext__()]
                await anyio.wait_all_tasks_blocked()
                await registry.cancel(sid)
                events += [e async for e in sub]
                while not closed:  # the producer closes the source as it ends
                    await anyio.wait_all_tasks_blocked()
    assert text_of(events) == "a"
    assert events[-1].metadata["reason"] == "cancelled"
    assert (await registry.get(sid)).status is sk.SessionState.CANCELLED
    assert closed == [True]


@pytest.mark.anyio
@pytest.mark.parametrize("chunk_size", [1, 5])
async def test_a_fast_source_never_leaves_its_reader_behind(chunk_size: int) -> None:
    # A source that never waits (a model's output already in memory) still lets the
    # session's reader run, however its items are chunked: the reader gets every event
    # though the log keeps far fewer than the stream makes.
    async def source() -> AsyncIterator[str]:
        for _ in range(20_000):
            yield "tok "

    config = sk.StreamConfig(chunk_size=chunk_size, stream_delay=0)
    async with sk.SessionRegistry(sk.RegistryConfig(history_max_events=1_000)) as registry:
        session = await registry.create()
        async with registry.subscribe(session.session_id) as subscription:
            registry.start(session.session_id, source(), config)
            with anyio.fail_after(30):
                events = [event.event_type async for event in subscription]
    assert events.count(sk.EventType.TOKEN) == 20_000 // chunk_size
    assert events[-1] == sk.EventType.COMPLETE


@pytest.mark.anyio
async def test_readers_in_place_before_the_start_share_a_fast_sources_events() -> None:
    # Subscribers that joined before the producer started read its tokens as stored
    # (one object per event for all of them), not as history packed away before they
    # ran and rebuilt for each: the cost of fan-out to many readers of a fast source.
    async def source() -> AsyncIterator[str]:
        for _ in range(600):
            yield "tok "

    config = sk.StreamConfig(chunk_size=1, stream_delay=0)
    got: list[list[sk.StreamEvent]] = [[], []]
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        sid = session.session_id
        subscriptions = [registry.subscribe(sid), registry.subscribe(sid)]
        for subscription in subscriptions:
            await subscription.__aenter__()
        ready = anyio.Event()

        async def read(i: int) -> None:
            await ready.wait()
            async with subscriptions[i] as subscription:
                got[i] += [event async for event in subscription]

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, 0)
                tg.start_soon(read, 1)
                await anyio.sleep(0)  # both wait for the start
                registry.start(sid, source(), config)
                ready.set()
    assert len(got[0]) == len(got[1]) == 602
    # (The start event may come to each from the history: it was stored before they ran.)
    shared = zip(got[0][1:], got[1][1:], strict=True)
    assert [i for i, (a, b) in enumerate(shared, 1) if a is not b] == []


async def test_cancelling_a_paused_session_closes_its_source() -> None:
    # The producer is held by the pause (before its next pull, or with an item the pause
    # held back): a cancel lets it go, and it closes the source as it ends.
    closed: list[bool] = []
    go = anyio.Event()
    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, silent_after("a", closed, go), FAST)
            with anyio.fail_after(10):
                events = [await sub.__anext__(), await sub.__anext__()]
                await registry.pause(sid)
                go.set()  # the source's next item comes while paused
                await anyio.wait_all_tasks_blocked()
                await registry.cancel(sid)
                events += [e async for e in sub]
                while not closed:
                    await anyio.wait_all_tasks_blocked()
        assert registry.statistics().producers == 0
    assert text_of(events) == "a"
    assert events[-1].metadata["reason"] == "cancelled"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert (await registry.get(sid)).status is sk.SessionState.CANCELLED
    assert closed == [True]


async def test_cancelling_a_session_whose_producer_waits_for_room_ends_its_producer() -> None:
    # A block-policy log holds the producer's next token while the reader does not read;
    # a cancel's final event waits for room too. Once the reader reads, the final event
    # goes in and the waiting producer ends (nothing after the final event), its source
    # closed.
    closed: list[bool] = []

    config = sk.RegistryConfig(max_lag=3, slow_consumer_policy="block")
    async with sk.SessionRegistry(config) as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, endless(closed), FAST)
            with anyio.fail_after(10):
                events = [await sub.__anext__()]
                await anyio.wait_all_tasks_blocked()  # the producer waits for room
                async with anyio.create_task_group() as tg:
                    tg.start_soon(registry.cancel, sid)
                    await anyio.wait_all_tasks_blocked()  # its final event waits too
                    events += [e async for e in sub]
                while not closed:
                    await anyio.wait_all_tasks_blocked()
    assert events[-1].metadata["reason"] == "cancelled"
    assert [e for e in events if e.is_final] == [events[-1]]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert (await registry.get(sid)).status is sk.SessionState.CANCELLED
    assert closed == [True]


async def test_a_session_cancelled_as_its_producer_starts_appends_nothing_more() -> None:
    # Cancelled before its producer's task has run (or its source task pulled much):
    # the producer ends without appending, and closes the source.
    closed: list[bool] = []

    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        registry.start(sid, endless(closed), FAST)
        await registry.cancel(sid)
        with anyio.fail_after(10):
            events = await collect(registry.subscribe(sid))
            await anyio.wait_all_tasks_blocked()
        assert registry.statistics().producers == 0
    assert [e.event_type for e in events] == [sk.EventType.COMPLETE]
    assert events[0].metadata["reason"] == "cancelled"
    assert closed in ([], [True])  # (a source never started has nothing to close)


async def test_cancelling_a_session_whose_source_never_waits_closes_the_source() -> None:
    # The producer only lets others run between its items (the source never waits):
    # a cancel made then stops it before its next pull.
    closed: list[bool] = []

    async with sk.SessionRegistry() as registry:
        sid = (await registry.create()).session_id
        async with registry.subscribe(sid) as sub:
            registry.start(sid, endless(closed), FAST)
            with anyio.fail_after(10):
                events = [await sub.__anext__(), await sub.__anext__()]
                await registry.cancel(sid)
                events += [e async for e in sub]
                while not closed:
                    await anyio.wait_all_tasks_blocked()
    assert events[-1].metadata["reason"] == "cancelled"
    assert [e for e in events if e.is_final] == [events[-1]]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert closed == [True]
