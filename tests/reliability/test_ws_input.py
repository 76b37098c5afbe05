"""Bad WebSocket input and WebSocket bounds against StreamApp under uvicorn.

Every bad message gets a typed ``error`` reply, the connection stays open and its
subscriptions keep every event. Runs on asyncio only: the ``websockets`` client has no
Trio flavour (the server side is backend-neutral and covered on Trio over HTTP).
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

import streamkit as sk

from ..asgi_helpers import RawStream, publish, serve, token, wait_until
from .conftest import ALICE, BOB, create, make_app

if TYPE_CHECKING:
    from collections.abc import Iterator

    from streamkit.asgi import StreamApp

    from ..asgi_helpers import ServerThread

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only (see the module docstring)."""
    return "asyncio"


@pytest.fixture(scope="module")
def app() -> StreamApp:
    return make_app(max_ws_subscriptions=3)


@pytest.fixture(scope="module")
def server(app: StreamApp) -> Iterator[ServerThread]:
    with serve(app) as running:
        yield running


async def receive(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(10):
        message = json.loads(await ws.recv())
    assert isinstance(message, dict)
    return message


async def request(ws: ClientConnection, message: str | bytes) -> dict[str, Any]:
    await ws.send(message)
    return await receive(ws)


BAD_MESSAGES: list[tuple[str | bytes, str, str | None]] = [
    ("{", "invalid", None),
    ("", "invalid", None),
    ("[]", "invalid", "message"),
    ('"ping"', "invalid", "message"),
    ("null", "invalid", "message"),
    ('{"type": "ping"} extra', "invalid", None),
    ('{"type": NaN}', "invalid", None),
    ("[" * 5000 + "]" * 5000, "too_large", "message"),
    ("[" * 400 + "]" * 400, "invalid", None),
    ("{}", "invalid", "type"),
    ('{"type": 1}', "invalid", "type"),
    ('{"type": "publish", "session_id": "x"}', "invalid", "type"),
    ('{"type": "PING"}', "invalid", "type"),
    ('{"type": "ping", "extra": 1}', "invalid", "extra"),
    ('{"type": "subscribe"}', "invalid", "session_id"),
    ('{"type": "subscribe", "session_id": 5}', "invalid", "session_id"),
    ('{"type": "subscribe", "session_id": "a b"}', "invalid", "session_id"),
    ('{"type": "subscribe", "session_id": "x\\r\\ny"}', "invalid", "session_id"),
    ('{"type": "subscribe", "session_id": "abc", "after": -1}', "invalid", "after"),
    ('{"type": "subscribe", "session_id": "abc", "after": "1"}', "invalid", "after"),
    ('{"type": "subscribe", "session_id": "abc", "after": 1.5}', "invalid", "after"),
    ('{"type": "subscribe", "session_id": "abc", "after": true}', "invalid", "after"),
    ('{"type": "ping", "request_id": [1]}', "invalid", "request_id"),
    ('{"type": "ping", "request_id": 1e300}', "invalid", "request_id"),
    ('{"type": "ping", "request_id": 9007199254740993}', "invalid", "request_id"),
    ('{"type": "ping", "request_id": "' + "r" * 129 + '"}', "invalid", "request_id"),
    ('{"type": "unsubscribe", "session_id": "never"}', "invalid", "session_id"),
    ('{"type": "pause", "session_id": "nosuchsession"}', "not_found", None),
    ('{"type": "ping", "pad": "' + "p" * 2000 + '"}', "too_large", "message"),
    ("é" * 600, "too_large", "message"),  # 600 characters, 1200 bytes
    (b"\x00\x01binary", "protocol_error", None),
    (b"{}", "protocol_error", None),
]


async def test_bad_messages_keep_the_connection_and_its_events(
    server: ServerThread, app: StreamApp
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        session_id = await create(client)
    async with connect(f"{server.ws_url}/sessions/{session_id}/ws", additional_headers=ALICE) as ws:
        assert (await receive(ws))["type"] == "subscribed"
        seen: list[int] = []
        for i, (message, code, field) in enumerate(BAD_MESSAGES):
            await publish(server, app, session_id, token(str(i)))
            reply = await request(ws, message)
            # Events and the error may come in either order: the event is never lost.
            while reply["type"] == "event":
                seen.append(reply["event"]["seq"])
                reply = await receive(ws)
            assert reply["type"] == "error", (message, reply)
            assert reply["code"] == code, (message, reply)
            assert reply["message"]
            if field is not None:
                assert reply.get("field") == field, (message, reply)
        await publish(server, app, session_id, sk.StreamEvent(event_type="complete"))
        while True:
            reply = await receive(ws)
            if reply["type"] == "unsubscribed":
                break
            assert reply["type"] == "event"
            seen.append(reply["event"]["seq"])
        assert seen == list(range(1, len(BAD_MESSAGES) + 2))
        assert reply["reason"] == "ended"
        # Still served after all of that.
        pong = await request(ws, json.dumps({"type": "ping", "request_id": "last"}))
        assert pong == {"type": "pong", "request_id": "last"}


async def test_request_id_is_echoed_on_errors(server: ServerThread) -> None:
    async with connect(f"{server.ws_url}/ws", additional_headers=ALICE) as ws:
        reply = await request(ws, json.dumps({"type": "pause", "request_id": 7}))
        assert reply["request_id"] == 7
        assert reply["field"] == "session_id"
        reply = await request(
            ws, json.dumps({"type": "nope", "request_id": "r1", "session_id": "x"})
        )
        assert (reply["code"], reply["request_id"]) == ("invalid", "r1")


async def test_subscriptions_per_connection(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        ids = [await create(client) for _ in range(5)]
    async with connect(f"{server.ws_url}/ws", additional_headers=ALICE) as ws:
        for session_id in ids[:3]:
            reply = await request(ws, json.dumps({"type": "subscribe", "session_id": session_id}))
            assert reply["type"] == "subscribed"
        reply = await request(ws, json.dumps({"type": "subscribe", "session_id": ids[3]}))
        assert (reply["type"], reply["code"]) == ("error", "limit_exceeded")
        assert "3 subscriptions" in reply["message"]
        reply = await request(ws, json.dumps({"type": "subscribe", "session_id": ids[0]}))
        assert (reply["code"], reply["field"]) == ("invalid", "session_id")
        reply = await request(ws, json.dumps({"type": "unsubscribe", "session_id": ids[0]}))
        assert reply["type"] == "unsubscribed"
        reply = await request(ws, json.dumps({"type": "subscribe", "session_id": ids[4]}))
        assert reply["type"] == "subscribed"


async def test_protocol_level_oversize_message_closes_only_that_connection(
    server: ServerThread,
) -> None:
    # Past the server's own frame limit (uvicorn: 16 MiB) the server closes with 1009;
    # below it, the app's max_ws_message_bytes answers with an error message.
    async with connect(f"{server.ws_url}/ws", additional_headers=ALICE) as other:
        async with connect(f"{server.ws_url}/ws", additional_headers=ALICE, max_size=None) as ws:
            await ws.send("x" * (17 * 1024 * 1024))
            with anyio.fail_after(10):
                await ws.wait_closed()
            assert ws.close_code == 1009
        assert (await request(other, json.dumps({"type": "ping"})))["type"] == "pong"


async def test_connections_per_user_counts_websockets_and_streams() -> None:
    app = make_app(max_connections_per_user=2)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
            path = f"/sessions/{session_id}/events"
            async with (
                connect(f"{server.ws_url}/ws", additional_headers=ALICE) as ws,
                RawStream.open(server.port, path, {"Authorization": "Bearer token-alice"}) as raw,
            ):
                assert raw.status == 200
                for url in [f"{server.ws_url}/ws", f"{server.ws_url}/sessions/{session_id}/ws"]:
                    with pytest.raises(InvalidStatus) as caught:
                        async with connect(url, additional_headers=ALICE):
                            pass
                    response = caught.value.response
                    assert response.status_code == 429
                    assert response.body is not None
                    assert json.loads(response.body)["error"]["code"] == "limit_exceeded"
                refused = await client.get(path, headers=ALICE)
                assert refused.status_code == 429
                async with connect(f"{server.ws_url}/ws", additional_headers=BOB) as bob:
                    assert (await request(bob, json.dumps({"type": "ping"})))["type"] == "pong"
                assert (await request(ws, json.dumps({"type": "ping"})))["type"] == "pong"
            await wait_until(
                lambda: (
                    app.statistics()["websockets_open"] == 0
                    and app.statistics()["streams_open"] == 0
                )
            )
            async with connect(f"{server.ws_url}/ws", additional_headers=ALICE) as ws:
                assert (await request(ws, json.dumps({"type": "ping"})))["type"] == "pong"
            assert app.statistics()["connections_refused"] == 3


async def test_websocket_that_stops_reading_is_dropped_by_the_write_deadline() -> None:
    app = make_app(
        write_timeout=0.3,
        registry_config=sk.RegistryConfig(
            history_max_bytes=64 * 1024 * 1024, max_lag=100_000, heartbeat_interval=None
        ),
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            async with connect(
                f"{server.ws_url}/sessions/{session_id}/ws",
                additional_headers=ALICE,
                sock=sock,
                max_queue=1,
                max_size=None,
                compression=None,
                close_timeout=0.5,
            ) as stuck:
                assert (await receive(stuck))["type"] == "subscribed"
                await wait_until(lambda: app.statistics()["websockets_open"] == 1)
                big = "w" * (256 * 1024)
                await publish(server, app, session_id, *(token(big) for _ in range(64)))
                # Dropped: the app's connection ends while the client still holds it.
                await wait_until(lambda: app.statistics()["websockets_open"] == 0)
            # The session is untouched and others still read all of it.
            await publish(server, app, session_id, sk.StreamEvent(event_type="complete"))
            async with connect(
                f"{server.ws_url}/sessions/{session_id}/ws",
                additional_headers=ALICE,
                max_size=None,
            ) as ws:
                seqs = []
                while (message := await receive(ws))["type"] != "unsubscribed":
                    if message["type"] == "event":
                        seqs.append(message["event"]["seq"])
                assert seqs == list(range(1, 66))


async def test_resume_points_are_checked_as_over_http() -> None:
    app = make_app(registry_config=sk.RegistryConfig(history_max_events=3, heartbeat_interval=None))
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
        await publish(server, app, session_id, *(token(str(i)) for i in range(5)))
        async with connect(f"{server.ws_url}/ws", additional_headers=ALICE) as ws:
            # Past the last event: refused, never a subscription that skips events.
            for after in [6, 999, 2**62]:
                reply = await request(
                    ws, json.dumps({"type": "subscribe", "session_id": session_id, "after": after})
                )
                assert (reply["type"], reply["code"], reply["field"]) == (
                    "error",
                    "invalid",
                    "after",
                )
            # Before the oldest retained event (3): the gap is said, with where to resume.
            reply = await request(
                ws, json.dumps({"type": "subscribe", "session_id": session_id, "after": 1})
            )
            assert (reply["code"], reply["oldest_seq"]) == ("history_gap", 3)
            # The refusals took no subscription place; a valid point is served.
            reply = await request(
                ws, json.dumps({"type": "subscribe", "session_id": session_id, "after": 4})
            )
            assert reply == {"type": "subscribed", "session_id": session_id, "after": 4}
            await publish(server, app, session_id, sk.StreamEvent(event_type="complete"))
            assert (await receive(ws))["event"]["seq"] == 5
            assert (await receive(ws))["event"]["seq"] == 6
        for point, status in [("7", 400), ("1", 410)]:
            with pytest.raises(InvalidStatus) as caught:
                async with connect(
                    f"{server.ws_url}/sessions/{session_id}/ws?after={point}",
                    additional_headers=ALICE,
                ):
                    pass
            assert caught.value.response.status_code == status


async def test_subscribers_per_session_over_websocket() -> None:
    app = make_app(
        registry_config=sk.RegistryConfig(max_subscribers_per_session=1, heartbeat_interval=None)
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
        url = f"{server.ws_url}/sessions/{session_id}/ws"
        async with connect(url, additional_headers=ALICE) as first:
            assert (await receive(first))["type"] == "subscribed"
            async with connect(f"{server.ws_url}/ws", additional_headers=ALICE) as second:
                reply = await request(
                    second, json.dumps({"type": "subscribe", "session_id": session_id})
                )
                # Refused by the registry's bound before any acknowledgement.
                assert (reply["type"], reply["code"]) == ("error", "limit_exceeded")
                assert (await receive(second))["reason"] == "error"
                await publish(server, app, session_id, token("only"))
                assert (await receive(first))["event"]["content"] == "only"
