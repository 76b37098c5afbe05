"""Bad HTTP input against StreamApp under uvicorn: each gets its documented error.

After every refusal the server keeps serving, and a session accepted before it is
intact: the same events, in the same order, from the first to the last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

import streamkit as sk
from streamkit import sse

from ..asgi_helpers import RawStream, ServerThread, publish, serve, token, wait_until
from .conftest import ALICE, PROMPT, create, make_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, MutableMapping

    from streamkit.asgi import StreamApp

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def app() -> StreamApp:
    return make_app()


@pytest.fixture(scope="module")
def server(app: StreamApp) -> Iterator[ServerThread]:
    with serve(app) as running:
        yield running


async def read_all(
    client: httpx.AsyncClient, session_id: str, **params: Any
) -> list[sk.StreamEvent]:
    async with client.stream(
        "GET", f"/sessions/{session_id}/events", headers=ALICE, params=params
    ) as response:
        assert response.status_code == 200, await response.aread()
        return [event async for event in sse.aiter_events(response.aiter_bytes())]


def check_error(response: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    if field is not None:
        assert error.get("field") == field, error


async def test_bad_bodies_are_refused_and_nothing_accepted_is_lost(
    http: httpx.AsyncClient,
) -> None:
    session_id = await create(http, prompt=PROMPT)
    before = await read_all(http, session_id)
    assert before[-1].event_type == sk.EventType.COMPLETE

    async def post(body: bytes, content_type: str = "application/json") -> httpx.Response:
        return await http.post(
            "/sessions", content=body, headers={**ALICE, "Content-Type": content_type}
        )

    async def chunked(size: int) -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(size // 1000):
            yield b"y" * 1000
        yield b'"}'

    cases: list[tuple[bytes | None, str, int, str, str | None]] = [
        (b"{", "application/json", 400, "invalid", None),
        (b"\xff\xfe{}", "application/json", 400, "invalid", None),
        (b'{"a": 1} trailing', "application/json", 400, "invalid", None),
        (b'{"context": Infinity}', "application/json", 400, "invalid", None),
        (b'"just a string"', "application/json", 400, "invalid", "body"),
        (b"null", "application/json", 400, "invalid", "body"),
        (b"[" * 10_00 + b"]" * 10_00, "application/json", 400, "invalid", None),
        (b'{"prompt": ["a"]}', "application/json", 400, "invalid", "prompt"),
        (b'{"prompt": ""}', "application/json", 400, "invalid", "prompt"),
        (b'{"prompt": "\\ud800"}', "application/json", 400, "invalid", "prompt"),
        (b'{"context": "text"}', "application/json", 400, "invalid", None),
        (b'{"config": []}', "application/json", 400, "invalid", "config"),
        (b'{"config": {"chunk_size": "3"}}', "application/json", 400, "invalid", "chunk_size"),
        (b'{"config": {"chunk_size": true}}', "application/json", 400, "invalid", "chunk_size"),
        (b'{"config": {"stream_delay": 1}}', "application/json", 400, "invalid", None),
        (b'{"retry": 1}', "application/json", 400, "invalid", "retry"),
        (b"prompt=x", "application/x-www-form-urlencoded", 400, "invalid", "Content-Type"),
        (b'{"prompt": "' + b"x" * 4100 + b'"}', "application/json", 413, "too_large", "body"),
        (None, "application/json", 413, "too_large", "body"),  # chunked, no length
    ]
    for body, content_type, status, code, field in cases:
        if body is None:
            response = await http.post(
                "/sessions",
                content=chunked(8000),
                headers={**ALICE, "Content-Type": content_type},
            )
        else:
            response = await post(body, content_type)
        check_error(response, status, code, field)

    # Nothing was created by the refused requests; the earlier session is whole.
    listing = await http.get("/sessions", headers=ALICE)
    ids = [s["session_id"] for s in listing.json()["sessions"]]
    assert session_id in ids
    assert [e.to_dict() for e in await read_all(http, session_id)] == [e.to_dict() for e in before]
    # And the server still creates and serves sessions.
    again = await create(http, prompt=PROMPT)
    assert (await read_all(http, again))[-1].event_type == sk.EventType.COMPLETE


async def test_bad_resume_points(
    http: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    session_id = await create(http)
    await publish(server, app, session_id, token("a"), token("b"))
    url = f"/sessions/{session_id}/events"
    for after in ["abc", "-1", "+1", "1e3", "0x10", " 1", "1.0", "\u0661", "9" * 20, "1\r\n"]:
        response = await http.get(url, params={"after": after}, headers=ALICE)
        check_error(response, 400, "invalid", "after")
        assert "\r" not in response.text
        assert "\n" not in response.text
    # A number past the head (even the largest accepted) cannot be resumed after.
    for after in ["3", "9" * 19]:
        response = await http.get(url, params={"after": after}, headers=ALICE)
        check_error(response, 400, "invalid", "after")
    response = await http.get(url, params={"after": ["1", "2"]}, headers=ALICE)
    check_error(response, 400, "invalid", "after")
    for header in ["x" * 21, "9" * 200, "abc", "-5", "1 2"]:
        response = await http.get(url, headers={**ALICE, "Last-Event-ID": header})
        check_error(response, 400, "invalid", "Last-Event-ID")
    many = {f"p{i}": "1" for i in range(40)}
    response = await http.get(url, params=many, headers=ALICE)
    check_error(response, 400, "invalid", "query")
    # The header wins over the query; blank counts as absent; the session is intact.
    await publish(server, app, session_id, sk.StreamEvent(event_type="complete"))
    events = await read_all(http, session_id, after="0")
    assert [e.seq for e in events] == [1, 2, 3]
    async with http.stream("GET", url, headers={**ALICE, "Last-Event-ID": "2"}) as response:
        tail = [e async for e in sse.aiter_events(response.aiter_bytes())]
    assert [e.seq for e in tail] == [3]
    async with http.stream("GET", url, headers={**ALICE, "Last-Event-ID": ""}) as response:
        assert len([e async for e in sse.aiter_events(response.aiter_bytes())]) == 3


async def test_unknown_routes_and_methods(http: httpx.AsyncClient) -> None:
    session_id = await create(http)
    for path in ["/", "/session", "/sessions/x/y/z", f"/sessions/{session_id}/evnts", "/ws/x"]:
        check_error(await http.get(path, headers=ALICE), 404, "not_found", None)
    allowed = {
        "/sessions": "GET, HEAD, POST",
        f"/sessions/{session_id}": "GET, HEAD, DELETE",
        f"/sessions/{session_id}/events": "GET, HEAD",
        f"/sessions/{session_id}/pause": "POST",
        f"/sessions/{session_id}/resume": "POST",
        f"/sessions/{session_id}/cancel": "POST",
        "/stats": "GET, HEAD",
    }
    for path, allow in allowed.items():
        for method in ["PUT", "PATCH", "DELETE", "POST", "GET", "OPTIONS", "TRACE"]:
            if method in allow.split(", "):
                continue
            response = await http.request(method, path, headers=ALICE)
            check_error(response, 405, "method_not_allowed", None)
            assert response.headers["allow"] == allow
    # 405 is answered before authentication: it tells nothing about sessions.
    response = await http.put(f"/sessions/{session_id}")
    assert response.status_code == 405
    # The session was not touched by any of it.
    response = await http.get(f"/sessions/{session_id}", headers=ALICE)
    assert response.json()["session"]["status"] == "active"


async def test_client_retry_is_ignored(
    http: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    session_id = await create(http)
    await publish(server, app, session_id, token("x"), sk.StreamEvent(event_type="complete"))
    async with http.stream(
        "GET",
        f"/sessions/{session_id}/events",
        params={"retry": "1"},
        headers={**ALICE, "Retry": "1", "Retry-After": "0"},
    ) as response:
        body = (await response.aread()).decode()
    assert response.status_code == 200
    # The server's hint (retry_ms=3000) comes first; the client's value appears nowhere.
    assert body.startswith("retry: 3000\nid: ")
    assert body.count("retry:") == 1


async def test_crlf_never_reaches_a_header_or_an_sse_field(
    http: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    # Event types and ids that could break an SSE field are refused when made.
    for bad in [{"event_type": "token\r\nevent: x"}, {"event_type": "x-a\nb"}]:
        with pytest.raises(sk.ValidationError):
            sk.StreamEvent(**bad)
    with pytest.raises(sk.ValidationError):
        sk.StreamEvent(event_type="token", event_id="1\r\nid: 99")
    # Content and metadata with line breaks travel inside data lines and come back whole.
    session_id = await create(http)
    nasty = "a\r\nevent: complete\r\nid: 99\n\ndata: forged\rretry: 1\n"
    await publish(
        server,
        app,
        session_id,
        sk.StreamEvent(event_type="token", content=nasty, metadata={"k": nasty}),
        sk.StreamEvent(event_type="complete"),
    )
    async with RawStream.open(
        server.port, f"/sessions/{session_id}/events", {"Authorization": "Bearer token-alice"}
    ) as raw:
        body = b""
        while (chunk := await raw.chunk()) is not None:
            body += chunk
    text = body.decode()
    field_lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    assert [line for line in field_lines if line.startswith("retry:")] == ["retry: 3000"]
    assert [line for line in field_lines if line.startswith("event:")] == [
        "event: token",
        "event: complete",
    ]
    assert "\r" not in text
    events = [e async for e in sse.aiter_events(_once(body))]
    assert [e.event_type for e in events] == [sk.EventType.TOKEN, sk.EventType.COMPLETE]
    assert events[0].content == nasty
    assert events[0].metadata["k"] == nasty


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_invalid_user_ids_from_authenticate_are_refused() -> None:
    def authenticate(scope: Any) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-user":
                return str(value.decode("latin-1"))
        return None

    app = make_app(authenticate=authenticate)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/sessions", json={}, headers={"X-User": "alice"})
            assert response.status_code == 201
            for user in ["al ice", "a" * 129, "alice@example.com", "alice%0d%0aX-Evil:%201"]:
                response = await client.post("/sessions", json={}, headers={"X-User": user})
                check_error(response, 401, "unauthenticated", None)
                assert user not in response.text
                assert "x-evil" not in response.headers
    # Values a client cannot put in a header (CR, LF) through a raw ASGI call.
    sent: list[MutableMapping[str, Any]] = []

    def crlf_user(scope: Any) -> str:
        return "alice\r\nSet-Cookie: x=1"

    raw_app = make_app(authenticate=crlf_user)
    async with raw_app.lifespan():
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/sessions",
            "root_path": "",
            "query_string": b"",
            "headers": [],
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await raw_app(scope, receive, send)
    assert sent[0]["status"] == 401
    for _, value in sent[0]["headers"]:
        assert b"\r" not in value
        assert b"\n" not in value
    assert b"Set-Cookie" not in sent[1]["body"]


async def test_root_path_reaches_location_quoted() -> None:
    app = make_app()
    sent: list[MutableMapping[str, Any]] = []
    async with app.lifespan():
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api\r\nX-Evil: 1/sessions",
            "root_path": "/api\r\nX-Evil: 1",
            "query_string": b"",
            "headers": [(b"authorization", b"Bearer token-alice")],
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
    assert sent[0]["status"] == 201
    location = dict(sent[0]["headers"])[b"location"]
    assert location.startswith(b"/api%0D%0AX-Evil%3A%201/sessions/")
    assert b"\r" not in sent[1]["body"]
    assert b"\n" not in sent[1]["body"]


async def test_hundreds_of_bad_requests_leave_the_server_serving(
    http: httpx.AsyncClient, app: StreamApp
) -> None:
    session_id = await create(http, prompt=PROMPT)
    good = await read_all(http, session_id)
    # The server finishes the stream just after the client has its last byte.
    await wait_until(lambda: app.statistics()["streams_open"] == 0)

    async def garbage(i: int) -> None:
        kind = i % 4
        if kind == 0:
            response = await http.post("/sessions", content=b"{" * (i % 50 + 1), headers=ALICE)
        elif kind == 1:
            response = await http.get(
                f"/sessions/{session_id}/events", params={"after": str(-i)}, headers=ALICE
            )
        elif kind == 2:
            response = await http.get(f"/sessions/{sk.new_session_id()}/events", headers=ALICE)
        else:
            response = await http.request("PATCH", "/sessions", headers=ALICE)
        assert 400 <= response.status_code < 500

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(1, 201):
                tg.start_soon(garbage, i)
    assert app.statistics()["streams_open"] == 0
    assert [e.to_dict() for e in await read_all(http, session_id)] == [e.to_dict() for e in good]


async def test_a_trickled_body_is_cut_by_the_body_timeout() -> None:
    app = make_app(body_timeout=0.3)
    with serve(app) as server:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        async with stream:
            await stream.send(
                b"POST /sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-alice\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                b'{"prompt": '
            )
            # Nothing more is sent: the server answers 408 and closes the connection.
            response = b""
            with anyio.fail_after(10):
                while True:
                    try:
                        response += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
        assert response.startswith(b"HTTP/1.1 408 ")
        assert b'"code":"request_timeout"' in response
        async with httpx.AsyncClient(base_url=server.url) as client:
            listed = (await client.get("/sessions", headers=ALICE)).json()["sessions"]
            assert listed == []  # nothing was created
            await create(client)  # and the server still serves
    with pytest.raises(sk.ValidationError):
        make_app(body_timeout=0)
