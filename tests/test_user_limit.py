"""``max_sessions_per_user`` counts live sessions: ended ones kept for late readers do not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

import streamkit as sk

from .redis_server import redis_url_fixture

pytestmark = pytest.mark.anyio


async def _bound_counts_live_sessions(registry: sk.SessionRegistry) -> None:
    first = await registry.create(user_id="alice")
    second = await registry.create(user_id="alice")
    with pytest.raises(sk.SessionLimitExceeded, match="maximum of 2"):
        await registry.create(user_id="alice")
    # One of the two completes: it stays readable, but no longer counts.
    registry.start(first.session_id, ["done"], sk.StreamConfig(stream_delay=0))
    with anyio.fail_after(10):
        async with registry.subscribe(first.session_id, user_id="alice") as events:
            async for _ in events:
                pass
    ended = await registry.get(first.session_id, user_id="alice")
    assert ended.status is sk.SessionState.COMPLETED
    third = await registry.create(user_id="alice")
    with pytest.raises(sk.SessionLimitExceeded):
        await registry.create(user_id="alice")
    # A cancelled one frees its place too; removing it later frees nothing twice.
    await registry.cancel(second.session_id, user_id="alice")
    fourth = await registry.create(user_id="alice")
    await registry.close(second.session_id, user_id="alice")
    await registry.close(first.session_id, user_id="alice")
    with pytest.raises(sk.SessionLimitExceeded):
        await registry.create(user_id="alice")
    # Closing a live session frees its place.
    await registry.close(third.session_id, user_id="alice")
    await registry.create(user_id="alice")
    assert {s.session_id for s in await registry.list("alice")} >= {fourth.session_id}
    # Another user is counted apart.
    await registry.create(user_id="bob")


async def test_memory_bound_counts_live_sessions() -> None:
    config = sk.RegistryConfig(max_sessions_per_user=2, ended_session_ttl=300)
    async with sk.SessionRegistry(config) as registry:
        await _bound_counts_live_sessions(registry)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server for this module."""
    yield from redis_url_fixture(tmp_path_factory)


@pytest.fixture
async def redis_registry(redis_url: str) -> AsyncIterator[sk.SessionRegistry]:
    """A registry over a flushed Redis database."""
    import redis.asyncio as aredis

    from streamkit.backends.redis import RedisBackend

    client = aredis.Redis.from_url(redis_url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    config = sk.RegistryConfig(max_sessions_per_user=2, ended_session_ttl=300)
    async with sk.SessionRegistry(config, backend=RedisBackend(redis_url)) as registry:
        yield registry


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_bound_counts_live_sessions(redis_registry: sk.SessionRegistry) -> None:
    await _bound_counts_live_sessions(redis_registry)
