"""Benchmark: StreamApp's own Python work per WebSocket delivery, with no server.

Run: ``.venv/bin/python bench/bench_ws_app.py`` (``STREAMKIT_BENCH_QUICK=1`` for a smoke
run; ``STREAMKIT_BENCH_BASELINE=/path/to/other/checkout`` also runs that checkout's
``streamkit``, e.g. ``/work/main``, in a child process, for a same-run comparison).

``CLIENTS`` WebSocket connections are driven straight through the ASGI interface: each
``receive`` gives ``websocket.connect`` and then waits; each ``send`` only counts. One
session gets ``EVENTS`` events, one at a time: the next is published once every
connection got the last one (the paced case of issue 21, with no timer of the
benchmark's own). The figure is the process CPU time over the publish loop divided by
the deliveries, median of a few runs, on asyncio and on Trio. Server and kernel costs
are left out: this is what streamkit adds.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time

import anyio

QUICK = os.environ.get("STREAMKIT_BENCH_QUICK") == "1"
CLIENTS = int(os.environ.get("BENCH_WS_CLIENTS") or (100 if QUICK else 1000))
EVENTS = int(os.environ.get("BENCH_WS_EVENTS") or (50 if QUICK else 200))


async def one_run() -> float:
    import streamkit as sk
    from streamkit.asgi import StreamApp

    config = sk.RegistryConfig(
        max_sessions=10, heartbeat_interval=None, max_subscribers_per_session=100_000
    )
    async with sk.SessionRegistry(config) as registry:
        app = StreamApp(registry, allow_anonymous=True, max_connections_per_user=None)
        session = await registry.create()
        sid = session.session_id
        got = [0] * CLIENTS
        state = {"target": 0, "done": anyio.Event(), "left": CLIENTS}
        never = anyio.Event()

        def make(i: int):  # type: ignore[no-untyped-def]
            connected = False

            async def receive():  # type: ignore[no-untyped-def]
                nonlocal connected
                if not connected:
                    connected = True
                    return {"type": "websocket.connect"}
                await never.wait()
                return {"type": "websocket.disconnect", "code": 1000}

            async def send(message):  # type: ignore[no-untyped-def]
                if message["type"] != "websocket.send" or '"event"' not in message["text"][:20]:
                    return
                got[i] += 1
                if got[i] == state["target"]:
                    state["left"] -= 1
                    if state["left"] == 0:
                        state["done"].set()

            return receive, send

        scope = {
            "type": "websocket",
            "path": f"/sessions/{sid}/ws",
            "query_string": b"",
            "headers": [],
        }
        async with anyio.create_task_group() as tg:
            for i in range(CLIENTS):
                receive, send = make(i)
                tg.start_soon(app, scope, receive, send)
            while app.statistics()["websockets_open"] < CLIENTS:
                await anyio.sleep(0.01)
            gc.collect()
            start = time.process_time()
            for n in range(1, EVENTS + 1):
                state["target"], state["left"], state["done"] = n, CLIENTS, anyio.Event()
                await registry.publish(sid, sk.StreamEvent(event_type="token", content="tok"))
                await state["done"].wait()
            used = time.process_time() - start
            tg.cancel_scope.cancel()
    return used / (CLIENTS * EVENTS) * 1e6


def measure(backend: str, repeat: int) -> list[float]:
    return [anyio.run(one_run, backend=backend) for _ in range(repeat)]


def main() -> None:
    repeat = 2 if QUICK else 5
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps({b: measure(b, repeat) for b in ("asyncio", "trio")}))
        return
    baseline = os.environ.get("STREAMKIT_BENCH_BASELINE")
    versions = {"this code": None} | ({baseline: baseline} if baseline else {})
    results: dict[str, dict[str, list[float]]] = {
        name: {"asyncio": [], "trio": []} for name in versions
    }
    for _ in range(repeat):  # versions take turns, one child process per version and round
        for name, path in versions.items():
            env = dict(
                os.environ,
                STREAMKIT_BENCH_QUICK="1",  # 2 runs per child
                BENCH_WS_CLIENTS=str(CLIENTS),
                BENCH_WS_EVENTS=str(EVENTS),
            )
            if path is not None:
                env["PYTHONPATH"] = path
            out = subprocess.run(
                [sys.executable, __file__, "--child"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for backend, values in json.loads(out.splitlines()[-1]).items():
                results[name][backend].extend(values)
    print(
        f"WebSocket deliveries without a server: {CLIENTS} connections, "
        f"{EVENTS} events one at a time"
    )
    print("| streamkit | asyncio µs CPU / delivery | trio µs CPU / delivery |")
    print("|---|---|---|")
    for name, by_backend in results.items():
        cells = [
            f"{statistics.median(v):.1f} ({' '.join(f'{x:.1f}' for x in v)})"
            for v in by_backend.values()
        ]
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
