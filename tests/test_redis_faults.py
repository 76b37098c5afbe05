"""The Redis backend against a slow Redis, a full Redis and a Redis that lost its data."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
import redis.asyncio as aredis

import streamkit as sk

from .redis_server import free_port, start_redis, stop_redis
from .test_redis_workers import _STREAM, _contiguous, _source, _text, _worker

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

_prefixes = itertools.count()


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client runs on asyncio only, so these tests do too."""
    return "asyncio"


class _SlowProxy:
    """A TCP proxy in front of redis-server that holds every chunk ``delay`` seconds."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.requests = 0  # chunks sent to Redis: at least one per round trip

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        server = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
        async with client, server, anyio.create_task_group() as tg:

            async def pump(
                source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, up: bool
            ) -> None:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    async for chunk in source:
                        if up:
                            self.requests += 1
                        await anyio.sleep(self.delay)  # the fault injected: latency
                        await sink.send(chunk)
                tg.cancel_scope.cancel()

            tg.start_soon(pump, client, server, True)
            tg.start_soon(pump, server, client, False)


@contextlib.asynccontextmanager
async def _server(directory: Path) -> AsyncIterator[tuple[str, int]]:
    process, url = start_redis(directory)
    try:
        yield url, int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    finally:
        stop_redis(process)


async def test_a_slow_redis_delays_but_loses_nothing_and_batches_the_appends(
    tmp_path: Path,
) -> None:
    sessions, tokens = 20, 10
    async with _server(tmp_path) as (_, port), anyio.create_task_group() as proxy_tasks:
        proxy = _SlowProxy(port, delay=0.01)
        proxy_port = await proxy_tasks.start(proxy.serve)
        url = f"redis://127.0.0.1:{proxy_port}/0"
        async with _worker(url, f"f{next(_prefixes)}", lease_ttl=5.0, max_sessions=50) as a:
            ids = [(await a.create()).session_id for _ in range(sessions)]
            got: dict[str, list[sk.StreamEvent]] = {}
            ready = [anyio.Event() for _ in ids]

            async def read(i: int, sid: str) -> None:
                async with a.subscribe(sid) as subscription:
                    ready[i].set()
                    got[sid] = [event async for event in subscription]

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i, sid in enumerate(ids):
                        tg.start_soon(read, i, sid)
                    for event in ready:
                        await event.wait()
                    before = proxy.requests
                    for sid in ids:
                        a.start(sid, [f"{sid[:3]}{k} " for k in range(tokens)], _STREAM)
            sent = proxy.requests - before
        proxy_tasks.cancel_scope.cancel()
    for sid in ids:
        assert _contiguous(got[sid])
        assert _text(got[sid]) == "".join(f"{sid[:3]}{k} " for k in range(tokens))
        assert got[sid][-1].event_type == sk.EventType.COMPLETE
    # Every session's events (start, tokens, complete) and its state changes went to
    # Redis in fewer requests than there were events: the appends travelled together.
    assert sent < sessions * (tokens + 2)


async def test_a_full_redis_refuses_writes_clearly_and_the_worker_carries_on(
    tmp_path: Path,
) -> None:
    async with _server(tmp_path) as (url, _):
        admin = aredis.Redis.from_url(url)
        try:
            async with _worker(url, f"f{next(_prefixes)}", lease_ttl=5.0) as a:
                streaming = (await a.create()).session_id
                other = (await a.create()).session_id
                send, receive = _source()
                a.start(streaming, receive, _STREAM)
                with send, anyio.fail_after(20):
                    async with a.subscribe(streaming) as subscription:
                        await send.send("before ")
                        first = [await subscription.__anext__(), await subscription.__anext__()]
                        assert _text(first) == "before "
                        await admin.config_set("maxmemory-policy", "noeviction")
                        await admin.config_set("maxmemory", 1)  # full: every write refused
                        with pytest.raises(sk.BackendError, match="Redis is full"):
                            await a.publish(
                                other, sk.StreamEvent(event_type=sk.EventType.TOKEN, content="x")
                            )
                        with pytest.raises(sk.BackendError, match="Redis is full"):
                            await a.create()
                        # Reads still work.
                        assert (await a.get(streaming)).status == sk.SessionState.ACTIVE
                        await admin.config_set("maxmemory", 0)  # room again
                        await send.send("after ")
                        await send.aclose()
                        rest = [event async for event in subscription]
                stored = await a.publish(
                    other, sk.StreamEvent(event_type=sk.EventType.TOKEN, content="x")
                )
                assert stored.seq == 1
        finally:
            await admin.aclose()
    events = first + rest
    assert _contiguous(events)
    assert _text(events) == "before after "
    assert events[-1].event_type == sk.EventType.COMPLETE


async def test_a_redis_restarted_without_its_data_ends_streams_with_an_error(
    tmp_path: Path,
) -> None:
    port = free_port()
    process, url = start_redis(tmp_path, port=port)
    try:
        prefix = f"f{next(_prefixes)}"
        async with _worker(url, prefix, lease_ttl=5.0) as a, _worker(url, prefix) as b:
            sid = (await a.create()).session_id
            send, receive = _source()
            a.start(sid, receive, _STREAM)
            with send, anyio.fail_after(30):
                async with a.subscribe(sid) as subscription:
                    for i in range(5):
                        await send.send(f"t{i} ")
                    got: list[sk.StreamEvent] = []
                    async for event in subscription:
                        got.append(event)
                        if _text(got) == "t0 t1 t2 t3 t4 ":
                            break
                    stop_redis(process)
                    process, _ = start_redis(tmp_path, port=port)  # empty: no persistence
                    await send.send("t5 ")
                    got += [event async for event in subscription]
                # Whoever resumes from before the loss is told events are missing.
                log = await b.backend.make_log(sid, b.config)
                with pytest.raises(sk.HistoryGap):
                    async with log.read(0) as cursor:
                        await cursor.__anext__()
                # The worker carries on with new sessions.
                fresh = (await a.create()).session_id
                a.start(fresh, ["new "], _STREAM)
                assert _text([event async for event in a.subscribe(fresh)]) == "new "
    finally:
        stop_redis(process)
    assert _contiguous(got)
    assert _text(got) == "t0 t1 t2 t3 t4 "  # t5 was never stored
    final = got[-1]
    assert final.event_type == sk.EventType.ERROR
    assert final.metadata["error_type"] == "BackendError"
    assert "Redis lost events" in str(final.metadata["message"])


@pytest.mark.parametrize("loss", ["restart", "flushall"])
async def test_readers_of_a_quiet_session_learn_that_redis_lost_its_data(
    tmp_path: Path, loss: str
) -> None:
    # The producer appends nothing after the loss: no append can find it out. A restart
    # breaks the connections: the readers read the log again and find its counter
    # behind what they had. A FLUSHALL breaks nothing: the followers of both workers,
    # which check the logs their readers wait on every second, find it.
    port = free_port()
    process, url = start_redis(tmp_path, port=port)
    try:
        prefix = f"f{next(_prefixes)}"
        async with _worker(url, prefix, lease_ttl=5.0) as a, _worker(url, prefix) as b:
            sid = (await a.create()).session_id
            send, receive = _source()
            a.start(sid, receive, _STREAM)
            got: dict[str, list[sk.StreamEvent]] = {"a": [], "b": []}
            caught_up = {"a": anyio.Event(), "b": anyio.Event()}

            async def read(name: str, registry: sk.SessionRegistry) -> None:
                async with registry.subscribe(sid) as subscription:
                    async for event in subscription:
                        got[name].append(event)
                        if _text(got[name]) == "t0 t1 t2 ":
                            caught_up[name].set()

            with send, anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read, "a", a)
                    tg.start_soon(read, "b", b)
                    for i in range(3):
                        await send.send(f"t{i} ")
                    await caught_up["a"].wait()
                    await caught_up["b"].wait()
                    if loss == "restart":
                        stop_redis(process)
                        process, _ = start_redis(tmp_path, port=port)  # empty
                    else:
                        admin = aredis.Redis.from_url(url)
                        await admin.flushall()
                        await admin.aclose()
                # Both readers ended (the task group returned) with the error event.
    finally:
        stop_redis(process)
    for events in got.values():
        assert _contiguous(events)
        assert _text(events) == "t0 t1 t2 "
        final = events[-1]
        assert final.event_type == sk.EventType.ERROR
        assert final.seq == 5  # start, three tokens, then the error
        assert final.metadata["error_type"] == "BackendError"
        assert "Redis lost events" in str(final.metadata["message"])
