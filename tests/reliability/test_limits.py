"""Every bound of StreamApp over real HTTP: past it, its documented error, never growth.

Sessions (in total and per user), subscribers per session, event size, request body
size, and open event streams per user; the WebSocket bounds are in test_ws_input.py
and test_security.py.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import httpx
import pytest

import streamkit as sk
from streamkit import sse

from ..asgi_helpers import RawStream, publish, serve, token, wait_until
from .conftest import ALICE, BOB, create, creds, make_app

pytestmark = pytest.mark.anyio

AUTH_ALICE = {"Authorization": "Bearer token-alice"}


@pytest.mark.parametrize("limit", [1, 37])
async def test_max_sessions_is_exact_under_concurrent_creates(limit: int) -> None:
    app = make_app(registry_config=sk.RegistryConfig(max_sessions=limit, heartbeat_interval=None))
    attempts = 200
    with serve(app) as server:
        limits = httpx.Limits(max_connections=attempts, max_keepalive_connections=attempts)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            statuses: list[int] = []
            codes: list[str] = []

            async def attempt(i: int) -> None:
                user = ("alice", "bob", "carol")[i % 3]
                response = await client.post("/sessions", json={}, headers=creds(user))
                statuses.append(response.status_code)
                if response.status_code != 201:
                    codes.append(response.json()["error"]["code"])

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(attempts):
                        tg.start_soon(attempt, i)
            assert statuses.count(201) == limit
            assert statuses.count(429) == attempts - limit
            assert set(codes) == {"limit_exceeded"}

            async def count() -> int:
                return len(await app.registry.list())

            assert await server.call(count) == limit
            # A freed place is taken again by exactly one more create.
            mine = (await client.get("/sessions", headers=ALICE)).json()["sessions"]
            if mine:
                gone = await client.delete(f"/sessions/{mine[0]['session_id']}", headers=ALICE)
                assert gone.status_code == 204
                await create(client)
                response = await client.post("/sessions", json={}, headers=ALICE)
                assert response.status_code == 429


async def test_sessions_per_user() -> None:
    app = make_app(
        registry_config=sk.RegistryConfig(max_sessions_per_user=2, heartbeat_interval=None)
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = await create(client)
            await create(client)
            response = await client.post("/sessions", json={}, headers=ALICE)
            assert response.status_code == 429
            error = response.json()["error"]
            assert error["code"] == "limit_exceeded"
            assert "session_id" not in error
            await create(client, BOB)  # another user is not affected
            assert (await client.delete(f"/sessions/{first}", headers=ALICE)).status_code == 204
            await create(client)


async def test_subscribers_per_session() -> None:
    app = make_app(
        registry_config=sk.RegistryConfig(max_subscribers_per_session=2, heartbeat_interval=None)
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
            path = f"/sessions/{session_id}/events"
            async with RawStream.open(server.port, path, AUTH_ALICE) as one:
                assert one.status == 200
                async with RawStream.open(server.port, path, AUTH_ALICE) as two:
                    assert two.status == 200
                    response = await client.get(path, headers=ALICE)
                    assert response.status_code == 429
                    assert response.json()["error"]["code"] == "limit_exceeded"
                    # The refused reader took no place: both readers get every event.
                    await publish(server, app, session_id, token("a"))
                    for raw in (one, two):
                        data = b""
                        while b"data:" not in data:
                            chunk = await raw.chunk()
                            assert chunk is not None
                            data += chunk
                await wait_until(lambda: app.statistics()["streams_open"] == 1)
                async with RawStream.open(server.port, path, AUTH_ALICE) as three:
                    assert three.status == 200


async def test_event_size_bound() -> None:
    def big_agent(prompt: str) -> list[str]:
        return ["ok ", "x" * 5000]

    app = make_app(
        agent=big_agent,
        registry_config=sk.RegistryConfig(max_event_bytes=2000, heartbeat_interval=None),
        stream_config=sk.StreamConfig(stream_delay=0, chunk_size=1, heartbeat_interval=None),
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            # Published directly: refused with PayloadTooLarge (413), nothing appended.
            session_id = await create(client)
            with pytest.raises(sk.PayloadTooLarge) as caught:
                await publish(server, app, session_id, token("y" * 5000))
            assert caught.value.status_hint == 413
            await publish(
                server, app, session_id, token("fits"), sk.StreamEvent(event_type="complete")
            )
            events = await _read(client, session_id)
            assert [e.content for e in events if e.event_type == sk.EventType.TOKEN] == ["fits"]
            # Produced by an agent: the stream ends with an error event, it never grows
            # past the bound, and what was accepted before is kept.
            produced = await create(client, prompt="go")
            events = await _read(client, produced)
            tokens = [e.content for e in events if e.event_type == sk.EventType.TOKEN]
            assert tokens == ["ok "]
            assert events[-1].event_type == sk.EventType.ERROR
            assert events[-1].metadata["error_type"] == "PayloadTooLarge"
            assert all(len(e.to_json()) <= 2000 for e in events)
            status = (await client.get(f"/sessions/{produced}", headers=ALICE)).json()
            assert status["session"]["status"] == "error"


async def _read(client: httpx.AsyncClient, session_id: str) -> list[sk.StreamEvent]:
    async with client.stream("GET", f"/sessions/{session_id}/events", headers=ALICE) as response:
        assert response.status_code == 200
        return [e async for e in sse.aiter_events(response.aiter_bytes())]


async def test_connections_per_user() -> None:
    app = make_app(max_connections_per_user=3)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client, AsyncExitStack() as stack:
            session_id = await create(client)
            path = f"/sessions/{session_id}/events"
            streams: list[RawStream] = []
            for accept in ["text/event-stream", "application/x-ndjson", "text/event-stream"]:
                raw = await stack.enter_async_context(
                    RawStream.open(server.port, path, {**AUTH_ALICE, "Accept": accept})
                )
                assert raw.status == 200
                streams.append(raw)
            for accept in ["text/event-stream", "application/x-ndjson"]:
                response = await client.get(path, headers={**ALICE, "Accept": accept})
                assert response.status_code == 429
                error = response.json()["error"]
                assert error["code"] == "limit_exceeded"
                assert error["message"] == (
                    "a user may hold at most 3 open event streams and WebSockets"
                )
            assert app.statistics()["connections_refused"] == 2
            # HEAD answers what GET would (issue 19); requests that are not streams
            # are still served.
            assert (await client.head(path, headers=ALICE)).status_code == 429
            assert (await client.get(f"/sessions/{session_id}", headers=ALICE)).status_code == 200
            # Another user has a bound of their own.
            bobs = await create(client, BOB)
            async with RawStream.open(
                server.port, f"/sessions/{bobs}/events", {"Authorization": "Bearer token-bob"}
            ) as raw:
                assert raw.status == 200
            # The open streams still carry every event.
            await publish(server, app, session_id, token("z"))
            for raw in streams:
                data = b""
                while b"z" not in data:
                    chunk = await raw.chunk()
                    assert chunk is not None
                    data += chunk
            # Leaving frees a place.
            await stack.aclose()
            await wait_until(lambda: app.statistics()["streams_open"] == 0)
            async with RawStream.open(server.port, path, AUTH_ALICE) as raw:
                assert raw.status == 200


async def test_connections_are_counted_back_however_streams_end() -> None:
    app = make_app(max_connections_per_user=2, write_timeout=5)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            # Streams that end by the session ending, by the client leaving, by refusals.
            for _ in range(5):
                session_id = await create(client)
                path = f"/sessions/{session_id}/events"
                async with RawStream.open(server.port, path, AUTH_ALICE) as raw:
                    assert raw.status == 200
                async with RawStream.open(server.port, path, AUTH_ALICE) as raw:
                    assert raw.status == 200
                    await publish(
                        server, app, session_id, token("a"), sk.StreamEvent(event_type="complete")
                    )
                    while await raw.chunk() is not None:
                        pass
                response = await client.get(path, params={"after": "99"}, headers=ALICE)
                assert response.status_code == 400
                await wait_until(lambda: app.statistics()["streams_open"] == 0)
            session_id = await create(client)
            path = f"/sessions/{session_id}/events"
            async with (
                RawStream.open(server.port, path, AUTH_ALICE) as one,
                RawStream.open(server.port, path, AUTH_ALICE) as two,
            ):
                assert one.status == two.status == 200


async def test_options_are_checked() -> None:
    for bad in [0, -1, 1.5, "3", True]:
        with pytest.raises(sk.ValidationError) as caught:
            make_app(max_connections_per_user=bad)
        assert caught.value.field == "max_connections_per_user"
    make_app(max_connections_per_user=None)
