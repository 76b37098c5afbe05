"""Conformance suites: checks that any implementation of a streamkit interface must pass.

Run them from your own tests against your implementation (the in-memory log and the
Redis log both do)::

    async def test_my_log_conforms():
        await check_event_log(lambda **limits: MyEventLog(**limits))

A failed check raises ``AssertionError`` naming what was expected and what came.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import anyio
import anyio.lowlevel

from .._errors import ClosedError, HistoryGap, PayloadTooLarge, SubscriberLagged, ValidationError
from .._events import EventType, StreamEvent
from ..abc import EventLog

__all__ = ["EventLogFactory", "check_event_log"]

#: Makes a new, empty log. It receives keyword limits to apply: ``history_max_events``,
#: ``max_event_bytes``, ``max_lag`` and ``slow_consumer_policy`` (each only when a check
#: needs it). It may be a coroutine function.
EventLogFactory: TypeAlias = Callable[..., "EventLog | Awaitable[EventLog]"]


async def _make(factory: EventLogFactory, **limits: Any) -> EventLog:
    log = factory(**limits)
    if inspect.isawaitable(log):
        log = await log
    assert isinstance(log, EventLog), f"the factory must make an EventLog, got {log!r}"
    return log


def _closed(log: EventLog) -> bool:
    # A function call, so that type checkers do not narrow the property across awaits.
    return log.is_closed


def _token(text: str) -> StreamEvent:
    return StreamEvent(event_type=EventType.TOKEN, content=text)


async def _read_all(log: EventLog, after: int = 0) -> list[StreamEvent]:
    with anyio.fail_after(10):
        async with log.read(after) as cursor:
            return [event async for event in cursor]


async def check_event_log(factory: EventLogFactory) -> None:
    """Check that the logs ``factory`` makes keep the :class:`~streamkit.abc.EventLog` contract.

    Covers: ``seq`` stamping and session ids, replay, live following by many readers
    with identical sequences, resume from every position, a reader past the end, the
    final event closing the log, ``aclose``, ``HistoryGap`` past retention,
    ``SubscriberLagged`` for a reader too far behind, the event size bound, bad
    arguments, and the non-blocking ``append_nowait`` (which a log may implement by
    never taking an event: it then returns ``None`` and stores nothing). Each check
    uses a fresh log from ``factory``.

    Args:
        factory: Makes a new empty log, given keyword limits (see
            :data:`EventLogFactory`).

    Raises:
        AssertionError: the implementation breaks the contract; the message says how.
    """
    await _check_append_and_replay(factory)
    await _check_live_readers(factory)
    await _check_resume_everywhere(factory)
    await _check_closing(factory)
    await _check_retention(factory)
    await _check_lag(factory)
    await _check_bounds_and_arguments(factory)
    await _check_append_nowait(factory)


async def _check_append_and_replay(factory: EventLogFactory) -> None:
    log = await _make(factory)
    assert log.last_seq == 0, f"a new log must have last_seq 0, got {log.last_seq}"
    assert not _closed(log), "a new log must be open"
    original = _token("a")
    stored = await log.append(original)
    assert stored.seq == 1, f"the first event must get seq 1, got {stored.seq}"
    assert stored.session_id == log.session_id, "stored events carry the log's session id"
    assert original.seq is None, "append must not change the event it was given"
    assert (stored.content, stored.event_id) == ("a", original.event_id)
    for i, text in enumerate(["b", "c"], start=2):
        assert (await log.append(_token(text))).seq == i, "seq must grow by one"
    final = await log.append(StreamEvent(event_type=EventType.COMPLETE))
    assert final.seq == 4
    assert _closed(log), "a final event must close the log"
    assert log.last_seq == 4
    events = await _read_all(log)
    assert [e.seq for e in events] == [1, 2, 3, 4], f"replay gave {[e.seq for e in events]}"
    assert [e.content for e in events[:3]] == ["a", "b", "c"]
    assert list(log.retained()) == events, "retained() must hold the events, oldest first"
    statistics = log.statistics()
    assert statistics.last_seq == 4
    assert statistics.closed


async def _check_live_readers(factory: EventLogFactory) -> None:
    log = await _make(factory)
    results: list[list[StreamEvent]] = []
    ready = [anyio.Event() for _ in range(5)]

    async def reader(i: int) -> None:
        async with log.read(0) as cursor:
            ready[i].set()
            results.append([event async for event in cursor])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(reader, i)
            for event in ready:
                await event.wait()
            for i in range(50):
                await log.append(_token(str(i)))
                if i % 7 == 0:
                    await anyio.lowlevel.checkpoint()
            await log.append(StreamEvent(event_type=EventType.COMPLETE))
    assert len(results) == 5
    expected = list(range(1, 52))
    for got in results:
        assert [e.seq for e in got] == expected, f"a live reader got {[e.seq for e in got]}"
    assert all(got == results[0] for got in results), "readers must get identical events"


async def _check_resume_everywhere(factory: EventLogFactory) -> None:
    log = await _make(factory)
    for i in range(10):
        await log.append(_token(str(i)))
    # Live: resume from every position while the log is open, then finish it.
    for after in range(11):
        async with log.read(after) as cursor:
            got = []
            if after < 10:
                with anyio.fail_after(10):
                    got = [await cursor.__anext__() for _ in range(10 - after)]
            assert [e.seq for e in got] == list(range(after + 1, 11)), (
                f"a live resume after {after} gave {[e.seq for e in got]}"
            )
            assert cursor.position == (10 if after < 10 else after)
    await log.append(StreamEvent(event_type=EventType.ERROR, metadata={"message": "x"}))
    whole = await _read_all(log)
    for after in range(13):
        rest = await _read_all(log, after)
        assert rest == whole[after:], f"a resume after {after} must give exactly the rest"


async def _check_closing(factory: EventLogFactory) -> None:
    log = await _make(factory)
    await log.append(_token("x"))
    await log.append(StreamEvent(event_type=EventType.COMPLETE))
    try:
        await log.append(_token("late"))
    except ClosedError:
        pass
    else:
        raise AssertionError("an append after the final event must raise ClosedError")
    assert await _read_all(log, 2) == [], "a reader past the end of a closed log must end"

    log = await _make(factory)
    await log.append(_token("x"))
    waiting: list[StreamEvent] = []

    async def follower() -> None:
        async with log.read(0) as cursor:
            waiting.extend([event async for event in cursor])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower)
            await anyio.lowlevel.checkpoint()
            await log.aclose()
    assert [e.seq for e in waiting] == [1], "aclose must end readers after the retained tail"
    assert log.is_closed
    try:
        await log.append(_token("late"))
    except ClosedError:
        pass
    else:
        raise AssertionError("an append after aclose must raise ClosedError")
    await log.aclose()  # idempotent


async def _check_retention(factory: EventLogFactory) -> None:
    log = await _make(factory, history_max_events=5)
    for i in range(20):
        await log.append(_token(str(i)))
    await log.append(StreamEvent(event_type=EventType.COMPLETE))
    oldest = log.oldest_seq
    assert oldest > 1, "a log bounded to 5 events must have dropped the oldest"
    assert log.last_seq == 21
    gap: HistoryGap | None = None
    try:
        await _read_all(log, 0)
    except HistoryGap as exc:
        gap = exc
    assert gap is not None, "reading from a trimmed position must raise HistoryGap"
    assert gap.oldest_seq == oldest, f"HistoryGap.oldest_seq {gap.oldest_seq} != {oldest}"
    assert gap.after == 0
    kept = await _read_all(log, oldest - 1)
    assert [e.seq for e in kept] == list(range(oldest, 22)), "the retained tail must be whole"


async def _check_lag(factory: EventLogFactory) -> None:
    log = await _make(factory, max_lag=4, slow_consumer_policy="disconnect")
    await log.append(_token("first"))
    async with log.read(0) as cursor:
        with anyio.fail_after(10):
            first = await cursor.__anext__()
        assert first.seq == 1
        for i in range(20):
            await log.append(_token(str(i)))
        lagged: SubscriberLagged | None = None
        try:
            with anyio.fail_after(10):
                async for _ in cursor:
                    pass
        except SubscriberLagged as exc:
            lagged = exc
        assert lagged is not None, "a reader far behind must get SubscriberLagged"
        assert lagged.after >= 1, "SubscriberLagged.after is the last seq delivered"


async def _check_bounds_and_arguments(factory: EventLogFactory) -> None:
    log = await _make(factory, max_event_bytes=1000)
    try:
        await log.append(_token("x" * 5000))
    except PayloadTooLarge:
        pass
    else:
        raise AssertionError("an event over max_event_bytes must raise PayloadTooLarge")
    assert log.last_seq == 0, "a refused event must not take a seq"
    for bad in (-1, "1", 1.5, None):
        try:
            log.read(bad)  # type: ignore[arg-type]
        except ValidationError:
            pass
        else:
            raise AssertionError(f"read({bad!r}) must raise ValidationError")
    try:
        await log.append({"event_type": "token"})  # type: ignore[arg-type]
    except ValidationError:
        pass
    else:
        raise AssertionError("append of a non-event must raise ValidationError")


async def _check_append_nowait(factory: EventLogFactory) -> None:
    log = await _make(factory)
    await log.append(_token("a"))
    original = _token("b")
    stored = log.append_nowait(original)
    if stored is None:
        assert log.last_seq == 1, "append_nowait returned None: it must have stored nothing"
        stored = await log.append(original)
    assert stored.seq == 2, f"append_nowait must stamp the next seq, got {stored.seq}"
    assert stored.session_id == log.session_id
    assert original.seq is None, "append_nowait without owned=True must not change the event"
    fresh = _token("c")
    taken = log.append_nowait(fresh, owned=True)
    if taken is None:
        assert log.last_seq == 2, "append_nowait returned None: it must have stored nothing"
        await log.append(fresh)
    else:
        assert taken.seq == 3, f"append_nowait must stamp the next seq, got {taken.seq}"
        assert taken.content == "c", "append_nowait must store the event's content"
        assert taken.event_id == fresh.event_id, "append_nowait must keep the event's id"
    events = await _read_all_until(log, 3)
    assert [(e.seq, e.content) for e in events] == [(1, "a"), (2, "b"), (3, "c")], (
        "events stored by append_nowait must be read like the others"
    )
    try:
        log.append_nowait({"event_type": "token"})  # type: ignore[arg-type]
    except ValidationError:
        pass
    else:
        raise AssertionError("append_nowait of a non-event must raise ValidationError")
    await log.append(StreamEvent(event_type=EventType.COMPLETE))
    try:
        log.append_nowait(_token("late"))
    except ClosedError:
        pass
    else:
        raise AssertionError("append_nowait after the final event must raise ClosedError")
    small = await _make(factory, max_event_bytes=1000)
    try:
        taken = small.append_nowait(_token("x" * 5000))
    except PayloadTooLarge:
        taken = None
    assert taken is None, "append_nowait must not store an event over max_event_bytes"
    assert small.last_seq == 0, "a refused event must not take a seq"
    await small.aclose()


async def _read_all_until(log: EventLog, last: int) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    with anyio.fail_after(10):
        async with log.read(0) as cursor:
            async for event in cursor:
                events.append(event)
                if event.seq == last:
                    break
    return events
