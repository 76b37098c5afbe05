"""Security of StreamApp under uvicorn: nobody let in, nothing leaked, nothing pinned.

* Deny by default: every endpoint and WebSocket handshake without or with wrong
  credentials is 401.
* Another user's session and a session that does not exist get the same answer (status,
  headers, body) on every endpoint and every WebSocket message type.
* Session ids never reach logs at INFO or above.
* Resource abuse: clients that stop reading are dropped by the write deadline, a
  client that half-closes is let go, HEAD/GET loops leave nothing open, and producers
  nobody watches are cancelled after ``idle_producer_grace``.

WebSocket cases run on asyncio only (the ``websockets`` client has no Trio flavour).
"""

from __future__ import annotations

import json
import logging
import socket
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

import streamkit as sk
from streamkit import ndjson, sse

from ..asgi_helpers import RawStream, publish, serve, token, wait_until
from .conftest import (
    ALICE,
    BOB,
    PROMPT,
    WRONG,
    create,
    make_app,
    wait_status,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from streamkit.asgi import StreamApp

    from ..asgi_helpers import ServerThread

pytestmark = pytest.mark.anyio

ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])

#: Every HTTP endpoint and method; ``{}`` is a session id.
ENDPOINTS: list[tuple[str, str]] = [
    ("GET", "/sessions"),
    ("HEAD", "/sessions"),
    ("POST", "/sessions"),
    ("GET", "/stats"),
    ("HEAD", "/stats"),
    ("GET", "/sessions/{}"),
    ("HEAD", "/sessions/{}"),
    ("DELETE", "/sessions/{}"),
    ("GET", "/sessions/{}/events"),
    ("HEAD", "/sessions/{}/events"),
    ("POST", "/sessions/{}/pause"),
    ("POST", "/sessions/{}/resume"),
    ("POST", "/sessions/{}/cancel"),
]
SESSION_ENDPOINTS = [(m, p) for m, p in ENDPOINTS if "{}" in p]
WS_TYPES = ["subscribe", "unsubscribe", "pause", "resume", "cancel"]


@pytest.fixture(scope="module")
def app() -> StreamApp:
    return make_app()


@pytest.fixture(scope="module")
def server(app: StreamApp) -> Iterator[ServerThread]:
    with serve(app) as running:
        yield running


async def test_every_endpoint_denies_missing_and_wrong_credentials(
    http: httpx.AsyncClient,
) -> None:
    session_id = await create(http, prompt=PROMPT)
    for headers in [
        {},
        WRONG,
        {"Authorization": "token-alice"},
        {"Authorization": "Bearer x"},
        {"Authorization": "Basic YWxpY2U6"},
    ]:
        for method, path in ENDPOINTS:
            response = await http.request(method, path.format(session_id), headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"] == 'Bearer realm="streamkit"'
            if method != "HEAD":
                assert response.json() == {
                    "error": {"code": "unauthenticated", "message": "authentication required"}
                }
    # Alice's session is as it was.
    response = await http.get(f"/sessions/{session_id}", headers=ALICE)
    assert response.json()["session"]["status"] == "completed"


@ASYNCIO_ONLY
async def test_websocket_handshakes_deny_missing_and_wrong_credentials(
    http: httpx.AsyncClient, server: ServerThread
) -> None:
    session_id = await create(http)
    for headers in [{}, WRONG]:
        for path in ["/ws", f"/sessions/{session_id}/ws"]:
            with pytest.raises(InvalidStatus) as caught:
                async with connect(f"{server.ws_url}{path}", additional_headers=headers):
                    pass
            response = caught.value.response
            assert response.status_code == 401
            assert response.body is not None
            assert json.loads(response.body)["error"]["code"] == "unauthenticated"


def _same_shape(theirs: httpx.Response, nobody: httpx.Response, ids: tuple[str, str]) -> None:
    assert theirs.status_code == nobody.status_code
    keep = ("content-type", "content-length", "allow", "www-authenticate")
    assert {k: theirs.headers.get(k) for k in keep} == {k: nobody.headers.get(k) for k in keep}
    assert theirs.text.replace(ids[0], "ID") == nobody.text.replace(ids[1], "ID")


async def test_not_yours_is_answered_like_does_not_exist(
    http: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    active = await create(http)
    await publish(server, app, active, token("mine"))
    finished = await create(http, prompt=PROMPT)
    paused = await create(http)
    assert (await http.post(f"/sessions/{paused}/pause", headers=ALICE)).status_code == 200
    for target in [active, finished, paused]:
        for method, path in SESSION_ENDPOINTS:
            missing = sk.new_session_id()
            variants: list[dict[str, str]] = [{}]
            if "events" in path:
                variants += [{"after": "1"}, {"after": "999"}]
            for params in variants:
                theirs = await http.request(method, path.format(target), headers=BOB, params=params)
                nobody = await http.request(
                    method, path.format(missing), headers=BOB, params=params
                )
                _same_shape(theirs, nobody, (target, missing))
                assert theirs.status_code == 404, (method, path, theirs.text)
                if method != "HEAD":
                    assert theirs.json() == {
                        "error": {
                            "code": "not_found",
                            "message": "no such session",
                            "session_id": target,
                        }
                    }
    # Bob changed nothing; Alice's sessions are as they were, and not in Bob's list.
    states = {
        s["session_id"]: s["status"]
        for s in (await http.get("/sessions", headers=ALICE)).json()["sessions"]
    }
    assert [states[active], states[finished], states[paused]] == ["active", "completed", "paused"]
    assert (await http.get("/sessions", headers=BOB)).json()["sessions"] == []


@ASYNCIO_ONLY
async def test_not_yours_is_answered_like_does_not_exist_over_websocket(
    http: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    target = await create(http)
    await publish(server, app, target, token("mine"))
    missing = sk.new_session_id()

    async def ask(ws: ClientConnection, message: dict[str, Any]) -> str:
        await ws.send(json.dumps(message))
        with anyio.fail_after(10):
            return str(await ws.recv())

    async with connect(f"{server.ws_url}/ws", additional_headers=BOB) as ws:
        for kind in WS_TYPES:
            extras: list[dict[str, Any]] = [{}, {"request_id": "r"}, {"after": 0}]
            for extra in extras:
                if "after" in extra and kind != "subscribe":
                    continue
                theirs = await ask(ws, {"type": kind, "session_id": target, **extra})
                nobody = await ask(ws, {"type": kind, "session_id": missing, **extra})
                assert theirs.replace(target, "ID") == nobody.replace(missing, "ID"), kind
                reply = json.loads(theirs)
                assert reply["type"] == "error"
                if kind == "unsubscribe":
                    assert reply["code"] == "invalid"
                else:
                    assert (reply["code"], reply["message"]) == ("not_found", "no such session")
        # Bob's connection still works; Alice's session is untouched.
        assert json.loads(await ask(ws, {"type": "ping"})) == {"type": "pong"}
    for path in [f"/sessions/{target}/ws", f"/sessions/{missing}/ws"]:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(f"{server.ws_url}{path}", additional_headers=BOB):
                pass
        body = caught.value.response.body
        assert caught.value.response.status_code == 404
        assert body is not None
        assert json.loads(body)["error"]["message"] == "no such session"
    response = await http.get(f"/sessions/{target}", headers=ALICE)
    assert response.json()["session"]["status"] == "active"
    assert response.json()["statistics"]["subscribers"] == 0


async def test_anonymous_callers_cannot_reach_owned_sessions() -> None:
    app = make_app(allow_anonymous=True)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            owned = await create(client)
            anonymous = await create(client, headers={})
            for method, path in SESSION_ENDPOINTS:
                response = await client.request(method, path.format(owned))
                assert response.status_code == 404, (method, path)
            # Nobody's listing hands out anonymous session ids.
            for headers in [{}, ALICE, BOB]:
                listed = (await client.get("/sessions", headers=headers)).json()["sessions"]
                assert anonymous not in [s["session_id"] for s in listed]


async def test_session_ids_are_unguessable() -> None:
    ids = [sk.new_session_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    for session_id in ids[:1000]:
        # 24 URL-safe base64 characters: 144 random bits (at least 128 required).
        assert len(session_id) == 24
        assert set(session_id) <= alphabet


async def test_session_ids_never_reach_logs_at_info_or_above(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def failing_agent(prompt: str) -> Iterator[str]:
        yield "partial "
        if prompt == "big":  # an event past max_event_bytes: the producer fails
            yield "x" * 5000
        raise RuntimeError("the model failed")

    caplog.set_level(logging.DEBUG)
    ids: list[str] = []
    app = make_app(
        agent=failing_agent,
        registry_config=sk.RegistryConfig(max_event_bytes=2000, heartbeat_interval=None),
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            # A whole lifecycle: create, publish, read, resume, pause, resume, cancel,
            # delete; a failing producer; refused requests.
            session_id = await create(client)
            ids.append(session_id)
            await publish(server, app, session_id, token("a"), token("b"))
            async with RawStream.open(
                server.port,
                f"/sessions/{session_id}/events?after=1",
                {"Authorization": "Bearer token-alice"},
            ) as raw:
                assert raw.status == 200
            for action in ["pause", "resume", "cancel"]:
                assert (
                    await client.post(f"/sessions/{session_id}/{action}", headers=ALICE)
                ).status_code == 200
            assert (
                await client.post(f"/sessions/{session_id}/pause", headers=ALICE)
            ).status_code == 409
            async with client.stream(
                "GET", f"/sessions/{session_id}/events", headers=ALICE
            ) as response:
                await response.aread()
            assert (await client.get(f"/sessions/{session_id}", headers=BOB)).status_code == 404
            assert (
                await client.delete(f"/sessions/{session_id}", headers=ALICE)
            ).status_code == 204
            for prompt in ["fail", "big"]:
                failed = await create(client, prompt=prompt)
                ids.append(failed)
                await wait_status(server, app, failed, "error")
                response = await client.get(f"/sessions/{failed}", headers=ALICE)
                assert response.status_code == 200
    # The failures were logged (so the capture works across the server's thread).
    assert any(r.levelno >= logging.ERROR for r in caplog.records)
    formatter = logging.Formatter("%(name)s %(message)s")
    for record in caplog.records:
        # The test's own HTTP client logs its request URLs: it is not the server.
        if record.levelno < logging.INFO or record.name.startswith(("httpx", "httpcore")):
            continue
        text = formatter.format(record) + repr(record.args) + repr(vars(record))
        for session_id in ids:
            assert session_id not in text, record.getMessage()


async def test_ndjson_reader_that_stops_reading_is_dropped_by_the_write_deadline() -> None:
    app = make_app(
        write_timeout=0.3,
        registry_config=sk.RegistryConfig(
            history_max_bytes=64 * 1024 * 1024, max_lag=100_000, heartbeat_interval=None
        ),
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
            stuck = []
            for _ in range(3):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(
                    f"GET /sessions/{session_id}/events HTTP/1.1\r\nHost: x\r\n"
                    "Accept: application/x-ndjson\r\n"
                    "Authorization: Bearer token-alice\r\n\r\n".encode()
                )
                stuck.append(sock)
            try:
                await wait_until(lambda: app.statistics()["streams_open"] == 3)
                big = "n" * (256 * 1024)
                await publish(server, app, session_id, *(token(big) for _ in range(64)))
                await wait_until(
                    lambda: app.statistics()["stream_outcomes"].get("write_timeout", 0) == 3
                )
                assert app.statistics()["streams_open"] == 0
                status = (await client.get(f"/sessions/{session_id}", headers=ALICE)).json()
                assert status["statistics"]["subscribers"] == 0
                assert status["session"]["status"] == "active"
                # A reader that does read gets everything.
                await publish(server, app, session_id, sk.StreamEvent(event_type="complete"))
                async with client.stream(
                    "GET",
                    f"/sessions/{session_id}/events",
                    headers={**ALICE, "Accept": "application/x-ndjson"},
                ) as response:
                    events = [e async for e in ndjson.aiter_events(response.aiter_bytes())]
                assert [e.seq for e in events] == list(range(1, 66))
            finally:
                for sock in stuck:
                    sock.close()


async def test_client_that_half_closes_is_let_go() -> None:
    app = make_app(write_timeout=5, heartbeat_interval=0.05)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
        sock = socket.socket()
        sock.connect(("127.0.0.1", server.port))
        try:
            sock.sendall(
                f"GET /sessions/{session_id}/events HTTP/1.1\r\nHost: x\r\n"
                "Authorization: Bearer token-alice\r\n\r\n".encode()
            )
            await wait_until(lambda: app.statistics()["streams_open"] == 1)
            # The client sends FIN and never reads: the server sees the end of the
            # connection and ends the stream (uvicorn reports a disconnect), or at the
            # latest the heartbeats' writes fail once the socket is gone.
            sock.shutdown(socket.SHUT_WR)
            await wait_until(lambda: app.statistics()["streams_open"] == 0)
        finally:
            sock.close()
        outcomes = app.statistics()["stream_outcomes"]
        assert outcomes.get("disconnected", 0) + outcomes.get("write_timeout", 0) == 1


async def test_head_and_get_loops_leave_nothing_open(
    http: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    session_id = await create(http)
    path = f"/sessions/{session_id}/events"
    for i in range(100):
        if i % 2:
            assert (await http.head(path, headers=ALICE)).status_code == 200
        else:
            async with RawStream.open(
                server.port, path, {"Authorization": "Bearer token-alice"}
            ) as raw:
                assert raw.status == 200
    await wait_until(lambda: app.statistics()["streams_open"] == 0)
    status = (await http.get(f"/sessions/{session_id}", headers=ALICE)).json()
    assert status["statistics"]["subscribers"] == 0


async def endless(prompt: str) -> AsyncIterator[str]:
    """A producer that never ends by itself (an expensive model, say)."""
    while True:
        yield "t "
        await anyio.sleep(0.01)


async def test_producers_nobody_watches_are_cancelled_after_the_grace() -> None:
    app = make_app(
        agent=endless,
        registry_config=sk.RegistryConfig(
            idle_producer_grace=0.5, cleanup_interval=0.05, heartbeat_interval=None
        ),
        stream_config=sk.StreamConfig(stream_delay=0, chunk_size=1, heartbeat_interval=None),
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            watched = await create(client, prompt="watched")
            unwatched = await create(client, prompt="unwatched")
            async with RawStream.open(
                server.port, f"/sessions/{watched}/events", {"Authorization": "Bearer token-alice"}
            ) as raw:
                assert raw.status == 200
                assert await raw.chunk()
                await wait_status(server, app, unwatched, "cancelled")
                # The watched producer still runs, past the grace of the other one.
                assert (await client.get(f"/sessions/{watched}", headers=ALICE)).json()["session"][
                    "status"
                ] == "active"
            # Its reader left: cancelled after the grace too.
            await wait_status(server, app, watched, "cancelled")
            for session_id in [watched, unwatched]:
                async with client.stream(
                    "GET", f"/sessions/{session_id}/events", headers=ALICE
                ) as response:
                    events = [e async for e in sse.aiter_events(response.aiter_bytes())]
                assert events[-1].event_type == sk.EventType.COMPLETE
                assert events[-1].metadata["reason"] == "unwatched"
                assert [e.seq for e in events] == list(range(1, len(events) + 1))
