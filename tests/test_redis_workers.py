"""Several workers sharing sessions over one real redis-server.

Each ``SessionRegistry`` with its own ``RedisBackend`` is one worker; one test runs a
worker in a second process (``tests/redis_worker.py``) and kills it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aredis
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.asyncio.cluster import RedisCluster

import streamkit as sk
from streamkit._coordinator import SharedCoordinator
from streamkit.backends.redis import RedisBackend

from .redis_server import CLUSTER, redis_url_fixture, start_redis, stop_redis

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

_prefixes = itertools.count()
_STREAM = sk.StreamConfig(chunk_size=1, stream_delay=0, heartbeat_interval=None)
_WORKER = Path(__file__).with_name("redis_worker.py")


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client runs on asyncio only, so these tests do too."""
    return "asyncio"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server for this module."""
    yield from redis_url_fixture(tmp_path_factory)


def _backend(url: str, prefix: str, **options: Any) -> RedisBackend:
    """A backend on ``url``; ``cluster+redis://...`` is a node of a Redis Cluster."""
    cluster = url.startswith(CLUSTER)
    return RedisBackend(url.removeprefix(CLUSTER), prefix=prefix, cluster=cluster, **options)


def _observer(url: str) -> Any:
    """A plain redis-py client on ``url`` (a cluster client for a cluster)."""
    if url.startswith(CLUSTER):
        return RedisCluster.from_url(url.removeprefix(CLUSTER))
    return aredis.Redis.from_url(url)


def _worker(url: str, prefix: str, lease_ttl: float = 2.0, **config: Any) -> sk.SessionRegistry:
    # Leases long enough that a loaded machine (shared CI runners) does not lose them.
    settings: dict[str, Any] = {"heartbeat_interval": None, "cleanup_interval": 0.1, **config}
    backend = _backend(url, prefix, lease_ttl=lease_ttl, retry_for=10.0)
    return sk.SessionRegistry(sk.RegistryConfig(**settings), backend=backend)


@contextlib.asynccontextmanager
async def _two(
    url: str, lease_ttl: float = 2.0, **config: Any
) -> AsyncIterator[tuple[sk.SessionRegistry, sk.SessionRegistry]]:
    prefix = f"w{next(_prefixes)}"
    async with (
        _worker(url, prefix, lease_ttl, **config) as a,
        _worker(url, prefix, lease_ttl, **config) as b,
    ):
        yield a, b


def _source() -> tuple[MemoryObjectSendStream[str], MemoryObjectReceiveStream[str]]:
    return anyio.create_memory_object_stream[str](1000)


def _text(events: list[sk.StreamEvent]) -> str:
    return "".join(e.content for e in events if e.event_type == sk.EventType.TOKEN)


def _contiguous(events: list[sk.StreamEvent]) -> bool:
    return [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_client_resumes_on_another_worker_with_exactly_the_missing_events(
    redis_url: str,
) -> None:
    async with _two(redis_url) as (a, b):
        sid = (await a.create(user_id="ann")).session_id
        send, receive = _source()
        a.start(sid, receive, _STREAM)
        first: list[sk.StreamEvent] = []
        with anyio.fail_after(10):
            async with a.subscribe(sid, user_id="ann") as subscription:
                for i in range(5):
                    await send.send(f"t{i} ")
                async for event in subscription:
                    first.append(event)
                    if "t4" in _text(first):
                        break
            for i in range(5, 10):
                await send.send(f"t{i} ")
            await send.aclose()
            with pytest.raises(sk.PermissionDenied):
                async with b.subscribe(sid, user_id="bob"):
                    pass
            rest = [e async for e in b.subscribe(sid, user_id="ann", after=first[-1].seq or 0)]
        assert _contiguous(first + rest)
        assert _text(first + rest) == "".join(f"t{i} " for i in range(10))
        assert [e.event_type for e in rest].count(sk.EventType.COMPLETE) == 1
        assert rest[-1].event_type == sk.EventType.COMPLETE
        # B reads the shared record and log: state and retained events.
        seen = await b.get(sid, user_id="ann")
        assert seen.status == sk.SessionState.COMPLETED
        assert [e.seq for e in seen.events] == [e.seq for e in first + rest]
        stats = await b.session_statistics(sid, user_id="ann")
        assert stats.log.last_seq == len(first + rest)


async def test_fan_out_and_control_across_workers(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with _two(redis_url) as (a, b):
        sid = (await a.create()).session_id
        send, receive = _source()
        paused, resumed, cancelled = anyio.Event(), anyio.Event(), anyio.Event()

        def on_state(_: sk.StreamSession, after: sk.StreamSession) -> None:
            {
                sk.SessionState.PAUSED: paused,
                sk.SessionState.ACTIVE: resumed,
                sk.SessionState.CANCELLED: cancelled,
            }[after.status].set()

        a.on("state_changed", on_state)  # A's producer learns of B's calls by itself
        a.start(sid, receive, _STREAM)
        results: dict[int, list[sk.StreamEvent]] = {}
        ready = [anyio.Event() for _ in range(6)]

        async def read(i: int) -> None:
            async with (a, b)[i % 2].subscribe(sid) as subscription:
                ready[i].set()
                results[i] = [event async for event in subscription]

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(read, i)
                for event in ready:
                    await event.wait()
                for i in range(20):
                    await send.send(f"t{i} ")
                await b.pause(sid)
                await paused.wait()
                await b.resume(sid)
                await resumed.wait()
                await b.cancel(sid)
                await cancelled.wait()
            send.close()
            while a.statistics().producers:  # the producer task unwinds after the cancel
                await anyio.sleep(0.01)
        first = results[0]
        assert _contiguous(first)
        assert all(
            [(e.seq, e.event_type, e.content) for e in result]
            == [(e.seq, e.event_type, e.content) for e in first]
            for result in results.values()
        )
        finals = [e for e in first if e.is_final]
        assert len(finals) == 1
        assert finals[0].metadata["reason"] == "cancelled"
        assert a.statistics().by_state["cancelled"] == 1
        assert (await a.get(sid)).status == sk.SessionState.CANCELLED
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        with pytest.raises(sk.InvalidTransition):
            await a.cancel(sid)
        with pytest.raises(sk.ClosedError):
            await b.publish(sid, sk.StreamEvent(event_type=sk.EventType.TOKEN, content="late"))


async def test_remote_publish_and_close(redis_url: str) -> None:
    async with _two(redis_url) as (a, b):
        sid = (await a.create(user_id="ann")).session_id
        stored = await b.publish(
            sid, sk.StreamEvent(event_type=sk.EventType.TOKEN, content="hi"), user_id="ann"
        )
        assert stored.seq == 1
        done = await b.publish(sid, sk.StreamEvent(event_type=sk.EventType.COMPLETE), user_id="ann")
        assert done.seq == 2
        assert (await a.get(sid, user_id="ann")).status == sk.SessionState.COMPLETED
        await b.close(sid, user_id="ann")
        with pytest.raises(sk.SessionNotFound):
            await a.get(sid, user_id="ann")
        assert a.statistics().sessions == 0


async def test_a_subscription_iterating_its_redis_cursor_ends_and_fails_cleanly(
    redis_url: str,
) -> None:
    # The subscription iterates the Redis cursor itself (the cursor reports its end
    # or failure to it): a reader that falls behind is disconnected and counted, one
    # that reads to the final event leaves; either way the subscription is closed.
    async with _two(redis_url, max_lag=5) as (a, b):
        sid = (await a.create()).session_id
        await a.publish(sid, sk.StreamEvent(event_type=sk.EventType.TOKEN, content="0"))
        with anyio.fail_after(10):
            async with b.subscribe(sid) as subscription:
                first = await subscription.__anext__()
                assert first.seq == 1
                for i in range(20):
                    await a.publish(
                        sid, sk.StreamEvent(event_type=sk.EventType.TOKEN, content=f"{i}")
                    )
                with pytest.raises(sk.SubscriberLagged) as lagged:
                    async for _ in subscription:
                        pass
                assert lagged.value.after >= 1
                assert b.statistics().subscribers_lagged == 1
                assert b.statistics().subscribers == 0
                with pytest.raises(StopAsyncIteration):
                    await subscription.__anext__()  # closed: nothing more
            await a.publish(sid, sk.StreamEvent(event_type=sk.EventType.COMPLETE))
            async with b.subscribe(sid, after=21) as subscription:
                got = [event async for event in subscription]
            assert [e.event_type for e in got] == [sk.EventType.COMPLETE]
            assert b.statistics().subscribers == 0


async def test_close_removes_a_remote_session_whose_cached_copy_was_let_go(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cleanup sweep drops a worker's idle copies of other workers' sessions, and it
    # may do so during any await of a close: the close removes the session all the same.
    async with _two(redis_url) as (a, b):
        sid = (await a.create(user_id="ann")).session_id
        await b.publish(sid, sk.StreamEvent(event_type=sk.EventType.COMPLETE), user_id="ann")
        monkeypatch.setattr(SharedCoordinator, "forget_remote", lambda self, entry: False)
        await b.close(sid, user_id="ann")
        with pytest.raises(sk.SessionNotFound):
            await a.get(sid, user_id="ann")
        with pytest.raises(sk.SessionNotFound):
            await b.close(sid, user_id="ann")


async def test_list_and_limits_are_shared(redis_url: str) -> None:
    async with _two(redis_url, max_sessions=5, max_sessions_per_user=3) as (a, b):
        outcomes: list[str] = []

        async def create(registry: sk.SessionRegistry, user: str) -> None:
            try:
                await registry.create(user_id=user)
            except sk.SessionLimitExceeded:
                outcomes.append("refused")
            else:
                outcomes.append("created")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(create, (a, b)[i % 2], ("ann", "bob")[i % 3 == 0])
        assert outcomes.count("created") == 5
        everyone = await b.list()
        assert len(everyone) == 5
        assert {s.session_id for s in everyone} == {s.session_id for s in await a.list()}
        # Which user got the five places depends on the order the creates ran in;
        # the per-user bound holds whatever it was.
        ann, bob = len(await a.list("ann")), len(await b.list("bob"))
        assert ann <= 3
        assert ann + bob == 5


async def test_a_dead_owner_session_ends_with_an_error_and_is_removed(redis_url: str) -> None:
    prefix = f"w{next(_prefixes)}"
    config = sk.RegistryConfig(heartbeat_interval=None)
    async with (
        _backend(redis_url, prefix, lease_ttl=0.3) as dead,
        _worker(redis_url, prefix, ended_session_ttl=0.1) as b,
    ):
        # A worker that created a session, appended, and then stopped renewing.
        session = sk.StreamSession(created_at=1.0)
        await dead.store.add(session, max_sessions=10, max_sessions_per_user=None)
        log = await dead.make_log(session.session_id, config)
        for i in range(3):
            await log.append(sk.StreamEvent(event_type=sk.EventType.TOKEN, content=str(i)))
        with anyio.fail_after(10):
            events = [event async for event in b.subscribe(session.session_id)]
            assert [e.seq for e in events] == [1, 2, 3, 4]
            assert events[-1].event_type == sk.EventType.ERROR
            assert events[-1].metadata["error_type"] == "ProducerLost"
            record = await dead.store.get(session.session_id)
            assert record is not None
            assert record.status == sk.SessionState.ERROR
            # The ended record is removed by a sweep after ended_session_ttl.
            while await dead.store.get(session.session_id) is not None:
                await anyio.sleep(0.02)
        with pytest.raises(sk.SessionNotFound):
            await b.get(session.session_id)


async def test_killing_the_producing_process_ends_its_session(redis_url: str) -> None:
    prefix = f"w{next(_prefixes)}"
    process = await anyio.open_process([sys.executable, str(_WORKER), redis_url, prefix])
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(20):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        sid = line.decode().strip()
        async with _worker(redis_url, prefix) as b:
            got: list[sk.StreamEvent] = []
            with anyio.fail_after(20):
                async with b.subscribe(sid) as subscription:
                    async for event in subscription:
                        got.append(event)
                        if len(got) == 10:
                            process.kill()  # SIGKILL: no goodbye, the lease just expires
                assert (await b.get(sid)).status == sk.SessionState.ERROR
        assert _contiguous(got)
        assert len(got) > 10
        assert got[-1].event_type == sk.EventType.ERROR
        assert got[-1].metadata["error_type"] == "ProducerLost"
        assert sum(e.is_final for e in got) == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.aclose()


async def test_a_redis_restart_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="streamkit.redis")
    server: subprocess.Popen[bytes] | None
    server, url = start_redis(tmp_path, appendonly=True)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        async with _two(url, lease_ttl=10.0) as (a, b):
            sid = (await a.create()).session_id
            send, receive = _source()
            a.start(sid, receive, _STREAM)
            got: list[sk.StreamEvent] = []
            restarted = False
            with anyio.fail_after(30):
                async with b.subscribe(sid) as subscription:
                    for i in range(20):
                        await send.send(f"t{i} ")
                    async for event in subscription:
                        got.append(event)
                        if "t9" in _text(got) and server is not None and not restarted:
                            restarted = True
                            await anyio.to_thread.run_sync(stop_redis, server)
                            server = None
                            for i in range(20, 40):
                                await send.send(f"t{i} ")
                            server, _ = await anyio.to_thread.run_sync(
                                lambda: start_redis(tmp_path, port=port, appendonly=True)
                            )
                            for i in range(40, 60):
                                await send.send(f"t{i} ")
                            await send.aclose()
        assert _contiguous(got)
        assert _text(got) == "".join(f"t{i} " for i in range(60))
        assert got[-1].event_type == sk.EventType.COMPLETE
        # The outage was real: calls failed and were retried.
        assert any("retrying" in record.getMessage() for record in caplog.records)
    finally:
        if server is not None:
            stop_redis(server)


async def test_many_subscribers_share_few_connections(redis_url: str) -> None:
    async with _two(redis_url) as (a, b):
        sid = (await a.create()).session_id
        send, receive = _source()
        a.start(sid, receive, _STREAM)
        ready = [anyio.Event() for _ in range(100)]
        counts: list[int] = []

        async def read(i: int) -> None:
            async with b.subscribe(sid) as subscription:
                first = await subscription.__anext__()  # the start event
                assert first.seq == 1
                ready[i].set()
                counts.append(1 + len([event async for event in subscription]))

        observer = aredis.Redis.from_url(redis_url)
        try:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for i in range(100):
                        tg.start_soon(read, i)
                    for event in ready:
                        await event.wait()
                    # Wait (on another process: redis-server) for the follower to block.
                    blocked: list[Any] = []
                    while not blocked:
                        clients = await observer.client_list()
                        blocked = [c for c in clients if "b" in c["flags"]]
                        await anyio.sleep(0.01)
                    for i in range(10):
                        await send.send(f"t{i} ")
                    await send.aclose()
        finally:
            await observer.aclose()
        # 100 waiting subscribers, one blocking XREAD (worker B's follower); the two
        # workers' pools stay within max_connections (32 each) plus this observer.
        assert len(blocked) == 1
        assert blocked[0]["cmd"] == "xread"
        assert len(clients) <= 2 * 32 + 1
        assert len(set(counts)) == 1
        assert len(counts) == 100


async def test_a_worker_that_lost_its_lease_stops_its_producer(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A lease long enough not to expire by itself on a loaded machine before the test
    # deletes it (the renewal that notices the loss comes within lease_ttl / 3).
    async with _two(redis_url, lease_ttl=6.0) as (a, b):
        sid = (await a.create()).session_id
        send, receive = _source()
        a.start(sid, receive, _STREAM)
        with send, anyio.fail_after(15):
            async with b.subscribe(sid) as subscription:
                await send.send("t0 ")
                assert (await subscription.__anext__()).event_type == sk.EventType.START
                # As if A had stalled past its lease: the lease is gone.
                prefix = a.backend.store._prefix  # type: ignore[attr-defined]
                observer = _observer(redis_url)
                try:
                    assert await observer.delete(f"{{{prefix}}}:lease:{sid}") == 1
                finally:
                    await observer.aclose()
                rest = [event async for event in subscription]
            while a.statistics().producers:
                await anyio.sleep(0.01)
        assert [e.event_type for e in rest if e.is_final] == [sk.EventType.ERROR]
        assert rest[-1].metadata["error_type"] == "ProducerLost"
        assert (await a.get(sid)).status == sk.SessionState.ERROR
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_concurrent_ends_on_two_workers_give_one_final_event(redis_url: str) -> None:
    async with _two(redis_url) as (a, b):
        for _ in range(5):
            sid = (await a.create()).session_id
            outcomes: list[str] = []

            async def cancel(
                registry: sk.SessionRegistry, sid: str = sid, outcomes: list[str] = outcomes
            ) -> None:
                try:
                    await registry.cancel(sid)
                except sk.InvalidTransition:
                    outcomes.append("refused")
                else:
                    outcomes.append("cancelled")

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel, a)
                    tg.start_soon(cancel, b)
                events = [event async for event in b.subscribe(sid)]
            assert sorted(outcomes) == ["cancelled", "refused"]
            assert [e.is_final for e in events] == [True]
            assert (await a.get(sid)).status == (await b.get(sid)).status


async def test_sessions_ending_together_each_end_once_in_shared_calls(redis_url: str) -> None:
    # Sessions ending in the same turn share one compare-and-set call; each of them still
    # ends exactly once when both workers end all of them at the same time.
    async with _two(redis_url) as (a, b):
        ids = [(await a.create()).session_id for _ in range(30)]
        outcomes: dict[str, list[str]] = {sid: [] for sid in ids}

        async def cancel(registry: sk.SessionRegistry, sid: str) -> None:
            try:
                await registry.cancel(sid)
            except (sk.InvalidTransition, sk.ClosedError):
                outcomes[sid].append("refused")
            else:
                outcomes[sid].append("cancelled")

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for sid in ids:
                    tg.start_soon(cancel, a, sid)
                    tg.start_soon(cancel, b, sid)
            for sid in ids:
                assert sorted(outcomes[sid]) == ["cancelled", "refused"]
                events = [event async for event in b.subscribe(sid)]
                assert [e.is_final for e in events] == [True]
                assert (await a.get(sid)).status == sk.SessionState.CANCELLED


async def test_an_ended_session_is_due_for_removal_after_ended_session_ttl(
    redis_url: str,
) -> None:
    # A ttl long enough that the ending compare-and-set schedules the removal itself.
    prefix = f"w{next(_prefixes)}"
    observer = _observer(redis_url)

    async def server_ms() -> float:
        seconds, micros = await observer.time()
        return float(seconds * 1000 + micros / 1000)

    try:
        async with (
            _worker(redis_url, prefix, ended_session_ttl=120) as a,
            _worker(redis_url, prefix, ended_session_ttl=120) as b,
        ):
            for _ in range(3):
                sid = (await a.create()).session_id
                before = await server_ms()
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        for registry in (a, b):
                            tg.start_soon(_cancel_quietly, registry, sid)
                    events = [event async for event in b.subscribe(sid)]
                after = await server_ms()
                assert [e.is_final for e in events] == [True]
                due = await observer.zscore(f"{{{prefix}}}:ended", sid)
                assert due is not None
                assert before + 120_000 - 1 <= due <= after + 120_000 + 1
                # Not before: no sweep claims it, the record stays readable.
                assert sid not in await a.backend.claim_removals(100)
                assert (await b.get(sid)).status == sk.SessionState.CANCELLED
    finally:
        await observer.aclose()


async def _cancel_quietly(registry: sk.SessionRegistry, sid: str) -> None:
    with contextlib.suppress(sk.InvalidTransition):
        await registry.cancel(sid)


async def test_remote_subscribers_get_heartbeats_and_the_shutdown_event(redis_url: str) -> None:
    prefix = f"w{next(_prefixes)}"
    created: list[str] = []
    made, stop = anyio.Event(), anyio.Event()

    async def worker_a() -> None:
        async with _worker(redis_url, prefix) as a:
            created.append((await a.create()).session_id)
            made.set()
            await stop.wait()
        # Leaving A's block ended its live sessions: B's reader gets the end.

    got: list[sk.StreamEvent] = []
    async with _worker(redis_url, prefix, heartbeat_interval=0.05) as b:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker_a)
                await made.wait()
                async with b.subscribe(created[0]) as subscription:
                    got.append(await subscription.__anext__())  # B's heartbeat
                    stop.set()
                    got.extend([event async for event in subscription])
    assert got[0].event_type == sk.EventType.HEARTBEAT
    assert got[-1].event_type == sk.EventType.COMPLETE
    assert got[-1].metadata["reason"] == "shutdown"
    assert _contiguous(got)
