"""Producer faults, in-process on both backends: it raises, hangs, or is cancelled.

Whatever the fault, every subscriber gets the same contiguous events ending with exactly
one final event, its subscription ends by itself, and the session's state says what
happened. The registry keeps serving other sessions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import streamkit as sk

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

USER = "alice"
FAST = sk.StreamConfig(stream_delay=0, chunk_size=1, flush_interval=0.01)
# Long enough that a loaded machine (30 sources starting at once on Trio) brings "a" and
# "b" before the watchdog speaks: a silence from the start counts as a stall too.
STALL = 1.0
SUBSCRIBERS = 3


def registry() -> sk.SessionRegistry:
    return sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None))


async def raising(started: anyio.Event) -> AsyncIterator[str]:
    yield "a"
    yield "b"
    started.set()
    raise RuntimeError("the model broke")


def raising_sync(started: anyio.Event) -> Iterator[str]:
    yield "a"
    yield "b"
    raise ConnectionError("the model's socket broke")


async def hanging(started: anyio.Event) -> AsyncIterator[str]:
    yield "a"
    yield "b"
    started.set()
    await anyio.sleep_forever()
    yield "never"  # pragma: no cover


async def read_all(
    reg: sk.SessionRegistry, session_id: str, out: list[sk.StreamEvent], ready: anyio.Event
) -> None:
    async with reg.subscribe(session_id, user_id=USER) as subscription:
        ready.set()
        async for event in subscription:
            out.append(event)  # noqa: PERF401 - the test reads ``out`` while it grows


def tokens(events: list[sk.StreamEvent]) -> str:
    return "".join(e.content for e in events if e.event_type == "token")


def check_stream(events: list[sk.StreamEvent], final_type: str) -> None:
    """Contiguous seqs from 1, the tokens, and exactly one final event, last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    finals = [e for e in events if e.is_final]
    assert len(finals) == 1
    assert events[-1] is finals[0]
    assert events[-1].event_type == final_type
    assert tokens(events) == "ab"


@pytest.mark.parametrize(
    ("fault", "final_type", "state"),
    [
        ("raise", "error", sk.SessionState.ERROR),
        ("raise-sync", "error", sk.SessionState.ERROR),
        ("stall", "error", sk.SessionState.ERROR),
        ("cancel", "complete", sk.SessionState.CANCELLED),
        ("pause-cancel", "complete", sk.SessionState.CANCELLED),
        ("close", "complete", sk.SessionState.CANCELLED),
    ],
)
async def test_producer_fault(fault: str, final_type: str, state: sk.SessionState) -> None:
    streams: list[list[sk.StreamEvent]] = [[] for _ in range(SUBSCRIBERS)]
    async with registry() as reg:
        other = await reg.create(user_id=USER)
        session = await reg.create(user_id=USER)
        sid = session.session_id
        started = anyio.Event()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for out in streams:
                    ready = anyio.Event()
                    tg.start_soon(read_all, reg, sid, out, ready)
                    await ready.wait()
                config = FAST
                source: Any
                if fault == "raise":
                    source = raising(started)
                elif fault == "raise-sync":
                    source = raising_sync(started)
                else:
                    source = hanging(started)
                if fault == "stall":
                    config = FAST.replace(stall_timeout=STALL)
                reg.start(sid, source, config=config)
                if fault in ("cancel", "pause-cancel", "close"):
                    await started.wait()
                    # Both tokens are out once the subscribers have them.
                    while not all(tokens(s) == "ab" for s in streams):
                        await anyio.sleep(0.01)
                    if fault == "pause-cancel":
                        await reg.pause(sid, user_id=USER)
                        await reg.cancel(sid, user_id=USER)
                    elif fault == "cancel":
                        await reg.cancel(sid, user_id=USER)
                    else:
                        # Closing the session ends its subscribers too: they read
                        # the final event the registry writes first.
                        await reg.cancel(sid, user_id=USER)
                        await reg.close(sid, user_id=USER)
        for out in streams:
            check_stream(out, final_type)
            assert out == streams[0]
        if fault.endswith("cancel"):
            assert streams[0][-1].metadata["reason"] == "cancelled"
        if fault.startswith("raise"):
            assert streams[0][-1].metadata["error_type"] in ("RuntimeError", "ConnectionError")
        if fault == "stall":
            assert streams[0][-1].metadata["error_type"] == "TimeoutError"
        if fault == "close":
            with pytest.raises(sk.SessionNotFound):
                await reg.get(sid, user_id=USER)
        else:
            assert (await reg.get(sid, user_id=USER)).status is state
            # Ended means ended: no second final event, nothing appended.
            with pytest.raises(sk.ClosedError):
                await reg.publish(sid, sk.StreamEvent(event_type="complete"), user_id=USER)
            with pytest.raises(sk.InvalidTransition):
                await reg.cancel(sid, user_id=USER)
            # A late subscriber reads the same events and ends.
            late = [e async for e in reg.subscribe(sid, user_id=USER)]
            assert late == streams[0]
        assert reg.statistics().producers == 0
        assert reg.statistics().subscribers == 0
        # The registry still serves.
        await reg.publish(
            other.session_id, sk.StreamEvent(event_type="token", content="ok"), user_id=USER
        )


async def test_faults_in_many_sessions_at_once() -> None:
    """Producers failing together do not disturb one another or a healthy session."""
    async with registry() as reg:
        sessions = {}
        for i in range(30):
            session = await reg.create(user_id=USER)
            started = anyio.Event()
            kind = ("raise", "stall", "ok")[i % 3]
            source: Any = (
                raising(started)
                if kind == "raise"
                else hanging(started)
                if kind == "stall"
                else iter(["a", "b"])
            )
            reg.start(session.session_id, source, config=FAST.replace(stall_timeout=STALL))
            sessions[session.session_id] = kind
        with anyio.fail_after(10):
            for sid, kind in sessions.items():
                events = [e async for e in reg.subscribe(sid, user_id=USER)]
                check_stream(events, "complete" if kind == "ok" else "error")
                expected = sk.SessionState.COMPLETED if kind == "ok" else sk.SessionState.ERROR
                assert (await reg.get(sid, user_id=USER)).status is expected
        assert reg.statistics().producers == 0


async def test_subscriber_cancelled_mid_stream_leaves_the_producer_alone() -> None:
    async with registry() as reg:
        session = await reg.create(user_id=USER)
        sid = session.session_id
        gate = anyio.Event()

        async def source() -> AsyncIterator[str]:
            yield "a"
            await gate.wait()
            yield "b"

        reg.start(sid, source(), config=FAST)
        with anyio.fail_after(10):
            with anyio.CancelScope() as scope:
                async for event in reg.subscribe(sid, user_id=USER):
                    if event.event_type == "token":
                        scope.cancel()
            assert reg.statistics().subscribers == 0
            gate.set()
            events = [e async for e in reg.subscribe(sid, user_id=USER)]
        check_stream(events, "complete")
