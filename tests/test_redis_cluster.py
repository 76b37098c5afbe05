"""Several workers sharing sessions over a real Redis Cluster (three masters, three replicas).

The multi-worker tests of ``test_redis_workers`` run here again, on the cluster; then
tests of what only a cluster has: sessions spread over the slots of every master, and a
master killed during a stream (its replica takes over).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import anyio
import pytest
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient

import streamkit as sk
from streamkit.backends.redis import RedisBackend

from .redis_server import CLUSTER, RedisCluster, redis_cluster_fixture
from .test_redis_workers import (
    _STREAM,
    _contiguous,
    _source,
    _text,
    _two,
    test_a_client_resumes_on_another_worker_with_exactly_the_missing_events,
    test_a_dead_owner_session_ends_with_an_error_and_is_removed,
    test_a_worker_that_lost_its_lease_stops_its_producer,
    test_an_ended_session_is_due_for_removal_after_ended_session_ttl,
    test_concurrent_ends_on_two_workers_give_one_final_event,
    test_fan_out_and_control_across_workers,
    test_killing_the_producing_process_ends_its_session,
    test_list_and_limits_are_shared,
    test_remote_publish_and_close,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

__all__ = [
    "test_a_client_resumes_on_another_worker_with_exactly_the_missing_events",
    "test_a_dead_owner_session_ends_with_an_error_and_is_removed",
    "test_a_worker_that_lost_its_lease_stops_its_producer",
    "test_an_ended_session_is_due_for_removal_after_ended_session_ttl",
    "test_concurrent_ends_on_two_workers_give_one_final_event",
    "test_fan_out_and_control_across_workers",
    "test_killing_the_producing_process_ends_its_session",
    "test_list_and_limits_are_shared",
    "test_remote_publish_and_close",
]


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client runs on asyncio only, so these tests do too."""
    return "asyncio"


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A six-node Redis Cluster for this module."""
    yield from redis_cluster_fixture(tmp_path_factory)


@pytest.fixture
def redis_url(redis_cluster: RedisCluster) -> str:
    """The URL the shared multi-worker tests use: a node of the cluster."""
    return CLUSTER + redis_cluster.url


def _log_key(prefix: str, sid: str) -> str:
    return f"{prefix}:{{{sid}}}:log"


def _node(observer: ClusterClient, key: str) -> ClusterNode:
    node = observer.get_node_from_key(key)
    assert node is not None
    return node


async def test_sessions_spread_over_the_slots_of_every_master(redis_cluster: RedisCluster) -> None:
    url = CLUSTER + redis_cluster.url
    observer = await ClusterClient.from_url(redis_cluster.url).initialize()
    try:
        async with _two(url, max_sessions=100) as (a, b):
            ids = [(await a.create()).session_id for _ in range(24)]
            prefix = a.backend.store._prefix  # type: ignore[attr-defined]
            masters = {_node(observer, _log_key(prefix, sid)).name for sid in ids}
            assert len(masters) == 3  # 24 random ids on 3 masters: all of them, but for 3e-4
            for sid in ids:
                a.start(sid, [f"{sid[:4]}{i} " for i in range(5)], _STREAM)
            with anyio.fail_after(20):
                for sid in ids:
                    events = [event async for event in b.subscribe(sid)]
                    assert _contiguous(events)
                    assert _text(events) == "".join(f"{sid[:4]}{i} " for i in range(5))
                    assert events[-1].event_type == sk.EventType.COMPLETE
    finally:
        await observer.aclose()


async def test_a_master_killed_mid_stream_loses_nothing_silently(
    redis_cluster: RedisCluster,
) -> None:
    url = CLUSTER + redis_cluster.url
    observer = await ClusterClient.from_url(redis_cluster.url).initialize()
    try:
        async with _two(url, lease_ttl=10.0) as (a, b):
            prefix = a.backend.store._prefix  # type: ignore[attr-defined]
            store_node = _node(observer, f"{{{prefix}}}:sessions")
            # A session whose log lives on another master than the session records.
            while True:
                sid = (await a.create()).session_id
                node = _node(observer, _log_key(prefix, sid))
                if node.name != store_node.name:
                    break
                await a.close(sid)
            send, receive = _source()
            a.start(sid, receive, _STREAM)
            got: list[sk.StreamEvent] = []
            with anyio.fail_after(60):
                async with b.subscribe(sid) as subscription:
                    for i in range(20):
                        await send.send(f"t{i} ")
                    async for event in subscription:
                        got.append(event)
                        if _text(got).endswith("t19 "):
                            break
                    redis_cluster.processes[int(node.port)].kill()  # SIGKILL the log's master
                    for i in range(20, 40):
                        await send.send(f"t{i} ")
                    await send.aclose()
                    got += [event async for event in subscription]
                # Whatever happened, a resume from the start on the other worker sees
                # every event or is told what is missing.
                replay: list[sk.StreamEvent] = []
                with contextlib.suppress(sk.HistoryGap):
                    replay = [event async for event in a.subscribe(sid)]
        final = got[-1]
        # Shown with ``pytest -s``: what this failover did (docs/scaling.md reports it).
        print(f"failover: {len(got)} events, final {final.event_type} {dict(final.metadata)}")
        assert _contiguous(got)
        assert final.is_final
        if final.event_type == sk.EventType.COMPLETE:
            # The replica had every write: nothing was lost.
            assert _text(got) == "".join(f"t{i} " for i in range(40))
            assert [e.seq for e in replay] == [e.seq for e in got]
        else:
            # The stream ended with an error event that names the failure.
            assert final.metadata["error_type"] == "BackendError"
            assert "lost" in str(final.metadata["message"]) or "unreachable" in str(
                final.metadata["message"]
            )
    finally:
        await observer.aclose()
        # The killed node comes back as a replica of the promoted one.
        for port, process in list(redis_cluster.processes.items()):
            if process.poll() is not None:
                redis_cluster.start(port)
        redis_cluster.wait_ok()


async def test_replicas_wait_for_a_replica_and_say_when_none_confirms(
    redis_cluster: RedisCluster,
) -> None:
    url = redis_cluster.url
    config = sk.RegistryConfig()
    observer = await ClusterClient.from_url(url).initialize()
    stopped: list[int] = []
    try:
        async with (
            RedisBackend(url, cluster=True, prefix="wait", replicas=1, replica_timeout=0.5) as a,
            RedisBackend(url, cluster=True, prefix="wait") as b,
            RedisBackend(url, cluster=True, prefix="wait", replicas=1, replica_timeout=10) as c,
        ):
            sid = "waited"
            writer = await a.make_log(sid, config)
            master = _node(observer, _log_key("wait", sid))
            node = aredis.Redis(host=master.host, port=int(master.port))
            try:
                before = (await node.info("commandstats")).get("cmdstat_wait", {"calls": 0})
                with anyio.fail_after(30):
                    for i in range(20):
                        await writer.append(sk.StreamEvent(event_type="token", content=f"{i} "))
                after = (await node.info("commandstats"))["cmdstat_wait"]
                replica_port = int((await node.info("replication"))["slave0"]["port"])
            finally:
                await node.aclose()
            assert after["calls"] > before["calls"]  # every round waited for the replica
            # The replica stops answering: the append is not confirmed, and says so.
            process = redis_cluster.processes[replica_port]
            process.send_signal(signal.SIGSTOP)
            stopped.append(replica_port)
            with anyio.fail_after(30), pytest.raises(sk.BackendError, match="did not confirm"):
                await writer.append(sk.StreamEvent(event_type="token", content="unconfirmed "))
            process.send_signal(signal.SIGCONT)
            stopped.clear()
            redis_cluster.wait_ok()
            # Nothing was lost silently: the unconfirmed event is on the master, after the
            # confirmed ones; a writer that waits again goes on after it.
            closer = await c.make_log(sid, config)
            with anyio.fail_after(30):
                await closer.append(sk.StreamEvent(event_type="complete"))
                async with (await b.make_log(sid, config)).read(0) as cursor:
                    events = [event async for event in cursor]
        assert _contiguous(events)
        assert _text(events) == "".join(f"{i} " for i in range(20)) + "unconfirmed "
        assert events[-1].event_type == sk.EventType.COMPLETE
    finally:
        for port in stopped:
            redis_cluster.processes[port].send_signal(signal.SIGCONT)
        await observer.aclose()
