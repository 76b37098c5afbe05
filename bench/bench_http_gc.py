"""What an open SSE response leaves for the garbage collector: StreamApp against a bare loop.

Issue 21's diagnosis, in process (no server, no sockets): N SSE responses of one session
driven through the ASGI interface, against a bare ASGI loop (one ``asyncio.Queue`` per
response, one ``send`` per event). It prints, per open response, the objects the
collector tracks (what every full collection walks) and the young objects one delivery
leaves (what every young collection walks, for every connection served since the last
one). With ``--deliver E`` it instead sends E events one at a time and prints the CPU per
delivery: run it under ``valgrind --tool=callgrind`` with two values of E and take the
difference of the instruction counts per extra delivery (start-up cancels out)::

    python bench/bench_http_gc.py                      # the census, both apps
    python bench/bench_http_gc.py --app sa --deliver 60 --responses 200

Not part of ``run_all``: docs/performance.md (section 3b, session 6) gives its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import sys
import time
from typing import Any

import streamkit as sk
from streamkit.asgi import StreamApp

_BODY = b"data: " + b"x" * 16 + b"\n\n"


def _census() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


async def _run(app_name: str, responses: int, deliver: int) -> None:
    config = sk.RegistryConfig(
        heartbeat_interval=None,
        max_subscribers_per_session=100_000,
        max_lag=100_000,
        history_max_events=100_000,
    )
    registry = sk.SessionRegistry(config)
    async with registry:
        app = StreamApp(
            registry,
            allow_anonymous=True,
            max_connections_per_user=None,
            heartbeat_interval=5.0,
            write_timeout=60.0,
        )
        session_id = (await registry.create()).session_id
        puts: list[Any] = []

        async def bare(scope: Any, receive: Any, send: Any) -> None:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            puts.append(queue.put_nowait)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while (data := await queue.get()) is not None:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        target: Any = app if app_name == "sa" else bare
        gone = asyncio.Event()

        async def client() -> None:
            first = True

            async def receive() -> dict[str, Any]:
                nonlocal first
                if first:
                    first = False
                    return {"type": "http.request", "body": b"", "more_body": False}
                await gone.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                pass

            scope = {
                "type": "http",
                "method": "GET",
                "path": f"/sessions/{session_id}/events",
                "root_path": "",
                "query_string": b"",
                "headers": [(b"accept", b"text/event-stream")],
            }
            await target(scope, receive, send)

        async def publish() -> None:
            if app_name == "sa":
                await registry.publish(
                    session_id, sk.StreamEvent(event_type="token", content="x" * 16)
                )
            else:
                for put in puts:
                    put(_BODY)
            for _ in range(3):
                await asyncio.sleep(0)

        base = None if deliver else _census()
        tasks = [asyncio.ensure_future(client()) for _ in range(responses)]
        for _ in range(10):
            await asyncio.sleep(0)
        await publish()
        if deliver:
            started = time.process_time()
            for _ in range(deliver):
                await publish()
            cpu = time.process_time() - started
            print(f"{app_name}: {cpu / (responses * deliver) * 1e6:.2f} µs CPU per delivery")
        else:
            assert base is not None
            after = _census()
            kept = (sum(after.values()) - sum(base.values())) / responses
            gc.collect()
            gc.disable()
            young_before = len(gc.get_objects(0))
            await publish()
            young = (len(gc.get_objects(0)) - young_before) / responses
            gc.enable()
            kinds = sorted(
                ((kind, (after[kind] - base[kind]) / responses) for kind in after),
                key=lambda item: -item[1],
            )
            shown = ", ".join(f"{kind} {n:g}" for kind, n in kinds[:8] if n >= 0.5)
            print(f"{app_name}: {kept:.1f} tracked objects per open response ({shown})")
            print(f"{app_name}: {young:.2f} young objects per delivery")
        gone.set()
        for put in puts:
            put(None)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=["sa", "bare", "both"], default="both")
    parser.add_argument("--responses", type=int, default=200)
    parser.add_argument("--deliver", type=int, default=0, help="events to send (CPU mode)")
    args = parser.parse_args(argv)
    for name in ("bare", "sa") if args.app == "both" else (args.app,):
        asyncio.run(_run(name, args.responses, args.deliver))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
