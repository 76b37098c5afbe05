"""Benchmark 3: SSE throughput over loopback HTTP, StreamApp against two Starlette servers.

Run: ``.venv/bin/python bench/bench_http.py`` (``STREAMKIT_BENCH_QUICK=1`` for a smoke
run). Each server runs under uvicorn (its defaults: h11, the asyncio loop) in a process
of its own on 127.0.0.1; this process is the client. The servers take turns, request
by request, and the figure is the median of several requests.

The servers send the same N events with the same payload: the JSON of a streamkit
token event (id, type, content, timestamp, metadata with index and elapsed, session id,
seq) under ``id:`` and ``event:`` fields.

* **streamkit**: ``StreamApp`` with an agent that yields N tokens at once
  (``chunk_size=1``, ``stream_delay=0``, no compression; the session's log holds the
  whole stream). The clock covers ``POST /sessions`` and the whole
  ``GET .../events`` response: the session is made, produced and read. The session
  is deleted after each request, off the clock.
* **sse-starlette**: a Starlette route returning ``EventSourceResponse`` over an async
  generator that builds each event's JSON with ``json.dumps`` and yields it in a dict
  with its ``id`` and ``event`` (sse-starlette's documented use, with ``sep="\\n"``).
* **raw Starlette**: a ``StreamingResponse`` over an async generator that yields each
  event's bytes, formatted by hand.

The client is httpx: one ``AsyncClient``, ``stream()``, ``aiter_bytes()``, events
counted as the occurrences of ``b"\\n\\n"`` (the same cheap parser for every server).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio
import httpx
from _harness import machine, repetitions, save, table

QUICK = os.environ.get("STREAMKIT_BENCH_QUICK") == "1"
EVENTS = 2_000 if QUICK else 20_000
REPEAT = repetitions(11)
SERVERS = ("streamkit", "sse-starlette", "raw Starlette")
SESSION_ID = "b3f1c2d4e5f60718a9b0c1d2e3f40516"


# --- the servers (run in child processes) ---------------------------------------------


def _event_json(index: int, started: float) -> str:
    """The JSON of token event ``index``, as StreamEvent.to_json() would write it."""
    now = time.time()
    return json.dumps(
        {
            "event_id": f"{SESSION_ID[:16]}-{index + 1:x}",
            "event_type": "token",
            "content": "tok ",
            "timestamp": now,
            "metadata": {"index": index, "elapsed": round(now - started, 6)},
            "session_id": SESSION_ID,
            "seq": index + 2,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def streamkit_app(events: int) -> Any:
    import streamkit as sk
    from streamkit.asgi import StreamApp

    async def agent(prompt: str) -> Any:
        for _ in range(events):
            yield "tok "

    return StreamApp(
        registry_config=sk.RegistryConfig(
            max_sessions=1000,
            history_max_events=events + 16,
            max_lag=events + 16,
            ended_session_ttl=0,
        ),
        agent=agent,
        allow_anonymous=True,
        stream_config=sk.StreamConfig(chunk_size=1, stream_delay=0, compression_enabled=False),
    )


def sse_starlette_app(events: int) -> Any:
    from sse_starlette import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def stream(request: Any) -> Any:
        async def generate() -> Any:
            started = time.time()
            for index in range(events):
                yield {"data": _event_json(index, started), "id": str(index + 2), "event": "token"}

        return EventSourceResponse(generate(), sep="\n")

    return Starlette(routes=[Route("/events", stream)])


def raw_starlette_app(events: int) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def stream(request: Any) -> Any:
        async def generate() -> Any:
            started = time.time()
            for index in range(events):
                data = _event_json(index, started)
                yield f"id: {index + 2}\nevent: token\ndata: {data}\n\n".encode()

        return StreamingResponse(generate(), media_type="text/event-stream")

    return Starlette(routes=[Route("/events", stream)])


APPS = {
    "streamkit": streamkit_app,
    "sse-starlette": sse_starlette_app,
    "raw Starlette": raw_starlette_app,
}


def with_cpu_route(app: Any) -> Any:
    """Wrap an ASGI app so that ``GET /_cpu`` answers the server's CPU seconds so far."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_cpu":
            body = repr(time.process_time()).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return wrapped


def serve(kind: str, port: int, events: int) -> None:
    import uvicorn

    app = with_cpu_route(APPS[kind](events))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False
    )
    uvicorn.Server(config).run()


# --- the client -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def count_events(client: httpx.AsyncClient, url: str) -> int:
    count = 0
    last = b""
    headers = {"accept": "text/event-stream", "accept-encoding": "identity"}
    async with client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            count += chunk.count(b"\n\n")
            if last == b"\n" and chunk[:1] == b"\n":  # a separator cut between chunks
                count += 1
            last = chunk[-1:]
    return count


async def server_cpu(client: httpx.AsyncClient, base: str) -> float:
    response = await client.get(f"{base}/_cpu")
    return float(response.text)


async def one_request(client: httpx.AsyncClient, kind: str, base: str) -> tuple[float, int, float]:
    """Seconds, events received and the server's CPU seconds of one stream."""
    cpu = await server_cpu(client, base)
    started = time.perf_counter()
    if kind == "streamkit":
        created = await client.post(f"{base}/sessions", json={"prompt": "go"})
        created.raise_for_status()
        url = base + created.json()["urls"]["events"]
    else:
        url = f"{base}/events"
    received = await count_events(client, url)
    elapsed = time.perf_counter() - started
    cpu = await server_cpu(client, base) - cpu
    if kind == "streamkit":  # free the session's log, as an application would
        deleted = await client.delete(base + created.json()["urls"]["self"])
        deleted.raise_for_status()
    return elapsed, received, cpu


async def wait_until_up(client: httpx.AsyncClient, base: str) -> None:
    with anyio.fail_after(20):
        while True:
            try:
                await client.get(f"{base}/")
                return
            except httpx.TransportError:
                await anyio.sleep(0.05)


async def measure(ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    times: dict[str, list[float]] = {kind: [] for kind in ports}
    cpu: dict[str, list[float]] = {kind: [] for kind in ports}
    counts: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        for port in ports.values():
            await wait_until_up(client, f"http://127.0.0.1:{port}")
        for kind, port in ports.items():  # a warm-up request each
            await one_request(client, kind, f"http://127.0.0.1:{port}")
        for _ in range(REPEAT):
            for kind, port in ports.items():
                base = f"http://127.0.0.1:{port}"
                seconds, received, cpu_seconds = await one_request(client, kind, base)
                times[kind].append(seconds)
                cpu[kind].append(cpu_seconds)
                counts[kind] = received
    out = {}
    for kind in ports:
        seconds = statistics.median(times[kind])
        out[kind] = {
            "events": counts[kind],
            "seconds": seconds,
            "events_per_s": counts[kind] / seconds,
            "us_per_event": seconds / counts[kind] * 1e6,
            "server_cpu_us_per_event": statistics.median(cpu[kind]) / counts[kind] * 1e6,
        }
    return out


def main() -> None:
    started = time.perf_counter()
    print(f"streamkit SSE over loopback HTTP, {machine()}, {EVENTS:,} events, medians of {REPEAT}")
    ports = {kind: free_port() for kind in SERVERS}
    servers = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, str(port), str(EVENTS)],
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        for kind, port in ports.items()
    ]
    try:
        results = anyio.run(measure, ports)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=10)
    for kind, figures in results.items():
        assert figures["events"] >= EVENTS, (kind, figures)
    theirs = results["sse-starlette"]["events_per_s"]
    raw = results["raw Starlette"]["events_per_s"]
    their_cpu = results["sse-starlette"]["server_cpu_us_per_event"]
    rows = [
        [
            kind,
            figures["events"],
            figures["seconds"] * 1e3,
            figures["events_per_s"],
            figures["us_per_event"],
            f"{figures['events_per_s'] / theirs:.2f}x",
            f"{figures['events_per_s'] / raw:.2f}x",
            figures["server_cpu_us_per_event"],
            f"{their_cpu / figures['server_cpu_us_per_event']:.2f}x",
        ]
        for kind, figures in results.items()
    ]
    header = [
        "server",
        "events",
        "ms",
        "events/s",
        "µs/event",
        "÷ sse-starlette",
        "÷ raw",
        "server CPU µs/event",
        "sse-starlette CPU ÷ this",
    ]
    print()
    print(table("one client, one stream at a time, uvicorn on 127.0.0.1", header, rows))
    ratio = results["streamkit"]["events_per_s"] / theirs
    goals = [
        [
            "StreamApp >= 2x sse-starlette (events/s)",
            f"{ratio:.2f}x",
            "met" if ratio >= 2 else "NOT met",
        ]
    ]
    print(table("goals", ["goal", "figure", "verdict"], goals))
    path = save("http", {"events": EVENTS, "repeat": REPEAT, "results": results, "goals": goals})
    print(f"raw figures in {path}; took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
