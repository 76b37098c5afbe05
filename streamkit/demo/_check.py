"""``python -m streamkit.demo --check``: the demo end to end, headless, in a few seconds.

It serves the demo on a free port and drives it over real HTTP with the standard
library only (``http.client``; the ``demo`` extra adds nothing but uvicorn), reading the
event stream with :class:`streamkit.sse.SSEDecoder`: the page is served and
self-contained; a session streams; the connection is dropped mid-answer and resumed
with ``Last-Event-ID``; the text is exactly the model's answer, every ``seq`` once and in
order; pause, resume and cancel move a second session through its states.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .. import sse
from .._events import EventType
from ._app import DEFAULT_PROMPT, make_agent, make_app
from ._server import running_server

if TYPE_CHECKING:
    from typing import TextIO

    from .._events import StreamEvent

__all__ = ["run_check"]

_SECOND_PROMPT: Final = "What happens if the connection drops?"
#: Token events read before the check drops the connection.
_DROP_AFTER_TOKENS: Final = 10
# An attribute or CSS url() whose value starts with a scheme-relative or http(s) URL.
_EXTERNAL: Final = re.compile(
    r"""(?:\b(?:src|href|action)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)\s*(?:https?:)?//""",
    re.IGNORECASE,
)


class _Failed(Exception):
    """A check did not hold; the message says which."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise _Failed(message)


class _Client:
    """Just enough HTTP/1.1 for the check: one connection per request, JSON bodies."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.host = parts.hostname
        self.port = parts.port
        self.timeout = timeout

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(
        self, method: str, path: str, body: object = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self._connect()
        try:
            headers = {"accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["content-type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return (
                response.status,
                {name.lower(): value for name, value in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def json(self, method: str, path: str, body: object = None, *, status: int = 200) -> Any:
        got, _, data = self.request(method, path, body)
        _expect(got == status, f"{method} {path}: expected {status}, got {got}: {data[:200]!r}")
        return json.loads(data)

    def events(
        self, path: str, *, last_event_id: str = "", drop_after_tokens: int | None = None
    ) -> tuple[list[StreamEvent], str]:
        """Read an SSE stream until it ends, or drop it after some token events.

        Returns:
            The events read, and the last event id (what a client resumes from).
        """
        conn = self._connect()
        try:
            headers = {"accept": "text/event-stream"}
            if last_event_id:
                headers["last-event-id"] = last_event_id
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            _expect(response.status == 200, f"GET {path}: expected 200, got {response.status}")
            media = response.getheader("content-type", "")
            _expect(media.startswith("text/event-stream"), f"GET {path}: content-type {media}")
            decoder = sse.SSEDecoder()
            events: list[StreamEvent] = []
            tokens = 0
            while True:
                chunk = response.read1(65536)
                messages = decoder.feed(chunk) if chunk else decoder.feed_eof()
                for message in messages:
                    event = message.to_event()
                    events.append(event)
                    if event.event_type == EventType.TOKEN:
                        tokens += 1
                        if drop_after_tokens is not None and tokens >= drop_after_tokens:
                            return events, decoder.last_event_id  # drop: close mid-stream
                if not chunk:
                    return events, decoder.last_event_id
        finally:
            conn.close()


def run_check(out: TextIO, *, host: str = "127.0.0.1", timeout: float = 10.0) -> bool:
    """Run the demo end to end on a free port and report each step to ``out``.

    Args:
        out: Where the report goes.
        host: The address to serve on.
        timeout: Seconds any one network operation may take.

    Returns:
        Whether every step passed.
    """
    started = time.monotonic()
    # Fast enough for a check, slow enough that the drop happens mid-answer.
    agent = make_agent(tokens_per_second=150.0, first_token_latency=0.1)
    steps = 0

    def ok(text: str) -> None:
        nonlocal steps
        steps += 1
        print(f"  ok  {text}", file=out, flush=True)

    print("streamkit demo check", file=out, flush=True)
    try:
        with running_server(make_app(agent), host=host) as url:
            ok(f"server started at {url}")
            client = _Client(url, timeout)
            _check_page(client, ok)
            _check_resume(client, agent.answer(DEFAULT_PROMPT), ok)
            _check_controls(client, ok)
            stats = client.json("GET", "/stats")
            _expect(stats["registry"]["sessions_created"] == 2, f"/stats: {stats['registry']}")
            ok("GET /stats counts both sessions")
    except Exception as exc:  # any failure is a result to report, not a crash
        print(f"FAIL  {type(exc).__name__}: {exc}", file=out, flush=True)
        print("demo check failed", file=out, flush=True)
        return False
    elapsed = time.monotonic() - started
    print(f"demo check passed: {steps} steps in {elapsed:.1f} s", file=out, flush=True)
    return True


def _check_page(client: _Client, ok: Any) -> None:
    status, headers, page = client.request("GET", "/")
    _expect(status == 200, f"GET /: expected 200, got {status}")
    _expect(headers.get("content-type", "").startswith("text/html"), "GET /: not HTML")
    _expect("default-src 'none'" in headers.get("content-security-policy", ""), "GET /: no CSP")
    html = page.decode()
    external = _EXTERNAL.search(html)
    _expect(external is None, f"the page loads something from outside: {external!r}")
    for testid in ("prompt", "submit", "answer", "state", "ttft", "tps", "events", "drop"):
        _expect(f'data-testid="{testid}"' in html, f"the page has no {testid!r} element")
    _expect("new EventSource(" in html, "the page does not use EventSource")
    ok(f"GET / serves the page, self-contained ({len(page) / 1024:.1f} KiB, no external URL)")


def _check_resume(client: _Client, answer: str, ok: Any) -> None:
    created = client.json("POST", "/sessions", {"prompt": DEFAULT_PROMPT}, status=201)
    session_id = created["session"]["session_id"]
    events_path = created["urls"]["events"]
    ok(f"POST /sessions started session {session_id[:12]}...")

    first, last_id = client.events(events_path, drop_after_tokens=_DROP_AFTER_TOKENS)
    _expect(first[0].event_type == EventType.START, f"first event {first[0].event_type}")
    _expect(bool(last_id), "the stream gave no event id to resume from")
    ok(f"read {len(first)} events, then dropped the connection after seq {last_id}")

    rest, _ = client.events(events_path, last_event_id=last_id)
    _expect(bool(rest), "nothing came after the resume")
    final = rest[-1]
    _expect(final.event_type == EventType.COMPLETE, f"the stream ended with {final.event_type}")
    _expect(final.metadata.get("reason") == "completed", f"ended: {final.metadata}")
    events = first + rest
    seqs = [event.seq for event in events]
    _expect(seqs == list(range(1, len(events) + 1)), f"seqs are not 1..n in order: {seqs}")
    text = "".join(event.content for event in events if event.event_type == EventType.TOKEN)
    _expect(text == answer, f"text differs from the answer:\n{text!r}\n{answer!r}")
    ok(
        f"resumed with Last-Event-ID {last_id}: seq {rest[0].seq} to {final.seq}, "
        f"text equals the answer ({len(text)} characters, nothing lost or repeated)"
    )
    status = client.json("GET", f"/sessions/{session_id}")["session"]["status"]
    _expect(status == "completed", f"GET /sessions/{{id}}: status {status}")
    ok("GET /sessions/{id} says completed")


def _check_controls(client: _Client, ok: Any) -> None:
    created = client.json("POST", "/sessions", {"prompt": _SECOND_PROMPT}, status=201)
    base = created["urls"]["self"]
    states = [
        client.json("POST", f"{base}/{action}")["session"]["status"]
        for action in ("pause", "resume", "pause", "cancel")
    ]
    expected = ["paused", "active", "paused", "cancelled"]
    _expect(states == expected, f"pause, resume, pause, cancel gave {states}")
    events, _ = client.events(created["urls"]["events"])
    final = events[-1]
    _expect(final.event_type == EventType.COMPLETE, f"the stream ended with {final.event_type}")
    _expect(final.metadata.get("reason") == "cancelled", f"ended: {final.metadata}")
    ok(f"pause, resume, pause, cancel: {' -> '.join(states)}; the stream ended 'cancelled'")
