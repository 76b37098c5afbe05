"""A streamkit worker process for the Redis tests: ``python tests/redis_worker.py URL PREFIX``.

It makes a registry over a RedisBackend (lease 0.5 s), creates one session, starts a
producer that emits a token every 20 ms for ever, prints the session id on stdout and
runs until it is killed.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import anyio

import streamkit as sk
from streamkit.backends.redis import RedisBackend


async def _tokens() -> AsyncIterator[str]:
    i = 0
    while True:
        yield f"t{i} "
        i += 1
        await anyio.sleep(0.02)


async def main(url: str, prefix: str) -> None:
    """Run one producing session until killed."""
    cluster = url.startswith("cluster+")  # a node of a Redis Cluster (see redis_server.py)
    backend = RedisBackend(
        url.removeprefix("cluster+"), prefix=prefix, lease_ttl=0.5, cluster=cluster
    )
    config = sk.RegistryConfig(heartbeat_interval=None)
    async with sk.SessionRegistry(config, backend=backend) as registry:
        session = await registry.create()
        stream = sk.StreamConfig(chunk_size=1, stream_delay=0, heartbeat_interval=None)
        registry.start(session.session_id, _tokens(), stream)
        print(session.session_id, flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], backend="asyncio")
