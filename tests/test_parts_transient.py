"""``DataPart(transient=True)``: delivered to live readers, never kept in a log.

The log stores a ``heartbeat`` stand-in at the part's ``seq`` (so the sequence has no
hole), and hands the part itself to the readers that were reading when it came; a
resume or a replay gets the stand-in. On the memory backend (both anyio backends) and
on Redis (asyncio only: redis-py), where readers in the writer's process get the part
and readers in other workers the stand-in.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import streamkit as sk
from streamkit import InMemoryEventLog
from streamkit.parts import DataPart

from .redis_server import redis_url_fixture

pytestmark = pytest.mark.anyio

PROGRESS = DataPart(name="progress", value={"done": 0.5}, transient=True)
KEPT = DataPart(name="result", value={"ok": True})
_ids = itertools.count()


class Source:
    """Text, then (once a reader has the first token) a transient part and the rest."""

    def __init__(self) -> None:
        self.gate = anyio.Event()

    async def __call__(self) -> AsyncIterator[Any]:
        yield "before "
        await self.gate.wait()
        yield PROGRESS
        yield KEPT
        yield "after"


async def live_and_replayed(
    registry: sk.SessionRegistry,
) -> tuple[list[sk.StreamEvent], list[sk.StreamEvent]]:
    source = Source()
    session = await registry.create()
    registry.start(session.session_id, source(), sk.StreamConfig(chunk_size=1))
    live: list[sk.StreamEvent] = []
    with anyio.fail_after(10):
        async with registry.subscribe(session.session_id) as subscription:
            async for event in subscription:
                live.append(event)
                if event.event_type == "token":
                    source.gate.set()
        replayed = [e async for e in registry.subscribe(session.session_id)]
    return live, replayed


def check(live: list[sk.StreamEvent], replayed: list[sk.StreamEvent]) -> None:
    # The same seqs, no hole, in both.
    assert [e.seq for e in live] == list(range(1, len(live) + 1))
    assert [e.seq for e in replayed] == [e.seq for e in live]
    parts = [e.part for e in live if e.part is not None]
    assert parts == [PROGRESS, KEPT]
    # The replay has the stand-in where the live reader had the part.
    at = next(i for i, e in enumerate(live) if e.part == PROGRESS)
    standin = replayed[at]
    assert standin.event_type == "heartbeat"
    assert standin.metadata == {"transient": "data-progress"}
    assert standin.seq == live[at].seq
    assert [e.part for e in replayed if e.part is not None] == [KEPT]
    assert "".join(e.content for e in replayed) == "before after"
    # Everything else is the same.
    others = [i for i in range(len(live)) if i != at]
    assert [live[i].to_dict() for i in others] == [replayed[i].to_dict() for i in others]


async def test_memory_live_readers_get_it_replays_do_not() -> None:
    async with sk.SessionRegistry() as registry:
        live, replayed = await live_and_replayed(registry)
    check(live, replayed)


async def test_memory_log_keeps_only_the_standin() -> None:
    log = InMemoryEventLog("s1")
    event = sk.StreamEvent(event_type="part", metadata={"part": PROGRESS.to_dict()})
    stored = log.append_nowait(event)
    assert stored is not None
    assert stored.event_type == "heartbeat"
    assert stored.seq == 1
    assert [e.event_type for e in log.retained()] == ["heartbeat"]
    stored = await log.append(event)
    assert (stored.event_type, stored.seq) == ("heartbeat", 2)
    # A non-transient data part is kept as it is.
    kept = await log.append(sk.StreamEvent(event_type="part", metadata={"part": KEPT.to_dict()}))
    assert kept.part == KEPT


async def test_memory_a_too_large_transient_part_is_refused() -> None:
    log = InMemoryEventLog("s1", max_event_bytes=500)
    big = DataPart(name="blob", value="x" * 2000, transient=True)
    event = sk.StreamEvent(event_type="part", metadata={"part": big.to_dict()})
    with pytest.raises(sk.PayloadTooLarge):
        log.append_nowait(event)
    assert log.last_seq == 0


async def test_memory_lagging_reader_still_gets_it() -> None:
    log = InMemoryEventLog("s1")
    cursor = log.read(0)
    await log.append(sk.StreamEvent(event_type="token", content="a"))
    first = await cursor.__anext__()
    assert first.content == "a"
    event = sk.StreamEvent(event_type="part", metadata={"part": PROGRESS.to_dict()})
    for _ in range(3):
        await log.append(sk.StreamEvent(event_type="token", content="b"))
    await log.append(event)
    log.close()
    rest = [e async for e in cursor]
    assert [e.part for e in rest if e.part is not None] == [PROGRESS]
    later = [e async for e in log.read(0)]
    assert [e.event_type for e in later] == ["token", "token", "token", "token", "heartbeat"]


# -- Redis ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from redis_url_fixture(tmp_path_factory)


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_live_readers_get_it_replays_do_not(redis_url: str) -> None:
    from streamkit.backends.redis import RedisBackend

    backend = RedisBackend(redis_url, prefix=f"tr{next(_ids)}")
    async with sk.SessionRegistry(sk.RegistryConfig(), backend=backend) as registry:
        live, replayed = await live_and_replayed(registry)
    check(live, replayed)


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_other_workers_get_the_standin(redis_url: str) -> None:
    from streamkit.backends.redis import RedisBackend

    prefix = f"tr{next(_ids)}"
    config = sk.RegistryConfig()
    async with (
        sk.SessionRegistry(config, backend=RedisBackend(redis_url, prefix=prefix)) as a,
        sk.SessionRegistry(config, backend=RedisBackend(redis_url, prefix=prefix)) as b,
    ):
        source = Source()
        session = await a.create()
        a.start(session.session_id, source(), sk.StreamConfig(chunk_size=1))
        here: list[sk.StreamEvent] = []
        there: list[sk.StreamEvent] = []
        with anyio.fail_after(10):
            async with (
                a.subscribe(session.session_id) as mine,
                b.subscribe(session.session_id) as theirs,
            ):
                first = await mine.__anext__()
                here.append(first)
                while True:
                    event = await theirs.__anext__()
                    there.append(event)
                    if event.event_type == "token":
                        break
                while not [e for e in here if e.event_type == "token"]:
                    here.append(await mine.__anext__())
                source.gate.set()
                here += [e async for e in mine]
                there += [e async for e in theirs]
    assert [e.part for e in here if e.part is not None] == [PROGRESS, KEPT]
    assert [e.part for e in there if e.part is not None] == [KEPT]
    assert [e.seq for e in there] == [e.seq for e in here]
