"""Load and soak programs: a uvicorn StreamApp in one process, clients in others.

Run by ``bash scripts/soak`` and by the ``slow`` tests of ``test_load.py``; loopback
only, every loop bounded by a duration. Usage::

    python -m tests.reliability.load_tool load --clients 2000 --minutes 10 --out load.json
    python -m tests.reliability.load_tool soak --minutes 30 --out soak.json

``load``: a server process publishes into ``--sessions`` sessions at ``--rate`` events
per second each, once every client is connected; ``--clients`` SSE clients, spread over
``--procs`` client processes, check every event by ``seq`` (no gap, no duplicate),
measure the lag from the event's ``timestamp`` to its arrival, and end at the session's
``complete`` event. The clients are lean by default (``--client lean``: asyncio
protocols, the request written by hand, the chunked body or WebSocket frames decoded in
place, only the ``seq``, the type and the time read from each event, so that they cost
the machine less than the server); ``--client h11`` runs the older ones (asyncio
streams, h11, :class:`streamkit.sse.SSEDecoder` and a JSON parse per event).
``--format ndjson`` reads NDJSON, ``--format ws`` StreamApp's ``/sessions/{id}/ws``
(the bare app then runs a bare ASGI WebSocket loop).
A client process polls its sockets at most once per ``--poll-ms`` (1 ms by default;
0: at once), so that the events that came meanwhile are read in one wake of the process
rather than one wake per socket (the clients share the machine's cores with the server;
the lag measured includes the wait). The summary's ``client_counts_per_delivery`` gives
the clients' reads (``recv`` calls that returned data), bytes, wakes (polls) and ready
sockets per delivery; ``--counts`` adds the server's ``transport.write`` calls and loop
iterations to its loop callbacks, timers and collections.

``--app`` swaps the server app, everything else (publisher, wire bytes, clients) kept:
``streamapp`` (the default), ``bare`` (a bare ASGI app: one ``asyncio.Queue`` per
connection, each event encoded once by the publisher, one ``send`` per event) or
``sse-starlette`` (sse-starlette's ``EventSourceResponse`` over the same queues). The
anchors serve ``GET /sessions/{id}/events`` only, with the same ``retry:`` line and
headers. ``--backend trio`` runs StreamApp (or the bare app, over Trio memory channels)
under hypercorn's Trio worker instead of uvicorn. The summary's
``server_cpu_us_per_delivery`` is the server process's CPU time over the publish window
divided by the events the clients received.

``load --paced``: issue 17's end-to-end case instead: one session per client, each fed
by a source paced at ``--rate`` tokens per second for ``--minutes`` (StreamApp: the
registry runs it, ``chunk_size=1``; ``sse-starlette``: an ``EventSourceResponse`` over
the same paced generator per connection), started at phases spread over one period once
every client is connected; each token's text is the wall-clock time it was due, and a
client's lag is measured from it.

``soak``: ``--workers`` client loops create a session (``POST /sessions`` with a
prompt), read its SSE stream to the end checking ``seq``, and delete it (every other
one; the rest are left to the registry's sweep), continuously. After a warm-up and at
the end the clients pause, the registry empties, and the server's RSS, threads, file
descriptors and asyncio tasks are sampled (``GET /_soak/sample``).

The summary is one JSON object on stdout (and in ``--out``); the exit status is 1 when
a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import h11

import streamkit as sk
from streamkit import ndjson, sse

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

HOST = "127.0.0.1"
#: The server apps ``load`` can run (see the module docstring).
_APPS = ("streamapp", "bare", "sse-starlette")
#: The wire formats ``load`` can read: SSE, NDJSON, or WebSocket (``/sessions/{id}/ws``).
_FORMATS = ("sse", "ndjson", "ws")
#: uvicorn's HTTP/1.1 implementations ``load --http`` chooses from, for every app alike.
_HTTP = ("h11", "httptools")
#: Lag histogram resolution: one bucket per millisecond (the last bucket takes the rest).
_MAX_LAG_MS = 60_000


# -- server ------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sample(registry: sk.SessionRegistry) -> dict[str, Any]:
    gc.collect()
    return {
        "time": time.time(),
        "rss": _rss_bytes(),
        "threads": threading.active_count(),
        "os_threads": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "sessions": registry.statistics().sessions,
    }


class _Hub:
    """The anchors' fan-out: one ``asyncio.Queue`` of encoded events per connection."""

    def __init__(self, sessions: list[str], *, ndjson_format: bool, ws: bool = False) -> None:
        #: Per session, each connection's ``put_nowait`` (a queue's, or a channel's send).
        self.queues: dict[str, set[Callable[[Any], None]]] = {s: set() for s in sessions}
        self.encode: Callable[[sk.StreamEvent], Any] = (
            _ws_encode if ws else ndjson.encode if ndjson_format else sse.encode
        )
        self.headers = _ndjson_headers if ndjson_format else _anchor_headers
        self.prelude = b"" if ndjson_format else _RETRY
        self.seq = dict.fromkeys(sessions, 0)
        self.open = 0

    def streams_open(self) -> int:
        return self.open

    def publish(self, session_id: str, event_type: str, content: str) -> int:
        seq = self.seq[session_id] = self.seq[session_id] + 1
        event = sk.StreamEvent(
            event_type=event_type, content=content, seq=seq, session_id=session_id
        )
        data = self.encode(event)  # once, shared by every connection
        for put in self.queues[session_id]:
            put(data)
            if event_type == "complete":
                put(None)
        return seq


def _ws_encode(event: sk.StreamEvent) -> str:
    """The text of StreamApp's WebSocket ``event`` message, made once per event."""
    return f'{{"type":"event","session_id":"{event.session_id}","event":{event.to_json()}}}'


_anchor_headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
_ndjson_headers = [(b"content-type", b"application/x-ndjson"), *_anchor_headers[1:]]
_RETRY = b"retry: 3000\n"


async def _bare_websocket(hub: _Hub, scope: Any, receive: Any, send: Any) -> None:
    """The bare WebSocket loop: one queue per connection, one ``send`` per event.

    The same messages as StreamApp's ``/sessions/{id}/ws`` (``subscribed``, the events,
    ``unsubscribed``), each event's text made once by the publisher.
    """
    session_id = scope["path"].split("/")[2]
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    hub.queues[session_id].add(queue.put_nowait)
    hub.open += 1
    try:
        subscribed = f'{{"type":"subscribed","session_id":"{session_id}","after":0}}'
        await send({"type": "websocket.send", "text": subscribed})
        while (text := await queue.get()) is not None:
            await send({"type": "websocket.send", "text": text})
        ended = f'{{"type":"unsubscribed","session_id":"{session_id}","reason":"ended"}}'
        await send({"type": "websocket.send", "text": ended})
        await send({"type": "websocket.close", "code": 1000})
    finally:
        hub.open -= 1
        hub.queues[session_id].discard(queue.put_nowait)


def _bare_app(hub: _Hub) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await _bare_websocket(hub, scope, receive, send)
            return
        if scope["type"] != "http":
            return
        session_id = scope["path"].split("/")[2]
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        hub.queues[session_id].add(queue.put_nowait)
        hub.open += 1
        try:
            await send({"type": "http.response.start", "status": 200, "headers": hub.headers})
            if hub.prelude:
                await send({"type": "http.response.body", "body": hub.prelude, "more_body": True})
            while (data := await queue.get()) is not None:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            hub.open -= 1
            hub.queues[session_id].discard(queue.put_nowait)

    return app


def _bare_trio_app(hub: _Hub) -> Any:
    """The bare app on Trio: a memory channel per connection instead of a queue."""
    import math

    import trio

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # hypercorn runs it
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        session_id = scope["path"].split("/")[2]
        put, get = trio.open_memory_channel[bytes | None](math.inf)
        hub.queues[session_id].add(put.send_nowait)
        hub.open += 1
        try:
            await send({"type": "http.response.start", "status": 200, "headers": hub.headers})
            if hub.prelude:
                await send({"type": "http.response.body", "body": hub.prelude, "more_body": True})
            while (data := await get.receive()) is not None:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            hub.open -= 1
            hub.queues[session_id].discard(put.send_nowait)

    return app


def _sse_starlette_app(hub: _Hub) -> Any:
    from sse_starlette.sse import EventSourceResponse

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        session_id = scope["path"].split("/")[2]
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def events() -> Any:
            yield _RETRY
            while (data := await queue.get()) is not None:
                yield data

        hub.queues[session_id].add(queue.put_nowait)
        hub.open += 1
        try:
            response = EventSourceResponse(
                events(), ping=5, headers={"cache-control": "no-store", "x-accel-buffering": "no"}
            )
            await response(scope, receive, send)
        finally:
            hub.open -= 1
            hub.queues[session_id].discard(queue.put_nowait)

    return app


async def _paced_tokens(t0: float, t0_wall: float, tokens: int, rate: float) -> Any:
    """Yield token k at ``t0 + k / rate`` on the loop's clock (never earlier).

    The token's text is the wall-clock time it was due: the clients measure each
    token's lag from it (so a source timer running late on a busy loop counts as lag).
    """
    clock = asyncio.get_running_loop().time
    period = 1.0 / rate
    for k in range(tokens):
        await asyncio.sleep(max(t0 + k * period - clock(), 0.0))
        yield f"{t0_wall + k * period:.6f}"


class _Schedule:
    """``paced`` mode: when each session's source starts (phases spread over a period)."""

    def __init__(self, sessions: list[str], rate: float) -> None:
        self.go = asyncio.Event()
        self.t0 = self.t0_wall = 0.0
        self.phase = {s: i / (len(sessions) * rate) for i, s in enumerate(sessions)}

    def start(self) -> None:
        self.t0 = asyncio.get_running_loop().time() + 0.2
        self.t0_wall = time.time() + 0.2
        self.go.set()


def _sse_starlette_paced_app(hub: _Hub, schedule: _Schedule, tokens: int, rate: float) -> Any:
    """sse-starlette's ``EventSourceResponse`` over one paced generator per connection."""
    from sse_starlette.sse import EventSourceResponse

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        session_id = scope["path"].split("/")[2]

        async def events() -> Any:
            yield _RETRY
            await schedule.go.wait()
            phase = schedule.phase[session_id]
            seq = 0
            source = _paced_tokens(schedule.t0 + phase, schedule.t0_wall + phase, tokens, rate)
            async for token in source:
                seq += 1
                yield hub.encode(
                    sk.StreamEvent(
                        event_type="token", content=token, seq=seq, session_id=session_id
                    )
                )
            yield hub.encode(
                sk.StreamEvent(
                    event_type="complete", content="", seq=seq + 1, session_id=session_id
                )
            )

        hub.open += 1
        try:
            response = EventSourceResponse(
                events(), ping=5, headers={"cache-control": "no-store", "x-accel-buffering": "no"}
            )
            await response(scope, receive, send)
        finally:
            hub.open -= 1

    return app


async def _serve_anchor(args: argparse.Namespace) -> None:
    import uvicorn

    sessions = [sk.new_session_id() for _ in range(args.sessions)]
    hub = _Hub(sessions, ndjson_format=args.format == "ndjson", ws=args.format == "ws")
    paced = args.mode == "paced"
    schedule = _Schedule(sessions, args.rate)
    tokens = round(args.minutes * 60 * args.rate)
    if paced:
        app = _sse_starlette_paced_app(hub, schedule, tokens, args.rate)
    else:
        app = _bare_app(hub) if args.app == "bare" else _sse_starlette_app(hub)
    config = uvicorn.Config(
        app,
        host=HOST,
        port=0,
        lifespan="off",
        log_level="warning",
        backlog=4096,
        limit_concurrency=None,
        timeout_keep_alive=30,
        http=args.http,
    )
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        if serving.done():
            await serving
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "sessions": sessions}), flush=True)

    async def publish(session_id: str, event_type: str, content: str) -> int:
        return hub.publish(session_id, event_type, content)

    if paced:

        def start_all() -> dict[str, int]:
            schedule.start()
            return dict.fromkeys(sessions, tokens + 1)

        result = await _paced_loop(args, hub.streams_open, start_all)
    else:
        result = await _publish_loop(args, hub.streams_open, publish, sessions)
    result["app_statistics"] = {}
    server.should_exit = True
    await serving
    print(json.dumps(result), flush=True)


async def _serve_trio(args: argparse.Namespace) -> None:
    import socket

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from streamkit.asgi import StreamApp

    registry = sk.SessionRegistry(_registry_config(args))
    app = StreamApp(registry, **_app_options(None))
    hub = _Hub([], ndjson_format=args.format == "ndjson")
    if args.app == "bare":
        hub = _Hub(
            [sk.new_session_id() for _ in range(args.sessions)],
            ndjson_format=args.format == "ndjson",
        )
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.loglevel = "WARNING"
    config.backlog = 4096
    stop = trio.Event()
    served: Any = _bare_trio_app(hub) if args.app == "bare" else app
    async with registry, trio.open_nursery() as nursery:
        await nursery.start(partial(serve, served, config, shutdown_trigger=stop.wait))
        if args.app == "bare":
            sessions = list(hub.seq)
            print(json.dumps({"port": port, "sessions": sessions}), flush=True)

            async def publish_bare(session_id: str, event_type: str, content: str) -> int:
                return hub.publish(session_id, event_type, content)

            result = await _publish_loop(args, hub.streams_open, publish_bare, sessions)
        else:
            sessions = [(await registry.create()).session_id for _ in range(args.sessions)]
            print(json.dumps({"port": port, "sessions": sessions}), flush=True)

            async def publish(session_id: str, event_type: str, content: str) -> int:
                event = await registry.publish(
                    session_id, sk.StreamEvent(event_type=event_type, content=content)
                )
                return event.seq or 0

            result = await _publish_loop(
                args, lambda: int(app.statistics()["streams_open"]), publish, sessions
            )
        result["app_statistics"] = app.statistics()
        stop.set()
    print(json.dumps(result), flush=True)


def _registry_config(args: argparse.Namespace) -> sk.RegistryConfig:
    soak = args.mode == "soak"
    return sk.RegistryConfig(
        max_sessions=max(1000, args.sessions),
        max_subscribers_per_session=max(1000, args.clients),
        heartbeat_interval=None,
        session_timeout=60.0,
        cleanup_interval=0.5 if soak else 60.0,
        ended_session_ttl=0.5 if soak else 300.0,
        history_max_events=1_000_000,
        history_max_bytes=1 << 30,
        max_lag=1_000_000,
    )


def _app_options(agent: Any) -> dict[str, Any]:
    return {
        "agent": agent,
        "allow_anonymous": True,
        "max_connections_per_user": None,
        "stream_config": sk.StreamConfig(stream_delay=0, chunk_size=4, heartbeat_interval=None),
        "heartbeat_interval": 5.0,
        "write_timeout": 60.0,
    }


async def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from streamkit.asgi import StreamApp
    from streamkit.testing import SimulatedAgent

    soak = args.mode == "soak"
    registry = sk.SessionRegistry(_registry_config(args))
    agent = (
        SimulatedAgent(seed=1, tokens_per_second=args.tps, first_token_latency=0.02)
        if soak
        else None
    )
    app = StreamApp(registry, **_app_options(agent))
    done = asyncio.Event()

    async def router(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_soak/sample":
            body = json.dumps(_sample(registry)).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    async with registry:
        config = uvicorn.Config(
            # The sampling route only where the soak reads it: elsewhere StreamApp is
            # served as the anchors are, with no wrapper of the tool's around it.
            router if soak else app,
            host=HOST,
            port=0,
            lifespan="off",
            log_level="warning",
            backlog=4096,
            limit_concurrency=None,
            timeout_keep_alive=30,
            http=args.http,
        )
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            if serving.done():
                await serving
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        sessions = [
            (await registry.create()).session_id for _ in range(0 if soak else args.sessions)
        ]
        print(json.dumps({"port": port, "sessions": sessions}), flush=True)
        result: dict[str, Any] = {}
        if args.mode == "paced":
            schedule = _Schedule(sessions, args.rate)
            tokens = round(args.minutes * 60 * args.rate)
            stream_config = sk.StreamConfig(chunk_size=1, stream_delay=0, heartbeat_interval=None)

            def start_all() -> dict[str, int]:
                schedule.start()
                for session_id, phase in schedule.phase.items():
                    source = _paced_tokens(
                        schedule.t0 + phase, schedule.t0_wall + phase, tokens, args.rate
                    )
                    registry.start(session_id, source, stream_config)
                return dict.fromkeys(sessions, 0)

            result = await _paced_loop(
                args, lambda: int(app.statistics()["streams_open"]), start_all
            )
            for session_id in result["last_seq"]:
                events = (await registry.get(session_id)).events
                result["last_seq"][session_id] = events[-1].seq if events else 0
            result["app_statistics"] = app.statistics()
        elif soak:
            # Ends when the driver closes our stdin.
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        else:

            async def publish(session_id: str, event_type: str, content: str) -> int:
                event = await registry.publish(
                    session_id, sk.StreamEvent(event_type=event_type, content=content)
                )
                return event.seq or 0

            key = "websockets_open" if args.format == "ws" else "streams_open"
            result = await _publish_loop(
                args, lambda: int(app.statistics()[key]), publish, sessions
            )
            result["app_statistics"] = app.statistics()
            done.set()
        server.should_exit = True
        await serving
    print(json.dumps(result), flush=True)


class _Counts:
    """Counts loop callbacks (task steps and others), timers and GC runs (asyncio only).

    Patching adds overhead: CPU figures of a run with counts are not comparable.
    """

    def __init__(self) -> None:
        self.callbacks = 0
        self.timers = 0
        self.collections = [0, 0, 0]
        self.writes = 0
        self.selects = 0
        loop = asyncio.get_running_loop()
        self._loop = loop
        transport_class: Any = asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
        self._transport_class = transport_class
        write = self._write = transport_class.write
        selector: Any = loop._selector  # type: ignore[attr-defined]
        self._selector = selector
        select = selector.select
        handle_run = self._handle_run = asyncio.events.Handle._run
        call_at = loop.call_at
        counts = self

        def counting_run(handle: Any) -> None:
            counts.callbacks += 1
            handle_run(handle)

        def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
            counts.timers += 1
            return call_at(when, callback, *args, **kwargs)

        def counting_write(transport: Any, data: Any) -> None:
            counts.writes += 1
            write(transport, data)

        def counting_select(timeout: float | None = None) -> Any:
            counts.selects += 1
            return select(timeout)

        transport_class.write = counting_write
        selector.select = counting_select
        asyncio.events.Handle._run = counting_run  # type: ignore[method-assign,assignment]
        loop.call_at = counting_call_at  # type: ignore[method-assign,assignment]
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.collections[info["generation"]] += 1

    def stop(self) -> dict[str, Any]:
        asyncio.events.Handle._run = self._handle_run  # type: ignore[method-assign]
        del self._loop.call_at
        self._transport_class.write = self._write
        del self._selector.select
        gc.callbacks.remove(self._gc)
        return {
            "transport_writes": self.writes,
            "loop_iterations": self.selects,
            "loop_callbacks": self.callbacks,
            "timers": self.timers,
            "gc_collections": self.collections,
        }


class _GCTime:
    """The garbage collector's time per generation (one callback per collection: cheap)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self.collected = [0, 0, 0]
        self._began = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._began
            self.runs[generation] += 1
            self.collected[generation] += info.get("collected", 0)

    def stop(self) -> dict[str, list[float] | list[int]]:
        gc.callbacks.remove(self._gc)
        return {"gc_seconds": self.seconds, "gc_runs": self.runs, "gc_collected": self.collected}


async def _publish_loop(
    args: argparse.Namespace,
    streams_open: Callable[[], int],
    publish: Callable[[str, str, str], Awaitable[int]],
    sessions: list[str],
) -> dict[str, Any]:
    import anyio

    deadline = time.monotonic() + args.connect_timeout
    while streams_open() < args.clients:
        if time.monotonic() > deadline:
            break
        await anyio.sleep(0.1)
    connected = streams_open()
    counts = _Counts() if args.counts and args.backend == "asyncio" else None
    gc_time = _GCTime()
    started = time.monotonic()
    cpu0 = time.process_time()
    kernel0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    end = started + args.minutes * 60
    period = 1.0 / args.rate
    published = 0
    tick = started
    payload = "x" * args.size
    while tick < end:
        for session_id in sessions:
            await publish(session_id, "token", payload)
            published += 1
        tick += period
        await anyio.sleep(max(0.0, tick - time.monotonic()))
    last = {}
    for session_id in sessions:
        last[session_id] = await publish(session_id, "complete", "")
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu0
    # Wait for the clients to read to the end and leave: the CPU time until then counts
    # every delivery (a server that lags delivers after the last publish).
    deadline = time.monotonic() + 120
    while streams_open() and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    cpu_to_drain = time.process_time() - cpu0
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel0
    counted = counts.stop() if counts is not None else {}
    return {
        "counts": counted,
        "gc": gc_time.stop(),
        "connected_at_start": connected,
        "published": published,
        "last_seq": last,
        "publish_seconds": wall,
        "server_cpu_seconds": cpu,
        "server_cpu_seconds_to_drain": cpu_to_drain,
        "server_kernel_seconds_to_drain": kernel,
        "drain_seconds": time.monotonic() - started,
        "server_rss_end": _rss_bytes(),
        "cpus": sorted(os.sched_getaffinity(0)),
    }


async def _paced_loop(
    args: argparse.Namespace,
    streams_open: Callable[[], int],
    start_all: Callable[[], dict[str, int]],
) -> dict[str, Any]:
    """``paced`` mode: start every session's paced source once all clients are in."""
    deadline = time.monotonic() + args.connect_timeout
    while streams_open() < args.clients and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    connected = streams_open()
    gc_time = _GCTime()
    started = time.monotonic()
    cpu0 = time.process_time()
    last = start_all()
    deadline = started + args.minutes * 60 + 120
    while streams_open() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu0
    return {
        "counts": {},
        "gc": gc_time.stop(),
        "connected_at_start": connected,
        "published": 0,
        "last_seq": last,
        "publish_seconds": args.minutes * 60,
        "server_cpu_seconds": cpu,
        "server_cpu_seconds_to_drain": cpu,
        "drain_seconds": time.monotonic() - started,
        "server_rss_end": _rss_bytes(),
        "cpus": sorted(os.sched_getaffinity(0)),
    }


def _pin(cpus: str) -> None:
    """Keep this process on the CPUs listed (``"0"``, ``"1,2"``); Linux only."""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def _server_main(args: argparse.Namespace) -> None:
    _pin(args.cpus)
    if os.environ.get("STREAMKIT_LOAD_GC") == "off":  # diagnosis: the collector's share
        gc.disable()
    profile = os.environ.get("STREAMKIT_LOAD_PROFILE")
    if profile:  # the whole server process under cProfile, written to that path
        import cProfile

        cProfile.runctx("_run_server(args)", globals(), {"args": args}, profile)
    else:
        _run_server(args)


def _run_server(args: argparse.Namespace) -> None:
    if args.backend == "trio":
        import trio

        trio.run(_serve_trio, args)
    elif args.app != "streamapp":
        asyncio.run(_serve_anchor(args))
    else:
        asyncio.run(_serve(args))


# -- load clients --------------------------------------------------------------------------


class _Tally:
    def __init__(self) -> None:
        self.events = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.lost = 0
        self.duplicated = 0
        self.lags = [0] * (_MAX_LAG_MS + 1)
        self.last_seq: dict[str, list[int]] = {}
        #: ``data_received`` calls (one per ``recv`` that returned data) and their bytes.
        self.reads = 0
        self.read_bytes = 0

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < 20:
            self.errors.append(text)


def _ndjson_messages(buffer: bytearray, data: bytes) -> list[sse.SSEMessage]:
    """Split NDJSON lines off ``buffer`` and read them as messages (id = the line's seq)."""
    buffer += data
    end = buffer.rfind(b"\n") + 1
    lines = bytes(buffer[:end]).split(b"\n")
    del buffer[:end]
    messages = []
    for line in lines:
        if line.strip():
            text = line.decode()
            messages.append(sse.SSEMessage("message", text, str(json.loads(text)["seq"]), None))
    return messages


async def _sse_client(
    port: int,
    session_id: str,
    tally: _Tally,
    gate: asyncio.Semaphore,
    ndjson_format: bool,
    paced: bool = False,
) -> None:
    async with gate:
        reader, writer = await asyncio.open_connection(HOST, port)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=f"/sessions/{session_id}/events?after=0",
        headers=[
            ("Host", f"{HOST}:{port}"),
            ("Accept", "application/x-ndjson" if ndjson_format else "text/event-stream"),
        ],
    )
    buffer = bytearray()
    writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
    decoder = sse.SSEDecoder()
    expected = 1
    last = 0
    lags = tally.lags
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                if event.status_code != 200:
                    tally.error(f"status {event.status_code}")
                    return
                continue
            if isinstance(event, h11.Data):
                now = time.time()
                data = bytes(event.data)
                messages = _ndjson_messages(buffer, data) if ndjson_format else decoder.feed(data)
                for message in messages:
                    item = json.loads(message.data)
                    seq = item["seq"]
                    if int(message.id) != seq:
                        tally.error(f"id {message.id} != seq {seq}")
                    if seq < expected:
                        tally.duplicated += 1
                        continue
                    if seq > expected:
                        tally.lost += seq - expected
                    expected = seq + 1
                    last = seq
                    tally.events += 1
                    if not paced:
                        lag = int((now - item["timestamp"]) * 1000)
                        lags[min(max(lag, 0), _MAX_LAG_MS)] += 1
                    elif item["event_type"] == "token":  # from when it was due
                        lag = int((now - float(item["content"])) * 1000)
                        lags[min(max(lag, 0), _MAX_LAG_MS)] += 1
                    if item["event_type"] == "complete":
                        return
                continue
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                tally.error("stream ended before the complete event")
                return
    except Exception as exc:  # every failure is counted, not raised
        tally.error(f"{type(exc).__name__}: {exc}")
    finally:
        tally.last_seq.setdefault(session_id, []).append(last)
        writer.close()


# -- lean load clients -----------------------------------------------------------------------
#
# The h11 client above costs the client processes more CPU per delivery than the server
# spends (a task wake-up, h11's parser, the SSE decoder and a JSON parse per event), so
# on 2 cores the clients, not the server, set the ceiling. The lean clients are plain
# asyncio protocols: the request is written by hand, the chunked body (or the WebSocket
# frames) decoded in ``data_received``, and of each event only what the checks need is
# read: its ``seq`` (from the SSE ``id:`` line, checked against the data's ``"seq"``,
# or the NDJSON line's / WebSocket message's ``"seq"``), its type (is it the last?) and
# the time to measure the lag from.

_SEQ_KEY = b'"seq":'
_TIMESTAMP_KEY = b'"timestamp":'
_CONTENT_KEY = b'"content":"'
_COMPLETE = b'"event_type":"complete"'
_TOKEN = b'"event_type":"token"'


class _LeanClient(asyncio.Protocol):
    """One SSE, NDJSON or WebSocket stream read with as little work per event as it takes."""

    def __init__(
        self, request: bytes, tally: _Tally, done: asyncio.Future[None], *, kind: str, paced: bool
    ) -> None:
        self.request = request
        self.tally = tally
        self.done = done
        self.kind = kind  # "sse", "ndjson" or "ws"
        self.paced = paced
        self.transport: asyncio.Transport | None = None
        self.head = True
        self.raw = b""  # undecoded bytes (headers, a chunk-size line, a frame header)
        self.body = b""  # decoded bytes not yet ending an event
        self.left = 0  # bytes left in the current chunk (HTTP) or frame payload (ws)
        self.crlf = 0  # bytes of the CRLF after a chunk still to skip
        self.expected = 1
        self.last = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.tally.error(f"connection lost before the complete event: {exc}")
            self.done.set_result(None)

    def _finish(self, error: str | None = None) -> None:
        if error is not None:
            self.tally.error(error)
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        tally = self.tally
        tally.reads += 1
        tally.read_bytes += len(data)
        raw = self.raw + data if self.raw else data
        if self.head:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                self.raw = raw
                return
            head = raw[:end].lower()
            expected = b" 101 " if self.kind == "ws" else b" 200 "
            if head[8:13] != expected:
                status = raw.split(b"\r\n", 1)[0]
                self._finish(f"status line {status!r}")
                return
            if self.kind != "ws" and b"transfer-encoding: chunked" not in head:
                self._finish("the response is not chunked")
                return
            self.head = False
            raw = raw[end + 4 :]
        if self.kind == "ws":
            self._frames(raw)
            return
        # Chunked transfer coding: ``size CRLF data CRLF`` ..., ``0 CRLF CRLF`` at the end.
        parts = []
        pos, n = 0, len(raw)
        last_chunk = False
        while pos < n:
            left = self.left
            if left:
                take = left if left < n - pos else n - pos
                parts.append(raw[pos : pos + take])
                pos += take
                self.left = left - take
                if not self.left:
                    self.crlf = 2
                continue
            if self.crlf:
                skip = self.crlf if self.crlf < n - pos else n - pos
                pos += skip
                self.crlf -= skip
                continue
            nl = raw.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(raw[pos:nl].split(b";", 1)[0], 16)
            pos = nl + 2
            if not size:
                last_chunk = True
                break
            self.left = size
        self.raw = raw[pos:]
        if parts:
            body = self.body + b"".join(parts) if self.body else b"".join(parts)
            if self.kind == "sse":
                self._sse(body)
            else:
                self._ndjson(body)
        if last_chunk and not self.done.done():
            self._finish("the body ended before the complete event")

    def _sse(self, body: bytes) -> None:
        end = body.rfind(b"\n\n")
        if end < 0:
            self.body = body
            return
        self.body = body[end + 2 :]
        now = time.time()
        for block in body[:end].split(b"\n\n"):
            # ``id: N`` ``event: T`` ``data: JSON``, after a ``retry:`` line or comments.
            start = block.find(b"id: ")
            if start < 0 or (start and block[start - 1] != 10):
                self._finish(f"an event without an id line: {block[:200]!r}")
                return
            nl = block.find(b"\n", start)
            seq = int(block[start + 4 : nl])
            data = block[block.find(b"\ndata: ", nl) + 7 :]
            if not data.endswith(b"%s%d}" % (_SEQ_KEY, seq)):
                self._finish(f"id {seq} is not the data's seq: {data[-40:]!r}")
                return
            if self._event(seq, data, now):
                return

    def _ndjson(self, body: bytes) -> None:
        end = body.rfind(b"\n")
        if end < 0:
            self.body = body
            return
        self.body = body[end + 1 :]
        now = time.time()
        for line in body[:end].split(b"\n"):
            if not line:
                continue  # a heartbeat
            at = line.rfind(_SEQ_KEY)
            seq = int(line[at + 6 : -1])
            if self._event(seq, line, now):
                return

    def _frames(self, raw: bytes) -> None:
        # Server frames are not masked: ``FIN|opcode``, a length (7, 16 or 64 bits), data.
        now = time.time()
        pos, n = 0, len(raw)
        while n - pos >= 2:
            opcode = raw[pos] & 0x0F
            length = raw[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(raw[pos + 2 : pos + 4])
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(raw[pos + 2 : pos + 10])
                start = pos + 10
            if n - start < length:
                break
            payload = raw[start : start + length]
            pos = start + length
            if opcode == 1:  # text: {"type":"event",...,"event":{...,"seq":N}}
                if payload.startswith(b'{"type":"event"'):
                    at = payload.rfind(_SEQ_KEY)
                    seq = int(payload[at + 6 : -2])
                    if self._event(seq, payload, now):
                        return
                elif payload.startswith(b'{"type":"unsubscribed"'):
                    self._finish("unsubscribed before the complete event")
                    return
            elif opcode == 9:  # ping: a masked pong with the same data (mask 0)
                assert self.transport is not None
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 8:
                self._finish("closed before the complete event")
                return
        self.raw = raw[pos:]

    def _event(self, seq: int, data: bytes, now: float) -> bool:
        """Check one event; return whether the stream is over."""
        tally = self.tally
        if seq < self.expected:
            tally.duplicated += 1
            return False
        if seq > self.expected:
            tally.lost += seq - self.expected
        self.expected = seq + 1
        self.last = seq
        tally.events += 1
        if _COMPLETE in data:
            self._finish()
            return True
        if self.paced:  # the token's text is when it was due
            if _TOKEN not in data:
                return False
            at = data.find(_CONTENT_KEY) + 11
            due = float(data[at : data.find(b'"', at)])
        else:
            at = data.find(_TIMESTAMP_KEY) + 12
            due = float(data[at : data.find(b",", at)])
        lag = int((now - due) * 1000)
        tally.lags[lag if 0 <= lag < _MAX_LAG_MS else (0 if lag < 0 else _MAX_LAG_MS)] += 1
        return False


def _lean_request(port: int, session_id: str, kind: str) -> bytes:
    if kind == "ws":
        return (
            f"GET /sessions/{session_id}/ws?after=0 HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: c3RyZWFta2l0LWxvYWQtMQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    accept = "application/x-ndjson" if kind == "ndjson" else "text/event-stream"
    return (
        f"GET /sessions/{session_id}/events?after=0 HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Accept: {accept}\r\n\r\n"
    ).encode()


async def _lean_client(
    port: int, session_id: str, tally: _Tally, gate: asyncio.Semaphore, kind: str, paced: bool
) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    request = _lean_request(port, session_id, kind)
    client = _LeanClient(request, tally, done, kind=kind, paced=paced)
    try:
        async with gate:
            await loop.create_connection(lambda: client, HOST, port)
        await done
    except Exception as exc:  # every failure is counted, not raised
        tally.error(f"{type(exc).__name__}: {exc}")
    finally:
        tally.last_seq.setdefault(session_id, []).append(client.last)
        if client.transport is not None:
            client.transport.close()


def _client_process(
    port: int,
    assignments: list[str],
    connect_gate: int,
    fmt: str,
    paced: bool = False,
    client: str = "lean",
    poll_ms: float = 0.0,
    cpus: str = "",
) -> dict[str, Any]:
    _pin(cpus)
    wakes = [0, 0]  # the loop's polls that found ready sockets, and those sockets
    gap = poll_ms / 1000

    async def run() -> _Tally:
        tally = _Tally()
        selector: Any = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
        select = selector.select
        clock = time.monotonic
        last = clock()

        def polling_select(timeout: float | None = None) -> Any:
            # At most one poll per ``poll_ms``: whatever came meanwhile is read in one wake
            # of the process instead of one wake per socket (the clients share the cores
            # with the server; each wake costs them a syscall and a loop pass).
            nonlocal last
            if timeout != 0 and gap:
                pause = last + gap - clock()
                if pause > 0:
                    if timeout is not None:
                        pause = min(pause, timeout)
                        timeout -= pause
                    time.sleep(pause)
            ready = select(timeout)
            last = clock()
            if ready:
                wakes[0] += 1
                wakes[1] += len(ready)
            return ready

        selector.select = polling_select
        gate = asyncio.Semaphore(connect_gate)
        async with asyncio.TaskGroup() as tg:
            for session_id in assignments:
                if client == "lean":
                    tg.create_task(_lean_client(port, session_id, tally, gate, fmt, paced))
                else:
                    ndjson_format = fmt == "ndjson"
                    tg.create_task(_sse_client(port, session_id, tally, gate, ndjson_format, paced))
        return tally

    # The clients make little cyclic garbage: no collector pauses in the measurement.
    gc.disable()
    cpu0 = time.process_time()  # not the interpreter's start and imports
    usage0 = resource.getrusage(resource.RUSAGE_SELF)

    tally = asyncio.run(run())
    return {
        "events": tally.events,
        "errors": tally.errors,
        "error_count": tally.error_count,
        "lost": tally.lost,
        "duplicated": tally.duplicated,
        "lags": {i: n for i, n in enumerate(tally.lags) if n},
        "last_seq": tally.last_seq,
        "reads": tally.reads,
        "read_bytes": tally.read_bytes,
        "wakes": wakes[0],
        "ready": wakes[1],
        "cpu_seconds": time.process_time() - cpu0,
        "kernel_cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_stime - usage0.ru_stime,
        "cpus": sorted(os.sched_getaffinity(0)),
    }


def _percentile(histogram: dict[int, int], fraction: float) -> float:
    total = sum(histogram.values())
    if not total:
        return float("nan")
    rank = fraction * total
    seen = 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= rank:
            return float(ms)
    return float(max(histogram))


def _start_server(
    args: argparse.Namespace, mode: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "tests.reliability.load_tool",
        "serve",
        "--mode",
        mode,
        "--clients",
        str(getattr(args, "clients", 0)),
        "--sessions",
        str(getattr(args, "sessions", 0)),
        "--minutes",
        str(args.minutes),
        "--rate",
        str(getattr(args, "rate", 1.0)),
        "--size",
        str(getattr(args, "size", 16)),
        "--connect-timeout",
        str(getattr(args, "connect_timeout", 120.0)),
        "--tps",
        str(getattr(args, "tps", 200.0)),
        "--app",
        getattr(args, "app", "streamapp"),
        "--backend",
        getattr(args, "backend", "asyncio"),
        *(["--counts"] if getattr(args, "counts", False) else []),
        "--format",
        getattr(args, "format", "sse"),
        "--http",
        getattr(args, "http", "h11"),
        "--cpus",
        "0" if getattr(args, "pin", False) else "",
    ]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    hello = json.loads(server.stdout.readline())
    return server, hello


def _finish(summary: dict[str, Any], out: str | None) -> int:
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return 0 if summary["ok"] else 1


def run_load(args: argparse.Namespace) -> int:
    """Run the load test; print and write its summary; return the exit status."""
    started = time.time()
    paced = args.paced
    if paced:
        args.sessions = args.clients  # each client reads its own session
    server, hello = _start_server(args, "paced" if paced else "load")
    port, sessions = hello["port"], hello["sessions"]
    assignments: list[list[str]] = [[] for _ in range(args.procs)]
    for i in range(args.clients):
        assignments[i % args.procs].append(sessions[i % len(sessions)])
    gate = max(1, 100 // args.procs)
    client_cpus = ""
    if args.pin:  # the server alone on CPU 0, the client processes on the others
        client_cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)) if c != 0)
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.procs) as pool:
        results = pool.starmap(
            _client_process,
            [
                (port, a, gate, args.format, paced, args.client, args.poll_ms, client_cpus)
                for a in assignments
            ],
        )
    assert server.stdout is not None
    server_result = json.loads(server.stdout.readline())
    server.wait(60)
    lags: dict[int, int] = {}
    last_seq: dict[str, list[int]] = {}
    for result in results:
        for ms, n in result["lags"].items():
            lags[int(ms)] = lags.get(int(ms), 0) + n
        for session_id, seqs in result["last_seq"].items():
            last_seq.setdefault(session_id, []).extend(seqs)
    expected_last = server_result["last_seq"]
    short = sum(
        1 for session_id, seqs in last_seq.items() for s in seqs if s != expected_last[session_id]
    )
    expected_events = sum(
        expected_last[s] for s in (sessions[i % len(sessions)] for i in range(args.clients))
    )
    summary = {
        "kind": "paced" if paced else "load",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "clients": args.clients,
        "client_processes": args.procs,
        "sessions": args.sessions,
        "rate_per_session": args.rate,
        "minutes": args.minutes,
        "events_expected": expected_events,
        "events_received": sum(r["events"] for r in results),
        "errors": sum(r["error_count"] for r in results),
        "error_samples": [e for r in results for e in r["errors"]][:20],
        "lost": sum(r["lost"] for r in results),
        "duplicated": sum(r["duplicated"] for r in results),
        "clients_short_of_final": short,
        "lag_ms": {
            "p50": _percentile(lags, 0.50),
            "p99": _percentile(lags, 0.99),
            "p999": _percentile(lags, 0.999),
            "max": float(max(lags)) if lags else float("nan"),
        },
        "deliveries_per_second": sum(r["events"] for r in results)
        / max(server_result["publish_seconds"], 1e-9),
        "per_delivery_counts": {
            key: [n / max(sum(r["events"] for r in results), 1) for n in value]
            if isinstance(value, list)
            else value / max(sum(r["events"] for r in results), 1)
            for key, value in server_result["counts"].items()
        },
        "server_gc_us_per_delivery": [
            seconds * 1e6 / max(sum(r["events"] for r in results), 1)
            for seconds in server_result.get("gc", {}).get("gc_seconds", [])
        ],
        "server_gc_runs": server_result.get("gc", {}).get("gc_runs", []),
        "server_gc_collected": server_result.get("gc", {}).get("gc_collected", []),
        "server_kernel_us_per_delivery": server_result.get("server_kernel_seconds_to_drain", 0.0)
        * 1e6
        / max(sum(r["events"] for r in results), 1),
        "server_cpu_us_per_delivery": server_result["server_cpu_seconds_to_drain"]
        * 1e6
        / max(sum(r["events"] for r in results), 1),
        "app": args.app,
        "backend": args.backend,
        "format": args.format,
        "client": args.client,
        "client_poll_ms": args.poll_ms,
        "pinned": args.pin,
        "client_cpus": sorted({c for r in results for c in r["cpus"]}),
        "client_cpu_seconds": sum(r["cpu_seconds"] for r in results),
        "client_cpu_us_per_delivery": sum(r["cpu_seconds"] for r in results)
        * 1e6
        / max(sum(r["events"] for r in results), 1),
        "client_kernel_us_per_delivery": sum(r["kernel_cpu_seconds"] for r in results)
        * 1e6
        / max(sum(r["events"] for r in results), 1),
        "client_counts_per_delivery": {
            key: sum(r[key] for r in results) / max(sum(r["events"] for r in results), 1)
            for key in ("reads", "read_bytes", "wakes", "ready")
        },
        "server": server_result,
        "wall_seconds": time.time() - started,
    }
    summary["ok"] = (
        summary["errors"] == 0
        and summary["lost"] == 0
        and summary["duplicated"] == 0
        and short == 0
        and summary["events_received"] == expected_events
        and server_result["connected_at_start"] == args.clients
    )
    return _finish(summary, args.out)


# -- soak --------------------------------------------------------------------------------


async def _soak_phase(port: int, workers: int, seconds: float, tally: dict[str, Any]) -> None:
    import httpx

    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=workers * 2, max_keepalive_connections=workers * 2)

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while time.monotonic() < end:
            i += 1
            try:
                response = await client.post("/sessions", json={"prompt": f"soak {n} {i}"})
                if response.status_code != 201:
                    raise RuntimeError(f"create: {response.status_code} {response.text}")
                session_id = response.json()["session"]["session_id"]
                expected = 1
                async with client.stream("GET", f"/sessions/{session_id}/events") as stream:
                    async for event in sse.aiter_events(stream.aiter_bytes()):
                        if event.seq != expected:
                            tally["seq_errors"] += 1
                        expected = (event.seq or 0) + 1
                        tally["events"] += 1
                if i % 2:
                    response = await client.delete(f"/sessions/{session_id}")
                    if response.status_code not in (200, 204, 404):
                        raise RuntimeError(f"delete: {response.status_code}")
                tally["sessions"] += 1
            except Exception as exc:  # counted, not raised
                tally["errors"] += 1
                if len(tally["error_samples"]) < 20:
                    tally["error_samples"].append(f"{type(exc).__name__}: {exc}")

    async with (
        httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=60) as client,
        asyncio.TaskGroup() as tg,
    ):
        for n in range(workers):
            tg.create_task(worker(client, n))


def _soak_client(port: int, workers: int, seconds: float) -> dict[str, Any]:
    tally: dict[str, Any] = {
        "sessions": 0,
        "events": 0,
        "errors": 0,
        "seq_errors": 0,
        "error_samples": [],
    }
    asyncio.run(_soak_phase(port, workers, seconds, tally))
    return tally


def _quiet_sample(port: int) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + 60
    while True:
        sample: dict[str, Any] = httpx.get(f"http://{HOST}:{port}/_soak/sample").json()
        if sample["sessions"] == 0 or time.monotonic() > deadline:
            return sample
        time.sleep(0.5)


def run_soak(args: argparse.Namespace) -> int:
    """Run the soak; print and write its summary; return the exit status."""
    started = time.time()
    server, hello = _start_server(args, "soak")
    port = hello["port"]
    total = args.minutes * 60
    warmup = min(args.warmup * 60, total / 3)
    main_seconds = total - warmup
    slices = max(1, int(main_seconds // 60))
    context = multiprocessing.get_context("spawn")
    tallies: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    with context.Pool(1) as pool:
        tallies.append(pool.apply(_soak_client, (port, args.workers, warmup)))
        baseline = _quiet_sample(port)
        samples.append(baseline)
        # The main part in one-minute slices, sampled (quiet) between them.
        for _ in range(slices):
            tallies.append(pool.apply(_soak_client, (port, args.workers, main_seconds / slices)))
            samples.append(_quiet_sample(port))
    assert server.stdin is not None
    server.stdin.close()
    server.wait(60)
    final = samples[-1]
    growth = (final["rss"] - baseline["rss"]) / baseline["rss"]
    summary: dict[str, Any] = {
        "kind": "soak",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "minutes": args.minutes,
        "warmup_minutes": warmup / 60,
        "workers": args.workers,
        "sessions_done": sum(t["sessions"] for t in tallies),
        "events": sum(t["events"] for t in tallies),
        "errors": sum(t["errors"] for t in tallies),
        "seq_errors": sum(t["seq_errors"] for t in tallies),
        "error_samples": [e for t in tallies for e in t["error_samples"]][:20],
        "baseline": baseline,
        "final": final,
        "rss_growth": growth,
        "samples": samples,
    }
    summary["ok"] = (
        summary["errors"] == 0
        and summary["seq_errors"] == 0
        and growth < 0.05
        and final["sessions"] == 0
        and all(final[k] <= baseline[k] for k in ("tasks", "threads", "os_threads", "fds"))
    )
    return _finish(summary, args.out)


# -- command line ------------------------------------------------------------------------


def _minutes(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run ``load``, ``soak`` or (internal) ``serve``."""
    parser = argparse.ArgumentParser(prog="load_tool")
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load")
    load.add_argument("--clients", type=int, default=2000)
    load.add_argument("--procs", type=int, default=2)
    load.add_argument("--sessions", type=int, default=20)
    load.add_argument("--rate", type=float, default=2.0, help="events per second per session")
    load.add_argument("--size", type=int, default=16, help="content bytes per event")
    load.add_argument("--minutes", type=float, default=_minutes("STREAMKIT_LOAD_MINUTES", 10))
    load.add_argument("--connect-timeout", type=float, default=180.0)
    load.add_argument("--app", choices=_APPS, default="streamapp")
    load.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    load.add_argument("--format", choices=_FORMATS, default="sse")
    load.add_argument(
        "--client",
        choices=["lean", "h11"],
        default="lean",
        help="lean (the default): asyncio protocols, the request written by hand, only "
        "what the checks need read from each event; h11: asyncio streams, h11, "
        "streamkit's SSE decoder and a JSON parse per event",
    )
    load.add_argument(
        "--poll-ms",
        type=float,
        default=1.0,
        help="a client process polls its sockets at most once per this many ms (0: at once, "
        "one wake per ready socket), reading whatever came meanwhile in one wake",
    )
    load.add_argument(
        "--counts", action="store_true", help="count loop callbacks, timers, GC runs (asyncio)"
    )
    load.add_argument(
        "--http",
        choices=_HTTP,
        default="h11",
        help="uvicorn's HTTP/1.1 parser for every app (httptools needs the httptools package)",
    )
    load.add_argument(
        "--paced",
        action="store_true",
        help="one session per client, each fed by a source paced at --rate tokens/s for "
        "--minutes (StreamApp: registry.start; sse-starlette: a paced generator per response); "
        "lag from each token's due time",
    )
    load.add_argument(
        "--pin",
        action="store_true",
        help="the server process alone on CPU 0 and the client processes on the other CPUs "
        "(Linux, two or more CPUs): the server's rate is then not decided by how the "
        "scheduler shares the cores with the clients, as it is not when they are other machines",
    )
    load.add_argument("--out")
    soak = sub.add_parser("soak")
    soak.add_argument("--workers", type=int, default=20)
    soak.add_argument("--minutes", type=float, default=_minutes("STREAMKIT_SOAK_MINUTES", 30))
    soak.add_argument("--warmup", type=float, default=3.0, help="minutes (at most a third)")
    soak.add_argument("--tps", type=float, default=200.0, help="agent tokens per second")
    soak.add_argument("--out")
    serve = sub.add_parser("serve")
    serve.add_argument("--mode", choices=["load", "soak", "paced"], required=True)
    serve.add_argument("--clients", type=int, default=0)
    serve.add_argument("--sessions", type=int, default=0)
    serve.add_argument("--minutes", type=float, default=1.0)
    serve.add_argument("--rate", type=float, default=1.0)
    serve.add_argument("--size", type=int, default=16)
    serve.add_argument("--connect-timeout", type=float, default=120.0)
    serve.add_argument("--tps", type=float, default=200.0)
    serve.add_argument("--app", choices=_APPS, default="streamapp")
    serve.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    serve.add_argument("--counts", action="store_true")
    serve.add_argument("--format", choices=_FORMATS, default="sse")
    serve.add_argument("--http", choices=_HTTP, default="h11")
    serve.add_argument("--cpus", default="", help="CPUs to keep the server on (load --pin)")
    args = parser.parse_args(argv)
    if args.command == "load":
        if args.app == "sse-starlette" and args.format != "sse":
            parser.error("sse-starlette serves SSE only")
        if args.format == "ws" and (args.client != "lean" or args.backend != "asyncio"):
            parser.error("--format ws: lean clients, on asyncio")
        if args.paced and (args.app == "bare" or args.backend != "asyncio"):
            parser.error("--paced runs StreamApp or sse-starlette on asyncio")
        if args.backend == "trio" and args.app == "sse-starlette":
            parser.error("on Trio: StreamApp or the bare app")
        if args.pin and len(os.sched_getaffinity(0)) < 2:
            parser.error("--pin needs two or more CPUs")
        return run_load(args)
    if args.command == "soak":
        return run_soak(args)
    _server_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
