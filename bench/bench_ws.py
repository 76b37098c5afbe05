"""Benchmark: server CPU per WebSocket delivery, StreamApp against a bare ASGI loop.

Run: ``.venv/bin/python bench/bench_ws.py`` (``STREAMKIT_BENCH_QUICK=1`` for a smoke
run; ``STREAMKIT_BENCH_BASELINE=/path/to/other/checkout`` adds a StreamApp built from
that checkout's ``streamkit``, e.g. ``/work/main``, to compare code versions in the same
run).

Each server runs under uvicorn (h11 for HTTP, the ``websockets-sansio`` implementation, the
asyncio loop) in a process of its own on 127.0.0.1; this process holds the clients
(the ``websockets`` package). ``CLIENTS`` connections subscribe to one session; the
server then publishes ``EVENTS`` token events, paced (``RATE`` per second), so each
delivery is one event at a time, as in a real LLM stream. The figure is the server's
CPU time (user + system, from ``/proc``) over the publish window divided by the
deliveries (clients x events), median of a few runs; servers take turns run by run.

* **streamkit**: ``StreamApp`` at ``/sessions/{id}/ws``; the publisher is
  ``registry.publish`` in the server.
* **bare ASGI**: the anchor of issue 21: one ``asyncio.Queue`` per connection, each
  event encoded once, one ``websocket.send`` per event, the publisher a
  ``put_nowait`` per connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _harness import QUICK, machine, repetitions, save, table
from websockets.asyncio.client import connect

CLIENTS = int(os.environ.get("BENCH_WS_CLIENTS") or (10 if QUICK else 500))
EVENTS = int(os.environ.get("BENCH_WS_EVENTS") or (20 if QUICK else 200))
RATE = float(os.environ.get("BENCH_WS_RATE") or 20)

SERVER = r"""
import asyncio, json, sys
import uvicorn

kind, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

if kind == "bare":
    queues = []
    payload = None

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/bench/create":
                body = b'{"session_id":"bare"}'
            elif path == "/bench/count":
                body = str(len(queues)).encode()
            else:
                n = int(scope["query_string"].decode().split("=")[1])
                for i in range(n):
                    text = json.dumps({"type": "event", "session_id": "bare",
                                       "event": {"seq": i + 1, "content": "tok"}})
                    for q in queues:
                        q.put_nowait(text)
                    await asyncio.sleep(1 / rate)
                body = b"ok"
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()
        await send({"type": "websocket.accept"})
        q = asyncio.Queue()
        queues.append(q)
        await send({"type": "websocket.send", "text": json.dumps({"type": "subscribed"})})
        while True:
            await send({"type": "websocket.send", "text": await q.get()})
else:
    import streamkit as sk
    from streamkit.asgi import StreamApp

    print("streamkit from", sk.__file__, file=sys.stderr)

    stream_app = StreamApp(
        registry_config=sk.RegistryConfig(max_sessions=10, heartbeat_interval=None,
                                          max_subscribers_per_session=100_000),
        allow_anonymous=True,
        max_connections_per_user=None,
    )
    state = {}

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/bench/"):
            path = scope["path"]
            registry = stream_app.registry
            if path == "/bench/create":
                session = await registry.create()
                state["sid"] = session.session_id
                body = json.dumps({"session_id": session.session_id}).encode()
            elif path == "/bench/count":
                body = str(stream_app.statistics()["websockets_open"]).encode()
            else:
                n = int(scope["query_string"].decode().split("=")[1])
                for i in range(n):
                    await registry.publish(state["sid"], sk.StreamEvent(event_type="token",
                                                                       content="tok"))
                    await asyncio.sleep(1 / rate)
                body = b"ok"
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await stream_app(scope, receive, send)

uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio",
            lifespan="on")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, kind: str, pythonpath: str | None) -> None:
        self.port = free_port()
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVER,
                "bare" if kind == "bare" else "sk",
                str(self.port),
                str(RATE),
            ],
            env=env,
            # Not this checkout: `python -c` puts the working directory first on
            # sys.path, before PYTHONPATH, which would hide the baseline's streamkit.
            cwd=tempfile.gettempdir(),
        )
        url = f"http://127.0.0.1:{self.port}/bench/count"
        for _ in range(200):
            try:
                httpx.get(url, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:  # an open WebSocket holds uvicorn's shutdown
            self.process.kill()
            self.process.wait()


async def one_run(server: Server) -> float:
    """Return µs of server CPU per delivery."""
    base = f"127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=f"http://{base}", timeout=120) as client:
        session_id = (await client.post("/bench/create")).json()["session_id"]
        path = "/ws" if session_id == "bare" else f"/sessions/{session_id}/ws"
        sockets = []
        for _ in range(CLIENTS):
            ws = await connect(f"ws://{base}{path}", max_queue=None, compression=None)
            sockets.append(ws)
            await ws.recv()  # subscribed

        async def read_all(ws: object) -> None:
            count = 0
            while count < EVENTS:
                message = json.loads(await ws.recv())  # type: ignore[attr-defined]
                if message["type"] == "event":
                    count += 1

        readers = [asyncio.create_task(read_all(ws)) for ws in sockets]
        before = cpu_seconds(server.process.pid)
        await client.post("/bench/publish", params={"n": EVENTS})
        await asyncio.gather(*readers)
        used = cpu_seconds(server.process.pid) - before
        for ws in sockets:
            await ws.close()
    return used / (CLIENTS * EVENTS) * 1e6


def main() -> None:
    baseline = os.environ.get("STREAMKIT_BENCH_BASELINE")
    kinds = ["bare", "streamkit"] + (["baseline"] if baseline else [])
    servers = {kind: Server(kind, baseline if kind == "baseline" else None) for kind in kinds}
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for _ in range(repetitions(3)):
            for kind in kinds:
                samples[kind].append(asyncio.run(one_run(servers[kind])))
    finally:
        for server in servers.values():
            server.close()
    medians = {kind: statistics.median(values) for kind, values in samples.items()}
    bare = medians["bare"]
    names = {
        "bare": "bare ASGI loop",
        "streamkit": "StreamApp (this code)",
        "baseline": f"StreamApp ({baseline})",
    }
    rows = [
        [
            names[kind],
            f"{medians[kind]:.1f}",
            f"{medians[kind] / bare:.2f}x",
            " ".join(f"{v:.1f}" for v in samples[kind]),
        ]
        for kind in kinds
    ]
    header = ["server", "µs CPU / delivery", "vs bare", "runs"]
    print(
        table(
            f"WebSocket deliveries: {CLIENTS} clients, {EVENTS} events at {RATE:g}/s, "
            "uvicorn on 127.0.0.1",
            header,
            rows,
        )
    )
    save(
        "ws",
        {
            "machine": machine(),
            "clients": CLIENTS,
            "events": EVENTS,
            "medians": medians,
            "samples": samples,
        },
    )


if __name__ == "__main__":
    main()
