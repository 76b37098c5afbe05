"""The demo's ASGI app: the page at ``/``, a :class:`~streamkit.asgi.StreamApp` behind it.

Rules of this module:

* The page is one self-contained HTML file shipped in the package (``static/index.html``):
  inline CSS and JavaScript, no request leaves the demo's own origin. Its
  ``Content-Security-Policy`` makes the browser enforce that.
* Every other path goes to the StreamApp unchanged, ASGI ``lifespan`` included, so the
  StreamApp owns and runs its registry exactly as in an application.
* The demo has no login: the StreamApp serves everyone as the anonymous user
  (``allow_anonymous=True``). That is a demo setting for a server on ``127.0.0.1``, not a
  pattern for production.
* ``/metrics`` shows the registry's figures in the Prometheus text format
  (:mod:`streamkit.prometheus`, measured from the lifespan's start) when
  ``prometheus-client`` is installed, anonymously as the rest of the demo.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._config import RegistryConfig, StreamConfig
from .._errors import ValidationError
from .._parts import StepStart
from .._validate import check_bool, type_name
from ..asgi import StreamApp
from ..testing import SimulatedAgent, SimulatedToolAgent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .._asgi_http import Message
    from .._parts import Part
    from ..asgi import Receive, Scope, Send

__all__ = [
    "DEFAULT_PROMPT",
    "DEMO_SEED",
    "DemoAgent",
    "DemoApp",
    "make_agent",
    "make_app",
    "page_html",
]

#: The seed of the demo's simulated model: the same prompt always gets the same answer.
DEMO_SEED: Final = 11
#: The prompt the page and the terminal mode start with.
DEFAULT_PROMPT: Final = "How does streaming work?"

# The answer to the default prompt is written out, longer than a generated one, so that a
# person has time to try the buttons while it streams. Other prompts get the simulated
# model's generated answers.
_DEFAULT_ANSWER: Final = (
    "Streaming sends each piece of an answer the moment the model produces it, so the "
    "first words appear after a fraction of a second instead of after the whole reply.\n\n"
    "Each piece becomes an event with a sequence number, appended once to the session's "
    "log. Any number of readers can follow that log: a browser tab through EventSource, a "
    "terminal, another service. The model runs once, however many read.\n\n"
    "A reader that loses its connection reconnects with the last sequence number it saw; "
    "the server replays what it missed from the log, and the text goes on with nothing "
    "lost and nothing repeated. Pause holds the stream, resume lets it go on, and cancel "
    "ends the session for good."
)

_CSP: Final = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)
_PAGE_PATHS: Final = frozenset({"/", "/index.html"})


def make_agent(
    *,
    tokens_per_second: float = 25.0,
    first_token_latency: float = 0.3,
    realtime: bool = True,
) -> SimulatedAgent:
    """Return the demo's simulated model (seed :data:`DEMO_SEED`).

    The answers depend only on the seed and the prompt, never on the timing, so
    ``make_agent().answer(prompt)`` is the exact text any demo run streams for
    ``prompt``.

    Args:
        tokens_per_second: The mean rate after the first token.
        first_token_latency: Seconds before the first token.
        realtime: Sleep between tokens (``False``: stream with no delay).

    Returns:
        The agent.

    Raises:
        ValidationError: a timing is not a positive number (or negative for the latency).
    """
    return SimulatedAgent(
        seed=DEMO_SEED,
        tokens_per_second=tokens_per_second,
        first_token_latency=first_token_latency,
        realtime=realtime,
        answers={DEFAULT_PROMPT: _DEFAULT_ANSWER},
    )


class DemoAgent:
    """The demo's agent: it reasons and calls tools, then streams the model's answer.

    The reasoning, the tool calls (arguments streamed in pieces, a parallel pair, one
    failing tool), their results, a source, app data, the steps and the usage come from
    :class:`~streamkit.testing.SimulatedToolAgent` (seed :data:`DEMO_SEED`), at the
    text model's pace; the answer's text is exactly ``text.answer(prompt)``, streamed
    in the third step.

    Args:
        text: The model whose answer is the text (:func:`make_agent`).

    Raises:
        ValidationError: ``text`` is not a :class:`~streamkit.testing.SimulatedAgent`.
    """

    __slots__ = ("_text", "_tools")

    def __init__(self, text: SimulatedAgent) -> None:
        if not isinstance(text, SimulatedAgent):
            raise ValidationError(
                f"text must be a SimulatedAgent, got {type_name(text)}", field="text"
            )
        self._text = text
        self._tools = SimulatedToolAgent(
            seed=DEMO_SEED,
            tokens_per_second=text._tps,
            first_token_latency=text._first_latency,
            jitter=text._jitter,
            realtime=text._realtime,
        )

    @property
    def text(self) -> SimulatedAgent:
        """The model whose answer is the text."""
        return self._text

    def answer(self, prompt: str) -> str:
        """Return the text the agent streams for ``prompt``."""
        return self._text.answer(prompt)

    def __call__(self, prompt: str) -> AsyncIterator[str | Part]:
        """Stream the steps and the answer for ``prompt``."""
        return self._stream(prompt)

    async def _stream(self, prompt: str) -> AsyncIterator[str | Part]:
        items, delays = self._tools._plan(prompt)
        realtime = self._text._realtime
        steps = 0
        for item, delay in zip(items, delays, strict=True):
            if isinstance(item, str):
                continue  # the tool agent's own text: the text model answers instead
            if realtime:
                await anyio.sleep(delay)
            yield item
            if isinstance(item, StepStart):
                steps += 1
                if steps == 3:
                    async for token in self._text.stream(prompt):
                        yield token


@cache
def page_html() -> bytes:
    """Return the demo page: one self-contained HTML document, as UTF-8 bytes."""
    return resources.files(__package__).joinpath("static", "index.html").read_bytes()


class DemoApp:
    """An ASGI 3 app serving the demo page at ``/`` and a StreamApp everywhere else.

    Args:
        stream_app: The app that serves the sessions; its ASGI ``lifespan`` runs its
            registry.

    Raises:
        ValidationError: ``stream_app`` is not a :class:`~streamkit.asgi.StreamApp`.
    """

    def __init__(self, stream_app: StreamApp) -> None:
        if not isinstance(stream_app, StreamApp):
            raise ValidationError(
                f"stream_app must be a StreamApp, got {type_name(stream_app)}",
                field="stream_app",
            )
        self.stream_app = stream_app
        #: The :mod:`streamkit.prometheus` figures of the running registry, served at
        #: ``/metrics``; ``None`` before the lifespan starts or without prometheus-client.
        self.metrics: Any = None
        self._metrics_app: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        kind = scope["type"]
        if kind == "http" and scope.get("path") in _PAGE_PATHS:
            await self._page(scope, send)
        elif kind == "http" and scope.get("path") == "/metrics":
            await self._metrics(scope, receive, send)
        elif kind == "lifespan":

            async def watch(message: Message) -> None:
                if message["type"] == "lifespan.startup.complete":
                    self._instrument()
                await send(message)

            await self.stream_app(scope, receive, watch)
        else:
            await self.stream_app(scope, receive, send)

    def _instrument(self) -> None:
        try:
            import streamkit.prometheus
        except ImportError:
            return
        if self.metrics is not None:
            self.metrics.uninstrument()
        self.metrics = streamkit.prometheus.instrument(
            self.stream_app.registry, stream_apps=[self.stream_app]
        )
        self._metrics_app = self.metrics.app(allow_anonymous=True)  # a demo: no login

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._metrics_app is not None:
            await self._metrics_app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": {
                    "code": "not_found",
                    "message": "no metrics: they are measured from the server's lifespan "
                    "start, with prometheus-client installed "
                    "(pip install 'streamkit[prometheus]')",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _page(scope: Scope, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = page_html()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    (b"content-security-policy", _CSP),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def make_app(
    agent: SimulatedAgent | None = None, *, fast: bool = False, tools: bool = True
) -> DemoApp:
    """Build the demo app: the page and a StreamApp over its own registry.

    The StreamApp makes its registry and runs it in the ASGI ``lifespan`` (uvicorn runs
    it). Sessions stream one token per event, with no extra pacing, so the page shows
    the model's own rhythm.

    Args:
        agent: The model; :func:`make_agent` with realistic timing by default.
        fast: With no ``agent``: the model streams with no delay (for checks and tests).
        tools: Wrap the model in a :class:`DemoAgent`, which reasons and calls tools
            before the answer (the page shows them); ``False``: text only.

    Returns:
        The ASGI app.

    Raises:
        ValidationError: ``agent`` is not a :class:`~streamkit.testing.SimulatedAgent`,
            or ``fast`` is not a bool.
    """
    check_bool("fast", fast)
    if agent is None:
        agent = make_agent(realtime=not fast)
    elif not isinstance(agent, SimulatedAgent):
        raise ValidationError(
            f"agent must be a SimulatedAgent, got {type_name(agent)}", field="agent"
        )
    check_bool("tools", tools)
    stream_app = StreamApp(
        registry_config=RegistryConfig(
            max_sessions=500,
            session_timeout=600.0,
            cleanup_interval=30.0,
            # A paused session shows a heartbeat every few seconds on the page.
            heartbeat_interval=5.0,
            ended_session_ttl=600.0,
        ),
        agent=DemoAgent(agent) if tools else agent,
        allow_anonymous=True,  # a demo on 127.0.0.1: no login
        stream_config=StreamConfig(
            chunk_size=1, stream_delay=0, max_stream_time=300.0, heartbeat_interval=None
        ),
        heartbeat_interval=10.0,
        retry_ms=1000,
    )
    return DemoApp(stream_app)
