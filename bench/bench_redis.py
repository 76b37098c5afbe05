"""Benchmark: the Redis Streams log against a local redis-server (asyncio only).

Run: ``.venv/bin/python bench/bench_redis.py`` (``STREAMKIT_BENCH_QUICK=1`` for a smoke
run). Needs a ``redis-server`` binary; the benchmark starts its own on a free port.

* **append**: sequential ``append`` calls of one producer (one Lua script round trip
  each), per event;
* **replay**: one cursor reading the whole closed log (``XRANGE`` batches of 256), per
  event;
* **live fan-out**: S followers subscribed before the producer starts, the time until
  every follower has the final event, per delivery: on one log object without a
  backend (each follower its own ``XREAD BLOCK``), and **across workers**: the producer
  appends through one ``RedisBackend`` (worker A), the followers read through another
  (worker B, one shared ``XREAD`` follower task, each batch decoded once);
* the same fan-out on the **memory backend** (``InMemoryEventLog``) in the same run,
  and the ratio Redis / memory;
* **many sessions across workers**: 100 sessions, each with one producer on worker A
  awaiting every append (as a registry's producer does) and one follower on worker B;
  the time until every follower has its final event, per delivery. The appends of all
  sessions travel together (group commit), which one sequential producer cannot show;
* **enqueue across workers** (only where the log has it): one producer queues
  its events without waiting for each, one follower on worker B.

With ``--cluster``, the same cases run again on a **Redis Cluster** started on loopback
(three masters, three replicas, as in ``tests/redis_server.py``; it needs ``redis-cli``),
and a table puts each case's cluster figure beside the single node's, same run. The
``replicas=1`` rows (``WAIT 1`` after each append round) run on the cluster too.

To compare with the code before a change, run it twice in a row, once with the old
tree first on ``PYTHONPATH`` (``cd /tmp && PYTHONPATH=/path/to/old python
/path/to/bench/bench_redis.py``); the machine's load changes between runs, so
repeat both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import redis.asyncio as aredis
from _harness import machine, save, table, us
from redis.asyncio.cluster import RedisCluster

import streamkit as sk
from streamkit.backends.redis import RedisBackend, RedisEventLog

if TYPE_CHECKING:
    from streamkit.abc import EventLog

QUICK = os.environ.get("STREAMKIT_BENCH_QUICK") == "1"
EVENTS = 1_000 if QUICK else 10_000
FOLLOWERS = (1, 10, 100)
# A blocking XREAD per follower holds a pooled connection each: 100 would exhaust
# redis-py's default pool, which is the point of the shared follower.
PER_CURSOR_FOLLOWERS = (1, 10)


def _start(cpus: set[int] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a ``redis-server`` on a free loopback port; return it and its URL.

    ``cpus``: the CPUs the server (and every thread it starts) may run on; None leaves
    it where the benchmark's process may run.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no redis-server binary on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    directory = tempfile.mkdtemp()
    mine = os.sched_getaffinity(0) if cpus is not None else set()
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # the child inherits it, and so do its threads
    try:
        process = subprocess.Popen(
            [
                *(binary, "--save", "", "--appendonly", "no", "--port", str(port)),
                *("--bind", "127.0.0.1", "--dir", directory),
            ],
            stdout=subprocess.DEVNULL,
        )
    finally:
        if cpus is not None:
            os.sched_setaffinity(0, mine)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def _free_pair() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port > 55535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _start_cluster() -> tuple[list[subprocess.Popen[bytes]], str]:
    """Six redis-server nodes joined as three masters and three replicas."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise SystemExit("--cluster needs redis-server and redis-cli on PATH")
    ports = [_free_pair() for _ in range(6)]
    directory = tempfile.mkdtemp()
    processes = []
    for port in ports:
        os.mkdir(f"{directory}/{port}")
        processes.append(
            subprocess.Popen(
                [
                    *(binary, "--port", str(port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no"),
                    *("--repl-diskless-sync-delay", "0", "--dir", f"{directory}/{port}"),
                ],
                stdout=subprocess.DEVNULL,
            )
        )
    for port in ports:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
    nodes = [f"127.0.0.1:{port}" for port in ports]
    subprocess.run(
        [cli, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )
    for port in ports:  # every node sees the cluster healthy
        for _ in range(600):
            out = subprocess.run(
                [cli, "-p", str(port), "cluster", "info"],
                check=False,
                capture_output=True,
                text=True,
            ).stdout
            if "cluster_state:ok" in out:
                break
            time.sleep(0.05)
    return processes, f"redis://127.0.0.1:{ports[0]}/0"


async def _run_cluster(url: str) -> dict[str, float]:
    """The cases across workers on a cluster (and with WAIT 1), seconds per delivery."""
    results: dict[str, float] = {}
    client = RedisCluster.from_url(url)
    try:
        log = RedisEventLog(client, "append", history_max_events=EVENTS + 10)
        start = time.perf_counter()
        for i in range(EVENTS):
            await log.append(_token(i))
        results["append"] = (time.perf_counter() - start) / EVENTS
    finally:
        await client.aclose()
    config = sk.RegistryConfig(history_max_events=EVENTS + 10, max_lag=EVENTS + 10)
    for replicas in (0, 1):
        tail = ", replicas=1 (WAIT)" if replicas else ""
        options: dict[str, object] = {"prefix": f"c{replicas}", "cluster": True}
        for followers in FOLLOWERS[:2]:
            async with (
                RedisBackend(url, replicas=replicas, **options) as worker_a,  # type: ignore[arg-type]
                RedisBackend(url, **options) as b,  # type: ignore[arg-type]
            ):
                sid = f"x{followers}"
                producer = await worker_a.make_log(sid, config)
                reader = await b.make_log(sid, config)
                results[f"fan-out x{followers}, across workers{tail}"] = await _fan_out(
                    producer, reader, followers
                )
        async with (
            RedisBackend(url, replicas=replicas, **options) as worker_a,  # type: ignore[arg-type]
            RedisBackend(url, **options) as b,  # type: ignore[arg-type]
        ):
            results[f"{SESSIONS} sessions x1 follower, across workers{tail}"] = await _many(
                worker_a, b, config
            )
            producer = await worker_a.make_log("nowait", config)
            reader = await b.make_log("nowait", config)
            results[f"fan-out x1, across workers, enqueue{tail}"] = await _fan_out(
                producer, reader, 1, nowait=True
            )
    return results


def _token(i: int) -> sk.StreamEvent:
    return sk.StreamEvent(event_type=sk.EventType.TOKEN, content=f"tok{i} ")


async def _run(url: str) -> dict[str, float]:
    client = aredis.Redis.from_url(url)
    results: dict[str, float] = {}
    try:
        log = RedisEventLog(client, "append", history_max_events=EVENTS + 10)
        start = time.perf_counter()
        for i in range(EVENTS):
            await log.append(_token(i))
        results["append"] = (time.perf_counter() - start) / EVENTS
        await log.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
        start = time.perf_counter()
        async with log.read(0) as cursor:
            count = sum([1 async for _ in cursor])
        results["replay"] = (time.perf_counter() - start) / count
        for followers in PER_CURSOR_FOLLOWERS:
            live = RedisEventLog(client, f"live{followers}", history_max_events=EVENTS + 10)
            # (The key bench/run_all.py compares with bench_fanout's memory_like_redis.)
            results[f"fan-out x{followers}"] = await _fan_out(live, live, followers)
    finally:
        await client.aclose()
    config = sk.RegistryConfig(history_max_events=EVENTS + 10, max_lag=EVENTS + 10)
    for followers in FOLLOWERS:
        async with RedisBackend(url, prefix="a") as worker_a, RedisBackend(url, prefix="a") as b:
            sid = f"x{followers}"
            producer = await worker_a.make_log(sid, config)
            reader = await b.make_log(sid, config)
            results[f"fan-out x{followers}, across workers"] = await _fan_out(
                producer, reader, followers
            )
        memory = sk.InMemoryEventLog(f"m{followers}", history_max_events=EVENTS + 10)
        results[f"fan-out x{followers}, memory backend"] = await _fan_out(memory, memory, followers)
    async with RedisBackend(url, prefix="m") as worker_a, RedisBackend(url, prefix="m") as b:
        results[f"{SESSIONS} sessions x1 follower, across workers"] = await _many(
            worker_a, b, config
        )
        producer = await worker_a.make_log("nowait", config)
        if hasattr(producer, "enqueue"):
            reader = await b.make_log("nowait", config)
            results["fan-out x1, across workers, enqueue"] = await _fan_out(
                producer, reader, 1, nowait=True
            )
    return results


SESSIONS = 100


async def _many(a: RedisBackend, b: RedisBackend, config: sk.RegistryConfig) -> float:
    """Seconds per delivery: SESSIONS producers on ``a``, one follower each on ``b``.

    The logs are made and the followers subscribed before the clock starts.
    """
    per = EVENTS // SESSIONS
    pairs = [
        (await a.make_log(f"many{i}", config), await b.make_log(f"many{i}", config))
        for i in range(SESSIONS)
    ]
    go = anyio.Event()
    ready = [anyio.Event() for _ in range(SESSIONS)]

    async def follow(reader: EventLog, i: int) -> None:
        async with reader.read(0) as cursor:
            ready[i].set()
            async for _ in cursor:
                pass

    async def produce(producer: EventLog) -> None:
        await go.wait()
        for k in range(per):
            await producer.append(_token(k))
        await producer.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))

    async with anyio.create_task_group() as tg:
        for i, (producer, reader) in enumerate(pairs):
            tg.start_soon(follow, reader, i)
            tg.start_soon(produce, producer)
        for event in ready:
            await event.wait()
        start = time.perf_counter()
        go.set()
    return (time.perf_counter() - start) / ((per + 1) * SESSIONS)


async def _fan_out(
    producer: EventLog, reader: EventLog, followers: int, *, nowait: bool = False
) -> float:
    """Seconds per delivery: ``followers`` cursors on ``reader``, appends on ``producer``.

    With ``nowait``, the producer queues its events with ``enqueue``.
    """
    ready = [anyio.Event() for _ in range(followers)]

    async def follow(i: int) -> None:
        async with reader.read(0) as cursor:
            ready[i].set()
            async for _ in cursor:
                pass

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(followers):
            tg.start_soon(follow, i)
        for event in ready:
            await event.wait()
        if nowait:
            queue = getattr(producer, "enqueue", None)
            assert queue is not None
            for i in range(EVENTS):
                queue(_token(i))
                if i % 64 == 63:
                    await anyio.lowlevel.checkpoint()
        else:
            for i in range(EVENTS):
                await producer.append(_token(i))
        await producer.append(sk.StreamEvent(event_type=sk.EventType.COMPLETE))
    return (time.perf_counter() - start) / ((EVENTS + 1) * followers)


def main() -> None:
    """Run the benchmark and print and save its table."""
    process, url = _start()
    try:
        results = anyio.run(_run, url, backend="asyncio")
    finally:
        process.terminate()
        process.wait(timeout=10)
    labels = {f"fan-out x{n}": f"fan-out x{n}, one process, XREAD per follower" for n in FOLLOWERS}
    rows = [(labels.get(name, name), round(us(value), 2)) for name, value in results.items()]
    ratios = [
        (
            f"fan-out x{n}: across workers / memory",
            round(
                results[f"fan-out x{n}, across workers"] / results[f"fan-out x{n}, memory backend"],
                1,
            ),
        )
        for n in FOLLOWERS
    ]
    print(machine())
    print(table(f"Redis log, {EVENTS} events", ("case", "us per event"), rows))
    print(table("Ratios", ("case", "x"), ratios))
    cluster: dict[str, float] = {}
    if "--cluster" in sys.argv[1:]:
        processes, cluster_url = _start_cluster()
        try:
            cluster = anyio.run(_run_cluster, cluster_url, backend="asyncio")
        finally:
            for node in processes:
                node.kill()
                node.wait(timeout=10)
        side = [
            (
                name,
                round(us(results[name]), 2) if name in results else "",
                round(us(value), 2),
                f"{value / results[name]:.2f}x" if name in results else "",
            )
            for name, value in cluster.items()
        ]
        print(
            table(
                "Redis Cluster (3 masters, 3 replicas) beside a single node, same run",
                ("case", "single node us", "cluster us", "cluster ÷ single"),
                side,
            )
        )
    same_process = ("append", "replay", *(f"fan-out x{n}" for n in PER_CURSOR_FOLLOWERS))
    save(
        "redis",
        {
            "events": EVENTS,
            "us_per_event": {name: round(us(results[name]), 2) for name in same_process},
            "across_workers_us": {
                name: round(us(value), 2)
                for name, value in results.items()
                if name not in same_process
            },
            "ratios": dict(ratios),
            "cluster_us": {name: round(us(value), 2) for name, value in cluster.items()},
        },
    )


if __name__ == "__main__":
    main()
