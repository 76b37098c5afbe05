"""The demo page in a real headless Chromium: stream, drop the connection, resume, exact text.

Chromium comes from the system (Debian's ``chromium``, installed by scripts/_system-deps)
and is driven by Playwright for Python through its executable path: no browser download.
Playwright's sync API cannot run inside an event loop, so these tests are plain sync
tests; the demo server runs in a thread of its own. The first test takes a screenshot
of the finished page; with ``STREAMKIT_SCREENSHOT=1`` it replaces
docs/demo-screenshot.png (the README's picture), else it goes to a temporary file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from streamkit.demo import DEFAULT_PROMPT, make_agent, make_app, running_server
from streamkit.demo._app import DEMO_SEED
from streamkit.parts import ToolCallDelta, ToolCallEnd, ToolCallStart, ToolResult, Usage
from streamkit.testing import SimulatedToolAgent

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "demo-screenshot.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Fast enough for a test, slow enough that "drop connection" lands mid-answer.
AGENT = make_agent(tokens_per_second=80.0, first_token_latency=0.2)
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip(
            "BROWSER TEST SKIPPED: no `chromium` on PATH. Install it with "
            "`bash scripts/_system-deps` (apt-get install chromium); CI runs this test."
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(make_app(AGENT)) as url:
        yield url


@pytest.fixture
def page(browser: Any, base_url: str) -> Iterator[Any]:
    context = browser.new_context(
        viewport={"width": 1100, "height": 750}, color_scheme="dark", device_scale_factor=1
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    page.goto(base_url)
    try:
        yield page
    finally:
        context.close()
    # Nothing may load from anywhere but the demo server.
    foreign = [url for url in requests if not url.startswith(base_url)]
    assert not foreign, f"the page requested other origins: {foreign}"
    assert not problems, problems


def by_id(page: Any, name: str) -> Any:
    return page.get_by_test_id(name)


def wait_for_text(page: Any, name: str, text: str) -> None:
    page.wait_for_function(
        "([name, text]) => document.querySelector(`[data-testid=${name}]`).textContent === text",
        arg=[name, text],
    )


def events_received(page: Any) -> int:
    return int(by_id(page, "events").text_content())


def test_drop_connection_resumes_with_the_exact_answer(page: Any, tmp_path: Path) -> None:
    answer = AGENT.answer(DEFAULT_PROMPT)
    assert by_id(page, "prompt").input_value() == DEFAULT_PROMPT
    assert by_id(page, "connection").text_content() == "idle"

    by_id(page, "submit").click()
    # Mid-answer: some tokens are on the page, more are to come.
    page.wait_for_function(
        "() => document.querySelector('[data-testid=answer]').textContent.length >= 40"
    )
    assert by_id(page, "connection").get_attribute("data-status") == "live"
    seen = by_id(page, "answer").text_content()
    assert seen
    assert answer.startswith(seen)

    by_id(page, "drop").click()
    note = by_id(page, "reconnect-note")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=reconnect-note]')"
        ".textContent.startsWith('Reconnected')"
    )
    wait_for_text(page, "state", "completed")

    # The whole answer, exactly: nothing lost while away, nothing repeated after.
    assert by_id(page, "answer").text_content() == answer
    match = re.fullmatch(
        r"Reconnected after seq (\d+): the stream went on at seq (\d+), "
        r"nothing lost or repeated\.",
        note.text_content(),
    )
    assert match, note.text_content()
    dropped_at, went_on_at = int(match[1]), int(match[2])
    assert dropped_at >= 20
    assert went_on_at == dropped_at + 1
    assert by_id(page, "reconnects").text_content() == "1 \u00b7 0"  # 1 reconnect, 0 gaps
    last_seq = int(by_id(page, "seq").text_content())
    assert last_seq > went_on_at  # the drop was mid-answer
    assert events_received(page) == last_seq  # every event once
    assert "Ended: completed" in by_id(page, "summary").text_content()
    assert by_id(page, "connection").text_content() == "stream ended"
    for button in ("pause", "resume", "cancel", "drop"):
        assert by_id(page, button).is_disabled()
    log = by_id(page, "log").text_content()
    assert f"connection dropped after seq {dropped_at}" in log
    assert f"reconnecting with ?after={dropped_at}" in log
    check_parts(page, DEFAULT_PROMPT)

    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    screenshot = (
        DOCS_SCREENSHOT if os.environ.get("STREAMKIT_SCREENSHOT") == "1" else tmp_path / "demo.png"
    )
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000


def test_a_second_tab_follows_the_same_session(page: Any) -> None:
    answer = AGENT.answer(DEFAULT_PROMPT)
    by_id(page, "submit").click()
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=events]').textContent) >= 5"
    )
    with page.context.expect_page() as opened:
        by_id(page, "follow").click()
    second = opened.value
    second.set_default_timeout(TIMEOUT_MS)
    # The second tab reads the log from its start while the first goes on live.
    for reader in (page, second):
        wait_for_text(reader, "state", "completed")
        # The state may come from the session's record before the tab has read the
        # final event: wait for the tab's own end of the stream.
        reader.wait_for_function(
            "() => document.querySelector('[data-testid=summary]').textContent"
            ".includes('completed')"
        )
        assert by_id(reader, "answer").text_content() == answer
        assert by_id(reader, "reconnects").text_content() == "0 \u00b7 0"
    assert by_id(second, "reconnect-note").text_content().startswith("Following session")
    assert by_id(second, "prompt").input_value() == DEFAULT_PROMPT
    # Both read up to the same final event. The first tab is in the background now,
    # where the browser may hold back its animation frames (and so its redraw).
    final_seq = by_id(second, "seq").text_content()
    page.bring_to_front()
    page.wait_for_function(
        "seq => document.querySelector('[data-testid=seq]').textContent === seq", arg=final_seq
    )
    second.close()


def test_pause_resume_and_cancel(page: Any) -> None:
    answer = AGENT.answer(DEFAULT_PROMPT)
    by_id(page, "submit").click()
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=events]').textContent) >= 3"
    )
    by_id(page, "pause").click()
    wait_for_text(page, "state", "paused")
    assert by_id(page, "resume").is_enabled()
    assert by_id(page, "pause").is_disabled()

    by_id(page, "resume").click()
    wait_for_text(page, "state", "active")
    by_id(page, "cancel").click()
    wait_for_text(page, "state", "cancelled")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=summary]').textContent.includes('cancelled')"
    )
    text = by_id(page, "answer").text_content()
    assert answer.startswith(text)
    assert len(text) < len(answer)
    assert by_id(page, "reconnects").text_content() == "0 \u00b7 0"
    log = by_id(page, "log").text_content()
    assert "pause: the session is paused" in log
    assert "resume: the session is active" in log
    assert "cancel: the session is cancelled" in log


def test_a_new_prompt_gets_its_own_answer(page: Any) -> None:
    prompt = "What happens if the connection drops?"
    by_id(page, "prompt").fill(prompt)
    by_id(page, "submit").click()
    wait_for_text(page, "state", "completed")
    assert by_id(page, "answer").text_content() == AGENT.answer(prompt)
    assert by_id(page, "reconnect-note").is_hidden()


# -- the docs' EventSource snippet, as written, across a cut connection ----------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"
JS_BLOCK = re.compile(r"^```js\n(?P<code>.*?)^```", re.M | re.S)
SNIPPET_AGENT = make_agent(tokens_per_second=60.0, first_token_latency=0.05)
SNIPPET_PROMPT = "Why resume?"
COOKIE = "streamkit_test_user"


def docs_snippet(name: str) -> str:
    """The first ```js block after "EventSource" in docs/<name>: the browser snippet."""
    text = (DOCS / name).read_text(encoding="utf-8")
    match = JS_BLOCK.search(text, text.index("EventSource"))
    assert match, f"no js block in docs/{name}"
    return match["code"]


def _cookie_user(scope: Any) -> str | None:
    for name, value in scope["headers"]:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, user = part.strip().partition("=")
                if key == COOKIE:
                    return str(user)
    return None


class SnippetSite:
    """The StreamApp at ``/`` and at ``/stream`` (the two docs' paths), and a page.

    ``GET /page?session=<id>&doc=<name>`` is a page that runs the docs' snippet as
    written, with ``sessionId`` and ``output`` defined.
    """

    def __init__(self, stream_app: Any) -> None:
        self.stream_app = stream_app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path == "/page":
            query = dict(
                part.split("=", 1) for part in scope["query_string"].decode().split("&") if part
            )
            page = (
                "<!doctype html><meta charset=utf-8><pre id=output></pre><script>\n"
                f"const sessionId = {query['session']!r};\n"
                "const output = document.getElementById('output');\n"
                f"{docs_snippet(query['doc'])}\n</script>"
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": page})
            return
        if scope["type"] in ("http", "websocket") and path.startswith("/stream/"):
            scope = {**scope, "root_path": "/stream", "path": path[len("/stream") :]}
        await self.stream_app(scope, receive, send)


def _failing_agent(prompt: str) -> Iterator[str]:
    yield "partial "
    yield "answer "
    raise RuntimeError("the model failed")


def _agent(prompt: str) -> Any:
    if prompt == "fail":
        return _failing_agent(prompt)
    return SNIPPET_AGENT(prompt)


@pytest.fixture(scope="module")
def snippet_site() -> Iterator[Any]:
    import streamkit as sk
    from streamkit.asgi import StreamApp

    from .asgi_helpers import serve

    stream_app = StreamApp(
        agent=_agent,
        authenticate=_cookie_user,
        retry_ms=100,  # reconnect soon after the cut
        compression=False,  # count the bytes of the events themselves
        heartbeat_interval=None,
        registry_config=sk.RegistryConfig(heartbeat_interval=None),
        stream_config=sk.StreamConfig(chunk_size=2, heartbeat_interval=None),
    )
    with serve(SnippetSite(stream_app)) as server:
        yield server


def _create(server: Any, prompt: str, prefix: str) -> str:
    import httpx

    response = httpx.post(
        f"{server.url}{prefix}/sessions",
        json={"prompt": prompt},
        cookies={COOKIE: "alice"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["session"]["session_id"])


@pytest.mark.parametrize(("doc", "prefix"), [("asgi.md", "/stream"), ("wire.md", "")])
def test_docs_snippet_survives_a_cut_and_ends_at_the_final_event(
    browser: Any, snippet_site: Any, doc: str, prefix: str
) -> None:
    from .browser_helpers import CuttingProxy

    answer = SNIPPET_AGENT.answer(SNIPPET_PROMPT)
    session_id = _create(snippet_site, SNIPPET_PROMPT, prefix)
    with CuttingProxy(snippet_site.port, marker=b"/events", cut_after=1500) as proxy:
        context = browser.new_context()
        context.add_cookies([{"name": COOKIE, "value": "alice", "url": proxy.url}])
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(f"{proxy.url}/page?session={session_id}&doc={doc}")
            page.wait_for_function("() => source.readyState === EventSource.CLOSED")
            text = page.evaluate("() => output.textContent")
        finally:
            context.close()
        assert proxy.cuts == 1  # the connection was cut mid-stream ...
        assert proxy.streams >= 2  # ... and EventSource came back
    assert not errors, errors
    assert text == answer, f"got {len(text)} of {len(answer)} characters"


def test_docs_snippet_ends_at_a_failed_stream_without_reconnecting(
    browser: Any, snippet_site: Any
) -> None:
    session_id = _create(snippet_site, "fail", "/stream")
    context = browser.new_context()
    context.add_cookies([{"name": COOKIE, "value": "alice", "url": snippet_site.url}])
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(f"{snippet_site.url}/page?session={session_id}&doc=asgi.md")
        page.wait_for_function("() => source.readyState === EventSource.CLOSED")
        text = page.evaluate("() => output.textContent")
    finally:
        context.close()
    assert text == "partial answer \n[failed: the model failed]"
    assert sum("/events" in url for url in requests) == 1


# -- examples/browser_app.py: a cookie, and a page served from a second origin ----------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "browser_app.py"


def _load_browser_example(frontend_origin: str) -> Any:
    import importlib.util

    previous = os.environ.get("STREAMKIT_FRONTEND_ORIGINS")
    os.environ["STREAMKIT_FRONTEND_ORIGINS"] = frontend_origin
    try:
        spec = importlib.util.spec_from_file_location("example_browser_app", EXAMPLE)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["STREAMKIT_FRONTEND_ORIGINS"]
        else:
            os.environ["STREAMKIT_FRONTEND_ORIGINS"] = previous
    return module


@pytest.fixture(scope="module")
def two_origins() -> Iterator[tuple[Any, Any, Any]]:
    """(frontend server, API server, example module): the page and the API apart."""
    from .asgi_helpers import ServerThread

    holder: dict[str, Any] = {}

    async def frontend_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": holder["module"].PAGE.encode()})

    frontend = ServerThread(frontend_app)
    module = holder["module"] = _load_browser_example(frontend.url)
    api = ServerThread(module.app)
    frontend.start()
    api.start()
    try:
        yield frontend, api, module
    finally:
        api.stop()
        frontend.stop()


def _status(page: Any, startswith: str) -> str:
    page.wait_for_function(
        "(text) => document.getElementById('status').textContent.startsWith(text)",
        arg=startswith,
    )
    return str(page.evaluate("() => document.getElementById('status').textContent"))


def test_page_from_another_origin_reads_pauses_and_cancels(
    browser: Any, two_origins: tuple[Any, Any, Any]
) -> None:
    frontend, api, module = two_origins
    assert frontend.url != api.url  # two origins (other ports)
    answer = module.agent.answer("Why stream?")
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(f"{frontend.url}/?api={api.url}")
        # Not signed in: the API says 401, and the page says so.
        page.click("#start")
        assert "401 unauthenticated" in _status(page, "refused")
        page.click("#login")
        _status(page, "signed in as alice")
        page.click("#start")
        page.wait_for_function("() => document.getElementById('output').textContent.length > 0")
        page.click("#pause")
        _status(page, "paused")
        page.click("#resume")
        _status(page, "active")
        page.click("#cancel")
        _status(page, "cancelled")
        page.wait_for_function("() => source.readyState === EventSource.CLOSED")
        text = page.evaluate("() => document.getElementById('output').textContent")
    finally:
        context.close()
    assert not problems, problems
    assert text
    assert answer.startswith(text)
    assert len(text) < len(answer)
    assert any(url.startswith(f"{api.url}/stream/sessions/") for url in requests)
    assert any(url.startswith(f"{api.url}/login") for url in requests)


def test_the_example_refuses_forged_expired_and_foreign_requests(
    two_origins: tuple[Any, Any, Any],
) -> None:
    import httpx

    frontend, api, module = two_origins
    good = module.make_token("alice")
    assert module.check_token(good) == "alice"
    user, expiry, signature = good.split(".")
    assert module.check_token(f"mallory.{expiry}.{signature}") is None
    assert module.check_token(f"{user}.{expiry}.{'0' * len(signature)}") is None
    assert module.check_token(module.make_token("alice", seconds=-1)) is None
    assert module.check_token("garbage") is None
    cookie = {"cookie": f"{module.COOKIE}={good}"}
    with httpx.Client(base_url=api.url, timeout=10) as client:
        ok = client.post("/stream/sessions", json={}, headers=cookie)
        assert ok.status_code == 201
        # The listed frontend may; another page of the same site may not (CSRF).
        allowed = client.get("/stream/sessions", headers={**cookie, "origin": frontend.url})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == frontend.url
        foreign = client.post(
            "/stream/sessions", json={}, headers={**cookie, "origin": "http://127.0.0.1:1"}
        )
        assert foreign.status_code == 401
        forged = {"cookie": f"{module.COOKIE}=mallory.{expiry}.{signature}"}
        assert client.get("/stream/sessions", headers=forged).status_code == 401


def expected_steps(prompt: str) -> dict[str, Any]:
    """What the demo agent's reasoning and tool steps hold for ``prompt``."""
    parts = SimulatedToolAgent(seed=DEMO_SEED, realtime=False).parts(prompt)
    pieces: dict[str, str] = {}
    for part in parts:
        if isinstance(part, ToolCallDelta):
            pieces[part.call_id] = pieces.get(part.call_id, "") + part.delta
    names = {p.call_id: p.name for p in parts if isinstance(p, ToolCallStart)}
    usage = sum((p for p in parts if isinstance(p, Usage)), Usage())
    results = {p.call_id: p for p in parts if isinstance(p, ToolResult)}
    calls = [p.call_id for p in parts if isinstance(p, ToolCallEnd)]
    return {"calls": calls, "names": names, "pieces": pieces, "usage": usage, "results": results}


def check_parts(page: Any, prompt: str) -> None:
    """The reasoning, the tool calls, their results and the usage, each once."""
    expected = expected_steps(prompt)
    calls = page.locator("[data-testid=tool-call]")
    assert calls.count() == len(expected["calls"])
    for index, call_id in enumerate(expected["calls"]):
        call = calls.nth(index)
        assert call.get_attribute("data-call-id") == call_id
        assert call.locator("b").text_content() == expected["names"][call_id]
        args = call.get_by_test_id("tool-args").text_content()
        assert json.loads(args) == json.loads(expected["pieces"][call_id])
        result = expected["results"][call_id]
        shown = call.get_by_test_id("tool-result").text_content()
        if result.error is not None:
            assert call.get_attribute("data-state") == "failed"
            assert shown == result.error
        else:
            assert call.get_attribute("data-state") == "done"
            assert json.loads(shown) == json.loads(json.dumps(result.to_dict()["output"]))
    failed = sum(r.error is not None for r in expected["results"].values())
    assert by_id(page, "tools").text_content() == f"{len(expected['calls'])} \u00b7 {failed}"
    usage = expected["usage"]
    assert by_id(page, "usage").text_content() == (
        f"{usage.input_tokens} \u00b7 {usage.output_tokens}"
    )
    # Two steps reasoned; each block is collapsed once its step ended, and opens on a click.
    reasoning = page.locator("[data-testid=reasoning]")
    assert reasoning.count() == 2
    first = reasoning.nth(0)
    assert first.get_attribute("open") is None
    first.locator("summary").click()
    assert first.get_attribute("open") is not None
    assert "search" in first.text_content()
    assert by_id(page, "sources").text_content().startswith("Source: ")


def test_drop_during_the_tool_calls_loses_nothing(page: Any) -> None:
    by_id(page, "submit").click()
    # Arguments of the first call are filling in: drop the connection there.
    page.wait_for_function(
        "() => { const a = document.querySelector('[data-testid=tool-args]');"
        " return a !== null && a.textContent.length > 0; }"
    )
    by_id(page, "drop").click()
    wait_for_text(page, "state", "completed")
    assert by_id(page, "answer").text_content() == AGENT.answer(DEFAULT_PROMPT)
    assert by_id(page, "reconnects").text_content() == "1 \u00b7 0"
    assert events_received(page) == int(by_id(page, "seq").text_content())
    check_parts(page, DEFAULT_PROMPT)
