"""Server CPU per delivery with many SSE (and NDJSON) clients: StreamApp against two anchors.

Runs the load tool (``tests/reliability/load_tool.py``) once per server app, same
publisher, same wire bytes, same clients (in client processes, every event checked by
``seq``), only the app swapped:

* ``bare``: a bare ASGI app, one ``asyncio.Queue`` per connection, each event encoded
  once by the publisher, one ``send`` per event (the floor);
* ``sse-starlette``: sse-starlette's ``EventSourceResponse`` over the same queues;
* ``streamapp``: StreamApp over a registry (the publisher appends to the session's log).

The figure is the server process's CPU time from the first publish until the clients
have read to the end, divided by the events the clients received, and its ratio to the
bare app's in the same run. At 2 and 10 events per second per session (20 sessions);
NDJSON and Trio (hypercorn's Trio worker) at 2. The machine is shared and noisy: only
the same-run ratios compare.

``STREAMKIT_BENCH_LOAD_CLIENTS`` (default 500) and ``STREAMKIT_BENCH_LOAD_MINUTES``
(default 0.5) scale it; the issue's figures are at 2,000 clients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import QUICK, save, table

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = int(os.environ.get("STREAMKIT_BENCH_LOAD_CLIENTS", "60" if QUICK else "500"))
MINUTES = float(os.environ.get("STREAMKIT_BENCH_LOAD_MINUTES", "0.05" if QUICK else "0.5"))
SESSIONS = 20


def load(app: str, rate: float, *, fmt: str = "sse", backend: str = "asyncio") -> dict[str, Any]:
    """Run one load test; return its summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        command = [
            sys.executable,
            "-m",
            "tests.reliability.load_tool",
            "load",
            "--clients",
            str(CLIENTS),
            "--sessions",
            str(SESSIONS),
            "--rate",
            str(rate),
            "--minutes",
            str(MINUTES),
            "--app",
            app,
            "--format",
            fmt,
            "--backend",
            backend,
            "--out",
            str(out),
        ]
        subprocess.run(command, cwd=ROOT, capture_output=True, check=False, timeout=1800)
        summary: dict[str, Any] = json.loads(out.read_text())
    if not summary["ok"]:
        raise SystemExit(f"{app} {fmt} {backend} at {rate}/s failed: {summary['error_samples']}")
    return summary


def row(name: str, summary: dict[str, Any], floor: float) -> list[Any]:
    per = summary["server_cpu_us_per_delivery"]
    lag = summary["lag_ms"]
    return [
        name,
        per,
        f"{per / floor:.2f}x",
        summary["deliveries_per_second"],
        f"{lag['p50']:.0f} / {lag['p99']:.0f}",
    ]


def main() -> None:
    header = [
        "server app",
        "µs server CPU / delivery",
        "÷ bare",
        "deliveries/s",
        "lag p50 / p99 ms",
    ]
    results: dict[str, Any] = {"clients": CLIENTS, "minutes": MINUTES, "sessions": SESSIONS}
    report = []
    for rate in (2.0, 10.0):
        runs = {app: load(app, rate) for app in ("bare", "sse-starlette", "streamapp")}
        if rate == 2.0:
            runs["streamapp, NDJSON"] = load("streamapp", rate, fmt="ndjson")
            runs["bare, NDJSON"] = load("bare", rate, fmt="ndjson")
            runs["streamapp, Trio (hypercorn)"] = load("streamapp", rate, backend="trio")
        floor = runs["bare"]["server_cpu_us_per_delivery"]
        rows = [row(name, summary, floor) for name, summary in runs.items()]
        if rate == 2.0:
            ndjson_floor = runs["bare, NDJSON"]["server_cpu_us_per_delivery"]
            rows[3][2] = f"{rows[3][1] / ndjson_floor:.2f}x (÷ bare NDJSON)"
        title = (
            f"HTTP load: {CLIENTS} SSE clients, {SESSIONS} sessions, {rate:g} events/s each "
            f"({CLIENTS * rate:,.0f} deliveries/s offered)"
        )
        text = table(title, header, rows)
        print(text, flush=True)
        report.append(text)
        results[f"rate_{rate:g}"] = {
            name: {
                "us_per_delivery": s["server_cpu_us_per_delivery"],
                "ratio_to_bare": s["server_cpu_us_per_delivery"] / floor,
                "deliveries_per_second": s["deliveries_per_second"],
                "lag_ms": s["lag_ms"],
            }
            for name, s in runs.items()
        }
    results["tables"] = report
    save("http_load", results)


if __name__ == "__main__":
    main()
