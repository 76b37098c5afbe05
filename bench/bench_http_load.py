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
NDJSON and Trio (hypercorn's Trio worker, against the bare app over Trio memory
channels) at 2. The machine is shared and noisy: only
the same-run ratios compare.

Environment:

* ``STREAMKIT_BENCH_LOAD_CLIENTS`` (default 500) and ``STREAMKIT_BENCH_LOAD_MINUTES``
  (default 0.5) scale it; the issue's figures are at 2,000 clients.
* ``STREAMKIT_BENCH_LOAD_SWEEP=500,1000,2000,4000``: instead, the three apps at 2
  events/s at each number of connections, and the plot ``docs/perf-http-load.png``
  (server CPU per delivery against connections).
* ``STREAMKIT_BENCH_LOAD_BEFORE=/path/to/checkout``: StreamApp from that checkout (its
  own ``.venv``) too, as "StreamApp before", in the same run.
* ``STREAMKIT_BENCH_LOAD_HTTP=httptools``: uvicorn's httptools implementation for every
  app instead of h11 (the default, which the series in docs/performance.md use); h11's
  own work per ``send`` is 10 to 20 µs per delivery more on the bench machine.
* ``STREAMKIT_BENCH_LOAD_PIN=1``: the server process alone on CPU 0, the client
  processes on the other CPUs (``load_tool load --pin``), as when the clients are other
  machines: the server's rate is then not decided by the scheduler's sharing of the
  cores with its clients (the 20,000 deliveries/s goal is measured so).
* ``STREAMKIT_BENCH_LOAD_REPEAT=3``: in the sweep, run the bare app and StreamApp that
  many times at each size (taking turns) and report the median of the ratio and its
  spread (lowest to highest of the pairs).

The clients are the load tool's lean ones (``--client lean``: asyncio protocols, the
request written by hand, the chunked body or WebSocket frames decoded in
``data_received``, only the ``seq`` and the time read from each event), so that they
leave the server most of the machine; each table shows their CPU per delivery too.
WebSocket rows: StreamApp's ``/sessions/{id}/ws`` against a bare ASGI WebSocket loop
(one queue per connection, each message's text made once, one ``send`` per event).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import QUICK, machine, save, table

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = int(os.environ.get("STREAMKIT_BENCH_LOAD_CLIENTS", "60" if QUICK else "500"))
MINUTES = float(os.environ.get("STREAMKIT_BENCH_LOAD_MINUTES", "0.05" if QUICK else "0.5"))
SWEEP = [int(n) for n in os.environ.get("STREAMKIT_BENCH_LOAD_SWEEP", "").split(",") if n]
BEFORE = os.environ.get("STREAMKIT_BENCH_LOAD_BEFORE")
PIN = os.environ.get("STREAMKIT_BENCH_LOAD_PIN") == "1"
REPEAT = int(os.environ.get("STREAMKIT_BENCH_LOAD_REPEAT", "1"))
HTTP = os.environ.get("STREAMKIT_BENCH_LOAD_HTTP", "h11")
SESSIONS = 20
PLOT = ROOT / "docs" / "perf-http-load.png"


def load(
    app: str,
    rate: float,
    *,
    clients: int = CLIENTS,
    fmt: str = "sse",
    backend: str = "asyncio",
    root: Path = ROOT,
) -> dict[str, Any]:
    """Run one load test (the load tool of ``root``, with its own Python); return its summary."""
    python = sys.executable if root == ROOT else str(root / ".venv" / "bin" / "python")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        command = [
            python,
            "-m",
            "tests.reliability.load_tool",
            "load",
            "--clients",
            str(clients),
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
            "--client",
            "lean" if root == ROOT else "h11",
            *(["--http", HTTP] if HTTP != "h11" else []),
            *(["--pin"] if PIN else []),
            "--out",
            str(out),
        ]
        subprocess.run(command, cwd=root, capture_output=True, check=False, timeout=1800)
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
        summary.get("client_cpu_us_per_delivery", float("nan")),
    ]


HEADER = [
    "server app",
    "µs server CPU / delivery",
    "÷ bare",
    "deliveries/s",
    "lag p50 / p99 ms",
    "µs client CPU / delivery",
]


def figures(runs: dict[str, dict[str, Any]], floor: float) -> dict[str, Any]:
    return {
        name: {
            "us_per_delivery": s["server_cpu_us_per_delivery"],
            "ratio_to_bare": s["server_cpu_us_per_delivery"] / floor,
            "deliveries_per_second": s["deliveries_per_second"],
            "lag_ms": s["lag_ms"],
        }
        for name, s in runs.items()
    }


def plot(
    sweep: dict[str, dict[int, float]],
    caption: str,
    path: Path = PLOT,
    pairs: dict[int, list[float]] | None = None,
) -> None:
    """Draw server CPU per delivery (and ÷ bare) against the number of connections.

    ``sweep`` maps each app's name to ``{connections: µs per delivery}``; the app named
    ``bare`` is the floor of the ratio panel. ``pairs`` (StreamApp ÷ bare of each pair
    of runs, by connections) adds their median and spread to the ratio panel.
    """
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas draws the PNG

    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    floor = sweep["bare"]
    for index, (name, points) in enumerate(sweep.items()):
        xs = sorted(points)
        color = f"C{index}"  # the same app, the same colour in both panels
        left.plot(xs, [points[x] for x in xs], marker="o", label=name, color=color)
        if name != "bare":
            ys = [points[x] / floor[x] for x in xs if x in floor]
            right.plot([x for x in xs if x in floor], ys, marker="o", label=name, color=color)
    left.set_xlabel("SSE connections (20 sessions, 2 events/s each)")
    left.set_ylabel("µs of server CPU per delivery")
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    if pairs:
        xs = sorted(pairs)
        middle = [statistics.median(pairs[x]) for x in xs]
        right.errorbar(
            xs,
            middle,
            yerr=[
                [m - min(pairs[x]) for m, x in zip(middle, xs, strict=True)],
                [max(pairs[x]) - m for m, x in zip(middle, xs, strict=True)],
            ],
            fmt="s--",
            color="C3",
            capsize=4,
            label="StreamApp, median of the pairs (lowest to highest)",
        )
    right.axhline(1.3, color="grey", linestyle="--", linewidth=1, label="goal: 1.3x")
    right.set_xlabel("SSE connections")
    right.set_ylabel("÷ bare ASGI app, same run")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    figure.suptitle("HTTP under load: server CPU per SSE delivery (uvicorn, asyncio)")
    figure.text(0.99, 0.01, caption, ha="right", fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def sweep_main() -> None:
    apps = {"bare": "bare", "sse-starlette": "sse-starlette", "StreamApp": "streamapp"}
    curves: dict[str, dict[str, float]] = {name: {} for name in apps}
    if BEFORE:
        curves["StreamApp before"] = {}
    report = []
    spread: list[list[Any]] = []
    ratios: dict[str, list[float]] = {}
    for clients in SWEEP:
        runs = {name: load(app, 2.0, clients=clients) for name, app in apps.items()}
        if BEFORE:
            runs["StreamApp before"] = load("streamapp", 2.0, clients=clients, root=Path(BEFORE))
        floor = runs["bare"]["server_cpu_us_per_delivery"]
        pairs = [runs["StreamApp"]["server_cpu_us_per_delivery"] / floor]
        for _ in range(REPEAT - 1):  # more pairs, taking turns, for the ratio's spread
            bare = load("bare", 2.0, clients=clients)["server_cpu_us_per_delivery"]
            ours = load("streamapp", 2.0, clients=clients)["server_cpu_us_per_delivery"]
            pairs.append(ours / bare)
        ratios[str(clients)] = pairs
        for name, summary in runs.items():
            curves[name][str(clients)] = summary["server_cpu_us_per_delivery"]
        text = table(
            f"HTTP load: {clients} SSE clients, {SESSIONS} sessions, 2 events/s each",
            HEADER,
            [row(name, summary, floor) for name, summary in runs.items()],
        )
        print(text, flush=True)
        report.append(text)
        middle = statistics.median(pairs)
        spread.append(
            [
                clients,
                len(pairs),
                f"{middle:.2f}x",
                f"{min(pairs):.2f}x to {max(pairs):.2f}x",
                "met" if middle <= 1.3 else "not met",
            ]
        )
    if REPEAT > 1:
        text = table(
            "StreamApp ÷ bare ASGI, server CPU per SSE delivery: pairs of runs (taking turns)",
            ["connections", "pairs", "median", "lowest to highest", "goal <= 1.3x"],
            spread,
        )
        print(text, flush=True)
        report.append(text)
    save(
        "http_load_sweep",
        {"minutes": MINUTES, "curves": curves, "ratios": ratios, "tables": report},
    )
    plot(
        {name: {int(n): v for n, v in points.items()} for name, points in curves.items()},
        machine(),
        pairs={int(n): r for n, r in ratios.items()} if REPEAT > 1 else None,
    )


def main() -> None:
    if SWEEP:
        sweep_main()
        return
    results: dict[str, Any] = {"clients": CLIENTS, "minutes": MINUTES, "sessions": SESSIONS}
    report = []
    for rate in (2.0, 10.0):
        runs = {app: load(app, rate) for app in ("bare", "sse-starlette", "streamapp")}
        if BEFORE:
            runs["streamapp before"] = load("streamapp", rate, root=Path(BEFORE))
        if rate == 2.0:
            runs["streamapp, NDJSON"] = load("streamapp", rate, fmt="ndjson")
            runs["bare, NDJSON"] = load("bare", rate, fmt="ndjson")
            runs["streamapp, Trio (hypercorn)"] = load("streamapp", rate, backend="trio")
            runs["bare, Trio (hypercorn)"] = load("bare", rate, backend="trio")
            runs["streamapp, WebSocket"] = load("streamapp", rate, fmt="ws")
            runs["bare, WebSocket"] = load("bare", rate, fmt="ws")
        floor = runs["bare"]["server_cpu_us_per_delivery"]
        rows = [row(name, summary, floor) for name, summary in runs.items()]
        if rate == 2.0:
            ndjson_floor = runs["bare, NDJSON"]["server_cpu_us_per_delivery"]
            ndjson = list(runs).index("streamapp, NDJSON")
            rows[ndjson][2] = f"{rows[ndjson][1] / ndjson_floor:.2f}x (÷ bare NDJSON)"
            trio_floor = runs["bare, Trio (hypercorn)"]["server_cpu_us_per_delivery"]
            trio = list(runs).index("streamapp, Trio (hypercorn)")
            rows[trio][2] = f"{rows[trio][1] / trio_floor:.2f}x (÷ bare Trio)"
            ws_floor = runs["bare, WebSocket"]["server_cpu_us_per_delivery"]
            ws = list(runs).index("streamapp, WebSocket")
            rows[ws][2] = f"{rows[ws][1] / ws_floor:.2f}x (÷ bare WebSocket)"
            for label, ours, base in (
                ("NDJSON", "streamapp, NDJSON", "bare, NDJSON"),
                ("Trio", "streamapp, Trio (hypercorn)", "bare, Trio (hypercorn)"),
                ("WebSocket", "streamapp, WebSocket", "bare, WebSocket"),
            ):
                other = (
                    runs[ours]["server_cpu_us_per_delivery"]
                    / runs[base]["server_cpu_us_per_delivery"]
                )
                results.setdefault("goals", []).append(
                    [
                        f"StreamApp ÷ bare, server CPU per delivery, {label}, {CLIENTS} clients",
                        f"{other:.2f}x",
                        "met" if other <= 1.3 else "not met",
                    ]
                )
        title = (
            f"HTTP load: {CLIENTS} SSE clients, {SESSIONS} sessions, {rate:g} events/s each "
            f"({CLIENTS * rate:,.0f} deliveries/s offered)"
            + (", the server alone on CPU 0" if PIN else "")
        )
        text = table(title, HEADER, rows)
        print(text, flush=True)
        report.append(text)
        results[f"rate_{rate:g}"] = figures(runs, floor)
        for name in ("bare", "sse-starlette", "streamapp"):
            summary = runs[name]
            offered = CLIENTS * rate
            held = (
                summary["deliveries_per_second"] >= 0.95 * offered
                and summary["lag_ms"]["p99"] < 250
            )
            results.setdefault("goals", []).append(
                [
                    f"{name}: {offered:,.0f} deliveries/s offered held (p99 < 250 ms, none lost)",
                    f"{summary['deliveries_per_second']:,.0f}/s, p99 "
                    f"{summary['lag_ms']['p99']:.0f} ms",
                    "met" if held else "not met",
                ]
            )
        ratio = runs["streamapp"]["server_cpu_us_per_delivery"] / floor
        results.setdefault("goals", []).append(
            [
                f"StreamApp ÷ bare ASGI, server CPU per SSE delivery, {CLIENTS} clients x "
                f"{rate:g} events/s",
                f"{ratio:.2f}x",
                "met" if ratio <= 1.3 else "not met",
            ]
        )
    results["tables"] = report
    save("http_load", results)


if __name__ == "__main__":
    main()
