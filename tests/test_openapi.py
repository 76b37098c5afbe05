"""The OpenAPI 3.1 document of StreamApp: valid, served, and exactly the routes answered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
from openapi_spec_validator import validate

import streamkit as sk
from streamkit.asgi import StreamApp
from streamkit.testing import SimulatedAgent

from .asgi_helpers import ServerThread, auth, bearer_authenticate, publish, serve, token

pytestmark = pytest.mark.anyio

ALICE = auth("alice")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Paths no document lists: each must be answered 404 (or 405 where the path exists).
OUTSIDE = [
    "/",
    "/ws",
    "/docs",
    "/openapi.yaml",
    "/session",
    "/sessions/{session_id}/ws",
    "/sessions/{session_id}/other",
    "/sessions/{session_id}/events/more",
    "/stats/more",
    "/chat/{chat_id}/other",
    "/chat/{chat_id}",
    "/v1/chat",
    "/v1/chat/completions/more",
]


def make_app(**options: Any) -> StreamApp:
    return StreamApp(
        registry_config=sk.RegistryConfig(
            max_sessions=10_000, heartbeat_interval=None, history_max_events=3
        ),
        agent=SimulatedAgent(seed=1, realtime=False),
        authenticate=bearer_authenticate,
        stream_config=sk.StreamConfig(stream_delay=0, heartbeat_interval=None),
        **options,
    )


@pytest.fixture(scope="module", params=[True, False], ids=["stats", "no-stats"])
def app(request: pytest.FixtureRequest) -> StreamApp:
    return make_app(expose_stats=request.param)


@pytest.fixture(scope="module")
def server(app: StreamApp) -> Iterator[ServerThread]:
    with serve(app) as running:
        yield running


@pytest.fixture
async def client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        yield http


async def new_session(client: httpx.AsyncClient) -> str:
    response = await client.post("/sessions", json={}, headers=ALICE)
    assert response.status_code == 201, response.text
    return str(response.json()["session"]["session_id"])


def conforms(document: dict[str, Any], name: str, instance: object) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


async def test_the_served_document_is_valid_openapi_3_1(
    client: httpx.AsyncClient, app: StreamApp
) -> None:
    response = await client.get("/openapi.json")  # no credentials: answered before auth
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document == app.openapi()
    head = await client.head("/openapi.json")
    assert head.status_code == 200
    assert head.content == b""


async def test_every_route_answered_is_documented_and_nothing_more(
    client: httpx.AsyncClient, app: StreamApp
) -> None:
    document = app.openapi()
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method.upper() in METHODS
    }
    assert ("/stats", "GET") in documented or not app._expose_stats
    session_id = ""
    for path in sorted({path for path, _ in documented} | set(OUTSIDE)):
        for method in METHODS:
            if not session_id:
                # A session of the caller's, so that a 404 can only mean "no such
                # endpoint"; an ended one, so that its event stream ends too.
                session_id = await new_session(client)
                await client.post(f"/sessions/{session_id}/cancel", headers=ALICE)
            url = path.replace("{session_id}", session_id)
            response = await client.request(method, url, headers=ALICE)
            if method == "DELETE" and response.status_code == 204:
                session_id = ""
            answered = response.status_code not in (404, 405)
            assert answered == ((path, method) in documented), (method, path, response)


async def test_documented_bodies_match_what_the_app_sends(
    client: httpx.AsyncClient, app: StreamApp
) -> None:
    document = app.openapi()
    created = await client.post("/sessions", json={"prompt": "hi"}, headers=ALICE)
    conforms(document, "StreamkitCreated", created.json())
    urls = created.json()["urls"]
    assert created.headers["location"] == urls["self"]
    session_id = created.json()["session"]["session_id"]
    async with client.stream("GET", urls["events"], headers=ALICE) as response:
        await response.aread()
    status = (await client.get(urls["self"], headers=ALICE)).json()
    conforms(document, "StreamkitSessionStatus", status)
    statistics = document["components"]["schemas"]["StreamkitSessionStatistics"]
    assert set(status["statistics"]) == set(statistics["properties"])
    stream = document["components"]["schemas"]["StreamkitStreamStats"]
    assert set(status["statistics"]["stream"]) == set(stream["properties"])
    listed = (await client.get("/sessions", headers=ALICE)).json()
    conforms(document, "StreamkitSessionList", listed)
    # 409: invalid_transition (the state does not allow it), with the error schema.
    refused = await client.post(f"/sessions/{session_id}/pause", headers=ALICE)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "invalid_transition"
    conforms(document, "StreamkitError", refused.json())
    live = await new_session(client)
    paused = await client.post(f"/sessions/{live}/pause", headers=ALICE)
    conforms(document, "StreamkitSessionStatus", paused.json())
    if app._expose_stats:
        stats = (await client.get("/stats", headers=ALICE)).json()
        conforms(document, "StreamkitStats", stats)
        schemas = document["components"]["schemas"]
        assert set(stats["registry"]) == set(schemas["StreamkitRegistryStatistics"]["properties"])
        assert set(stats["app"]) == set(schemas["StreamkitAppStatistics"]["properties"])
    for response in [
        await client.get("/sessions"),  # 401
        await client.get("/nowhere"),  # 404 before authentication
        await client.put("/sessions"),  # 405 before authentication
    ]:
        conforms(document, "StreamkitError", response.json())
        code = response.json()["error"]["code"]
        assert (
            code
            in document["components"]["schemas"]["StreamkitError"]["properties"]["error"][
                "properties"
            ]["code"]["enum"]
        )


async def test_a_plain_get_of_a_trimmed_session_is_410_as_documented(
    client: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    session_id = await new_session(client)
    await publish(server, app, session_id, *(token(str(i)) for i in range(5)))
    response = await client.get(f"/sessions/{session_id}/events", headers=ALICE)
    assert response.status_code == 410
    conforms(app.openapi(), "StreamkitError", response.json())
    assert response.json()["error"]["oldest_seq"] == 3
    events = app.openapi()["paths"]["/sessions/{session_id}/events"]["get"]
    assert "410" in events["responses"]
    assert "trimmed" in events["description"]


def test_agent_routes_are_listed_only_when_served() -> None:
    paths = set(make_app(chat_path="/api/chat").openapi()["paths"])
    assert {"/api/chat", "/api/chat/{chat_id}/stream", "/api/chat/{chat_id}/stop"} <= paths
    assert "/v1/chat/completions" in paths
    bare = set(StreamApp(authenticate=bearer_authenticate).openapi()["paths"])
    assert not any("chat" in path for path in bare)
    validate(make_app(chat_path=None, openai_compatible=False).openapi())


def test_prefix_for_merging_into_a_parent_document() -> None:
    app = make_app()
    document = app.openapi(prefix="/streams")
    validate(document)
    assert set(document["paths"]) == {"/streams" + path for path in app.openapi()["paths"]}
    assert all(name.startswith("Streamkit") for name in document["components"]["schemas"])
    with pytest.raises(sk.ValidationError, match="prefix"):
        app.openapi(prefix="streams")


async def test_served_under_a_mount_point_names_it_as_server() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    stream_app = make_app()
    parent = Starlette(routes=[Mount("/streams", app=stream_app)], lifespan=stream_app.lifespan)
    with serve(parent) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            document = (await client.get("/streams/openapi.json")).json()
    validate(document)
    assert document["servers"] == [{"url": "/streams"}]
