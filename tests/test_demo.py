"""The demo: ``python -m streamkit.demo`` with --check, --terminal and as a server.

The commands run as subprocesses, as a person or CI runs them; the same code also runs
in-process (``main``, ``run_terminal``, the ASGI app through httpx) so that coverage sees
it and the async parts run on both anyio backends.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import runpy
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import streamkit as sk
from streamkit import sse
from streamkit.demo import (
    DEFAULT_PROMPT,
    DEMO_SEED,
    DemoApp,
    bind_socket,
    main,
    make_agent,
    make_app,
    page_html,
    run_check,
    run_terminal,
    url_for,
)
from streamkit.testing import SimulatedAgent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

TIMEOUT = 60
# An attribute or CSS url() whose value is an absolute or scheme-relative URL.
EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|action)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)\s*(?:[a-z]+:)?//""",
    re.IGNORECASE,
)


def demo_command(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "streamkit.demo", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        env=env,
        check=False,
    )


# -- the commands --------------------------------------------------------------------------


def test_check_command_passes() -> None:
    result = demo_command("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dropped the connection after seq" in result.stdout
    assert "text equals the answer" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("demo check passed")


def test_check_in_process() -> None:
    out = io.StringIO()
    assert main(["--check"], out=out) == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0] == "streamkit demo check"
    assert all(line.startswith("  ok  ") for line in lines[1:-1])
    assert len(lines) == 10


def test_check_reports_a_failure() -> None:
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: nothing can listen there.
    out = io.StringIO()
    assert run_check(out, host="192.0.2.1") is False
    assert "FAIL  OSError" in out.getvalue()
    assert out.getvalue().rstrip().endswith("demo check failed")


def test_terminal_command_fans_out_to_two_subscribers() -> None:
    result = demo_command("--terminal", "--fast")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "\x1b" not in out  # not a terminal: no cursor movement, no colour
    assert f"prompt \u00b7 {DEFAULT_PROMPT}" in out
    for line in (
        "A: first token after",
        "B subscribes: the log holds",
        "B drops its connection after seq",
        "B resumes after seq",
        "\u2713 A: the exact answer",
        "\u2713 B: the exact answer",
    ):
        assert line in out
    # The answer is shown in two columns, the same words on both sides.
    first_words = " ".join(make_agent().answer(DEFAULT_PROMPT).split()[:4])
    rows = [row for row in out.splitlines() if "\u2502" in row and first_words in row]
    assert rows
    assert rows[0].count(first_words) == 2


def test_terminal_in_process_with_a_prompt() -> None:
    out = io.StringIO()  # no encoding: plain ASCII glyphs
    prompt = "What happens if the connection drops?"
    assert main(["--terminal", "--fast", "--prompt", prompt], out=out) == 0
    text = out.getvalue()
    assert f"prompt - {prompt}" in text
    assert "v A: the exact answer" in text
    assert "v B: the exact answer" in text
    answer = make_agent().answer(prompt)
    assert f"{len(answer)} characters" in text


@pytest.mark.parametrize("tty", [False, True])
async def test_run_terminal(tty: bool) -> None:
    agent = make_agent(realtime=False)
    out = io.StringIO()
    assert await run_terminal(DEFAULT_PROMPT, agent, out, tty=tty, width=100, height=30)
    text = out.getvalue()
    total = len(agent.tokens(DEFAULT_PROMPT))
    assert f"{total}/{total} tokens" in text
    assert text.count("the exact answer") == 2
    if tty:
        assert text.startswith("\x1b[?25l")  # the cursor is hidden while redrawing...
        assert "\x1b[?25h" in text  # ... and shown again
        assert "\x1b[J" in text  # the live frame was redrawn in place
    else:
        assert "\x1b" not in text


async def test_run_terminal_reports_a_wrong_answer() -> None:
    class Liar(SimulatedAgent):
        def answer(self, prompt: str) -> str:
            return "not what was streamed"

    out = io.StringIO()
    assert not await run_terminal("hi", Liar(realtime=False), out, tty=False)
    assert "x A: text differs from the answer" in out.getvalue()


def test_server_command_takes_a_free_port_and_stops_cleanly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "streamkit.demo", "--port", str(port), "--no-browser"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
        try:
            lines = _lines(process)
            moved = lines.get(timeout=TIMEOUT)
            assert moved.startswith(f"port {port} is taken; using ")
            opened = lines.get(timeout=TIMEOUT)
            match = re.fullmatch(r"streamkit demo: open (http://127\.0\.0\.1:\d+/) .*\n", opened)
            assert match, opened
            url = match[1]
            assert url != f"http://127.0.0.1:{port}/"
            assert "allow_anonymous=True" in lines.get(timeout=TIMEOUT)

            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                assert response.read() == page_html()
            # A paused session keeps its event stream open: stopping the server must end
            # that response cleanly instead of cutting it off.
            created = _post_json(f"{url}sessions", {"prompt": DEFAULT_PROMPT})
            _post_json(f"{url}sessions/{created['session']['session_id']}/pause", {})
            events = urllib.request.urlopen(
                f"{url}{created['urls']['events'].lstrip('/')}", timeout=TIMEOUT
            )
            assert events.readline() == b"retry: 1000\n"
            process.send_signal(signal.SIGINT)
            events.read()  # raises IncompleteRead if the response is cut off
            events.close()
            assert process.wait(timeout=TIMEOUT) == 0
            assert lines.get(timeout=TIMEOUT) == "streamkit demo: stopped\n"
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=TIMEOUT)
            assert process.stdout is not None
            assert process.stderr is not None
            process.stdout.close()
            process.stderr.close()


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """Read the process's output lines in a thread, so that tests can wait with a bound."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _post_json(url: str, body: object) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


class _Output(io.StringIO):
    """Collects what the demo prints, and tells when the server's URL is out."""

    def __init__(self) -> None:
        super().__init__()
        self.url: str | None = None
        self.ready = threading.Event()

    def write(self, text: str) -> int:
        match = re.search(r"open (http://\S+/)", text)
        if match:
            self.url = match[1]
            self.ready.set()
        return super().write(text)


@pytest.mark.parametrize("everywhere", [False, True])
def test_server_in_process_stops_on_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, taken_port: int, everywhere: bool
) -> None:
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    monkeypatch.setenv("DISPLAY", ":0")  # a desktop session: the demo opens the page
    if everywhere:  # all addresses, a free port, no browser
        argv = ["--host", "0.0.0.0", "--port", "0", "--no-browser"]
    else:  # a taken port, and the browser
        argv = ["--port", str(taken_port)]
    out = _Output()
    pages: list[bytes] = []

    def visit_then_press_ctrl_c() -> None:
        if not out.ready.wait(TIMEOUT):
            return
        assert out.url is not None
        with urllib.request.urlopen(out.url, timeout=TIMEOUT) as response:
            pages.append(response.read())
        os.kill(os.getpid(), signal.SIGINT)  # uvicorn handles it: a graceful stop

    visitor = threading.Thread(target=visit_then_press_ctrl_c, daemon=True)
    visitor.start()
    try:
        status = main(argv, out=out)
    except KeyboardInterrupt:  # pragma: no cover - only if the demo let Ctrl-C escape
        pytest.fail("Ctrl-C escaped the demo server")
    visitor.join(TIMEOUT)
    assert status == 0
    assert pages == [page_html()]
    text = out.getvalue()
    assert text.endswith("streamkit demo: stopped\n")
    assert ("is taken; using" in text) is not everywhere
    assert ("reachable from other machines" in text) is everywhere
    assert opened == ([] if everywhere else [out.url])


def test_server_without_uvicorn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` fails
    assert main(["--no-browser"], out=io.StringIO()) == 2
    assert "pip install 'streamkit[demo]'" in capsys.readouterr().err


def test_server_on_an_address_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main(["--host", "192.0.2.1", "--no-browser"], out=out) == 2
    assert "cannot listen on 192.0.2.1:8000" in capsys.readouterr().err
    assert out.getvalue() == ""


def test_python_m_runs_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["streamkit.demo", "--terminal", "--fast"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("streamkit.demo", run_name="__main__", alter_sys=True)
    assert info.value.code == 0
    assert "the exact answer" in capsys.readouterr().out


class _ClosedPipe(io.StringIO):
    """A standard output whose reader has gone away."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self._fd


def test_python_m_exits_quietly_when_its_reader_goes_away(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with (tmp_path / "stdout").open("w") as file:
        monkeypatch.setattr(sys, "stdout", _ClosedPipe(file.fileno()))
        monkeypatch.setattr(sys, "argv", ["streamkit.demo", "--terminal", "--fast"])
        with pytest.raises(SystemExit) as info:
            runpy.run_module("streamkit.demo", run_name="__main__", alter_sys=True)
    assert info.value.code == 1


def test_output_closed_early_exits_quietly() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "streamkit.demo", "--terminal", "--fast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    assert process.wait(timeout=TIMEOUT) == 1
    assert process.stderr.read() == b""  # no traceback
    process.stderr.close()


def test_help_lists_the_modes() -> None:
    result = demo_command("--help")
    assert result.returncode == 0
    for option in ("--host", "--port", "--no-browser", "--terminal", "--check", "--fast"):
        assert option in result.stdout


def test_terminal_and_check_exclude_each_other() -> None:
    result = demo_command("--terminal", "--check")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


# -- the app -------------------------------------------------------------------------------


def test_the_page_is_self_contained() -> None:
    html = page_html().decode()
    assert html.startswith("<!doctype html>")
    assert EXTERNAL.search(html) is None
    assert "<script src" not in html
    assert '<link rel="stylesheet"' not in html
    for testid in (
        "prompt",
        "submit",
        "answer",
        "state",
        "ttft",
        "tps",
        "events",
        "seq",
        "reconnects",
        "pause",
        "resume",
        "cancel",
        "drop",
        "connection",
        "reconnect-note",
        "log",
    ):
        assert html.count(f'data-testid="{testid}"') == 1, testid
    for event_type in ("start", "token", "heartbeat", "complete", "error"):
        assert f'"{event_type}"' in html


def test_the_answers_depend_on_the_seed_and_prompt_only() -> None:
    slow = make_agent(tokens_per_second=5, first_token_latency=2)
    fast = make_agent(realtime=False)
    for prompt in (DEFAULT_PROMPT, "anything else"):
        assert slow.answer(prompt) == fast.answer(prompt)
        assert slow.tokens(prompt) == fast.tokens(prompt)
    assert "nothing lost and nothing repeated" in fast.answer(DEFAULT_PROMPT)
    generated = SimulatedAgent(seed=DEMO_SEED).answer("anything else")
    assert fast.answer("anything else") == generated


@pytest.fixture
def app() -> DemoApp:
    return make_app(fast=True)


@pytest.fixture
async def client(app: DemoApp) -> AsyncIterator[httpx.AsyncClient]:
    async with app.stream_app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            yield client


async def test_app_serves_the_page(client: httpx.AsyncClient) -> None:
    for path in ("/", "/index.html"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "connect-src 'self'" in response.headers["content-security-policy"]
        assert response.content == page_html()
    head = await client.head("/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(page_html()))
    post = await client.post("/")
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"


async def test_app_passes_everything_else_to_the_stream_app(client: httpx.AsyncClient) -> None:
    assert (await client.get("/stats")).status_code == 200
    missing = await client.get("/nothing/here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"

    created = await client.post("/sessions", json={"prompt": DEFAULT_PROMPT})
    assert created.status_code == 201  # no login: the demo serves anonymous users
    response = await client.get(created.json()["urls"]["events"])
    events = [event async for event in sse.aiter_events(response.aiter_bytes())]
    tokens = [event for event in events if event.event_type == sk.EventType.TOKEN]
    # One token per event, so that the page shows the answer token by token.
    assert [event.content for event in tokens] == make_agent().tokens(DEFAULT_PROMPT)
    assert events[-1].event_type == sk.EventType.COMPLETE


def test_app_checks_its_arguments() -> None:
    with pytest.raises(sk.ValidationError) as info:
        make_app(agent="model")  # type: ignore[arg-type]
    assert info.value.field == "agent"
    with pytest.raises(sk.ValidationError) as info:
        make_app(fast="yes")  # type: ignore[arg-type]
    assert info.value.field == "fast"
    with pytest.raises(sk.ValidationError) as info:
        DemoApp(object())  # type: ignore[arg-type]
    assert info.value.field == "stream_app"
    with pytest.raises(sk.ValidationError) as info:
        make_agent(tokens_per_second=0)
    assert info.value.field == "tokens_per_second"


# -- sockets -------------------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_bind_socket_moves_off_a_taken_port(taken_port: int) -> None:
    sock, moved = bind_socket("127.0.0.1", taken_port)
    with sock:
        assert moved
        assert sock.getsockname()[1] != taken_port
        assert url_for(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}/"


def test_bind_socket_on_a_free_port() -> None:
    sock, moved = bind_socket("127.0.0.1", 0)
    with sock:
        assert not moved
        port = sock.getsockname()[1]
    again, moved = bind_socket("127.0.0.1", port)
    with again:
        assert not moved
        assert again.getsockname()[1] == port


def test_url_for_shows_a_wildcard_address_as_loopback() -> None:
    sock, _ = bind_socket("0.0.0.0", 0)
    with sock:
        assert url_for(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}/"
    if socket.has_ipv6:
        try:
            six, _ = bind_socket("::1", 0)
        except OSError:
            return  # no IPv6 loopback here
        with six:
            assert url_for(six) == f"http://[::1]:{six.getsockname()[1]}/"


@pytest.mark.parametrize(
    ("host", "port", "field"),
    [("127.0.0.1", -1, "port"), ("127.0.0.1", 65536, "port"), ("", 0, "host")],
)
def test_bind_socket_checks_its_arguments(host: str, port: int, field: str) -> None:
    with pytest.raises(sk.ValidationError) as info:
        bind_socket(host, port)
    assert info.value.field == field


def test_bind_socket_names_a_host_it_cannot_resolve() -> None:
    # .invalid is reserved (RFC 6761): resolvers answer "no such name" at once.
    with pytest.raises(sk.ValidationError, match="cannot resolve host") as info:
        bind_socket("no-such-host.invalid", 0)
    assert info.value.field == "host"


async def test_the_demo_agent_reasons_and_calls_tools_before_the_answer(
    client: httpx.AsyncClient,
) -> None:
    from streamkit.demo._app import DemoAgent
    from streamkit.parts import ReasoningDelta, ToolCallEnd, ToolResult

    created = await client.post("/sessions", json={"prompt": DEFAULT_PROMPT})
    response = await client.get(created.json()["urls"]["events"])
    events = [event async for event in sse.aiter_events(response.aiter_bytes())]
    parts = [event.part for event in events if event.part is not None]
    assert any(isinstance(part, ReasoningDelta) for part in parts)
    calls = [part.name for part in parts if isinstance(part, ToolCallEnd)]
    assert calls == ["search", "get_weather", "get_time"]
    assert sum(isinstance(p, ToolResult) and p.failed for p in parts) == 1
    # The text comes after the tool steps, and is exactly the model's answer.
    first_token = next(i for i, e in enumerate(events) if e.event_type == sk.EventType.TOKEN)
    last_call = max(i for i, e in enumerate(events) if isinstance(e.part, ToolResult))
    assert last_call < first_token
    agent = DemoAgent(make_agent(realtime=False))
    assert agent.text.answer(DEFAULT_PROMPT) == agent.answer(DEFAULT_PROMPT)
    with pytest.raises(sk.ValidationError) as info:
        DemoAgent("model")  # type: ignore[arg-type]
    assert info.value.field == "text"


async def test_the_demo_without_tools_streams_text_only() -> None:
    app = make_app(fast=True, tools=False)
    async with app.stream_app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            created = await client.post("/sessions", json={"prompt": "Hi"})
            response = await client.get(created.json()["urls"]["events"])
            events = [event async for event in sse.aiter_events(response.aiter_bytes())]
    assert [e for e in events if e.event_type == sk.EventType.PART] == []
    with pytest.raises(sk.ValidationError) as info:
        make_app(tools="yes")  # type: ignore[arg-type]
    assert info.value.field == "tools"


async def test_metrics_show_the_figures_of_the_running_demo() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from .asgi_helpers import serve, wait_until

    app = make_app(fast=True)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            created = await http.post("/sessions", json={"prompt": DEFAULT_PROMPT})
            session_id = created.json()["session"]["session_id"]
            async with http.stream("GET", f"/sessions/{session_id}/events") as response:
                events = [event async for event in sse.aiter_events(response.aiter_bytes())]
            # The client has the whole body a moment before the server's response ends.
            await wait_until(lambda: app.stream_app.statistics()["streams_open"] == 0)
            metrics = await http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
    }
    stats: Any = events[-1].metadata["stats"]
    done = (("streamkit_stream_outcome", "completed"),)
    assert found[("streamkit_sessions_created_total", ())] == 1
    assert found[("streamkit_stream_tokens_total", done)] == stats["tokens"]
    assert found[("gen_ai_server_time_to_first_token_seconds_count", done)] == 1
    assert found[("streamkit_sessions", (("streamkit_session_state", "completed"),))] == 1
    assert found[("streamkit_http_open_streams", (("streamkit_connection_kind", "stream"),))] == 0
    assert session_id not in metrics.text


async def test_metrics_before_the_lifespan_say_what_is_missing(
    client: httpx.AsyncClient,
) -> None:
    # The fixture runs the StreamApp's registry without the demo's ASGI lifespan.
    response = await client.get("/metrics")
    assert response.status_code == 404
    assert "prometheus-client" in response.json()["error"]["message"]
