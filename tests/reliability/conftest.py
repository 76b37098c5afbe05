"""Shared pieces of the reliability tests of the ASGI app: apps, tokens, clients.

The servers are real uvicorn servers in a background thread (see ``tests/asgi_helpers``);
test bodies run on both anyio backends, except those using the asyncio-only
``websockets`` client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

import streamkit as sk
from streamkit.asgi import StreamApp
from streamkit.testing import SimulatedAgent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..asgi_helpers import ServerThread

AGENT = SimulatedAgent(seed=3, realtime=False)
PROMPT = "What makes a stream reliable?"

#: The only credentials the test apps accept: a token table, as a real app would have.
TOKENS: dict[str, str] = {"token-alice": "alice", "token-bob": "bob", "token-carol": "carol"}


def token_authenticate(scope: Any) -> str | None:
    """Map ``Authorization: Bearer <token>`` through :data:`TOKENS`; unknown: ``None``."""
    for name, value in scope["headers"]:
        if name == b"authorization" and value.startswith(b"Bearer "):
            return TOKENS.get(value[7:].decode("latin-1"))
    return None


def creds(user: str) -> dict[str, str]:
    """The request headers of a user's valid credentials."""
    return {"Authorization": f"Bearer token-{user}"}


ALICE = creds("alice")
BOB = creds("bob")
WRONG = {"Authorization": "Bearer token-mallory"}


def make_app(**options: Any) -> StreamApp:
    """A StreamApp with fast streams and token authentication; ``options`` override."""
    settings: dict[str, Any] = {
        "registry_config": sk.RegistryConfig(max_sessions=1000, heartbeat_interval=None),
        "agent": AGENT,
        "authenticate": token_authenticate,
        "stream_config": sk.StreamConfig(stream_delay=0, chunk_size=4, heartbeat_interval=None),
        "heartbeat_interval": 0.2,
        "max_body_bytes": 4096,
        "max_ws_message_bytes": 1024,
    }
    settings.update(options)
    return StreamApp(**settings)


@pytest.fixture
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for the ``server`` fixture of the requesting module."""
    server: ServerThread = request.getfixturevalue("server")
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=20) as client:
        yield client


async def create(client: httpx.AsyncClient, headers: dict[str, str] = ALICE, **body: Any) -> str:
    """Create a session over HTTP and return its id."""
    response = await client.post("/sessions", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["session"]["session_id"])


async def session_status(
    server: ServerThread, app: StreamApp, session_id: str, user: str = "alice"
) -> str:
    """The session's status as the registry has it."""

    async def run() -> str:
        return str((await app.registry.get(session_id, user_id=user)).status.value)

    return await server.call(run)


async def wait_status(
    server: ServerThread, app: StreamApp, session_id: str, status: str, timeout: float = 10.0
) -> None:
    """Wait until the session reaches ``status`` (polled: it lives in another thread)."""
    with anyio.fail_after(timeout):
        while await session_status(server, app, session_id) != status:
            await anyio.sleep(0.01)
