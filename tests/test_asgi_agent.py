"""StreamApp's agent routes under a real uvicorn, read by clients nobody here wrote.

* ``useChat``'s transport: the ``ai`` npm package's ``DefaultChatTransport`` in node
  sends a message to ``POST /chat``, the connection is cut mid-answer, and it resumes
  with ``GET /chat/{id}/stream`` (the package's own reconnect): the message it builds
  is the whole answer, nothing lost, nothing doubled. The package is installed into a
  temporary folder (the fixture of test_ui_message_stream.py; skipped without npm).
* The ``openai`` Python package's ``chat.completions.create(stream=True)``, sync and
  async, against ``POST /v1/chat/completions``, with text and with tool calls; a
  dropped client resumes through ``/sessions/{id}/events`` by the session id header.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

import streamkit as sk
from streamkit import sse
from streamkit.asgi import StreamApp
from streamkit.parts import ToolCallEnd, ToolCallStart
from streamkit.testing import SimulatedAgent, SimulatedToolAgent

from .asgi_helpers import (
    ServerThread,
    auth,
    bearer_authenticate,
    make_stream_app,
    serve,
    wait_until,
)
from .test_ui_message_stream import ai_package

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <async_generator object "
        "(AsyncStream|Response|SSEDecoder|HTTP|_iter|async_iter):"
        "pytest.PytestUnraisableExceptionWarning"
    ),
]

__all__ = ["ai_package"]

ALICE = auth("alice")
BOB = auth("bob")
TOOLS = SimulatedToolAgent(seed=3, realtime=False)
TEXT = SimulatedAgent(seed=5, realtime=False)
RESUME_JS = Path(__file__).parent / "js" / "chat_resume.mjs"


class GatedAgent:
    """The tool agent, held after ``hold_after`` items until the test opens the gate."""

    def __init__(self, hold_after: int) -> None:
        self.hold_after = hold_after
        self.gate = threading.Event()
        self.held = threading.Event()

    async def __call__(self, prompt: str) -> AsyncIterator[Any]:
        for index, item in enumerate(TOOLS.parts(prompt)):
            if index == self.hold_after:
                self.held.set()
                await anyio.to_thread.run_sync(self.gate.wait, abandon_on_cancel=True)
            yield item


class Agents:
    """The app's agent: picks the gated one for prompts starting with ``gated``."""

    def __init__(self) -> None:
        self.gated: dict[str, GatedAgent] = {}

    def __call__(self, prompt: str) -> Any:
        gated = self.gated.get(prompt)
        if gated is not None:
            return gated(prompt)
        if prompt.startswith("text:"):
            return TEXT(prompt)
        return TOOLS(prompt)


AGENTS = Agents()


def make_app(**options: Any) -> StreamApp:
    return make_stream_app(AGENTS, **{"heartbeat_interval": 0.2, "max_body_bytes": 4096, **options})


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


def gated(prompt: str, hold_after: int) -> GatedAgent:
    agent = AGENTS.gated[prompt] = GatedAgent(hold_after)
    return agent


def ui_body(chat_id: str, prompt: str) -> dict[str, Any]:
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": prompt}]}
    return {"id": chat_id, "messages": [message], "trigger": "submit-message"}


def ui_chunks(data: bytes) -> list[Any]:
    blocks = [block for block in data.split(b"\n\n") if block.startswith(b"data: ")]
    assert blocks[-1] == b"data: [DONE]"
    return [json.loads(block[6:]) for block in blocks[:-1]]


# -- useChat: the ai package's own transport ------------------------------------------------


async def test_use_chat_transport_resumes_after_a_cut(
    ai_package: Path, server: ServerThread, app: StreamApp
) -> None:
    prompt = "gated: a day out"
    agent = gated(prompt, hold_after=len(TOOLS.parts(prompt)) // 2)
    shutil.copy(RESUME_JS, ai_package / "chat_resume.mjs")
    command = ["node", "chat_resume.mjs", server.url, "chat/1 é", prompt, "6"]
    lines: list[dict[str, Any]] = []
    with anyio.fail_after(60):
        async with await anyio.open_process(command, cwd=ai_package) as process:
            assert process.stdout is not None
            async for line in _lines(process.stdout):
                lines.append(json.loads(line))
                if "replayed" in lines[-1]:
                    # The resumed stream replayed up to the cut, the session is still
                    # held: what follows comes live.
                    assert not agent.gate.is_set()
                    agent.gate.set()
            await process.wait()
        assert process.returncode == 0
    assert lines[0] == {"cut": 6}
    assert lines[1] == {"replayed": 6}
    result = lines[2]
    assert result["errors"] == []
    # The replay starts from the answer's first chunk: it begins with what was read
    # before the cut, then goes on; the message it builds is the whole answer once.
    assert result["chunks"][:6] == result["before"]
    assert result["chunks"][0]["type"] == "start"
    assert result["chunks"][-1]["type"] == "finish"
    message = result["message"]
    text = "".join(p["text"] for p in message["parts"] if p["type"] == "text")
    assert text == TOOLS.answer(prompt)
    tools = [p for p in message["parts"] if p["type"].startswith("tool-")]
    assert [p["type"] for p in tools] == ["tool-search", "tool-get_weather", "tool-get_time"]
    assert [p["state"] for p in tools] == ["output-available", "output-available", "output-error"]
    assert any(p["type"] == "reasoning" for p in message["parts"])
    assert message["metadata"]["usage"]["output_tokens"] > 0
    # Once the answer ended, the transport's reconnect finds nothing: 204, null.
    assert result["after"] is None
    assert app.registry.statistics() is not None


async def _lines(stream: Any) -> AsyncIterator[str]:
    buffer = b""
    async for data in stream:
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line.decode()


async def test_use_chat_post_answers_a_ui_message_stream(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", json=ui_body("c-post", "a day out"), headers=ALICE)
    assert response.status_code == 200, response.text
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["content-type"].startswith("text/event-stream")
    session_id = response.headers["x-streamkit-session-id"]
    chunks = ui_chunks(response.content)
    assert chunks[0] == {"type": "start", "messageId": session_id}
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    assert text == TOOLS.answer("a day out")
    # The same session, in streamkit's own format.
    session = await client.get(f"/sessions/{session_id}", headers=ALICE)
    assert session.json()["session"]["context"] == {"chat_id": "c-post"}


async def test_resume_answers_204_without_a_running_answer(client: httpx.AsyncClient) -> None:
    missing = await client.get("/chat/never-seen/stream", headers=ALICE)
    assert missing.status_code == 204
    assert missing.content == b""
    done = await client.post("/chat", json=ui_body("c-done", "a day out"), headers=ALICE)
    assert done.status_code == 200
    after = await client.get("/chat/c-done/stream", headers=ALICE)
    assert after.status_code == 204
    # Another user's chat of the same id is not theirs to resume.
    prompt = "gated: bob cannot see"
    agent = gated(prompt, hold_after=3)
    try:
        async with client.stream(
            "POST", "/chat", json=ui_body("c-shared", prompt), headers=ALICE
        ) as response:
            assert response.status_code == 200
            await wait_until(agent.held.is_set)
            other = await client.get("/chat/c-shared/stream", headers=BOB)
            assert other.status_code == 204
    finally:
        agent.gate.set()


async def test_stop_endpoint_ends_the_answer(
    client: httpx.AsyncClient, server: ServerThread, app: StreamApp
) -> None:
    prompt = "gated: stop me"
    agent = gated(prompt, hold_after=5)
    try:
        async with client.stream(
            "POST", "/chat", json=ui_body("c-stop", prompt), headers=ALICE
        ) as response:
            assert response.status_code == 200
            session_id = response.headers["x-streamkit-session-id"]
            await wait_until(agent.held.is_set)
            stopped = await client.post("/chat/c-stop/stop", headers=ALICE)
            assert stopped.status_code == 204
            data = await response.aread()
        chunks = ui_chunks(data)
        assert chunks[-1] == {"type": "abort"}
        state = await client.get(f"/sessions/{session_id}", headers=ALICE)
        assert state.json()["session"]["status"] == "cancelled"
        assert (await client.get("/chat/c-stop/stream", headers=ALICE)).status_code == 204
        # Stopping a chat with nothing running is not an error.
        assert (await client.post("/chat/c-stop/stop", headers=ALICE)).status_code == 204
    finally:
        agent.gate.set()


async def test_a_dropped_connection_does_not_stop_the_answer(
    client: httpx.AsyncClient,
) -> None:
    prompt = "gated: dropped"
    agent = gated(prompt, hold_after=5)
    async with client.stream(
        "POST", "/chat", json=ui_body("c-drop", prompt), headers=ALICE
    ) as response:
        session_id = response.headers["x-streamkit-session-id"]
        await wait_until(agent.held.is_set)
    # The client went away; the session is still running, and resumable.
    state = await client.get(f"/sessions/{session_id}", headers=ALICE)
    assert state.json()["session"]["status"] == "active"
    agent.gate.set()
    async with client.stream("GET", "/chat/c-drop/stream", headers=ALICE) as resumed:
        if resumed.status_code == 200:
            chunks = ui_chunks(await resumed.aread())
            text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
            assert text == TOOLS.answer(prompt)
    events = await read_events(client, session_id)
    assert text_of(events) == TOOLS.answer(prompt)


async def test_a_new_message_replaces_the_chats_running_answer(
    client: httpx.AsyncClient,
) -> None:
    prompt = "gated: replaced"
    agent = gated(prompt, hold_after=4)
    try:
        async with client.stream(
            "POST", "/chat", json=ui_body("c-again", prompt), headers=ALICE
        ) as response:
            first = response.headers["x-streamkit-session-id"]
            await wait_until(agent.held.is_set)
            second = await client.post(
                "/chat", json=ui_body("c-again", "text: next"), headers=ALICE
            )
            assert second.status_code == 200
            await response.aread()
    finally:
        agent.gate.set()
    assert (await client.get(f"/sessions/{first}", headers=ALICE)).status_code == 404
    text = "".join(
        c.get("delta", "") for c in ui_chunks(second.content) if c["type"] == "text-delta"
    )
    assert text == TEXT.answer("text: next")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": []}, "id"),
        ({"id": "", "messages": []}, "id"),
        ({"id": "..", "messages": []}, "id"),
        ({"id": "c", "messages": []}, "messages"),
        ({"id": "c", "messages": "hi"}, "messages"),
        ({"id": "c", "messages": [{"role": "assistant", "parts": []}]}, "messages"),
        ({"id": "c", "messages": [{"role": "user", "parts": "x"}]}, "messages[0].parts"),
        ({"id": "c", "messages": [{"role": "user", "parts": []}]}, "messages[0].parts"),
        ({"id": "c", "messages": [3]}, "messages[0]"),
    ],
)
async def test_bad_chat_requests(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/chat", json=body, headers=ALICE)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


async def test_chat_routes_need_authentication_and_an_agent(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.post("/chat", json=ui_body("c", "hi"))
        assert response.status_code == 401
        assert (await client.get("/chat/c/stream")).status_code == 401
        assert (await client.get("/chat")).status_code == 405
        assert (await client.post("/chat/c/stream", headers=ALICE)).status_code == 405
        assert (await client.get("/chat/a/b/c", headers=ALICE)).status_code == 404
    without = StreamApp(authenticate=bearer_authenticate)
    with serve(without) as bare:
        async with httpx.AsyncClient(base_url=bare.url, timeout=10) as client:
            response = await client.post("/chat", json=ui_body("c", "hi"), headers=ALICE)
            assert response.status_code == 404
            completions = await client.post("/v1/chat/completions", json={}, headers=ALICE)
            assert completions.status_code == 404


async def test_chat_path_option_and_per_user_bound() -> None:
    app = make_app(chat_path="/api/chat", max_connections_per_user=1, openai_compatible=False)
    prompt = "gated: bound"
    agent = gated(prompt, hold_after=3)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (
                await client.post("/chat", json=ui_body("c", "x"), headers=ALICE)
            ).status_code == 404
            completions = await client.post("/v1/chat/completions", json={}, headers=ALICE)
            assert completions.status_code == 404
            try:
                async with client.stream(
                    "POST", "/api/chat", json=ui_body("c-bound", prompt), headers=ALICE
                ) as response:
                    assert response.status_code == 200
                    await wait_until(agent.held.is_set)
                    second = await client.get("/api/chat/c-bound/stream", headers=ALICE)
                    assert second.status_code == 429
            finally:
                agent.gate.set()


def test_chat_path_is_checked() -> None:
    for bad in ("chat", "/", "/chat/", "/a//b", "/chat?x", 3):
        with pytest.raises(sk.ValidationError) as caught:
            StreamApp(chat_path=bad)  # type: ignore[arg-type]
        assert caught.value.field == "chat_path"
    assert StreamApp(chat_path=None).config.chat_path is None


# -- OpenAI chat completions ----------------------------------------------------------------

openai = pytest.importorskip("openai")


def messages(prompt: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": prompt},
    ]


def accumulate(chunks: list[Any]) -> dict[str, Any]:
    content, finish, usage = "", None, None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                entry["id"] = call.id or entry["id"]
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
            finish = choice.finish_reason or finish
    return {
        "content": content,
        "calls": [calls[i] for i in sorted(calls)],
        "finish": finish,
        "usage": usage,
    }


def expected_calls(prompt: str) -> list[dict[str, Any]]:
    starts = [p for p in TOOLS.parts(prompt) if isinstance(p, ToolCallStart)]
    return [{"id": start.call_id, "name": start.name} for start in starts]


def test_openai_sync_client_reads_text_and_tool_calls(server: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="alice", max_retries=0)
    with client.chat.completions.create(
        model="sim-1", messages=messages("text: hello"), stream=True
    ) as stream:
        text = accumulate(list(stream))
    assert text["content"] == TEXT.answer("text: hello")
    assert text["finish"] == "stop"
    assert text["calls"] == []
    raw = client.chat.completions.with_raw_response.create(
        model="sim-1",
        messages=messages("a day out"),
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-streamkit-session-id"]
    tools = accumulate(list(raw.parse()))
    assert tools["content"] == TOOLS.answer("a day out")
    calls = [{"id": c["id"], "name": c["name"]} for c in tools["calls"]]
    assert calls == expected_calls("a day out")
    assert json.loads(tools["calls"][1]["arguments"])["unit"] == "celsius"
    assert tools["usage"].completion_tokens > 0


async def test_openai_async_client_reads_tool_calls(server: ServerThread) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="alice", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="sim-1",
            messages=messages("a day out"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    result = accumulate(chunks)
    assert result["content"] == TOOLS.answer("a day out")
    assert [c["name"] for c in result["calls"]] == ["search", "get_weather", "get_time"]
    assert chunks[0].model == "sim-1"
    assert result["usage"].prompt_tokens > 0


async def test_openai_client_errors_are_clear(server: ServerThread) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="alice", max_retries=0)
    async with client:
        with pytest.raises(openai.BadRequestError, match="only streams"):
            await client.chat.completions.create(model="m", messages=messages("hi"))
        with pytest.raises(openai.BadRequestError, match="no user message"):
            await client.chat.completions.create(
                model="m", messages=[{"role": "system", "content": "x"}], stream=True
            )
    nobody = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="not a user!", max_retries=0)
    async with nobody:
        with pytest.raises(openai.AuthenticationError):
            await nobody.chat.completions.create(model="m", messages=messages("hi"), stream=True)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"stream": True, "messages": [{"role": "user", "content": "x"}], "model": 3}, "model"),
        ({"stream": True, "messages": [], "stream_options": 1}, "stream_options"),
        (
            {"stream": True, "messages": [], "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
        ),
        ({"stream": True, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"stream": True, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"stream": True, "messages": [{"role": "user", "content": ["x"]}]},
            "messages[0].content[0]",
        ),
    ],
)
async def test_bad_completion_requests(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/chat/completions", json=body, headers=ALICE)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


async def test_content_parts_are_the_prompt(client: httpx.AsyncClient) -> None:
    content = [
        {"type": "text", "text": "text: "},
        {"type": "image_url"},
        {"type": "text", "text": "parts"},
    ]
    body = {"stream": True, "messages": [{"role": "user", "content": content}]}
    response = await client.post("/v1/chat/completions", json=body, headers=ALICE)
    assert response.status_code == 200
    text = ""
    for block in response.content.split(b"\n\n"):
        if block.startswith(b"data: {"):
            for choice in json.loads(block[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    assert text == TEXT.answer("text: parts")


async def test_dropped_openai_client_resumes_by_session_id(
    server: ServerThread, client: httpx.AsyncClient
) -> None:
    prompt = "gated: openai drop"
    agent = gated(prompt, hold_after=8)
    openai_client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="alice", max_retries=0)
    async with openai_client:
        raw = await openai_client.chat.completions.with_raw_response.create(
            model="sim-1", messages=messages(prompt), stream=True
        )
        session_id = raw.headers["x-streamkit-session-id"]
        stream = raw.parse()
        seen = []
        async for chunk in stream:
            seen.append(chunk)
            if len(seen) == 3:
                break
        await stream.close()
    await wait_until(agent.held.is_set)
    agent.gate.set()
    # Everything, from streamkit's own endpoint, by the id the header gave.
    events = await read_events(client, session_id)
    assert text_of(events) == TOOLS.answer(prompt)
    names = [e.part.name for e in events if isinstance(e.part, ToolCallEnd)]
    assert names == ["search", "get_weather", "get_time"]


async def read_events(client: httpx.AsyncClient, session_id: str) -> list[sk.StreamEvent]:
    async with client.stream("GET", f"/sessions/{session_id}/events", headers=ALICE) as response:
        assert response.status_code == 200
        return [event async for event in sse.aiter_events(response.aiter_bytes())]


def text_of(events: list[sk.StreamEvent]) -> str:
    return "".join(e.content for e in events if e.event_type == sk.EventType.TOKEN)


async def test_shutdown_ends_agent_streams(client: httpx.AsyncClient) -> None:
    app = make_app()
    prompt = "gated: shutdown"
    agent = gated(prompt, hold_after=4)
    try:
        with serve(app) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                async with http.stream(
                    "POST", "/chat", json=ui_body("c-shut", prompt), headers=ALICE
                ) as response:
                    await wait_until(agent.held.is_set)
                    server.call_soon(app.shutdown)
                    await response.aread()  # ends cleanly
                refused = await http.post("/chat", json=ui_body("c-2", "x"), headers=ALICE)
                assert refused.status_code == 503
                # The client has the whole body a moment before the server records why.
                await wait_until(lambda: app.statistics()["stream_outcomes"].get("shutdown") == 1)
    finally:
        agent.gate.set()


# -- routing, a second app over the same registry, a trimmed history -------------------------


def http_scope(path: str, raw: bytes | None = None, root: str = "") -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "path": path, "root_path": root}
    if raw is not None:
        scope["raw_path"] = raw
    return scope


@pytest.mark.parametrize(
    ("scope", "action", "chat_id"),
    [
        (http_scope("/chat/a b/stream", b"/chat/a%20b/stream"), "chat-stream", "a b"),
        (http_scope("/chat/a/b/stop", b"/chat/a%2Fb/stop"), "chat-stop", "a/b"),
        (http_scope("/chat/x/stream"), "chat-stream", "x"),  # a server without raw_path
        (http_scope("/m/chat/x/stop", b"/m/chat/x/stop", root="/m"), "chat-stop", "x"),
        (http_scope("/chat/a/b/stop", b"/chat/a/b/stop"), None, None),  # two segments
        (http_scope("/chat/\ufffd/stop", b"/chat/%ff/stop"), None, None),  # not UTF-8
        (http_scope("/chat/x/stop", b"/chat/y/stop"), None, None),  # raw and path disagree
        (http_scope("/chat/x/stop", b"stop"), None, None),
        (http_scope("/chats/x/stop", b"/chats/x/stop"), None, None),
        (http_scope("/chat/x/y/z/stop"), None, None),
        (http_scope("/chat/x/more"), None, None),
    ],
)
def test_chat_route_matching(
    scope: dict[str, Any], action: str | None, chat_id: str | None
) -> None:
    from streamkit._asgi_agent import match_agent_route

    route = match_agent_route(scope, chat_path="/chat", openai_compatible=True)
    assert (route and route.action, route and route.chat_id) == (action, chat_id)
    assert match_agent_route(http_scope("/chat"), chat_path=None, openai_compatible=False) is None


class TwoApps:
    """Two StreamApps over one registry: ``/b/...`` goes to the second."""

    def __init__(self) -> None:
        self.a = make_app()
        self.b: StreamApp | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/b/"):
            if self.b is None:
                self.b = StreamApp(self.a.registry, agent=AGENTS, authenticate=bearer_authenticate)
            await self.b({**scope, "root_path": "/b"}, receive, send)
        else:
            await self.a(scope, receive, send)


async def test_another_app_over_the_same_store_finds_the_chat() -> None:
    prompt = "gated: two apps"
    agent = gated(prompt, hold_after=6)
    try:
        with serve(TwoApps()) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                async with client.stream(
                    "POST", "/chat", json=ui_body("c-two", prompt), headers=ALICE
                ) as first:
                    assert first.status_code == 200
                    await wait_until(agent.held.is_set)
                    # The second app never saw the POST: it finds the chat in the store.
                    async with client.stream(
                        "GET", "/b/chat/c-two/stream", headers=ALICE
                    ) as resumed:
                        assert resumed.status_code == 200
                        agent.gate.set()
                        chunks = ui_chunks(await resumed.aread())
                    await first.aread()
                text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
                assert text == TOOLS.answer(prompt)
                assert (await client.get("/b/chat/c-none/stream", headers=ALICE)).status_code == 204
    finally:
        agent.gate.set()


async def test_resume_of_a_trimmed_answer_ends_with_the_formats_error() -> None:
    config = sk.RegistryConfig(max_sessions=100, heartbeat_interval=None, history_max_events=4)
    app = make_app(registry_config=config)
    prompt = "gated: trimmed"
    agent = gated(prompt, hold_after=12)
    try:
        with serve(app) as server:
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=10) as client,
                client.stream(
                    "POST", "/chat", json=ui_body("c-trim", prompt), headers=ALICE
                ) as first,
            ):
                await wait_until(agent.held.is_set)
                resumed = await client.get("/chat/c-trim/stream", headers=ALICE)
                assert resumed.status_code == 200
                chunks = ui_chunks(resumed.content)
                assert chunks[-1]["type"] == "error"
                assert "cannot resume" in chunks[-1]["errorText"]
                agent.gate.set()
                await first.aread()
    finally:
        agent.gate.set()
