"""StreamApp under a real uvicorn server (and once hypercorn), with real HTTP clients.

The server runs in a background thread with its own asyncio loop (see asgi_helpers), so
every test body here runs on both anyio backends. WebSocket tests live in
test_asgi_ws.py (the ``websockets`` client is asyncio-only).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import zlib
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

import streamkit as sk
from streamkit import ndjson, sse
from streamkit.asgi import StreamApp, serve_events
from streamkit.testing import SimulatedAgent

from .asgi_helpers import (
    RawStream,
    ServerThread,
    auth,
    bearer_authenticate,
    complete,
    make_stream_app,
    publish,
    serve,
    token,
    wait_until,
)
from .tally import Tally

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

AGENT = SimulatedAgent(seed=7, realtime=False)
PROMPT = "Explain resumable streams"
ALICE = auth("alice")
BOB = auth("bob")
ROOT = Path(__file__).resolve().parent.parent


def make_app(**options: Any) -> StreamApp:
    return make_stream_app(AGENT, **{"heartbeat_interval": 0.2, "max_body_bytes": 4096, **options})


@pytest.fixture(scope="module")
def app() -> StreamApp:
    return make_app()


@pytest.fixture(scope="module")
def server(app: StreamApp) -> Iterator[ServerThread]:
    with serve(app) as running:
        yield running


@pytest.fixture
async def client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=10) as http:
        yield http


async def create(client: httpx.AsyncClient, headers: dict[str, str] = ALICE, **body: Any) -> str:
    response = await client.post("/sessions", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["session"]["session_id"])


async def read_events(
    client: httpx.AsyncClient,
    session_id: str,
    headers: dict[str, str] = ALICE,
    **params: Any,
) -> list[sk.StreamEvent]:
    async with client.stream(
        "GET", f"/sessions/{session_id}/events", headers=headers, params=params
    ) as response:
        assert response.status_code == 200, await response.aread()
        return [event async for event in sse.aiter_events(response.aiter_bytes())]


def text_of(events: list[sk.StreamEvent]) -> str:
    return "".join(e.content for e in events if e.event_type == sk.EventType.TOKEN)


def assert_contiguous(events: list[sk.StreamEvent], first: int = 1) -> None:
    assert [e.seq for e in events] == list(range(first, first + len(events)))


# -- SSE ------------------------------------------------------------------------------------


async def test_full_agent_answer_over_sse(client: httpx.AsyncClient) -> None:
    session_id = await create(client, prompt=PROMPT, context={"model": "sim"})
    async with client.stream("GET", f"/sessions/{session_id}/events", headers=ALICE) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        decoder = sse.SSEDecoder()
        messages: list[sse.SSEMessage] = []
        async for chunk in response.aiter_bytes():
            messages.extend(decoder.feed(chunk))
        messages.extend(decoder.feed_eof())
    assert decoder.retry == 3000
    events = [m.to_event() for m in messages]
    assert events[0].event_type == sk.EventType.START
    assert events[-1].event_type == sk.EventType.COMPLETE
    assert text_of(events) == AGENT.answer(PROMPT)
    assert_contiguous(events)
    assert [m.id for m in messages] == [str(e.seq) for e in events]
    status = (await client.get(f"/sessions/{session_id}", headers=ALICE)).json()
    assert status["session"]["status"] == "completed"
    assert status["session"]["context"] == {"model": "sim"}
    assert status["statistics"]["log"]["last_seq"] == len(events)
    assert status["statistics"]["stream"]["tokens"] > 0


async def test_ndjson_stream_is_the_same_stream(client: httpx.AsyncClient) -> None:
    session_id = await create(client, input=PROMPT)
    sse_events = await read_events(client, session_id)
    headers = {**ALICE, "Accept": "application/x-ndjson"}
    async with client.stream("GET", f"/sessions/{session_id}/events", headers=headers) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        events = [e async for e in ndjson.aiter_events(response.aiter_bytes())]
    assert [e.to_json() for e in events] == [e.to_json() for e in sse_events]


async def test_gzip_stream_is_flushed_per_batch(
    client: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    session_id = await create(client)
    headers = {**ALICE, "Accept-Encoding": "gzip"}
    url = f"/sessions/{session_id}/events"
    async with RawStream.open(server.port, url, headers) as stream:
        assert stream.headers["content-encoding"] == "gzip"
        assert "accept-encoding" in stream.headers["vary"]
        inflate = zlib.decompressobj(31)
        decoder = sse.SSEDecoder()
        await publish(server, app, session_id, token("live"))
        # The event arrives while the stream is still open: the batch was flushed.
        received: list[sse.SSEMessage] = []
        while not received:
            chunk = await stream.chunk()
            assert chunk is not None
            received.extend(decoder.feed(inflate.decompress(chunk)))
        assert received[0].to_event().content == "live"
        await publish(server, app, session_id, complete())
        while (chunk := await stream.chunk()) is not None:
            received.extend(decoder.feed(inflate.decompress(chunk)))
        assert inflate.eof
    assert [m.event for m in received] == ["token", "complete"]


async def test_plain_stream_without_accept_encoding(client: httpx.AsyncClient) -> None:
    session_id = await create(client, prompt=PROMPT)
    headers = {**ALICE, "Accept-Encoding": "identity"}
    async with client.stream("GET", f"/sessions/{session_id}/events", headers=headers) as response:
        assert "content-encoding" not in response.headers
        body = await response.aread()
    assert body.startswith(b"retry: 3000\nid: ")
    assert b"event: complete\n" in body


async def test_head_answers_without_streaming(client: httpx.AsyncClient) -> None:
    session_id = await create(client)  # silent: a GET would stream forever
    with anyio.fail_after(5):
        response = await client.head(f"/sessions/{session_id}/events", headers=ALICE)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.content == b""


#: Headers that only frame the body (or stamp the response), not what it says.
_FRAMING = frozenset({"date", "server", "transfer-encoding"})


async def head_and_get(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    """HEAD, then GET ``url`` (the GET's body is not read: a live stream never ends)."""
    with anyio.fail_after(10):
        head = await client.head(url, headers=headers)
        async with client.stream("GET", url, headers=headers) as got:
            pass
    return head, got


def described(response: httpx.Response) -> tuple[int, list[tuple[str, str]]]:
    kept = [(k, v) for k, v in response.headers.multi_items() if k not in _FRAMING]
    return response.status_code, sorted(kept)


async def test_head_answers_what_get_would_in_every_state() -> None:
    app = make_app(max_connections_per_user=2, compression=True)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            live = await create(client)
            ended = await create(client, prompt=PROMPT)
            events = await read_events(client, ended)
            last = str(events[-1].seq)
            cases: list[tuple[str, dict[str, str], int]] = [
                (f"/sessions/{live}/events", ALICE, 200),
                (f"/sessions/{live}/events", {**ALICE, "Accept": "application/x-ndjson"}, 200),
                (f"/sessions/{live}/events", {**ALICE, "Accept-Encoding": "gzip"}, 200),
                (f"/sessions/{ended}/events", {**ALICE, "Last-Event-ID": last}, 204),
                (f"/sessions/{ended}/events", {**ALICE, "Last-Event-ID": "1"}, 200),
                (f"/sessions/{ended}/events?after=999", ALICE, 400),
                (f"/sessions/{live}/events", {**ALICE, "Last-Event-ID": "x"}, 400),
                (f"/sessions/{sk.new_session_id()}/events", ALICE, 404),
                (f"/sessions/{live}/events", BOB, 404),
                (f"/sessions/{live}/events", {}, 401),
                (f"/sessions/{live}", ALICE, 200),
                (f"/sessions/{live}/nothing", ALICE, 404),
            ]
            for url, headers, status in cases:
                head, got = await head_and_get(client, url, headers)
                assert described(head) == described(got), url
                assert head.status_code == status, url
                assert head.content == b""
            # Past the per-user bound: 429 for both.
            url = f"/sessions/{live}/events"
            async with (
                RawStream.open(server.port, url, ALICE),
                RawStream.open(server.port, url, ALICE),
            ):
                await wait_until(lambda: app.statistics()["streams_open"] == 2)
                head, got = await head_and_get(client, url, ALICE)
                assert described(head) == described(got)
                assert head.status_code == 429
            await wait_until(lambda: app.statistics()["streams_open"] == 0)

            # While the app shuts down: 503 for both.
            async def shut_down() -> None:
                app.shutdown()

            await server.call(shut_down)
            head, got = await head_and_get(client, url, ALICE)
            assert described(head) == described(got)
            assert head.status_code == 503
            assert head.content == b""


async def test_heartbeat_comments_while_silent(
    server: ServerThread, client: httpx.AsyncClient
) -> None:
    session_id = await create(client)
    async with RawStream.open(server.port, f"/sessions/{session_id}/events", ALICE) as stream:
        assert stream.status == 200
        decoder = sse.SSEDecoder(comments=True)
        items: list[sse.SSEMessage | sse.SSEComment] = []
        with anyio.fail_after(5):
            while not items:
                chunk = await stream.chunk()
                assert chunk is not None
                items.extend(decoder.feed(chunk))
    assert items[0] == sse.SSEComment("ping")


class CountHeartbeats:
    """Passes an ASGI app through, counting the SSE heartbeats it sends."""

    def __init__(self, app: StreamApp) -> None:
        self.app = app
        self.heartbeats = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.body":
                self.heartbeats += message.get("body", b"").count(b": ping")
            await send(message)

        await self.app(scope, receive, counting_send)


async def test_httpx_sse_reads_every_message_as_json() -> None:
    """httpx-sse dispatches every block that ends with an empty line once it saw an id.

    So the retry hint, the heartbeats during silence (before and after the first event)
    and the end of the stream must give it only events with data.
    """
    from httpx_sse import aconnect_sse

    app = make_app(heartbeat_interval=0.05, compression=False)  # heartbeats counted as sent
    counted = CountHeartbeats(app)
    with serve(counted) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            session_id = await create(client)
            url = f"/sessions/{session_id}/events"
            async with aconnect_sse(client, "GET", url, headers=ALICE) as source:
                # Silence before the first event, then between events: heartbeats.
                await wait_until(lambda: counted.heartbeats >= 2)
                await publish(server, app, session_id, token("a"))
                seen = counted.heartbeats
                await wait_until(lambda: counted.heartbeats >= seen + 2)
                await publish(server, app, session_id, token("b"))
                seen = counted.heartbeats
                await wait_until(lambda: counted.heartbeats >= seen + 2)
                await publish(server, app, session_id, complete())
                with anyio.fail_after(10):
                    messages = [message async for message in source.aiter_sse()]
            assert [json.loads(m.data)["event_type"] for m in messages] == [
                "token",
                "token",
                "complete",
            ]
            assert [m.event for m in messages] == ["token", "token", "complete"]
            assert [m.id for m in messages] == ["1", "2", "3"]
            assert messages[0].retry == 3000  # the hint rides with the first event
            # Resuming from the last id is a clean 204, as before.
            headers = {**ALICE, "Last-Event-ID": messages[-1].id}
            assert (await client.get(url, headers=headers)).status_code == 204


async def test_sse_output_reads_the_same_in_every_decoder() -> None:
    """Our decoder (WHATWG rules) and httpx-sse's see the same events."""
    from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder

    app = make_app(heartbeat_interval=0.05, compression=False)  # heartbeats counted as sent
    counted = CountHeartbeats(app)
    with serve(counted) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            session_id = await create(client)
            await publish(server, app, session_id, token("x"))
            url = f"/sessions/{session_id}/events"
            async with RawStream.open(server.port, url, ALICE) as stream:
                await wait_until(lambda: counted.heartbeats >= 2)
                await publish(server, app, session_id, complete())
                body = b""
                while (chunk := await stream.chunk()) is not None:
                    body += chunk
    assert b"\n: ping\n" in body
    ours = sse.SSEDecoder().feed(body)
    theirs_decoder = HttpxSSEDecoder()
    theirs = [
        message
        for line in body.decode().split("\n")[:-1]  # the body ends with a line end
        if (message := theirs_decoder.decode(line)) is not None
    ]
    assert [(m.event, m.data, m.id) for m in ours] == [(m.event, m.data, m.id) for m in theirs]
    assert [json.loads(m.data)["event_type"] for m in theirs] == ["token", "complete"]


async def test_disconnect_mid_stream_then_resume_with_last_event_id(
    client: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    session_id = await create(client)
    await publish(server, app, session_id, *(token(f"t{i} ") for i in range(5)))
    before = app.statistics()["stream_outcomes"].get("disconnected", 0)
    seen: list[sk.StreamEvent] = []
    async with RawStream.open(server.port, f"/sessions/{session_id}/events", ALICE) as stream:
        decoder = sse.SSEDecoder()
        while len(seen) < 3:
            chunk = await stream.chunk()
            assert chunk is not None
            seen.extend(message.to_event() for message in decoder.feed(chunk))
    seen = seen[:3]
    # The server notices the disconnect on its own (the session is silent: no write
    # fails), ends the subscription, and leaves the session alone.
    await wait_until(lambda: app.statistics()["stream_outcomes"].get("disconnected", 0) > before)
    status = (await client.get(f"/sessions/{session_id}", headers=ALICE)).json()
    assert status["session"]["status"] == "active"
    await publish(server, app, session_id, *(token(f"t{i} ") for i in range(5, 8)), complete())
    headers = {**ALICE, "Last-Event-ID": str(seen[-1].seq)}
    rest = await read_events(client, session_id, headers, after=0)  # the header wins
    assert_contiguous(seen)
    assert_contiguous(rest, first=4)
    assert text_of(seen + rest) == "".join(f"t{i} " for i in range(8))
    assert rest[-1].event_type == sk.EventType.COMPLETE
    # Resuming with the after parameter gives the same tail.
    assert [e.to_json() for e in await read_events(client, session_id, after=3)] == [
        e.to_json() for e in rest
    ]


async def test_finished_stream_read_to_the_end_gives_204(client: httpx.AsyncClient) -> None:
    session_id = await create(client, prompt=PROMPT)
    events = await read_events(client, session_id)
    headers = {**ALICE, "Last-Event-ID": str(events[-1].seq)}
    response = await client.get(f"/sessions/{session_id}/events", headers=headers)
    assert response.status_code == 204


async def test_hundred_concurrent_clients_get_identical_sequences(
    client: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    clients = 100
    session_id = await create(client)
    await publish(server, app, session_id, token("ready "))
    results: dict[int, list[str]] = {}
    subscribed = 0
    all_live = anyio.Event()

    async def reader(index: int) -> None:
        nonlocal subscribed
        got: list[str] = []
        async with client.stream(
            "GET", f"/sessions/{session_id}/events", headers=ALICE
        ) as response:
            async for event in sse.aiter_events(response.aiter_bytes()):
                got.append(event.to_json())
                if len(got) == 1:
                    subscribed += 1
                    if subscribed == clients:
                        all_live.set()
        results[index] = got

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for index in range(clients):
                tg.start_soon(reader, index)
            await all_live.wait()
            # Every client is following live now.
            await publish(server, app, session_id, *(token(f"w{i} ") for i in range(50)))
            await publish(server, app, session_id, complete())
    expected = results[0]
    assert len(expected) == 52
    assert all(got == expected for got in results.values())


async def test_bad_resume_points_are_refused(client: httpx.AsyncClient) -> None:
    session_id = await create(client)
    url = f"/sessions/{session_id}/events"
    for params, headers, field in [
        ({"after": "-1"}, {}, "after"),
        ({"after": "abc"}, {}, "after"),
        ({"after": "1" * 30}, {}, "after"),
        ({}, {"Last-Event-ID": "x1"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "9" * 40}, "Last-Event-ID"),
    ]:
        response = await client.get(url, params=params, headers={**ALICE, **headers})
        assert response.status_code == 400, (params, headers)
        assert response.json()["error"]["field"] == field
    response = await client.get(url + "?after=1&after=2", headers=ALICE)
    assert response.status_code == 400


# -- REST -----------------------------------------------------------------------------------


async def test_session_lifecycle_over_rest(client: httpx.AsyncClient) -> None:
    session_id = await create(client, context={"topic": "rest"})
    other = await create(client, BOB)
    listed = (await client.get("/sessions", headers=ALICE)).json()["sessions"]
    ids = {s["session_id"] for s in listed}
    assert session_id in ids
    assert other not in ids
    response = await client.post(f"/sessions/{session_id}/pause", headers=ALICE)
    assert response.status_code == 200
    assert response.json()["session"]["status"] == "paused"
    response = await client.post(f"/sessions/{session_id}/pause", headers=ALICE)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_transition"
    response = await client.post(f"/sessions/{session_id}/resume", headers=ALICE)
    assert response.json()["session"]["status"] == "active"
    response = await client.post(f"/sessions/{session_id}/cancel", headers=ALICE)
    assert response.json()["session"]["status"] == "cancelled"
    events = await read_events(client, session_id)
    assert events[-1].is_final
    response = await client.delete(f"/sessions/{session_id}", headers=ALICE)
    assert response.status_code == 204
    response = await client.get(f"/sessions/{session_id}", headers=ALICE)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    stats = (await client.get("/stats", headers=ALICE)).json()
    assert stats["app"]["streams_total"] >= 1
    assert stats["registry"]


async def test_authentication_is_required_everywhere(client: httpx.AsyncClient) -> None:
    session_id = await create(client)
    for method, url in [
        ("GET", "/sessions"),
        ("POST", "/sessions"),
        ("GET", f"/sessions/{session_id}"),
        ("DELETE", f"/sessions/{session_id}"),
        ("GET", f"/sessions/{session_id}/events"),
        ("POST", f"/sessions/{session_id}/cancel"),
        ("GET", "/stats"),
    ]:
        response = await client.request(method, url)
        assert response.status_code == 401, (method, url)
        assert response.json()["error"]["code"] == "unauthenticated"
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_another_users_session_looks_missing(client: httpx.AsyncClient) -> None:
    session_id = await create(client, prompt=PROMPT)
    missing = sk.new_session_id()
    for method, url in [
        ("GET", "/sessions/{}"),
        ("DELETE", "/sessions/{}"),
        ("GET", "/sessions/{}/events"),
        ("HEAD", "/sessions/{}/events"),
        ("POST", "/sessions/{}/pause"),
        ("POST", "/sessions/{}/cancel"),
    ]:
        theirs = await client.request(method, url.format(session_id), headers=BOB)
        nobody = await client.request(method, url.format(missing), headers=BOB)
        assert theirs.status_code == nobody.status_code == 404, (method, url)
        if method != "HEAD":
            assert theirs.json()["error"]["code"] == nobody.json()["error"]["code"]
    # Alice's session is untouched.
    response = await client.get(f"/sessions/{session_id}", headers=ALICE)
    assert response.status_code == 200


async def test_malformed_requests_get_documented_errors(client: httpx.AsyncClient) -> None:
    async def post(content: bytes, **headers: str) -> httpx.Response:
        return await client.post(
            "/sessions",
            content=content,
            headers={**ALICE, "Content-Type": "application/json", **headers},
        )

    cases: list[tuple[httpx.Response, int, str, str | None]] = [
        (await post(b"{not json"), 400, "invalid", None),
        (await post(b'{"context": NaN}'), 400, "invalid", None),
        (await post(b"[1, 2]"), 400, "invalid", "body"),
        (await post(b'{"promt": "typo"}'), 400, "invalid", "promt"),
        (await post(b'{"prompt": 5}'), 400, "invalid", "prompt"),
        (await post(b'{"prompt": "a", "input": "b"}'), 400, "invalid", "input"),
        (await post(b'{"context": [1]}'), 400, "invalid", None),
        (await post(b'{"config": {"chunk_size": 0}}'), 400, "invalid", "chunk_size"),
        (await post(b'{"config": {"max_stream_time": null}}'), 400, "invalid", None),
        (await post(b"{}", **{"Content-Type": "text/plain"}), 400, "invalid", "Content-Type"),
        (await post(b'{"prompt": "' + b"x" * 5000 + b'"}'), 413, "too_large", "body"),
    ]

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    response = await client.post(
        "/sessions", content=chunked(), headers={**ALICE, "Content-Type": "application/json"}
    )
    cases.append((response, 413, "too_large", "body"))
    cases.append(
        (await client.get("/sessions/not%20an%20id", headers=ALICE), 400, "invalid", "session_id")
    )
    cases.append(
        (await client.get("/sessions/" + "a" * 200, headers=ALICE), 400, "invalid", "session_id")
    )
    cases.append((await client.get("/nowhere", headers=ALICE), 404, "not_found", None))
    cases.append((await client.get("/sessions/abc/nowhere", headers=ALICE), 404, "not_found", None))
    for response, status, code, field in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code
        assert error["message"]
        if field is not None:
            assert field in error.get("field", ""), error
    response = await client.put("/sessions", headers=ALICE)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"
    response = await client.get("/sessions/abc/cancel", headers=ALICE)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_client_config_overrides_shape_the_stream(client: httpx.AsyncClient) -> None:
    session_id = await create(
        client, prompt=PROMPT, config={"chunk_size": 1000, "enable_metadata": False}
    )
    events = await read_events(client, session_id)
    tokens = [e for e in events if e.event_type == sk.EventType.TOKEN]
    assert len(tokens) == 1
    assert tokens[0].content == AGENT.answer(PROMPT)
    # The session's compression_enabled decides gzip (the app's default is on).
    plain = await create(client, prompt=PROMPT, config={"compression_enabled": False})
    for session, encoded in [(session_id, True), (plain, False)]:
        response = await client.head(
            f"/sessions/{session}/events", headers={**ALICE, "Accept-Encoding": "gzip"}
        )
        assert ("content-encoding" in response.headers) is encoded


async def test_limits_and_history_gap() -> None:
    app = make_app(
        registry_config=sk.RegistryConfig(
            max_sessions=2, history_max_events=5, heartbeat_interval=None
        )
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
            await create(client)
            response = await client.post("/sessions", json={}, headers=ALICE)
            assert response.status_code == 429
            assert response.json()["error"]["code"] == "limit_exceeded"
            await publish(server, app, session_id, *(token(str(i)) for i in range(10)))
            response = await client.get(
                f"/sessions/{session_id}/events", params={"after": 1}, headers=ALICE
            )
            assert response.status_code == 410
            error = response.json()["error"]
            assert error["code"] == "history_gap"
            assert error["oldest_seq"] == 6
            await publish(server, app, session_id, complete())
            tail = await read_events(client, session_id, after=6)  # inside the window
            assert_contiguous(tail, first=7)
            assert tail[-1].event_type == sk.EventType.COMPLETE


async def test_anonymous_access_must_be_explicit() -> None:
    closed = StreamApp(registry_config=sk.RegistryConfig(), agent=AGENT)
    open_app = make_app(authenticate=None, allow_anonymous=True)
    with serve(closed) as denied, serve(open_app) as allowed:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{denied.url}/sessions")
            assert response.status_code == 401
            response = await client.post(f"{allowed.url}/sessions", json={"prompt": PROMPT})
            assert response.status_code == 201
            assert response.json()["session"]["user_id"] is None
            session_id = response.json()["session"]["session_id"]
            # Anonymous sessions are reachable by id, but never listed.
            response = await client.get(f"{allowed.url}/sessions/{session_id}")
            assert response.status_code == 200
            response = await client.get(f"{allowed.url}/sessions")
            assert response.json() == {"sessions": []}


async def test_registry_not_running_gives_503() -> None:
    app = StreamApp(registry_config=sk.RegistryConfig(), allow_anonymous=True)
    transport = httpx.ASGITransport(app=app)  # runs no lifespan
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for response in [
            await client.post("/sessions", json={}),
            await client.get(f"/sessions/{sk.new_session_id()}/events"),
            await client.get("/stats"),
        ]:
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "unavailable"


async def test_lifespan_context_runs_the_registry() -> None:
    app = StreamApp(registry_config=sk.RegistryConfig(), allow_anonymous=True, agent=AGENT)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/sessions", json={})
            assert response.status_code == 201
            assert len(await app.registry.list(user_id=None)) == 1


def test_constructor_checks_options() -> None:
    registry_config = sk.RegistryConfig()
    for options in [
        {"agent": "not callable"},
        {"authenticate": 3},
        {"allow_anonymous": 1},
        {"heartbeat_interval": 0},
        {"write_timeout": -1},
        {"retry_ms": -5},
        {"max_body_bytes": 0},
        {"client_config_fields": ["no_such_field"]},
        {"stream_config": {"chunk_size": 2}},
        {"registry_config": {"max_sessions": 2}},
    ]:
        with pytest.raises(sk.ValidationError):
            StreamApp(**options)  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError):
        StreamApp(object(), registry_config=registry_config)  # type: ignore[arg-type]


# -- deadlines, shutdown, other servers ----------------------------------------------------


async def test_half_open_client_is_dropped_by_the_write_deadline() -> None:
    app = make_app(
        write_timeout=0.3,
        registry_config=sk.RegistryConfig(history_max_bytes=64 * 1024 * 1024, max_lag=10_000),
    )
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
        # A client that sends its request, then never reads again.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        try:
            sock.sendall(
                f"GET /sessions/{session_id}/events HTTP/1.1\r\nHost: x\r\n"
                "Authorization: Bearer alice\r\n\r\n".encode()
            )
            await wait_until(lambda: app.statistics()["streams_open"] == 1)
            big = "z" * (256 * 1024)
            await publish(server, app, session_id, *(token(big) for _ in range(64)))
            await wait_until(
                lambda: app.statistics()["stream_outcomes"].get("write_timeout", 0) == 1
            )
            assert app.statistics()["streams_open"] == 0
        finally:
            sock.close()


async def test_server_shutdown_ends_streams_cleanly() -> None:
    app = make_app()
    server = ServerThread(app)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
            async with client.stream(
                "GET", f"/sessions/{session_id}/events", headers=ALICE
            ) as response:
                await wait_until(lambda: app.statistics()["streams_open"] == 1)
                server.call_soon(app.shutdown)
                server.request_stop()
                # The body ends properly: no protocol error, no hang.
                with anyio.fail_after(10):
                    body = await response.aread()
            assert body.startswith(b"retry: ")
        await server.wait_stopped()
        assert app.statistics()["stream_outcomes"] == {"shutdown": 1}
    finally:
        server.stop()


@pytest.mark.parametrize(("during", "outcome"), [("complete", "ended"), ("token", "shutdown")])
async def test_shutdown_during_a_write_records_whether_the_stream_was_over(
    during: str, outcome: str
) -> None:
    # The shutdown comes while the sender writes an event (the middleware calls it
    # before handing the write to uvicorn): after the final event the stream is over
    # anyway ("ended"); after any other it was cut short ("shutdown").
    app = make_app()
    marker = f"event: {during}\n".encode()

    async def stop_during_write(scope: Any, receive: Any, send: Any) -> None:
        async def sending(message: Any) -> None:
            if marker in message.get("body", b""):
                app.shutdown()
            await send(message)

        await app(scope, receive, sending)

    with serve(stop_during_write) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
            headers = {**ALICE, "Accept-Encoding": "identity"}  # the marker in plain bytes
            async with client.stream(
                "GET", f"/sessions/{session_id}/events", headers=headers
            ) as response:
                await wait_until(lambda: app.statistics()["streams_open"] == 1)
                events = []
                with anyio.fail_after(10):
                    await publish(server, app, session_id, token("a"))
                    async for event in sse.aiter_events(response.aiter_bytes()):
                        events.append(event)
                        if event.event_type == "token" and during == "complete":
                            await publish(server, app, session_id, complete())
            await wait_until(lambda: app.statistics()["streams_open"] == 0)
    assert [e.event_type for e in events] == ["token", *(["complete"] * (during == "complete"))]
    assert app.statistics()["stream_outcomes"] == {outcome: 1}


async def test_under_hypercorn() -> None:
    app = make_app()
    with serve(app, kind="hypercorn") as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client, prompt=PROMPT)
            events = await read_events(client, session_id)
            assert text_of(events) == AGENT.answer(PROMPT)
            assert events[-1].event_type == sk.EventType.COMPLETE


async def test_serve_events_streams_any_iterable() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            async with sk.stream_tokens(AGENT(PROMPT), sk.StreamConfig(stream_delay=0)) as stream:
                await serve_events(scope, receive, send, stream, compression=True)

    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            async with client.stream("GET", "/") as response:
                assert response.headers["content-encoding"] == "gzip"
                events = [e async for e in sse.aiter_events(response.aiter_bytes())]
            async with client.stream(
                "GET", "/", headers={"Accept": "application/x-ndjson"}
            ) as response:
                lines = [e async for e in ndjson.aiter_events(response.aiter_bytes())]
    assert text_of(events) == text_of(lines) == AGENT.answer(PROMPT)


# -- the examples, mounted in their frameworks -----------------------------------------------


def load_example(name: str) -> Any:
    import importlib.util

    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"asgi_example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["fastapi_app", "starlette_app"])
async def test_examples_serve_streams(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMKIT_EXAMPLE_FAST", "1")
    module = load_example(name)
    headers = {"Authorization": "Bearer demo-token-alice"}
    with serve(module.app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            prompt = "What is streamkit?"
            async with client.stream("GET", "/answer", params={"prompt": prompt}) as response:
                assert response.status_code == 200
                direct = [e async for e in sse.aiter_events(response.aiter_bytes())]
            assert text_of(direct) == module.agent.answer(prompt)
            response = await client.post(
                "/stream/sessions", json={"prompt": prompt}, headers=headers
            )
            assert response.status_code == 201, response.text
            body = response.json()
            assert body["urls"]["events"].startswith("/stream/sessions/")
            async with client.stream("GET", body["urls"]["events"], headers=headers) as response:
                mounted = [e async for e in sse.aiter_events(response.aiter_bytes())]
            assert text_of(mounted) == module.agent.answer(prompt)
            response = await client.get("/stream/sessions")
            assert response.status_code == 401
            assert json.loads(response.text)["error"]["code"] == "unauthenticated"


async def test_both_root_path_conventions_route_alike() -> None:
    app = StreamApp(registry_config=sk.RegistryConfig(), authenticate=bearer_authenticate)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app, root_path="/stream")
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=ALICE
        ) as client:
            full = await client.post("/stream/sessions", json={})  # path includes root_path
            relative = await client.get("/sessions")  # path already relative
            assert full.status_code == 201
            assert full.json()["urls"]["events"].startswith("/stream/sessions/")
            assert relative.status_code == 200
            assert len(relative.json()["sessions"]) == 1
            assert (await client.get("/streamsessions")).status_code == 404


async def test_registry_property_and_lifespan_reentry() -> None:
    app = StreamApp(registry_config=sk.RegistryConfig(), allow_anonymous=True)
    with pytest.raises(sk.ClosedError):
        _ = app.registry
    async with app.lifespan():
        assert await app.registry.list(user_id=None) == []
        with pytest.raises(sk.ClosedError):
            async with app.lifespan():
                pass
    with pytest.raises(sk.ClosedError):
        _ = app.registry


async def test_serve_events_checks_its_arguments() -> None:
    async def nothing() -> AsyncIterator[sk.StreamEvent]:
        return
        yield

    async def receive() -> dict[str, Any]:
        raise AssertionError("not reached")

    async def send(message: Any) -> None:
        raise AssertionError("not reached")

    with pytest.raises(sk.ValidationError):
        await serve_events({"type": "websocket"}, receive, send, nothing())
    with pytest.raises(sk.ValidationError):
        await serve_events({"type": "http"}, receive, send, nothing(), write_timeout=0)


async def test_heartbeats_go_on_as_streams_come_and_go() -> None:
    """One clock per event loop keeps every silent stream's heartbeats (both backends).

    A stream that ends leaves the others served, and a stream opened after every other
    one ended (the clock stopped) gets heartbeats again.
    """

    async def silent_stream(beats_wanted: int) -> int:
        beats = 0
        gone = anyio.Event()

        async def nothing() -> AsyncGenerator[sk.StreamEvent]:
            await anyio.sleep_forever()
            yield sk.StreamEvent(event_type="token", content="never")

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            nonlocal beats
            if message["type"] == "http.response.body":
                beats += message.get("body", b"").count(b": ping")
                if beats >= beats_wanted:
                    gone.set()

        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        async with aclosing(nothing()) as source:
            await serve_events(scope, receive, send, source, heartbeat_interval=0.02)
        return beats

    results: dict[str, int] = {}

    async def run(name: str, beats: int) -> None:
        results[name] = await silent_stream(beats)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "short", 1)
            tg.start_soon(run, "long", 4)
        await run("later", 2)
    assert results == {"short": 1, "long": 4, "later": 2}


async def _silent_receive() -> dict[str, Any]:
    """An ASGI ``receive`` whose client never sends anything (nor leaves)."""
    await anyio.sleep_forever()
    raise AssertionError("not reached")


async def test_a_write_that_never_ends_is_dropped_by_the_clock() -> None:
    """The write deadline without a server (both backends): the stream ends, not the test."""
    started = anyio.Event()

    async def events() -> AsyncGenerator[sk.StreamEvent]:
        yield sk.StreamEvent(event_type="token", content="one", seq=1)
        await anyio.sleep_forever()

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and b"one" in message.get("body", b""):
            started.set()
            await anyio.sleep_forever()  # a client that stopped reading

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with anyio.fail_after(10):
        async with aclosing(events()) as source:
            await serve_events(scope, _silent_receive, send, source, write_timeout=0.05)
    assert started.is_set()


@pytest.mark.parametrize("gzip", [False, True])
async def test_a_backlog_goes_out_in_one_write(gzip: bool) -> None:
    """Events already in the log when the stream starts are sent together (both backends)."""
    async with sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None)) as registry:
        session_id = (await registry.create()).session_id
        for text in ("a", "b", "c"):
            await registry.publish(session_id, token(text))
        await registry.publish(session_id, complete())
        bodies: list[bytes] = []

        async def send(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                bodies.append(message["body"])

        headers = [(b"accept-encoding", b"gzip")] if gzip else []
        scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
        with anyio.fail_after(10):
            async with registry.subscribe(session_id) as subscription:
                await serve_events(scope, _silent_receive, send, subscription, compression=gzip)
    wire = zlib.decompress(b"".join(bodies), 31) if gzip else b"".join(bodies)
    assert wire.count(b"event: token") == 3
    assert wire.count(b"event: complete") == 1
    assert len(bodies) <= 3  # the retry line, the backlog, the end of the body


@pytest.mark.parametrize("way", ["write_timeout", "disconnect"])
async def test_a_dropped_stream_leaves_its_task_uncancelled(way: str) -> None:
    """The sender's own cancellation is taken back (both backends): the task goes on.

    A write past its deadline and a client that leaves each end the stream by cancelling
    its sender; after ``serve_events`` returns, the caller's next wait must not raise.
    """
    written = anyio.Event()

    async def events() -> AsyncGenerator[sk.StreamEvent]:
        yield sk.StreamEvent(event_type="token", content="one", seq=1)
        await anyio.sleep_forever()

    async def receive() -> dict[str, Any]:
        await written.wait()
        if way == "disconnect":
            return {"type": "http.disconnect"}
        await anyio.sleep_forever()
        raise AssertionError("not reached")

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and b"one" in message.get("body", b""):
            written.set()
            if way == "write_timeout":
                await anyio.sleep_forever()  # a client that stopped reading

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with anyio.fail_after(10):
        async with aclosing(events()) as source:
            await serve_events(scope, receive, send, source, write_timeout=0.05)
        with anyio.CancelScope() as after:
            await anyio.lowlevel.checkpoint()
            await anyio.sleep(0)
    assert written.is_set()
    assert not after.cancelled_caught
    try:
        task = asyncio.current_task()
    except RuntimeError:  # Trio
        task = None
    assert task is None or task.cancelling() == 0  # no cancellation left counted


async def test_a_cancellation_from_outside_is_not_swallowed_by_a_drop() -> None:
    """The caller's cancellation, coming with the client's disconnect, still cancels it."""
    outer = anyio.CancelScope()
    written = anyio.Event()
    returned = False

    async def events() -> AsyncGenerator[sk.StreamEvent]:
        yield sk.StreamEvent(event_type="token", content="one", seq=1)
        await anyio.sleep_forever()

    async def receive() -> dict[str, Any]:
        await written.wait()
        outer.cancel()  # the server cancels the request's task as the client leaves
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and b"one" in message.get("body", b""):
            written.set()

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with anyio.fail_after(10):
        with outer:
            async with aclosing(events()) as source:
                await serve_events(scope, receive, send, source)
            returned = True
    assert outer.cancelled_caught
    assert not returned


@pytest.mark.parametrize("stop", [False, True])
async def test_many_streams_of_one_session_get_every_event_and_leave_as_they_please(
    stop: bool,
) -> None:
    """Streams of one session waiting behind each other (both backends).

    More of them than the log wakes at once: every stream that stays gets every event
    once and in order, one at a time or two in a backlog; those whose clients leave while
    they wait stop there and the others go on; a shutdown ends the waiting ones cleanly.
    """
    streams = 40
    async with sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None)) as registry:
        session_id = (await registry.create()).session_id
        seqs: list[list[int]] = [[] for _ in range(streams)]
        ended = [False] * streams
        leave = [anyio.Event() for _ in range(streams)]
        leaving = range(1, streams, 3)
        app = StreamApp(registry, allow_anonymous=True, heartbeat_interval=None)
        tally = Tally()

        async def serve(i: int) -> None:
            async def receive() -> dict[str, Any]:
                await leave[i].wait()
                return {"type": "http.disconnect"}

            async def send(message: Any) -> None:
                if message["type"] != "http.response.body":
                    return
                ids = [int(n) for n in re.findall(rb"^id: (\d+)$", message["body"], re.M)]
                seqs[i].extend(ids)
                ended[i] = not message.get("more_body", False)
                tally.add(len(ids))

            scope = {
                "type": "http",
                "method": "GET",
                "path": f"/sessions/{session_id}/events",
                "root_path": "",
                "query_string": b"",
                "headers": [(b"accept", b"text/event-stream")],
            }
            await app(scope, receive, send)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(streams):
                    tg.start_soon(serve, i)
                await anyio.wait_all_tasks_blocked()  # every stream waits for the log
                await registry.publish(session_id, token("a"))
                await tally.reached(streams)
                for i in leaving:
                    leave[i].set()
                await anyio.wait_all_tasks_blocked()
                staying = streams - len(leaving)
                await registry.publish(session_id, token("b"))
                await tally.reached(streams + staying)
                await registry.publish(session_id, token("c"))
                await registry.publish(session_id, token("d"))
                await tally.reached(streams + 3 * staying)
                if stop:
                    app.shutdown()
                else:
                    await registry.publish(session_id, complete())
    for i in range(streams):
        if i in leaving:
            assert seqs[i] == [1]
        else:
            assert seqs[i] == ([1, 2, 3, 4] if stop else [1, 2, 3, 4, 5])
            assert ended[i]


# -- in-process details (httpx's ASGITransport: no server, no lifespan) ----------------------


async def finished_session(client: httpx.AsyncClient) -> str:
    created = await client.post("/sessions", json={"prompt": PROMPT})
    session_id = str(created.json()["session"]["session_id"])
    await client.get(f"/sessions/{session_id}/events")  # returns once the agent is done
    return session_id


async def test_content_negotiation_details() -> None:
    app = make_app(authenticate=None, allow_anonymous=True)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            url = f"/sessions/{await finished_session(client)}/events"
            for accept, media in [
                ("application/x-ndjson;q=0.5, text/event-stream", "text/event-stream"),
                ("application/x-ndjson;q=nope", "text/event-stream"),
                ("application/x-ndjson;q=2", "text/event-stream"),
                ("text/event-stream;q=0.1, application/ndjson", "application/x-ndjson"),
                ("*/*", "text/event-stream"),
            ]:
                response = await client.head(url, headers={"Accept": accept})
                assert response.headers["content-type"].startswith(media), accept
            for accept_encoding, gzip in [
                ("gzip;q=0, *", False),
                ("*", True),
                ("br, identity", False),
                ("deflate, GZIP;q=0.5", True),
            ]:
                response = await client.head(url, headers={"Accept-Encoding": accept_encoding})
                assert ("content-encoding" in response.headers) is gzip, accept_encoding
            response = await client.get(url, params={"after": 10_000})
            assert response.status_code == 400
            assert response.json()["error"]["field"] == "after"


async def test_authenticate_may_be_async_or_refuse() -> None:
    async def authenticate(scope: Any) -> str | None:
        await anyio.lowlevel.checkpoint()
        user = bearer_authenticate(scope)
        if user == "mallory":
            raise sk.PermissionDenied("mallory is banned")
        if user == "broken":
            return 42  # type: ignore[return-value]
        return user

    app = make_app(authenticate=authenticate)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/sessions", headers=ALICE)).status_code == 200
            assert (await client.get("/sessions")).status_code == 401
            response = await client.get("/sessions", headers=auth("mallory"))
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "forbidden"
            with pytest.raises(TypeError, match="authenticate must return"):
                await client.get("/sessions", headers=auth("broken"))


async def test_prompts_need_an_agent_and_a_failing_agent_cancels() -> None:
    def failing_agent(prompt: str) -> list[str]:
        raise RuntimeError("the model is down")

    plain = make_app(agent=None, expose_stats=False)
    failing = make_app(agent=failing_agent)
    async with plain.lifespan(), failing.lifespan():
        for app in (plain, failing):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                if app is plain:
                    response = await client.post("/sessions", json={"prompt": "hi"}, headers=ALICE)
                    assert response.status_code == 400
                    assert response.json()["error"]["field"] == "prompt"
                    response = await client.post("/sessions", headers=ALICE)  # empty body
                    assert response.status_code == 201
                    assert (await client.get("/stats", headers=ALICE)).status_code == 404
                else:
                    with pytest.raises(RuntimeError, match="the model is down"):
                        await client.post("/sessions", json={"prompt": "hi"}, headers=ALICE)
                    [session] = await app.registry.list(user_id="alice")
                    assert session.status == sk.SessionState.CANCELLED


async def call_app(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[Any]:
    """Run one ASGI call by hand: ``incoming`` messages in, the sent messages out."""
    sent: list[Any] = []
    queue = list(incoming)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("not reached")

    async def send(message: Any) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await app(scope, receive, send)
    return sent


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer alice"), *headers],
    }


async def test_raw_asgi_edge_cases() -> None:
    app = make_app()
    async with app.lifespan():
        bad_length = http_scope("POST", "/sessions", [(b"content-length", b"12x")])
        sent = await call_app(app, bad_length, [])
        assert sent[0]["status"] == 400
        assert b"Content-Length" in sent[1]["body"]
        # The client leaves while sending its body: nothing is answered.
        body_then_gone: list[dict[str, Any]] = [
            {"type": "http.request", "body": b"{", "more_body": True},
            {"type": "http.disconnect"},
        ]
        assert await call_app(app, http_scope("POST", "/sessions", []), body_then_gone) == []
        # The lifespan protocol: a second startup while the first runs fails cleanly.
        sent = await call_app(app, {"type": "lifespan"}, [{"type": "lifespan.startup"}])
        assert sent[0]["type"] == "lifespan.startup.failed"
        assert "already running" in sent[0]["message"]


async def test_an_entered_registry_can_be_given() -> None:
    async with sk.SessionRegistry(sk.RegistryConfig()) as registry:
        app = StreamApp(registry, authenticate=bearer_authenticate)
        assert app.registry is registry
        session = await registry.create(user_id="alice")
        await registry.publish(session.session_id, token("hi"), user_id="alice")
        await registry.publish(session.session_id, complete(), user_id="alice")
        async with app.lifespan():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                events = await read_events(client, session.session_id)
        assert [e.content for e in events] == ["hi", ""]


async def test_sse_reader_that_falls_behind_is_told_and_can_resume() -> None:
    app = make_app(
        registry_config=sk.RegistryConfig(
            max_lag=50, history_max_bytes=256 * 1024 * 1024, heartbeat_interval=None
        )
    )
    payload = "q" * (64 * 1024)
    count = 600
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            session_id = await create(client)
        url = f"/sessions/{session_id}/events"
        async with RawStream.open(
            server.port, url, {**ALICE, "Accept-Encoding": "identity"}
        ) as stream:
            # The reader does not read while the session runs on, in small bursts.
            for _ in range(count // 10):
                await publish(server, app, session_id, *(token(payload) for _ in range(10)))
            decoder = sse.SSEDecoder(comments=True)
            items: list[sse.SSEMessage | sse.SSEComment] = []
            while (chunk := await stream.chunk()) is not None:
                items.extend(decoder.feed(chunk))
        received = [i.to_event() for i in items if isinstance(i, sse.SSEMessage)]
        # A slow run may also carry the app's heartbeat comments; one error, at the end.
        comments = [i for i in items if isinstance(i, sse.SSEComment)]
        [comment] = [c for c in comments if c.text.startswith("error ")]
        assert comments[-1] is comment
        error = json.loads(comment.text.removeprefix("error "))
        assert error["code"] == "lagged"
        assert 0 < len(received) < count
        assert_contiguous(received)
        assert error["after"] == received[-1].seq  # everything read was delivered
        # The client has the whole body a moment before the server records why.
        await wait_until(lambda: app.statistics()["stream_outcomes"].get("failed") == 1)
        # It resumes from its last event while the history still holds it.
        await publish(server, app, session_id, complete())
        async with httpx.AsyncClient(base_url=server.url) as client:
            rest = await read_events(client, session_id, after=received[-1].seq)
        assert_contiguous(rest, first=len(received) + 1)
        assert rest[-1].event_type == sk.EventType.COMPLETE
