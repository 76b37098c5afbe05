"""The in-memory event log: the conformance suite, and what it adds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamkit as sk
from streamkit.parts import DataPart
from streamkit.testing import check_event_log

from .tally import Tally

pytestmark = pytest.mark.anyio


async def test_conformance() -> None:
    await check_event_log(sk.InMemoryEventLog)


def token(text: str) -> sk.StreamEvent:
    return sk.StreamEvent(event_type="token", content=text)


@settings(max_examples=25)
@given(
    n=st.integers(min_value=0, max_value=30),
    cut=st.integers(min_value=0, max_value=35),
    finished=st.booleans(),
)
def test_resume_is_exact(n: int, cut: int, finished: bool) -> None:
    async def scenario() -> None:
        log = sk.InMemoryEventLog()
        for i in range(n):
            await log.append(token(str(i)))
        if finished:
            await log.append(sk.StreamEvent(event_type="complete"))
        last = log.last_seq
        async with log.read(cut) as cursor:
            got = [await cursor.__anext__() for _ in range(max(0, last - cut))]
        assert [e.seq for e in got] == list(range(cut + 1, last + 1))

    for backend in ("asyncio", "trio"):
        anyio.run(scenario, backend=backend)


async def test_byte_retention_keeps_the_newest() -> None:
    log = sk.InMemoryEventLog(history_max_bytes=2000)
    for i in range(50):
        await log.append(token("y" * 100 + str(i)))
    stats = log.statistics()
    assert stats.retained_bytes <= 2000
    assert 0 < stats.retained_events < 50
    assert log.retained()[-1].content.endswith("49")
    with pytest.raises(sk.HistoryGap):
        async with log.read(0) as cursor:
            await cursor.__anext__()


async def test_block_policy_waits_for_the_slowest_reader() -> None:
    log = sk.InMemoryEventLog(max_lag=3, slow_consumer_policy="block")
    await log.append(token("0"))
    appended = 0

    async def producer() -> None:
        nonlocal appended
        for i in range(10):
            await log.append(token(str(i + 1)))
            appended += 1
        await log.append(sk.StreamEvent(event_type="complete"))

    async with log.read(0) as cursor, anyio.create_task_group() as tg:
        await cursor.__anext__()
        tg.start_soon(producer)
        for _ in range(100):
            await anyio.sleep(0)
        assert appended < 10
        rest = [e async for e in cursor]
    assert [e.seq for e in rest] == list(range(2, 13))
    assert log.statistics().producer_waits > 0


async def test_one_stuck_reader_does_not_stall_the_others() -> None:
    log = sk.InMemoryEventLog(max_lag=5)
    await log.append(token("first"))
    stuck = log.read(0)
    await stuck.__anext__()  # then never reads again
    fast: list[sk.StreamEvent] = []

    async def reader() -> None:
        async with log.read(0) as cursor:
            fast.extend([e async for e in cursor])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for i in range(100):
                await log.append(token(str(i)))
                await anyio.sleep(0)
            # Lag is enforced while the log is open: the stuck reader is cut off.
            with pytest.raises(sk.SubscriberLagged):
                async for _ in stuck:
                    pass
            await log.append(sk.StreamEvent(event_type="complete"))
    assert len(fast) == 102
    assert log.statistics().readers_lagged == 1


@pytest.mark.parametrize(
    "limits",
    [
        {"history_max_events": 0},
        {"history_max_bytes": -1},
        {"max_event_bytes": 0},
        {"max_lag": 0},
        {"slow_consumer_policy": "drop"},
        {"session_id": "bad id"},
    ],
)
async def test_bad_limits(limits: dict[str, Any]) -> None:
    with pytest.raises(sk.ValidationError):
        sk.InMemoryEventLog(**limits)


async def test_from_config_and_repr() -> None:
    config = sk.RegistryConfig(history_max_events=7, max_lag=9)
    log = sk.InMemoryEventLog.from_config("s1", config)
    assert log.session_id == "s1"
    assert "open" in repr(log)
    log.close()
    assert log.is_closed
    assert "closed" in repr(log)


async def test_a_cancelled_first_waiter_does_not_strand_the_others() -> None:
    # The first reader to wait is the one an append wakes, and it wakes the others in
    # turn: cancelled while waiting, it must pass that duty on.
    log = sk.InMemoryEventLog()
    got: dict[str, list[str]] = {"first": [], "second": [], "third": []}

    async def reader(name: str) -> None:
        async with log.read(0) as cursor:
            got[name].extend([e.content async for e in cursor])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as first:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(reader, "first")
                    await anyio.wait_all_tasks_blocked()  # the first reader waits
                    tg.start_soon(reader, "second")
                    tg.start_soon(reader, "third")
                    await anyio.wait_all_tasks_blocked()  # so do the other two
                    first.cancel()
            assert first.cancelled_caught
            await log.append(token("a"))
            await log.append(token("b"))
            await log.append(sk.StreamEvent(event_type="complete"))
    assert got == {"first": [], "second": ["a", "b", ""], "third": ["a", "b", ""]}


async def test_readers_waiting_behind_the_first_leave_and_close_as_they_please() -> None:
    # The readers behind the first each wait on a signal of their own that the first one
    # sets: one cancelled while waiting leaves the others waiting, and they all get the
    # next event; a close wakes every waiting reader.
    log = sk.InMemoryEventLog()
    got: dict[str, list[str]] = {name: [] for name in ("first", "second", "third", "fourth")}

    async def reader(name: str) -> None:
        async with log.read(0) as cursor:
            got[name].extend([e.content async for e in cursor])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, "first")
            await anyio.wait_all_tasks_blocked()  # the first reader waits
            with anyio.CancelScope() as second:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(reader, "second")
                    await anyio.wait_all_tasks_blocked()
                    tg.start_soon(reader, "third")
                    tg.start_soon(reader, "fourth")
                    await anyio.wait_all_tasks_blocked()  # three wait behind the first
                    second.cancel()
            assert second.cancelled_caught
            await log.append(token("a"))
            await anyio.wait_all_tasks_blocked()  # every reader took "a" and waits again
            log.close()
    assert got == {"first": ["a"], "second": [], "third": ["a"], "fourth": ["a"]}


async def test_many_readers_behind_the_first_are_all_woken() -> None:
    # Fifty readers, all but the first waiting behind it, some of them cancelled while
    # they wait: every other reader gets every event, and the close ends them all.
    log = sk.InMemoryEventLog()
    readers = 50
    got: list[list[str]] = [[] for _ in range(readers)]
    left = set(range(3, readers, 4))
    scopes = [anyio.CancelScope() for _ in range(readers)]
    tally = Tally()

    async def reader(i: int) -> None:
        with scopes[i]:
            async with log.read(0) as cursor:
                async for event in cursor:
                    got[i].append(event.content)
                    tally.add(1)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(readers):
                tg.start_soon(reader, i)
            await anyio.wait_all_tasks_blocked()  # all wait: the first one, then the others
            for i in left:
                scopes[i].cancel()
            await anyio.wait_all_tasks_blocked()
            for n, text in enumerate(("a", "b", "c"), 1):
                await log.append(token(text))
                await tally.reached(n * (readers - len(left)))
            log.close()
    assert [got[i] for i in left] == [[] for _ in left]
    assert all(got[i] == ["a", "b", "c"] for i in range(readers) if i not in left)


async def test_a_reader_parked_behind_another_loses_nothing_when_its_wait_is_cut_short(
    anyio_backend: str,
) -> None:
    # park() hands a transport a bare future to await (asyncio, a reader waiting behind
    # another), take_live() the one new event after it. A wait cut short takes nothing:
    # the event is then read the usual way, once.
    log = sk.InMemoryEventLog()
    first = log.read(0)
    second = log.read(0)
    parked: list[object] = []
    got: list[str] = []
    cut = anyio.CancelScope()

    async def lead() -> None:
        got.extend(["first:" + event.content async for event in first])

    async def follow() -> None:
        event = await second.__anext__()
        got.append("second:" + event.content)
        waiter = second.park()  # type: ignore[attr-defined]
        parked.append(waiter)
        if waiter is None:  # Trio: no bare future, the usual wait
            event = await second.__anext__()
        else:
            with cut:  # cancelled before anything is appended
                await waiter
            assert cut.cancelled_caught
            event = await second.__anext__()  # not taken by the cut wait
        got.append("second:" + event.content)
        waiter = second.park()  # type: ignore[attr-defined]
        if waiter is not None:
            await waiter
            live = second.take_live()  # type: ignore[attr-defined]
            assert live is not None
            got.append("second:" + live.content)
        got.extend(["second:" + event.content async for event in second])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lead)
            await anyio.wait_all_tasks_blocked()
            await log.append(token("a"))
            tg.start_soon(follow)
            await anyio.wait_all_tasks_blocked()  # both wait: first for the producer
            if anyio_backend == "asyncio":
                cut.cancel()
                await anyio.wait_all_tasks_blocked()
            await log.append(token("b"))
            await anyio.wait_all_tasks_blocked()
            await log.append(token("c"))
            await anyio.wait_all_tasks_blocked()
            log.close()
    assert sorted(got) == ["first:a", "first:b", "first:c", "second:a", "second:b", "second:c"]
    assert (parked[0] is None) == (anyio_backend == "trio")


async def test_append_nowait_stamps_an_owned_event_in_place_and_copies_the_others() -> None:
    log = sk.InMemoryEventLog()
    given = token("a")
    stored = log.append_nowait(given)
    assert stored is not None
    assert stored is not given
    assert (stored.seq, given.seq) == (1, None)
    fresh = token("b")
    assert log.append_nowait(fresh, owned=True) is fresh
    assert (fresh.seq, fresh.session_id) == (2, log.session_id)
    again = log.append_nowait(fresh, owned=True)  # stamped already: copied
    assert again is not None
    assert again is not fresh
    assert again.seq == 3
    assert [e.content for e in log.retained()] == ["a", "b", "b"]


async def test_append_nowait_declines_when_the_block_policy_would_wait() -> None:
    log = sk.InMemoryEventLog(max_lag=2, slow_consumer_policy="block")
    async with log.read(0) as cursor:
        assert log.append_nowait(token("0")) is not None
        await cursor.__anext__()
        taken = [log.append_nowait(token(str(i))) for i in range(1, 6)]
        assert taken[0] is not None
        assert taken[-1] is None, "the reader is max_lag behind: the producer would wait"
        kept = sum(e is not None for e in taken)
        assert log.last_seq == 1 + kept, "a declined event takes no seq"
        assert (await cursor.__anext__()).seq == 2  # the reader moves on: room again
        assert log.append_nowait(token("next")) is not None


async def test_the_base_class_append_nowait_takes_nothing() -> None:
    class Wrapper(sk.abc.EventLog):
        # A log whose appends go through another: the inherited append_nowait.
        def __init__(self, **limits: Any) -> None:
            self.inner = sk.InMemoryEventLog(**limits)

        session_id = property(lambda self: self.inner.session_id)
        last_seq = property(lambda self: self.inner.last_seq)
        oldest_seq = property(lambda self: self.inner.oldest_seq)
        is_closed = property(lambda self: self.inner.is_closed)

        async def append(self, event: sk.StreamEvent) -> sk.StreamEvent:
            return await self.inner.append(event)

        def read(self, after: int = 0) -> sk.abc.EventCursor:
            return self.inner.read(after)

        def retained(self) -> Any:
            return self.inner.retained()

        def statistics(self) -> sk.abc.LogStatistics:
            return self.inner.statistics()

        async def aclose(self) -> None:
            await self.inner.aclose()

    await check_event_log(Wrapper)  # the suite accepts a log that never takes one
    log = Wrapper()
    assert log.append_nowait(token("a")) is None
    assert log.last_seq == 0
    with pytest.raises(sk.ValidationError):
        log.append_nowait("a")  # type: ignore[arg-type]
    await log.aclose()
    with pytest.raises(sk.ClosedError):
        log.append_nowait(token("a"))


def mixed_events() -> list[sk.StreamEvent]:
    """Events of every shape a log keeps: flat, nested, custom, with cached JSON."""
    events = [
        sk.StreamEvent(event_type="start"),
        sk.StreamEvent(
            event_type="token", content="héllo ", metadata={"index": 0, "elapsed": 0.25}
        ),
        sk.StreamEvent(event_type="x-note", content="n", metadata={"flag": True, "none": None}),
        sk.StreamEvent(event_type="metadata", metadata={"a": 1, "b": "two", "c": 3.5}),
        sk.StreamEvent(event_type="metadata", metadata={"nested": {"a": [1, 2]}, "s": "x"}),
        sk.StreamEvent(event_type="heartbeat"),
    ]
    events[1].to_json()  # a cached JSON text is kept too
    return events


async def test_events_every_reader_passed_read_back_equal() -> None:
    # The log keeps events all its readers passed in a compact form; replays, the
    # retained view and late readers see events equal to those appended.
    log = sk.InMemoryEventLog()
    async with log.read() as live:
        stored = []
        for event in mixed_events():
            stored.append(await log.append(event))
            assert await live.__anext__() == stored[-1]
    stored.append(await log.append(sk.StreamEvent(event_type="complete")))
    assert list(log.retained()) == stored
    assert list(log.retained()[1:3]) == stored[1:3]
    assert [type(e.event_type) for e in log.retained()] == [type(e.event_type) for e in stored]
    assert log.retained()[1].to_json() == stored[1].to_json()
    async with log.read(1) as late:
        assert [e async for e in late] == stored[1:]
    async with log.read(0) as replay:
        first = await replay.__anext__()
        assert first == stored[0]
        assert replay.position == 1


async def test_a_long_history_adds_no_objects_the_garbage_collector_tracks() -> None:
    # A full collection walks every tracked object: a log of retained token events
    # (read by a live reader, or by none) must not make it walk each of them.
    import gc

    for with_reader in (False, True):
        log = sk.InMemoryEventLog()
        gc.collect()
        before = len(gc.get_objects())
        async with log.read() as cursor:
            for i in range(2000):
                event = sk.StreamEvent(event_type="token", content=f"{i} ", metadata={"index": i})
                await log.append(event)
                if with_reader:
                    assert (await cursor.__anext__()).content == f"{i} "
        gc.collect()
        assert len(gc.get_objects()) - before < 200
        assert len(log.retained()) == 2000


async def test_a_history_is_replayed_equal_whatever_its_events_hold() -> None:
    # Passed events are kept compactly (by one reader, by several, or by none); a
    # token whose metadata nests a mapping, a part and a final event with its stats
    # come back from a replay equal to what was appended.
    events = [
        sk.StreamEvent(event_type="token", content="a ", metadata={"index": 0, "elapsed": 0.5}),
        sk.StreamEvent(event_type="token", content="b ", metadata={"nested": {"k": [1, 2]}}),
        sk.StreamEvent.from_part(DataPart(name="chart", value={"x": [1, 2]})),
        sk.StreamEvent(event_type="x-app", metadata={"flag": True, "none": None, "s": "t"}),
        sk.StreamEvent(event_type="complete", metadata={"reason": "completed", "stats": {"n": 2}}),
    ]
    for readers in (0, 1, 3):
        log = sk.InMemoryEventLog()
        cursors = [log.read() for _ in range(readers)]
        stored = []
        for event in events:
            stored.append(await log.append(event))
            for cursor in cursors:
                assert await cursor.__anext__() == stored[-1]
        async with log.read() as replay:
            assert [event async for event in replay] == stored
        assert list(log.retained()) == stored
        for cursor in cursors:
            await cursor.aclose()


@pytest.mark.parametrize("outcome", ["completed", "error", "deadline"])
async def test_a_streams_final_event_is_charged_as_a_copy_of_it_would_be(outcome: str) -> None:
    # The streamer gives its final events their size beforehand; the log must charge
    # exactly what it charges for the same event built by the public constructor.
    async def source() -> AsyncIterator[str]:
        yield "hello "
        yield "world"
        if outcome == "error":
            raise RuntimeError("boom")
        if outcome == "deadline":
            await anyio.sleep_forever()

    config = sk.StreamConfig(
        stream_delay=0, max_stream_time=0.05 if outcome == "deadline" else None
    )
    with anyio.fail_after(5):
        events = [e async for e in sk.stream_tokens(source(), config)]
    final = events[-1]
    assert final.event_type == ("error" if outcome == "error" else "complete")
    if outcome != "error":
        assert final.metadata["reason"] == outcome
    copy = sk.StreamEvent(
        event_type=final.event_type,
        content=final.content,
        metadata=final.metadata,
        event_id=final.event_id,
        timestamp=final.timestamp,
    )
    sizes = []
    for event in (final, copy):
        log = sk.InMemoryEventLog()
        await log.append(event)
        sizes.append(log.statistics().retained_bytes)
    assert sizes[0] == sizes[1] > 0


async def test_a_reader_kept_up_whose_wait_is_cut_short_loses_nothing() -> None:
    # A reader that took the one new event it waited for waits for the next one on a
    # short path; a wait cut short there (a transport's own timeout) must leave its
    # position and the delivered count exact, and the next events still come in order.
    log = sk.InMemoryEventLog()
    cursor = log.read(0)
    log.append_nowait(token("a"))
    assert (await cursor.__anext__()).content == "a"
    for _ in range(2):
        with anyio.move_on_after(0.01):
            await cursor.__anext__()
        assert cursor.position == 1
    waiting: list[sk.StreamEvent] = []

    async def read_one() -> None:
        waiting.append(await cursor.__anext__())

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_one)
        await anyio.wait_all_tasks_blocked()
        log.append_nowait(token("b"))
    assert [e.content for e in waiting] == ["b"]
    log.append_nowait(token("c"))
    log.append_nowait(token("d"))
    assert [(await cursor.__anext__()).content for _ in range(2)] == ["c", "d"]
    assert cursor.position == 4
    await cursor.aclose()
    assert log.statistics().events_delivered == 4
    assert [e.content for e in log.retained()] == ["a", "b", "c", "d"]


async def test_a_reader_closed_while_it_waits_counts_each_event_once() -> None:
    # A reader kept up with the log waits for the next event still holding the one it
    # passed; closed by another task while it waits, that event is neither counted again
    # nor lost from its position, and the reader ends when the log closes.
    log = sk.InMemoryEventLog()
    cursor = log.read(0)
    log.append_nowait(token("a"))
    got: list[str] = []

    async def read() -> None:
        got.extend([event.content async for event in cursor])

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.wait_all_tasks_blocked()
        assert cursor.position == 1
        await cursor.aclose()
        assert cursor.position == 1
        log.close()
    assert got == ["a"]
    assert cursor.position == 1
    assert log.statistics().events_delivered == 1


async def test_a_waiting_reader_gets_each_of_several_quick_appends_in_order() -> None:
    # The first append wakes the waiting reader with that event; the ones appended
    # before it runs are read after it, in order, none twice.
    log = sk.InMemoryEventLog()
    cursor = log.read(0)
    got: list[str] = []

    async def read() -> None:
        async for event in cursor:
            got.append(event.content)
            if event.event_type == "complete":
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        log.append_nowait(token("a"))
        await anyio.wait_all_tasks_blocked()
        for text in "bcd":
            log.append_nowait(token(text))
        await anyio.wait_all_tasks_blocked()
        log.append_nowait(token("e"))
        log.append_nowait(sk.StreamEvent(event_type="complete"))
    assert got == ["a", "b", "c", "d", "e", ""]
    assert cursor.position == 6
    await cursor.aclose()
    assert log.statistics().events_delivered == 6
