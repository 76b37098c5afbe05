"""The Redis Streams event log against a real redis-server."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs
import pytest
import redis.asyncio as aredis

import streamkit as sk
from streamkit.backends import redis as redis_backend
from streamkit.backends.redis import RedisBackend, RedisEventLog
from streamkit.testing import check_event_log

from .redis_server import free_port, redis_url_fixture, start_redis, stop_redis

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

_ids = itertools.count()


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client runs on asyncio only, so these tests do too."""
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server for the whole test session."""
    yield from redis_url_fixture(tmp_path_factory)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aredis.Redis]:
    """A client on a flushed database."""
    redis = aredis.Redis.from_url(redis_url)
    await redis.flushall()
    try:
        yield redis
    finally:
        await redis.aclose()


def _sid() -> str:
    return f"s{next(_ids)}"


def _token(text: str) -> sk.StreamEvent:
    return sk.StreamEvent(event_type=sk.EventType.TOKEN, content=text)


async def test_conformance(client: aredis.Redis) -> None:
    def factory(**limits: Any) -> RedisEventLog:
        return RedisEventLog(client, _sid(), **limits)

    await check_event_log(factory)


async def test_conformance_through_an_entered_backend(redis_url: str) -> None:
    # Logs of an entered backend: group commit, append_nowait queueing, the follower.
    async with RedisBackend(redis_url, prefix=f"cf{next(_ids)}") as backend:

        def factory(**limits: Any) -> RedisEventLog:
            log = RedisEventLog(backend._client, _sid(), prefix=backend._prefix, **limits)
            log._appender = backend._appender
            log._follower = backend._follower
            return log

        await check_event_log(factory)


async def test_second_process_resumes_exactly_the_rest(redis_url: str, client: Any) -> None:
    other = aredis.Redis.from_url(redis_url)
    try:
        sid = _sid()
        writer = RedisEventLog(client, sid)
        reader = RedisEventLog(other, sid)
        for i in range(5):
            await writer.append(_token(str(i)))
        got: list[sk.StreamEvent] = []
        started = anyio.Event()

        async def follow() -> None:
            async with reader.read(3) as cursor:
                started.set()
                got.extend([event async for event in cursor])

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await started.wait()
                for i in range(5, 8):
                    await writer.append(_token(str(i)))
                await writer.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
        assert [e.seq for e in got] == [4, 5, 6, 7, 8, 9]
        assert [e.content for e in got[:-1]] == ["3", "4", "5", "6", "7"]
        assert got[-1].event_type == sk.EventType.COMPLETE
        assert all(e.session_id == sid for e in got)
        await reader.refresh()
        assert (reader.last_seq, reader.is_closed) == (9, True)
        with pytest.raises(sk.ClosedError):
            await reader.append(_token("late"))
    finally:
        await other.aclose()


async def test_appends_from_two_processes_interleave_without_gaps(
    redis_url: str, client: Any
) -> None:
    other = aredis.Redis.from_url(redis_url)
    try:
        sid = _sid()
        a = RedisEventLog(client, sid)
        b = RedisEventLog(other, sid)
        seqs = [(await (a if i % 2 else b).append(_token(str(i)))).seq for i in range(10)]
        assert seqs == list(range(1, 11))
        await b.aclose()
        async with a.read(0) as cursor:
            with anyio.fail_after(10):
                assert [e.content async for e in cursor] == [str(i) for i in range(10)]
    finally:
        await other.aclose()


async def test_unreachable_redis_raises_backend_error() -> None:
    dead = aredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        log = RedisEventLog(dead, _sid(), retry_for=0.2)
        with pytest.raises(sk.BackendError) as info:
            await log.append(_token("x"))
        assert info.value.__cause__ is not None
        with pytest.raises(sk.BackendError):
            async with log.read(0) as cursor:
                await cursor.__anext__()
    finally:
        await dead.aclose()


async def test_bad_arguments(client: aredis.Redis) -> None:
    with pytest.raises(sk.ValidationError):
        RedisEventLog(client, "")
    with pytest.raises(sk.ValidationError):
        RedisEventLog(client, _sid(), slow_consumer_policy="drop")  # type: ignore[arg-type]


def _backend(url: str, prefix: str) -> RedisBackend:
    return RedisBackend(url, prefix=prefix)


async def test_two_workers_share_sessions_limits_and_states(redis_url: str, client: Any) -> None:
    config = sk.RegistryConfig(max_sessions=4, max_sessions_per_user=2)
    prefix = f"p{next(_ids)}"
    async with (
        sk.SessionRegistry(config, backend=_backend(redis_url, prefix)) as a,
        sk.SessionRegistry(config, backend=_backend(redis_url, prefix)) as b,
    ):
        first = await a.create(user_id="ann")
        for i in range(6):
            await a.publish(first.session_id, _token(str(i)), user_id="ann")
        done = sk.StreamEvent(event_type=sk.EventType.COMPLETE)
        await a.publish(first.session_id, done, user_id="ann")
        # Worker B finds the record in the shared store and resumes the log after 2.
        record = await b.backend.store.get(first.session_id)
        assert record is not None
        assert record.status == sk.SessionState.COMPLETED
        log = await b.backend.make_log(first.session_id, config)
        assert (log.last_seq, log.is_closed) == (7, True)
        with anyio.fail_after(10):
            async with log.read(2) as cursor:
                rest = [event async for event in cursor]
        assert [e.seq for e in rest] == [3, 4, 5, 6, 7]
        assert [e.content for e in rest[:-1]] == ["2", "3", "4", "5"]
        # Per-user and total bounds hold across both workers; the per-user bound counts
        # live sessions only (ann's first one has completed).
        await b.create(user_id="ann")
        await a.create(user_id="ann")
        with pytest.raises(sk.SessionLimitExceeded):
            await a.create(user_id="ann")
        third = await b.create()
        with pytest.raises(sk.SessionLimitExceeded):
            await a.create(user_id="bob")
        assert await a.backend.store.count() == 4
        assert {s.session_id for s in await b.backend.store.list("ann")} == {
            first.session_id,
            *(s.session_id for s in await a.backend.store.list("ann")),
        }
        # A state change on B is visible on A; the table is enforced in Redis.
        await b.cancel(third.session_id)
        seen = await a.backend.store.get(third.session_id)
        assert seen is not None
        assert seen.status == sk.SessionState.CANCELLED
        with pytest.raises(sk.InvalidTransition):
            await a.backend.store.set_state(third.session_id, sk.SessionState.ACTIVE, now=1.0)
        with pytest.raises(sk.SessionNotFound):
            await a.backend.store.set_state("nope", sk.SessionState.ACTIVE, now=1.0)
        removed = await a.backend.store.remove(third.session_id)
        assert removed is not None
        assert await b.backend.store.get(third.session_id) is None
        assert await b.backend.store.remove(third.session_id) is None
        assert await b.backend.store.count() == 3


async def test_a_state_change_starts_from_the_record_another_worker_wrote(
    redis_url: str, client: Any
) -> None:
    # Worker A remembers the record it wrote and tries its compare-and-set without
    # reading; B's change in between must make A read it, not overwrite it.
    prefix = f"p{next(_ids)}"
    async with _backend(redis_url, prefix) as a, _backend(redis_url, prefix) as b:
        session = sk.StreamSession(session_id=_sid(), created_at=1.0)
        await a.store.add(session, max_sessions=5, max_sessions_per_user=None)
        _, paused = await a.store.set_state(session.session_id, sk.SessionState.PAUSED, now=2.0)
        before, _ = await b.store.set_state(session.session_id, sk.SessionState.ACTIVE, now=3.0)
        assert before == paused
        # A last wrote "paused"; Redis holds B's "active": A's move starts from that.
        before, after = await a.store.set_state(
            session.session_id, sk.SessionState.CANCELLED, now=4.0
        )
        assert before.status == sk.SessionState.ACTIVE
        assert after.status == sk.SessionState.CANCELLED
        # A move the remembered record forbids (paused -> paused) but Redis's allows.
        other = sk.StreamSession(session_id=_sid(), created_at=1.0)
        await a.store.add(other, max_sessions=5, max_sessions_per_user=None)
        await a.store.set_state(other.session_id, sk.SessionState.PAUSED, now=2.0)
        await b.store.set_state(other.session_id, sk.SessionState.ACTIVE, now=3.0)
        _, again = await a.store.set_state(other.session_id, sk.SessionState.PAUSED, now=4.0)
        assert again.status == sk.SessionState.PAUSED
        # The scripts go by their SHA1; a server that lost them (SCRIPT FLUSH, a
        # restart) gets their text again.
        await client.script_flush()
        _, resumed = await a.store.set_state(other.session_id, sk.SessionState.ACTIVE, now=5.0)
        assert resumed.status == sk.SessionState.ACTIVE
        record = await b.store.get(other.session_id)
        assert record == resumed


async def test_records_read_together_follow_changes_another_worker_made(
    redis_url: str, client: Any
) -> None:
    # get_many reads all records as one string and reuses a record it parsed when its
    # JSON has not changed: a change by another worker must still come through, a
    # newline in a record must not split it, and a missing record is None.
    prefix = f"p{next(_ids)}"
    async with _backend(redis_url, prefix) as a, _backend(redis_url, prefix) as b:
        odd = sk.StreamSession(
            session_id=_sid(), created_at=1.0, context={"note": "two\nlines \u2028 é"}
        )
        plain = sk.StreamSession(session_id=_sid(), created_at=1.0, user_id="u")
        for session in (odd, plain):
            await a.store.add(session, max_sessions=5, max_sessions_per_user=None)
        ids = [odd.session_id, "missing", plain.session_id]
        assert list(await a.store.get_many(ids)) == [odd, None, plain]
        assert list(await a.store.get_many(ids)) == [odd, None, plain]
        _, paused = await b.store.set_state(plain.session_id, sk.SessionState.PAUSED, now=2.0)
        assert list(await a.store.get_many(ids)) == [odd, None, paused]
        # A then moves it on from what it read (its compare-and-set holds).
        _, resumed = await a.store.set_state(plain.session_id, sk.SessionState.ACTIVE, now=3.0)
        assert list(await b.store.get_many(ids[2:])) == [resumed]
        await b.store.remove(odd.session_id)
        assert list(await a.store.get_many(ids)) == [None, None, resumed]
        # Leases: the one A holds renews; a removed or missing session's does not,
        # nor one that another worker holds.
        assert await a.renew_leases(ids) == {odd.session_id, "missing"}
        assert await b.renew_leases([plain.session_id]) == {plain.session_id}


async def test_a_burst_of_first_calls_on_a_fresh_redis_is_not_sent_twice(
    redis_url: str, client: Any
) -> None:
    # The scripts go by SHA1. Without them loaded when the backend is entered, a burst
    # of calls on a Redis that has not seen them (sessions starting or ending at once)
    # all answer NOSCRIPT and go again with the script's text.
    await client.script_flush()
    await client.config_resetstat()
    config = sk.RegistryConfig()
    async with _backend(redis_url, f"p{next(_ids)}") as backend:
        store = backend.store
        sessions = [sk.StreamSession(session_id=_sid(), created_at=1.0) for _ in range(20)]
        logs = [await backend.make_log(s.session_id, config) for s in sessions]

        async def one(session: sk.StreamSession, log: RedisEventLog) -> None:
            await store.add(session, max_sessions=100, max_sessions_per_user=None)
            await store.set_state(session.session_id, sk.SessionState.COMPLETED, now=2.0)
            await log.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))

        async with anyio.create_task_group() as tg:
            for session, log in zip(sessions, logs, strict=True):
                tg.start_soon(one, session, log)
        for session in sessions:
            record = await store.get(session.session_id)
            assert record is not None
            assert record.status == sk.SessionState.COMPLETED
    errors = await client.info("errorstats")
    assert "errorstat_NOSCRIPT" not in errors


async def test_readers_on_another_worker_read_on_after_redis_forgot_the_scripts(
    redis_url: str, client: Any
) -> None:
    # A cursor's query and the follower's live read go by SHA1 too: a Redis that lost
    # the scripts (SCRIPT FLUSH, a restart) gets their text again, and nothing is missed.
    config = sk.RegistryConfig()
    prefix = f"p{next(_ids)}"
    sid = _sid()
    await client.config_resetstat()
    async with _backend(redis_url, prefix) as a, _backend(redis_url, prefix) as b:
        writer = await a.make_log(sid, config)
        reader = await b.make_log(sid, config)
        for i in range(3):
            await writer.append(_token(str(i)))
        await client.script_flush()
        got: list[sk.StreamEvent] = []
        first = anyio.Event()

        async def follow() -> None:
            async with reader.read(0) as cursor:
                async for event in cursor:
                    got.append(event)
                    if len(got) == 3:
                        first.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await first.wait()
                await client.script_flush()
                for i in range(3, 6):
                    await writer.append(_token(str(i)))
                await writer.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
    assert [e.seq for e in got] == list(range(1, 8))
    assert [e.content for e in got[:-1]] == [str(i) for i in range(6)]
    assert got[-1].event_type == sk.EventType.COMPLETE
    errors = await client.info("errorstats")
    assert "errorstat_NOSCRIPT" in errors


async def test_lease_renewals_of_changing_numbers_of_sessions_keep_the_connection_in_step(
    redis_url: str, client: Any
) -> None:
    # The renewal script's arguments grow with the sessions renewed; its calls go by
    # SHA1 through the pipelined connection. A command written with the length of an
    # earlier call put the connection out of step: Redis read the rest as commands.
    await client.config_resetstat()
    async with _backend(redis_url, f"p{next(_ids)}") as backend:
        store = backend.store
        sessions = [sk.StreamSession(session_id=_sid(), created_at=1.0) for _ in range(3)]
        for session in sessions:
            await store.add(session, max_sessions=100, max_sessions_per_user=None)
        ids = [s.session_id for s in sessions]
        for count in (1, 3, 2, 3, 1):
            assert await backend.renew_leases(ids[:count]) == set()
            record = await store.get(ids[0])
            assert record is not None
            assert record.session_id == ids[0]
    errors = await client.info("errorstats")
    assert set(errors) <= {"errorstat_ERR"}  # redis-py's CLIENT SETINFO on an old Redis


async def test_events_of_every_shape_come_back_equal(client: aredis.Redis) -> None:
    # Readers decode the common shape by hand and the rest through from_json.
    events = [
        _token("plain"),
        sk.StreamEvent(event_type="token", content="é ☃ \U0001f600", metadata={"index": 1}),
        # ASCII JSON with escapes, and non-ASCII keys and values in the metadata.
        sk.StreamEvent(event_type="token", content='a\nb\t"c"\\ \x01', metadata={"k": "a\x7f"}),
        sk.StreamEvent(event_type="token", content="ascii", metadata={"ü": "ß", "n": 2.5}),
        sk.StreamEvent(event_type="x-app:note", content="custom", metadata={"a": "b"}),
        sk.StreamEvent(event_type="token", metadata={"nested": {"k": [1, 2.5, None]}}),
        sk.StreamEvent(event_type="token", content="t", timestamp=5, metadata={"f": True}),
        sk.StreamEvent(event_type="heartbeat", event_id="my-id"),
        sk.StreamEvent(event_type="complete", metadata={"reason": "done", "n": -3.25}),
    ]
    log = RedisEventLog(client, _sid())
    for event in events:
        await log.append(event)
    with anyio.fail_after(10):
        async with log.read(0) as cursor:
            got = [event async for event in cursor]
    assert got == [
        attrs.evolve(e, seq=i + 1, session_id=log.session_id) for i, e in enumerate(events)
    ]
    assert [type(e.timestamp) for e in got] == [type(e.timestamp) for e in events]
    assert list(log.retained()) == got
    # A number too large for a float is not a valid value: the reader says so.
    raw = '{"event_id":"e","event_type":"token","content":"","timestamp":1.0,'
    raw += '"metadata":{"x":1e999},"session_id":null,"seq":null}'
    await client.xadd(log._stream, {"e": raw}, id="99-0")
    cursor = log.read(len(events) - 1)
    with pytest.raises(sk.ValidationError), anyio.fail_after(10):
        await cursor.__anext__()
    await cursor.aclose()


async def test_awaited_appends_through_a_backend_store_every_shape_as_stored(
    redis_url: str, client: aredis.Redis
) -> None:
    # Through an entered backend an awaited append makes its stored copy first and cuts
    # the stored JSON from the copy's own: what it returns, what Redis holds (read by a
    # log of no backend) and what a reader gets must be the same events.
    events = [
        sk.StreamEvent(event_type="token", content="é ☃ \U0001f600", metadata={"index": 1}),
        sk.StreamEvent(event_type="token", content='a\nb\t"c"\\ \x01', metadata={"k": "a"}),
        sk.StreamEvent(event_type="token", content="ascii", metadata={"ü": "ß", "n": 2.5}),
        # An event stored elsewhere before: its seq and session id are replaced.
        sk.StreamEvent(event_type="x-app:note", content="c", seq=7, session_id="other"),
        sk.StreamEvent(event_type="complete", metadata={"reason": "done", "n": -3.25}),
    ]
    async with RedisBackend(redis_url, prefix=f"aw{next(_ids)}") as backend:
        log = await backend.make_log(_sid(), sk.RegistryConfig())
        stored = [await log.append(event) for event in events]
        want = [attrs.evolve(e, seq=i + 1, session_id=log.session_id) for i, e in enumerate(events)]
        assert stored == want
        assert [e.to_json() for e in stored] == [e.to_json() for e in want]
        with anyio.fail_after(10):
            async with log.read(0) as cursor:
                assert [event async for event in cursor] == want
        other = RedisEventLog(client, log.session_id, prefix=backend._prefix)
        with anyio.fail_after(10):
            async with other.read(0) as cursor:
                assert [event async for event in cursor] == want


async def test_store_refuses_a_duplicate_id(redis_url: str, client: Any) -> None:
    async with _backend(redis_url, f"p{next(_ids)}") as backend:
        session = sk.StreamSession(session_id=_sid(), created_at=1.0)
        await backend.store.add(session, max_sessions=5, max_sessions_per_user=None)
        with pytest.raises(sk.ValidationError):
            await backend.store.add(session, max_sessions=5, max_sessions_per_user=None)
        assert await backend.store.list() == [session]
        await backend.delete_log(session.session_id)


async def test_unreachable_backend_raises_backend_error() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(sk.BackendError):
        async with sk.SessionRegistry(sk.RegistryConfig(), backend=backend):
            pass


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused_clearly(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    with pytest.raises(sk.BackendError, match="asyncio only"):
        async with backend:
            pass


def test_bad_prefix() -> None:
    with pytest.raises(sk.ValidationError):
        RedisBackend(prefix="a{b}")


async def test_resume_after_a_redis_restart(tmp_path: Path) -> None:
    process, url = start_redis(tmp_path, appendonly=True)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    sid = _sid()
    got: list[sk.StreamEvent] = []
    try:
        redis = aredis.Redis.from_url(url)
        try:
            log = RedisEventLog(redis, sid)
            for i in range(5):
                await log.append(_token(str(i)))
            async with log.read(0) as cursor:
                with anyio.fail_after(10):
                    got.extend([await cursor.__anext__() for _ in range(3)])
                stop_redis(process)
                process, url = start_redis(tmp_path, port=port, appendonly=True)
            # The old connections died with the server: resume on a new client from
            # the last seq received (the producer, too, continues on a new client).
            again = aredis.Redis.from_url(url)
            try:
                resumed = RedisEventLog(again, sid)
                with anyio.fail_after(10):
                    await resumed.refresh()
                    assert resumed.last_seq == 5
                    await resumed.append(_token("5"))
                    await resumed.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
                    async with resumed.read(got[-1].seq or 0) as cursor:
                        got.extend([event async for event in cursor])
            finally:
                await again.aclose()
        finally:
            await redis.aclose()
    finally:
        stop_redis(process)
    assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6, 7]
    assert [e.content for e in got[:-1]] == ["0", "1", "2", "3", "4", "5"]


async def test_a_long_replay_is_not_a_lag(client: aredis.Redis) -> None:
    # Like the in-memory log: a reader may start as far behind as the log already is.
    log = RedisEventLog(client, _sid(), max_lag=4)
    for i in range(20):
        await log.append(_token(str(i)))
    with anyio.fail_after(10):
        async with log.read(0) as cursor:
            assert [(await cursor.__anext__()).seq for _ in range(20)] == list(range(1, 21))
        await log.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
        async with log.read(0) as cursor:
            assert len([event async for event in cursor]) == 21


class _LossyProxy:
    """A TCP proxy in front of redis-server that can drop one reply and the connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.drop_next_reply = False

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        server = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
        async with client, server, anyio.create_task_group() as tg:

            async def up() -> None:
                with contextlib.suppress(anyio.BrokenResourceError):
                    async for chunk in client:
                        await server.send(chunk)
                tg.cancel_scope.cancel()

            async def down() -> None:
                with contextlib.suppress(anyio.BrokenResourceError):
                    async for chunk in server:
                        if self.drop_next_reply:
                            self.drop_next_reply = False
                            break  # the command ran; its reply never arrives
                        await client.send(chunk)
                tg.cancel_scope.cancel()

            tg.start_soon(up)
            tg.start_soon(down)


async def test_an_append_whose_reply_is_lost_is_stored_once(redis_url: str, client: Any) -> None:
    proxy = _LossyProxy(int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]))
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        lossy = aredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            log = RedisEventLog(lossy, _sid(), retry_for=5.0)
            with anyio.fail_after(10):
                await log.append(_token("0"))
                proxy.drop_next_reply = True
                stored = await log.append(_token("1"))
                assert not proxy.drop_next_reply  # the reply was dropped, the call retried
                assert stored.seq == 2
                await log.append(_token("2"))
                await log.aclose()
                async with log.read(0) as cursor:
                    events = [event async for event in cursor]
            assert [(e.seq, e.content) for e in events] == [(1, "0"), (2, "1"), (3, "2")]
        finally:
            await lossy.aclose()
            tg.cancel_scope.cancel()


async def test_history_max_bytes_trims_the_stream(client: aredis.Redis) -> None:
    log = RedisEventLog(client, _sid(), history_max_bytes=1000)
    for i in range(50):
        await log.append(_token(f"{i:03d}" * 10))
    await log.aclose()
    assert 1 < 50 - log.oldest_seq + 1 < 50
    async with log.read(log.oldest_seq - 1) as cursor:
        kept = [event async for event in cursor]
    assert [e.seq for e in kept] == list(range(log.oldest_seq, 51))
    assert sum(len(e.to_json()) for e in kept) < 1000 + 50 * len(kept)  # JSON with seq, id
    with pytest.raises(sk.HistoryGap):
        async with log.read(0) as cursor:
            await cursor.__anext__()


async def test_enqueue_queues_events_that_readers_get_in_order(
    redis_url: str, client: aredis.Redis
) -> None:
    config = sk.RegistryConfig()
    async with RedisBackend(redis_url, prefix="nw") as a, RedisBackend(redis_url, prefix="nw") as b:
        sid = _sid()
        writer = await a.make_log(sid, config)
        reader = await b.make_log(sid, config)
        for i in range(50):
            writer.enqueue(_token(f"{i} "))
        await writer.flush()
        assert writer.last_seq == 50
        writer.enqueue(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
        with pytest.raises(sk.ClosedError):
            writer.enqueue(_token("late"))
        await writer.flush()
        with anyio.fail_after(10):
            async with reader.read(0) as cursor:
                events = [event async for event in cursor]
        assert [e.seq for e in events] == list(range(1, 52))
        assert "".join(e.content for e in events) == "".join(f"{i} " for i in range(50))
        # An event queued on a log that another writer closed meanwhile: the next call
        # of the log says so.
        other = _sid()
        first = await a.make_log(other, config)
        second = await b.make_log(other, config)
        await second.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
        first.enqueue(_token("x"))
        with pytest.raises(sk.ClosedError):
            await first.flush()
    with pytest.raises(sk.BackendError, match="entered RedisBackend"):
        RedisEventLog(client, _sid()).enqueue(_token("x"))


async def test_a_reader_behind_the_follower_s_few_entries_reads_the_rest_from_redis(
    redis_url: str,
) -> None:
    """Live readers on two workers; one pauses while 200 events come, then reads on.

    The follower keeps only the newest few entries of a stream: the paused readers
    (on the producing worker and on the other) get the rest from Redis, in order.
    """
    config = sk.RegistryConfig()
    async with RedisBackend(redis_url, prefix="fk") as a, RedisBackend(redis_url, prefix="fk") as b:
        sid = _sid()
        writer = await a.make_log(sid, config)
        remote = await b.make_log(sid, config)
        await writer.append(_token("0 "))
        got: dict[str, list[int]] = {"live": [], "paused local": [], "paused remote": []}
        paused = anyio.Event()
        go_on = anyio.Event()

        async def read(name: str, log: RedisEventLog) -> None:
            async with log.read(0) as cursor:
                async for event in cursor:
                    got[name].append(event.seq or 0)
                    if name != "live" and event.seq == 1:
                        paused.set()
                        await go_on.wait()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, "live", remote)
                tg.start_soon(read, "paused local", writer)
                tg.start_soon(read, "paused remote", remote)
                await paused.wait()
                for i in range(1, 201):
                    writer.enqueue(_token(f"{i} "))
                    if i % 10 == 0:
                        await writer.flush()  # many rounds, each fed to the followers
                await writer.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
                go_on.set()
    for name, seqs in got.items():
        assert seqs == list(range(1, 203)), name


async def test_lone_and_shared_readers_on_the_writing_worker_get_every_event_in_order(
    redis_url: str,
) -> None:
    """One-event rounds read by a lone reader and by two readers of one log.

    A log with one reader on this worker keeps only the newest fed entry, one with
    several keeps a few: a reader that pauses for three events reads the rest from the
    cache or from Redis, in order, either way.
    """
    config = sk.RegistryConfig()
    async with RedisBackend(redis_url, prefix=f"lr{next(_ids)}") as backend:
        alone = await backend.make_log(_sid(), config)
        shared = await backend.make_log(_sid(), config)
        got: dict[str, list[int]] = {"alone": [], "shared fast": [], "shared slow": []}
        ready = {name: anyio.Event() for name in got}
        paused = {name: anyio.Event() for name in got}
        go_on = anyio.Event()

        async def read(name: str, log: RedisEventLog) -> None:
            async with log.read(0) as cursor:
                ready[name].set()
                async for event in cursor:
                    got[name].append(event.seq or 0)
                    if name != "shared fast" and event.seq == 2:
                        paused[name].set()
                        await go_on.wait()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, "alone", alone)
                tg.start_soon(read, "shared fast", shared)
                tg.start_soon(read, "shared slow", shared)
                for event in ready.values():
                    await event.wait()
                for i in range(1, 3):
                    await alone.append(_token(f"{i} "))
                    await shared.append(_token(f"{i} "))
                await paused["alone"].wait()
                await paused["shared slow"].wait()
                for i in range(3, 6):  # one round each, while the paused readers wait
                    await alone.append(_token(f"{i} "))
                    await shared.append(_token(f"{i} "))
                go_on.set()
                for i in range(6, 9):
                    await alone.append(_token(f"{i} "))
                    await shared.append(_token(f"{i} "))
                await alone.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
                await shared.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
    for name, seqs in got.items():
        assert seqs == list(range(1, 10)), name


async def test_a_slow_stream_s_reader_on_its_worker_does_not_read_its_events_back(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream whose appends pause goes back into the follower's ``XREAD``.

    Its next append wakes that ``XREAD``, but the entry is this worker's own, which the
    append's reply already gave the follower: it is not read back from Redis (no
    script call, no JSON decoded). A slow stream is one whose appends pause longer
    than ``_LOCAL_QUIET`` (0.5 s): set to 0 here, every stream is one, with no waiting.
    """
    monkeypatch.setattr(redis_backend, "_LOCAL_QUIET", 0.0)
    config = sk.RegistryConfig()
    async with RedisBackend(redis_url, prefix="slow") as backend:
        follower = backend._follower
        assert follower is not None
        log = await backend.make_log(_sid(), config)
        got: list[sk.StreamEvent] = []
        arrived = anyio.Event()

        async def read() -> None:
            nonlocal arrived
            async with log.read(0) as cursor:
                async for event in cursor:
                    got.append(event)
                    arrived.set()

        sent = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                for i in range(20):
                    # One event at a time, each once the reader has the one before:
                    # the reader waits on the follower, its stream in the XREAD.
                    event = log.append_nowait(_token(f"{i} "), owned=True)
                    assert event is not None
                    sent.append(event)
                    await arrived.wait()
                    arrived = anyio.Event()
                await log.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
    assert [e.seq for e in got] == list(range(1, 22))
    assert all(a is b for a, b in zip(got, sent, strict=False))  # none decoded from Redis
    assert (follower.reads, follower.fetched) == (0, 0)


class _SeqReader:
    """Reads a log from its start in a task, noting each event's seq; waits for one."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.got: list[int] = []
        self._arrived = anyio.Event()

    async def read(self) -> None:
        async with self.log.read(0) as cursor:
            async for event in cursor:
                self.got.append(event.seq or 0)
                self._arrived.set()

    async def until(self, seq: int) -> None:
        """Wait until the reader has read up to ``seq``."""
        while not self.got or self.got[-1] < seq:
            await self._arrived.wait()
            self._arrived = anyio.Event()


async def test_a_live_reader_on_its_worker_gets_many_and_one_event_rounds_in_order(
    redis_url: str,
) -> None:
    # A round of many events, then rounds of one (the follower hands the next event
    # alone), then many again: the reader gets each event once, in order, under the
    # disconnect policy with a max_lag the largest round just fits.
    config = sk.RegistryConfig(max_lag=8, slow_consumer_policy="disconnect")
    async with RedisBackend(redis_url, prefix=f"mix{next(_ids)}") as backend:
        log = await backend.make_log(_sid(), config)
        reader = _SeqReader(log)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader.read)
                for rounds in ((8, 1, 1, 1), (5,), (1, 1)):
                    for size in rounds:
                        for i in range(size):  # one append round for them all
                            assert log.append_nowait(_token(f"{i} "), owned=True)
                        await log.flush()
                        await reader.until(log.last_seq)
                await log.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
    assert reader.got == list(range(1, 20))


async def test_a_log_under_a_non_ascii_prefix_is_read_live_and_from_history(
    redis_url: str,
) -> None:
    # The reads' keys and ids go to Redis as one ASCII text when they are: a prefix with
    # other characters goes byte by byte, and another worker reads the log both ways.
    config = sk.RegistryConfig()
    prefix = f"café☕{next(_ids)}"
    sid = _sid()
    async with (
        RedisBackend(redis_url, prefix=prefix) as a,
        RedisBackend(redis_url, prefix=prefix) as b,
    ):
        writer = await a.make_log(sid, config)
        for i in range(3):
            await writer.append(_token(str(i)))
        reader = _SeqReader(await b.make_log(sid, config))
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader.read)
                await reader.until(3)  # the history, read with the cursor's query
                for i in range(2):  # live, through b's follower
                    await writer.append(_token(str(i)))
                await writer.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
    assert reader.got == [1, 2, 3, 4, 5, 6]


async def test_a_hole_in_the_stream_is_reported_not_skipped(client: aredis.Redis) -> None:
    log = RedisEventLog(client, _sid())
    for i in range(4):
        await log.append(_token(str(i)))
    await log.aclose()
    # As if Redis had lost entry 2 (a failover to a replica that missed it).
    assert await client.xdel(log._stream, "2-0") == 1
    async with log.read(0) as cursor:
        assert (await cursor.__anext__()).seq == 1
        with pytest.raises(sk.HistoryGap) as gap:
            await cursor.__anext__()
    assert gap.value.oldest_seq == 3


async def test_replicas_with_no_replica_to_confirm_fail_the_append_clearly(
    redis_url: str, client: aredis.Redis
) -> None:
    # A lone redis-server has no replica: WAIT 1 times out, the append says so, and this
    # worker's readers are not given the unconfirmed event. With replicas=0 it works.
    config = sk.RegistryConfig()
    async with (
        RedisBackend(redis_url, prefix="wt", replicas=1, replica_timeout=0.05) as a,
        RedisBackend(redis_url, prefix="wt") as b,
    ):
        sid = _sid()
        writer = await a.make_log(sid, config)
        with pytest.raises(sk.BackendError, match=r"1 replica\(s\) did not confirm"):
            await writer.append(_token("unconfirmed"))
        # Stored on the master (a failover could lose it): a plain writer goes on after it.
        other = await b.make_log(sid, config)
        stored = await other.append(_token("later"))
        assert stored.seq == 2
    with pytest.raises(sk.ValidationError):
        RedisBackend(redis_url, replicas=-1)
    with pytest.raises(sk.ValidationError):
        RedisBackend(redis_url, replicas=1, replica_timeout=0)


async def test_a_final_event_after_a_failed_queued_append_ends_the_log_with_an_error(
    redis_url: str,
) -> None:
    config = sk.RegistryConfig()
    async with RedisBackend(redis_url, prefix=f"ff{next(_ids)}") as backend:
        log = await backend.make_log(_sid(), config)
        stored = log.append_nowait(_token("a"), owned=True)
        assert stored is not None
        assert stored.seq == 1
        await log.flush()
        # As if the next queued events had failed for good (Redis away past retry_for).
        log._failure = sk.BackendError("redis unreachable (gave up after 10 s)")
        with pytest.raises(sk.BackendError, match="unreachable"):
            await log.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
        with anyio.fail_after(10):
            async with log.read(0) as cursor:
                events = [event async for event in cursor]
    assert [e.seq for e in events] == [1, 2]
    assert events[-1].event_type == sk.EventType.ERROR
    assert "unreachable" in str(events[-1].metadata["message"])


async def test_calls_cancelled_in_flight_leave_the_shared_connection_in_step(
    redis_url: str,
) -> None:
    # An entered backend sends its store's commands and its appends through one
    # pipelined connection: the replies of calls cancelled while in flight are read and
    # dropped, so every later call still gets its own reply.
    config = sk.RegistryConfig(max_sessions=100)
    async with RedisBackend(redis_url, prefix=f"pp{next(_ids)}") as backend:
        store = backend.store
        sessions = [sk.StreamSession(session_id=_sid(), user_id=f"u{i}") for i in range(20)]
        for session in sessions:
            await store.add(session, max_sessions=100, max_sessions_per_user=None)
        logs = [await backend.make_log(s.session_id, config) for s in sessions]

        async def read_and_append(i: int) -> None:
            record = await store.get(sessions[i].session_id)
            assert record is not None
            assert record.user_id == f"u{i}"
            await logs[i].append(_token(f"t{i}"))

        for _ in range(3):
            async with anyio.create_task_group() as tg:
                for i in range(len(sessions)):
                    tg.start_soon(read_and_append, i)
                await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()  # most calls are queued or in flight
        # Every call now gets its own reply, in any order of tasks.
        async with anyio.create_task_group() as tg:
            for i in range(len(sessions)):
                tg.start_soon(read_and_append, i)
        for i, log in enumerate(logs):
            async with log.read(0) as cursor:
                seen: list[str] = []
                while len(seen) < log.last_seq:
                    seen.append((await cursor.__anext__()).content)
            assert seen
            assert set(seen) == {f"t{i}"}
