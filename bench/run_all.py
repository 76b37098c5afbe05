"""Run every benchmark, each in a fresh interpreter, then draw the plots.

Run: ``bash scripts/bench`` (which makes the virtualenv first), or
``.venv/bin/python bench/run_all.py [NAME ...]`` to run some of them (``pipeline``,
``fanout``, ``http``, ``http_load``, ``http_paced``, ``capacity``, ``codecs``,
``redis``, ``redis_capacity``). ``STREAMKIT_BENCH_QUICK=1``
makes a smoke run of a few seconds each.

Every table is printed as it comes and gathered in ``bench/results/report.md`` (with the
date, the machine and the command), ready to paste into ``docs/performance.md``; the raw
figures are in ``bench/results/*.json`` and the plots in ``docs/perf-*.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _harness import QUICK, RESULTS, machine, table

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "pipeline": "bench_pipeline.py",
    "fanout": "bench_fanout.py",
    "http": "bench_http.py",
    "http_load": "bench_http_load.py",
    "http_paced": "bench_http_paced.py",
    "capacity": "bench_capacity.py",
    "codecs": "bench_codecs.py",
    "redis": "bench_redis.py",
    "redis_capacity": "bench_redis_capacity.py",
}


def run(name: str, script: str) -> tuple[str, float, bool]:
    """Run one benchmark; return its output, the seconds it took and whether it passed."""
    print(f"==> {name} ({script})", flush=True)
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(
        [sys.executable, str(HERE / script)],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:  # shown as it comes, and kept for the report
            print(line, end="", flush=True)
            lines.append(line)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        print(f"!! {name} failed with exit status {process.returncode}", flush=True)
    return "".join(lines), elapsed, process.returncode == 0


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x"


def ratios(names: list[str]) -> str:
    """Every ratio of this run in one table, each with its goal and verdict if it has one."""
    rows: list[list[Any]] = []
    pipeline = _load("pipeline") if "pipeline" in names else None
    if pipeline:
        for backend, figures in pipeline["results"].items():
            for row in figures["rows"]:
                if row[0].startswith("pipeline"):
                    case = row[0].removeprefix("pipeline, ")
                    queue = figures["queue_name"]
                    rows.append(["pipeline", f"{backend}, {case}: ÷ {queue}", row[3], ""])
                    rows.append(["pipeline", f"{backend}, {case}: anyio buffer=0 ÷", row[4], ""])
                    rows.append(["pipeline", f"{backend}, {case}: ÷ bare generator", row[5], ""])
    http = _load("http") if "http" in names else None
    if http:
        servers = http["results"]
        theirs, raw = servers["sse-starlette"], servers["raw Starlette"]
        for server in ("streamkit", "raw Starlette"):
            figures = servers[server]
            rate = figures["events_per_s"]
            rows.append(
                [
                    "http",
                    f"{server}: ÷ sse-starlette (events/s)",
                    _x(rate / theirs["events_per_s"]),
                    "",
                ]
            )
            cpu = theirs["server_cpu_us_per_event"] / figures["server_cpu_us_per_event"]
            rows.append(["http", f"{server}: sse-starlette ÷ (server CPU/event)", _x(cpu), ""])
        rate = servers["streamkit"]["events_per_s"] / raw["events_per_s"]
        rows.append(["http", "streamkit: ÷ raw Starlette (events/s)", _x(rate), ""])
    for name in (
        "pipeline",
        "fanout",
        "http",
        "http_load",
        "http_paced",
        "capacity",
        "redis_capacity",
    ):
        data = _load(name) if name in names else None
        if data:
            for goal in data.get("goals", ()):
                *what, figure, verdict = goal
                rows.append([name, "goal: " + ", ".join(what), figure, verdict])
    codecs = _load("codecs") if "codecs" in names else None
    if codecs:
        for kind, rival in (("encode", "sse-starlette"), ("decode", "httpx-sse")):
            for case, _, _, ratio in codecs[kind]:
                rows.append(["codecs", f"{kind}, {case}: {rival} ÷ streamkit", ratio, ""])
    redis = _load("redis") if "redis" in names else None
    fanout = _load("fanout") if "fanout" in names else None
    if redis and fanout:
        memory = fanout["memory_like_redis"]
        for case, value in redis["us_per_event"].items():
            rows.append(
                ["redis", f"{case}: Redis ÷ memory log", f"{value / memory[case]:.0f}x", ""]
            )
    if not rows:
        return ""
    return table("every ratio of this run", ["benchmark", "ratio", "figure", "verdict"], rows)


def main() -> int:
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    for name in ("redis", "redis_capacity"):
        if name in names and shutil.which("redis-server") is None:
            print(f"no redis-server on PATH: skipping the {name} benchmark")
            names.remove(name)
    started = time.perf_counter()
    command = "STREAMKIT_BENCH_QUICK=1 bash scripts/bench" if QUICK else "bash scripts/bench"
    report = [
        "# streamkit benchmarks",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}",
        f"- machine: {machine()}",
        f"- command: `{command}`" + (f" ({' '.join(names)})" if sys.argv[1:] else ""),
        "",
    ]
    failed = []
    for name in names:
        output, elapsed, ok = run(name, BENCHMARKS[name])
        report += [f"## {name} ({elapsed:.0f} s)", "", output.rstrip(), ""]
        if not ok:
            failed.append(name)
    plot = subprocess.run([sys.executable, str(HERE / "plot.py")], cwd=HERE, check=False)
    if plot.returncode != 0:
        failed.append("plot")
    summary = ratios(names)
    print(summary)
    total = time.perf_counter() - started
    report += ["## summary", "", summary, f"Whole run: {total:.0f} s."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    print(f"==> done in {total:.0f} s; tables in {RESULTS / 'report.md'}")
    if failed:
        print(f"!! failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
