"""StreamApp's WebSocket endpoints under a real uvicorn server, with the websockets client.

These tests run on asyncio only: the ``websockets`` client is built on asyncio and has
no Trio flavour. The server side is backend-neutral (anyio) and its Trio behaviour is
covered by the HTTP tests in test_asgi.py, which exercise the same registry code paths.
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import streamkit as sk
from streamkit.asgi import StreamApp
from streamkit.testing import SimulatedAgent

from .asgi_helpers import (
    ServerThread,
    auth,
    make_stream_app,
    publish,
    serve,
    token,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

AGENT = SimulatedAgent(seed=11, realtime=False)
PROMPT = "How do WebSockets multiplex?"
ALICE = auth("alice")
BOB = auth("bob")


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only (see the module docstring)."""
    return "asyncio"


def make_app(**options: Any) -> StreamApp:
    return make_stream_app(AGENT, **{"max_ws_message_bytes": 1024, **options})


@pytest.fixture(scope="module")
def app() -> StreamApp:
    return make_app()


@pytest.fixture(scope="module")
def server(app: StreamApp) -> Iterator[ServerThread]:
    with serve(app) as running:
        yield running


@pytest.fixture
async def client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        yield http


async def create(client: httpx.AsyncClient, headers: dict[str, str] = ALICE, **body: Any) -> str:
    response = await client.post("/sessions", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["session"]["session_id"])


async def receive(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(10):
        message = json.loads(await ws.recv())
    assert isinstance(message, dict)
    return message


async def request(ws: ClientConnection, **message: Any) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    return await receive(ws)


async def until_unsubscribed(ws: ClientConnection) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await receive(ws)
        messages.append(message)
        if message["type"] == "unsubscribed":
            return messages


def events_of(messages: list[dict[str, Any]]) -> list[sk.StreamEvent]:
    return [sk.StreamEvent.from_dict(m["event"]) for m in messages if m["type"] == "event"]


async def test_subscribe_resume_and_cancel_over_multiplexed_ws(
    client: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    session_id = await create(client)
    await publish(server, app, session_id, *(token(f"a{i}") for i in range(3)))
    async with connect(f"{server.ws_url}/ws", additional_headers=ALICE) as ws:
        assert await request(ws, type="ping", request_id=1) == {"type": "pong", "request_id": 1}
        reply = await request(ws, type="subscribe", session_id=session_id, request_id="s")
        assert reply == {
            "type": "subscribed",
            "session_id": session_id,
            "after": 0,
            "request_id": "s",
        }
        first = [await receive(ws) for _ in range(3)]
        assert [m["event"]["seq"] for m in first] == [1, 2, 3]
        assert all(m["type"] == "event" and m["session_id"] == session_id for m in first)
        await publish(server, app, session_id, token("a3"))  # live
        assert (await receive(ws))["event"]["content"] == "a3"
        await ws.send(json.dumps({"type": "cancel", "session_id": session_id, "request_id": 9}))
        rest = await until_unsubscribed(ws)
    acks = [m for m in rest if m["type"] == "ack"]
    assert acks == [
        {
            "type": "ack",
            "action": "cancel",
            "session_id": session_id,
            "status": "cancelled",
            "request_id": 9,
        }
    ]
    assert events_of(rest)[-1].is_final
    assert rest[-1] == {"type": "unsubscribed", "session_id": session_id, "reason": "ended"}
    total = 4 + len(events_of(rest))
    # Resume on a new connection after what the first one saw.
    async with connect(f"{server.ws_url}/ws", additional_headers=ALICE) as ws:
        await request(ws, type="subscribe", session_id=session_id, after=2)
        resumed = events_of(await until_unsubscribed(ws))
    assert [e.seq for e in resumed] == list(range(3, total + 1))


async def test_session_endpoint_streams_an_agent_answer(
    client: httpx.AsyncClient, server: ServerThread
) -> None:
    session_id = await create(client, prompt=PROMPT)
    url = f"{server.ws_url}/sessions/{session_id}/ws"
    async with connect(url, additional_headers=ALICE) as ws:
        assert await receive(ws) == {"type": "subscribed", "session_id": session_id, "after": 0}
        messages = await until_unsubscribed(ws)
    events = events_of(messages)
    assert "".join(e.content for e in events if e.event_type == "token") == AGENT.answer(PROMPT)
    assert events[-1].event_type == sk.EventType.COMPLETE
    # The session endpoint resumes with ?after= and takes messages without session_id.
    async with connect(f"{url}?after=2", additional_headers=ALICE) as ws:
        assert (await receive(ws))["after"] == 2
        assert (await receive(ws))["event"]["seq"] == 3
        await ws.send(json.dumps({"type": "ping"}))
        while (message := await receive(ws))["type"] != "pong":
            assert message["type"] in {"event", "unsubscribed"}


async def test_bad_messages_get_typed_errors_and_keep_subscriptions(
    client: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    session_id = await create(client)
    bobs = await create(client, BOB)
    async with connect(f"{server.ws_url}/ws", additional_headers=ALICE) as ws:
        await request(ws, type="subscribe", session_id=session_id)
        bad: list[tuple[str | bytes, str, str | None]] = [
            ("not json", "invalid", None),
            ("[1, 2]", "invalid", "message"),
            (json.dumps({"type": "nope"}), "invalid", "type"),
            (json.dumps({"type": "ping", "extra": 1}), "invalid", "extra"),
            (json.dumps({"type": "ping", "request_id": [1]}), "invalid", "request_id"),
            (json.dumps({"type": "subscribe"}), "invalid", "session_id"),
            (json.dumps({"type": "subscribe", "session_id": "bad id!"}), "invalid", "session_id"),
            (
                json.dumps({"type": "subscribe", "session_id": session_id, "after": -1}),
                "invalid",
                "after",
            ),
            (json.dumps({"type": "subscribe", "session_id": session_id}), "invalid", "session_id"),
            (json.dumps({"type": "subscribe", "session_id": bobs}), "not_found", None),
            (json.dumps({"type": "cancel", "session_id": bobs}), "not_found", None),
            (
                json.dumps({"type": "subscribe", "session_id": sk.new_session_id()}),
                "not_found",
                None,
            ),
            (json.dumps({"type": "unsubscribe", "session_id": bobs}), "invalid", "session_id"),
            (json.dumps({"type": "ping", "request_id": "x" * 2000}), "too_large", "message"),
            (b"\x00binary", "protocol_error", None),
        ]
        for sent, code, field in bad:
            await ws.send(sent)
            reply = await receive(ws)
            assert reply["type"] == "error", sent
            assert reply["code"] == code, (sent, reply)
            assert reply["message"]
            if field is not None:
                assert reply.get("field") == field, (sent, reply)
        reply = await request(ws, type="pause", session_id=bobs, request_id="r")
        assert reply["request_id"] == "r"
        assert reply["code"] == "not_found"
        # The subscription is still there and still live.
        await publish(server, app, session_id, token("still here"))
        message = await receive(ws)
        assert message["type"] == "event"
        assert message["event"]["content"] == "still here"
        reply = await request(ws, type="unsubscribe", session_id=session_id)
        assert reply == {"type": "unsubscribed", "session_id": session_id, "reason": "requested"}
    # Bob's session was never touched.
    status = (await client.get(f"/sessions/{bobs}", headers=BOB)).json()
    assert status["session"]["status"] == "active"


async def test_handshake_is_refused_without_authentication_or_ownership(
    client: httpx.AsyncClient, server: ServerThread
) -> None:
    session_id = await create(client)
    cases = [
        (f"{server.ws_url}/ws", {}, 401),
        (f"{server.ws_url}/sessions/{session_id}/ws", BOB, 404),
        (f"{server.ws_url}/sessions/bad%20id/ws", ALICE, 400),
        (f"{server.ws_url}/elsewhere", ALICE, 404),
    ]
    for url, headers, status in cases:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url, additional_headers=headers):
                pass
        assert caught.value.response.status_code == status, url
        assert caught.value.response.body is not None
        assert json.loads(caught.value.response.body)["error"]["message"]


async def test_slow_client_does_not_stall_others() -> None:
    app = make_app(
        registry_config=sk.RegistryConfig(
            max_lag=50, history_max_bytes=64 * 1024 * 1024, heartbeat_interval=None
        ),
    )
    count = 300
    payload = "p" * (64 * 1024)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect(("127.0.0.1", server.port))
        url = f"{server.ws_url}/sessions/{session_id}/ws"
        async with (
            connect(
                url,
                additional_headers=ALICE,
                sock=sock,
                max_queue=1,
                max_size=None,
                compression=None,
            ) as slow,
            connect(url, additional_headers=ALICE, max_size=None, compression=None) as fast,
        ):
            assert (await receive(slow))["type"] == "subscribed"
            assert (await receive(fast))["type"] == "subscribed"
            # The slow client reads nothing more while everything is published, in
            # bursts the fast client keeps up with (less than max_lag each).
            got: list[dict[str, Any]] = []
            for _ in range(count // 15):
                await publish(server, app, session_id, *(token(payload) for _ in range(15)))
                got.extend([await receive(fast) for _ in range(15)])
            assert [m["event"]["seq"] for m in got] == list(range(1, count + 1))
            # The slow client fell behind and was dropped from the session (it may
            # resume from its last event), not waited for.
            tail = await until_unsubscribed(slow)
            errors = [m for m in tail if m["type"] == "error"]
            assert [e["code"] for e in errors] == ["lagged"]
            assert errors[0]["after"] == len(events_of(tail)) < count
            assert tail[-1]["reason"] == "error"
            await publish(server, app, session_id, sk.StreamEvent(event_type="complete"))
            assert events_of(await until_unsubscribed(fast))[-1].seq == count + 1


async def test_shutdown_closes_websockets_with_going_away() -> None:
    app = make_app()
    server = ServerThread(app)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
        async with connect(
            f"{server.ws_url}/sessions/{session_id}/ws", additional_headers=ALICE
        ) as ws:
            await receive(ws)
            await wait_until(lambda: app.statistics()["websockets_open"] == 1)
            server.call_soon(app.shutdown)
            # The server is stopped only once the app has closed: a server stopping
            # first closes its WebSockets itself (1012), a race on a loaded machine.
            with pytest.raises(ConnectionClosed) as caught:
                await receive(ws)
            server.request_stop()
            assert caught.value.rcvd is not None
            assert caught.value.rcvd.code == 1001
        await server.wait_stopped()
        assert app.statistics()["stream_outcomes"] == {"shutdown": 1}
    finally:
        server.stop()


async def test_client_that_stops_reading_is_dropped_and_counted() -> None:
    # A WebSocket client that completes the handshake and never reads again: a send to
    # it outlasts write_timeout, the connection is dropped, and the drop is counted
    # with the HTTP streams' (the metrics' streamkit.http.streams.ended{write_timeout}).
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
        try:
            sock.sendall(
                f"GET /sessions/{session_id}/ws HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: c3RyZWFta2l0LXRlc3QtMQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Authorization: Bearer alice\r\n\r\n".encode()
            )
            await wait_until(lambda: app.statistics()["websockets_open"] == 1)
            big = "w" * (256 * 1024)
            await publish(server, app, session_id, *(token(big) for _ in range(64)))
            await wait_until(lambda: app.statistics()["websockets_open"] == 0)
            assert app.statistics()["stream_outcomes"] == {"write_timeout": 1}
        finally:
            sock.close()
        # A client that leaves by itself counts as disconnected.
        async with connect(
            f"{server.ws_url}/sessions/{session_id}/ws", additional_headers=ALICE
        ) as ws:
            assert (await receive(ws))["type"] == "subscribed"
        await wait_until(lambda: app.statistics()["websockets_open"] == 0)
        assert app.statistics()["stream_outcomes"] == {"write_timeout": 1, "disconnected": 1}
