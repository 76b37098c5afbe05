# streamkit-example: app
"""StreamApp mounted inside Starlette, plus a route that streams an agent's answer directly.

Run it with ``uvicorn examples.starlette_app:app``; the endpoints are those of
examples/fastapi_app.py: ``/answer?prompt=...`` and the StreamApp under ``/stream``.
The direct route uses :func:`streamkit.asgi.serve_events`, so it gets the same
batching, heartbeats, disconnect detection and gzip as the mounted app.
``STREAMKIT_EXAMPLE_FAST=1`` makes the simulated agent answer with no delay.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import streamkit as sk
from streamkit.asgi import Receive, Scope, Send, StreamApp, serve_events
from streamkit.testing import SimulatedAgent

FAST = os.environ.get("STREAMKIT_EXAMPLE_FAST") == "1"

agent = SimulatedAgent(seed=1, realtime=not FAST)
stream_config = sk.StreamConfig(stream_delay=0 if FAST else 0.02, chunk_size=3)
TOKENS = {"demo-token-alice": "alice", "demo-token-bob": "bob"}


def authenticate(scope: Scope) -> str | None:
    """Map ``Authorization: Bearer <token>`` to a user id; anything else is denied."""
    for name, value in scope["headers"]:
        if name == b"authorization" and value.startswith(b"Bearer "):
            return TOKENS.get(value[7:].decode("latin-1"))
    return None


stream_app = StreamApp(
    registry_config=sk.RegistryConfig(max_sessions=100, max_sessions_per_user=10),
    agent=agent,
    authenticate=authenticate,
    stream_config=stream_config,
)


class Answer:
    """A plain ASGI endpoint (Starlette routes to class instances as raw ASGI apps)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prompt = Request(scope).query_params.get("prompt")
        if not prompt:
            await JSONResponse({"error": "give ?prompt=..."}, status_code=400)(scope, receive, send)
            return
        async with sk.stream_tokens(agent(prompt), stream_config) as events:
            await serve_events(scope, receive, send, events, compression=True)


app = Starlette(
    routes=[Route("/answer", Answer(), methods=["GET"]), Mount("/stream", app=stream_app)],
    lifespan=stream_app.lifespan,
)
