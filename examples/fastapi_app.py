# streamkit-example: app
"""StreamApp mounted inside FastAPI, plus a route that streams an agent's answer directly.

Run it with ``uvicorn examples.fastapi_app:app`` and try::

    curl -N "http://127.0.0.1:8000/answer?prompt=hello"
    curl -s -X POST http://127.0.0.1:8000/stream/sessions \\
         -H "Authorization: Bearer demo-token-alice" -H "Content-Type: application/json" \\
         -d '{"prompt": "hello"}'
    curl -N http://127.0.0.1:8000/stream/sessions/<id>/events \\
         -H "Authorization: Bearer demo-token-alice"

``STREAMKIT_EXAMPLE_FAST=1`` makes the simulated agent answer with no delay.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

import streamkit as sk
from streamkit.asgi import Scope, StreamApp
from streamkit.testing import SimulatedAgent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

FAST = os.environ.get("STREAMKIT_EXAMPLE_FAST") == "1"

agent = SimulatedAgent(seed=1, realtime=not FAST)
stream_config = sk.StreamConfig(stream_delay=0 if FAST else 0.02, chunk_size=3)

# A toy token table; a real application checks a session cookie or a signed token.
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

# Mounted apps get no lifespan events: the parent runs the StreamApp's lifespan, which
# enters (and at shutdown closes) its registry.
app = FastAPI(lifespan=stream_app.lifespan)
app.mount("/stream", stream_app)


@app.get("/answer")
async def answer(prompt: str) -> StreamingResponse:
    """Stream one answer as SSE, without a session (nothing to resume)."""

    async def body() -> AsyncIterator[bytes]:
        async with sk.stream_tokens(agent(prompt), stream_config) as events:
            async for event in events:
                yield sk.sse.encode(event)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
