"""The load and soak programs (``load_tool``) against a real uvicorn server process.

A tiny load run is part of the normal suite, so the program cannot rot; the ``slow``
ones are shortened versions of what ``bash scripts/soak`` runs in full (2,000 clients
for 10 minutes, a 30-minute soak). Every event is checked by ``seq`` in the clients;
the programs exit with 1 when any check fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_tool(tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    out = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.reliability.load_tool", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.exists(), result.stderr
    summary: dict[str, Any] = json.loads(out.read_text())
    assert result.returncode == (0 if summary["ok"] else 1)
    return summary


def check_load(summary: dict[str, Any], clients: int) -> None:
    assert summary["ok"], summary
    assert summary["errors"] == 0
    assert summary["lost"] == summary["duplicated"] == 0
    assert summary["clients_short_of_final"] == 0
    assert summary["server"]["connected_at_start"] == clients
    assert summary["events_received"] == summary["events_expected"] > 0


def test_load_tool_small(tmp_path: Path) -> None:
    summary = run_tool(
        tmp_path,
        "load",
        "--clients",
        "20",
        "--procs",
        "2",
        "--sessions",
        "4",
        "--rate",
        "20",
        "--minutes",
        "0.03",
        timeout=100,
    )
    check_load(summary, 20)
    # The clients' own counts: one read of about one event each, some wakes of the process.
    counts = summary["client_counts_per_delivery"]
    assert counts["reads"] > 0
    assert counts["read_bytes"] > 0
    assert 0 < counts["wakes"] <= counts["ready"]


def small_load(tmp_path: Path, *options: str, procs: int = 1) -> dict[str, Any]:
    """A load run of 10 clients over 2 sessions at 20 events/s for about a second."""
    summary = run_tool(
        tmp_path,
        "load",
        *("--clients", "10", "--procs", str(procs), "--sessions", "2"),
        *("--rate", "20", "--minutes", "0.02"),
        *options,
        timeout=100,
    )
    check_load(summary, 10)
    return summary


@pytest.mark.parametrize(
    "options",
    [
        ("--format", "ws"),
        ("--format", "ws", "--app", "bare"),
        ("--format", "ndjson", "--app", "bare"),
        ("--app", "sse-starlette"),
        ("--client", "h11"),
        ("--poll-ms", "0"),
    ],
    ids=[
        "websocket",
        "bare-websocket",
        "bare-ndjson",
        "sse-starlette",
        "h11-clients",
        "no-poll-gap",
    ],
)
def test_load_tool_small_variants(tmp_path: Path, options: tuple[str, ...]) -> None:
    # The lean clients (the default) read SSE, NDJSON and WebSocket frames; the older
    # h11 clients stay available; every anchor serves the same bytes.
    small_load(tmp_path, *options)


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="--pin needs two or more CPUs (Linux)",
)
def test_load_tool_pins_the_server_apart_from_its_clients(tmp_path: Path) -> None:
    summary = small_load(tmp_path, "--pin", procs=2)
    assert summary["pinned"]
    assert summary["server"]["cpus"] == [0]
    assert summary["client_cpus"]
    assert 0 not in summary["client_cpus"]


@pytest.mark.slow
def test_load_500_clients_one_minute(tmp_path: Path) -> None:
    summary = run_tool(tmp_path, "load", "--clients", "500", "--minutes", "1", timeout=600)
    check_load(summary, 500)


@pytest.mark.slow
def test_soak_three_minutes(tmp_path: Path) -> None:
    summary = run_tool(
        tmp_path, "soak", "--minutes", "3", "--warmup", "1", "--workers", "10", timeout=900
    )
    assert summary["ok"], summary
    assert summary["errors"] == summary["seq_errors"] == 0
    assert summary["sessions_done"] > 0
    assert summary["rss_growth"] < 0.05
    for key in ("tasks", "threads", "os_threads", "fds"):
        assert summary["final"][key] <= summary["baseline"][key]
