"""Draw the plots of docs/performance.md from the figures in bench/results/*.json.

Run: ``.venv/bin/python bench/plot.py`` (``bench/run_all.py`` runs it last). Writes
``docs/perf-pipeline.png``, ``docs/perf-fanout.png`` and ``docs/perf-capacity.png``
for the benchmarks whose figures are there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _harness import RESULTS
from matplotlib.figure import Figure  # no pyplot: PNGs are drawn by the Agg canvas

DOCS = Path(__file__).resolve().parent.parent / "docs"
COLORS = {"asyncio": "tab:blue", "trio": "tab:orange"}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        print(f"no {path.name}: skipping its plot")
        return None
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def caption(figure: Figure, data: dict[str, Any]) -> None:
    figure.text(0.99, 0.01, f"{data['date']}, {data['machine']}", ha="right", fontsize=7)


def save(figure: Figure, name: str) -> None:
    path = DOCS / name
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def pipeline(data: dict[str, Any]) -> None:
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2, sharex=True)
    for ax, (backend, figures) in zip(axes, data["results"].items(), strict=True):
        names = [*figures["baselines"], *(f"streamkit: {c}" for c in figures["cases"])]
        values = [
            *figures["baselines"].values(),
            *(c["us_per_event"] for c in figures["cases"].values()),
        ]
        colors = ["0.6"] * len(figures["baselines"]) + [COLORS[backend]] * len(figures["cases"])
        ax.barh(names, values, color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"{backend}: µs per event, 1 subscriber")
        for y, value in enumerate(values):
            ax.text(value * 1.08, y, f"{value:.2f}", va="center", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    axes[0].set_xlim(0.03, 80)
    for ax in axes:
        ax.set_xlabel("µs per event (log scale)")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    caption(figure, data)
    save(figure, "perf-pipeline.png")


def fanout(data: dict[str, Any]) -> None:
    figure = Figure(figsize=(13, 4.2))
    left, middle, right = figure.subplots(1, 3)
    for backend, rows in data["results"].items():
        subscribers = [r["subscribers"] for r in rows]
        color = COLORS[backend]
        left.plot(
            subscribers, [r["us_per_delivery"] for r in rows], "o-", color=color, label=backend
        )
        middle.plot(
            subscribers,
            [r["deliveries_per_s"] / 1e6 for r in rows],
            "o-",
            color=color,
            label=backend,
        )
        right.plot(
            subscribers,
            [r["producer_us_per_append_mean"] for r in rows],
            "o-",
            color=color,
            label=f"{backend}, mean",
        )
        right.plot(
            subscribers,
            [r["producer_us_per_append_median"] for r in rows],
            "s--",
            color=color,
            label=f"{backend}, median",
        )
    left.axhline(0.5, color="tab:red", linestyle=":", label="goal at 100: 0.5 µs")
    left.set_title("time per delivery (µs)")
    middle.set_title("deliveries per second (millions)")
    right.set_title("producer's time per append (µs)")
    for ax in (left, middle, right):
        ax.set_xscale("log")
        ax.set_xlabel("subscribers of one session")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    caption(figure, data)
    save(figure, "perf-fanout.png")


def capacity(data: dict[str, Any]) -> None:
    figure = Figure(figsize=(11, 4.2))
    left, right = figure.subplots(1, 2)
    for backend, rows in data["streaming"].items():
        sessions = [r["sessions"] for r in rows]
        color = COLORS[backend]
        left.plot(sessions, [r["p99_ms"] for r in rows], "o-", color=color, label=f"{backend}, p99")
        left.plot(
            sessions, [r["p50_ms"] for r in rows], "s--", color=color, label=f"{backend}, p50"
        )
        right.plot(sessions, [100 * r["cpu_share"] for r in rows], "o-", color=color, label=backend)
    for backend, rows in data.get("bare", {}).items():  # the bare loop, same run
        sessions = [r["sessions"] for r in rows]
        color = COLORS[backend]
        left.plot(
            sessions, [r["p99_ms"] for r in rows], "^:", color=color, label=f"bare {backend}, p99"
        )
        right.plot(
            sessions,
            [100 * r["cpu_share"] for r in rows],
            "^:",
            color=color,
            label=f"bare {backend}",
        )
    left.axhline(50, color="tab:red", linestyle=":", label="goal: p99 < 50 ms")
    left.set_yscale("log")
    left.set_title(f"delivery lag, {data['rate']:g} tokens/s per session (ms)")
    right.set_title("CPU busy while streaming (% of one core)")
    right.axhline(100, color="0.5", linestyle=":")
    for ax in (left, right):
        ax.set_xlabel("concurrent streaming sessions")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    idle = ", ".join(
        f"{backend}: {figures['bytes_per_session']:,.0f} B"
        for backend, figures in data["idle"].items()
    )
    figure.text(0.01, 0.01, f"memory per idle session (tracemalloc): {idle}", fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    caption(figure, data)
    save(figure, "perf-capacity.png")


def main() -> None:
    for name, draw in (("pipeline", pipeline), ("fanout", fanout), ("capacity", capacity)):
        data = load(name)
        if data is not None:
            draw(data)


if __name__ == "__main__":
    main()
