"""Registry shutdown with 500 live sessions and their subscribers, on both backends.

Leaving ``async with registry`` ends every live session with one final event, ends
every subscription, and returns within a bound; afterwards no task of the registry or
of its subscribers is left, and no thread (sync sources run in threads of their own).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx
import pytest

import streamkit as sk

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

SESSIONS = 500
SYNC_SOURCES = 40
#: Seconds the registry may take to shut down (it takes well under one).
SHUTDOWN_BOUND = 15.0


def count_tasks(backend: str) -> int:
    """The tasks alive now in this event loop."""
    if backend == "asyncio":
        import asyncio

        return len(asyncio.all_tasks())
    import trio

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())  # type: ignore[arg-type]


# Live but slow sources: 500 sessions at LLM pace would keep a traced (coverage) Trio
# run busy enough to miss the set-up bound; what is tested is the shutdown, not speed.
async def endless() -> AsyncIterator[str]:
    while True:
        yield "x"
        await anyio.sleep(0.5)


def endless_sync() -> Iterator[str]:
    import time

    while True:
        yield "y"
        time.sleep(0.05)


async def follow(
    reg: sk.SessionRegistry,
    session_id: str,
    finals: list[sk.StreamEvent],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with reg.subscribe(session_id, user_id="u") as subscription:
        task_status.started()
        last = None
        async for event in subscription:
            last = event
        assert last is not None
        finals.append(last)


async def test_shutdown_with_500_live_sessions(anyio_backend: str) -> None:
    threads_before = set(threading.enumerate())
    tasks_before = count_tasks(anyio_backend)
    finals: list[sk.StreamEvent] = []
    config = sk.RegistryConfig(max_sessions=SESSIONS, heartbeat_interval=None)
    stream_config = sk.StreamConfig(stream_delay=0, chunk_size=1, flush_interval=0.01)
    # Deadlines set once everything runs: on the shutdown, then on the subscribers.
    with anyio.CancelScope() as outer:
        async with anyio.create_task_group() as subscribers:
            with anyio.CancelScope() as bound:
                async with sk.SessionRegistry(config) as reg:
                    with anyio.fail_after(60):
                        ids = []
                        for i in range(SESSIONS):
                            sid = (await reg.create(user_id="u")).session_id
                            ids.append(sid)
                            source: Any = endless_sync() if i < SYNC_SOURCES else endless()
                            reg.start(sid, source, config=stream_config)
                            await subscribers.start(follow, reg, sid, finals)
                            if i % 5 == 0:  # some sessions have two subscribers
                                await subscribers.start(follow, reg, sid, finals)
                    stats = reg.statistics()
                    assert stats.producers == SESSIONS
                    assert stats.subscribers == SESSIONS + SESSIONS // 5
                    source_threads = [
                        t for t in threading.enumerate() if t.name.startswith("streamkit-source-")
                    ]
                    assert len(source_threads) >= SYNC_SOURCES
                    bound.deadline = anyio.current_time() + SHUTDOWN_BOUND
                    outer.deadline = bound.deadline + SHUTDOWN_BOUND
            assert not bound.cancel_called
    assert not outer.cancel_called
    # Every subscription ended by itself, on the one final event of its session.
    assert len(finals) == SESSIONS + SESSIONS // 5
    assert all(e.event_type == "complete" and e.is_final for e in finals)
    assert {e.session_id for e in finals} == set(ids)
    # Source threads exit at their next item (50 ms away); join them, bounded.
    for thread in source_threads:
        thread.join(SHUTDOWN_BOUND)
        assert not thread.is_alive()
    assert set(threading.enumerate()) <= threads_before
    assert count_tasks(anyio_backend) == tasks_before


async def test_shutdown_while_subscribers_are_slow(anyio_backend: str) -> None:
    """Subscribers that stopped reading do not hold the shutdown up."""
    tasks_before = count_tasks(anyio_backend)
    reg = sk.SessionRegistry(sk.RegistryConfig(max_sessions=50, heartbeat_interval=None))
    stuck = anyio.Event()
    ended = 0

    async def reads_one(sid: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        nonlocal ended
        async with reg.subscribe(sid, user_id="u") as subscription:
            task_status.started()
            async for _ in subscription:
                with anyio.move_on_after(SHUTDOWN_BOUND):
                    await stuck.wait()  # reads no further until the shutdown
                break
        ended += 1

    with anyio.CancelScope() as bound:
        async with anyio.create_task_group() as tg:
            async with reg:
                for _ in range(50):
                    sid = (await reg.create(user_id="u")).session_id
                    reg.start(sid, endless(), config=sk.StreamConfig(stream_delay=0, chunk_size=1))
                    await tg.start(reads_one, sid)
                bound.deadline = anyio.current_time() + SHUTDOWN_BOUND
            stuck.set()
    assert not bound.cancel_called
    assert ended == 50
    assert count_tasks(anyio_backend) == tasks_before


# -- Ctrl-C under a real server, with open event streams -------------------------------------

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a server process may take to exit after SIGINT (it takes well under two).
EXIT_BOUND = 20.0
TOKEN = {"Authorization": "Bearer demo-token-alice"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(server: str, port: int) -> list[str]:
    app = "examples.fastapi_app:app"
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", app, "--port", str(port)]
    # One process: with worker processes the signal never reaches the app (see
    # docs/asgi.md, "Shutting down").
    return [sys.executable, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}", "-w", "0"]


async def wait_listening(client: httpx.AsyncClient, process: anyio.abc.Process) -> None:
    with anyio.fail_after(60):
        while True:
            assert process.returncode is None, "the server exited at start-up"
            try:
                await client.get("/stream/sessions", headers=TOKEN)
                return
            except httpx.TransportError:
                await anyio.sleep(0.05)


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
async def test_ctrl_c_with_open_streams_ends_them_cleanly(server: str) -> None:
    """The documented set-up (examples/fastapi_app.py), no extra code: SIGINT stops it.

    Two open streams, one of a silent session (only heartbeats keep it alive) and one
    of an agent answering in real time: both end as complete HTTP responses, at an
    event boundary, and the server process exits.
    """
    port = free_port()
    process = await anyio.open_process(
        server_command(server, port), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    bodies: list[bytes] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await wait_listening(client, process)
            silent = await client.post("/stream/sessions", json={}, headers=TOKEN)
            talking = await client.post(
                "/stream/sessions", json={"prompt": "a long answer " * 20}, headers=TOKEN
            )
            urls = [r.json()["urls"]["events"] for r in (silent, talking)]
            opened = anyio.Event()
            started = 0

            async def read(url: str, talking: bool) -> None:
                nonlocal started
                body = b""
                counted = False
                async with client.stream("GET", url, headers=TOKEN) as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        # Started: the silent stream at its first bytes, the agent's at
                        # its first event (so that it is stopped mid-answer).
                        if not counted and (not talking or b"\n\n" in body):
                            counted = True
                            started += 1
                            if started == 2:
                                opened.set()
                bodies.append(body)  # the body ended as a complete response

            async with anyio.create_task_group() as tg:
                for url, is_talking in zip(urls, (False, True), strict=True):
                    tg.start_soon(read, url, is_talking)
                with anyio.fail_after(30):
                    await opened.wait()
                process.send_signal(signal.SIGINT)
                with anyio.fail_after(EXIT_BOUND):
                    await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()
    assert len(bodies) == 2
    counts = []
    for body in bodies:
        assert body.startswith(b"retry: ")
        assert body.endswith(b"\n")  # at a line (and event) boundary
        events = sk.sse.SSEDecoder().feed(body)
        seqs = [int(m.id) for m in events]
        assert seqs == list(range(1, len(seqs) + 1))  # resume after the last one
        assert not any(m.event == "complete" for m in events)  # cut short, not ended
        counts.append(len(seqs))
    assert max(counts) > 0  # the agent's stream was stopped mid-answer
