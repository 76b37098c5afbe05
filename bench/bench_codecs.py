"""SSE codec throughput against sse-starlette's encoder and httpx-sse's decoder.

Run: ``.venv/bin/python bench/bench_codecs.py`` (``STREAMKIT_BENCH_QUICK=1`` for a
smoke run). Every figure is the median of several repetitions, each side measured
moments apart in the same process, so the ratios are what to compare across runs.

The competitors do the same job as streamkit does:

- encode: ``sse_starlette.ServerSentEvent(data, id=..., event=...).encode()``, given
  the event's JSON text, against ``streamkit.sse.encode(event)``;
- decode: what ``httpx_sse.EventSource.aiter_sse()`` does per chunk (httpx's
  incremental UTF-8 decoder, ``SSELineDecoder``, then ``SSEDecoder.decode`` per line)
  against ``streamkit.sse.SSEDecoder.feed``.

A last table runs a few cases of the WHATWG rules through both decoders.
"""

from __future__ import annotations

import codecs
import gc
import os
import statistics
import time
from typing import TYPE_CHECKING, Any

from _harness import machine, repetitions, save, table, us
from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder as HttpxLineDecoder
from sse_starlette.event import ServerSentEvent

import streamkit as sk
from streamkit import ndjson, sse
from streamkit._events import make_event

if TYPE_CHECKING:
    from collections.abc import Callable

N = 4_000 if os.environ.get("STREAMKIT_BENCH_QUICK") == "1" else 40_000
REPEAT = repetitions(9)


def token_events(n: int) -> list[sk.StreamEvent]:
    """Events as the streamer makes them: a few words of text and the usual metadata."""
    return [
        make_event(
            sk.EventType.TOKEN,
            f"word{i} and more ",
            {"token_index": i, "elapsed": round(i * 0.0213, 4)},
            "b3f1c2d4e5f60718",
            i + 1,
        )
        for i in range(n)
    ]


def median_per_item(
    run: Callable[[Any], Any], items: int, setup: Callable[[], Any] = lambda: None
) -> float:
    """Median seconds per item of ``run(setup())`` over REPEAT runs (setup not timed)."""
    times = []
    for _ in range(REPEAT):
        prepared = setup()
        gc.collect()
        start = time.perf_counter()
        run(prepared)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / items


def pair(
    ours: Callable[[Any], Any],
    theirs: Callable[[Any], Any],
    items: int,
    setup: Callable[[], Any] = lambda: None,
) -> tuple[float, float]:
    """Both sides, alternated so that drift on a busy machine hits them alike."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(2):
        a.append(median_per_item(ours, items, setup))
        b.append(median_per_item(theirs, items, setup))
    return min(a), min(b)


# --- encode ---------------------------------------------------------------------------


def bench_encode() -> list[list[Any]]:
    rows = []
    cached = token_events(N)
    for event in cached:
        event.to_json()  # cached on the event, as for every subscriber after the first

    def ours(events: list[sk.StreamEvent]) -> None:
        encode = sse.encode
        for event in events:
            encode(event)

    def theirs(events: list[sk.StreamEvent]) -> None:
        for event in events:
            ServerSentEvent(event.to_json(), id=str(event.seq), event=event.event_type).encode()

    rows.append(["token event, JSON cached", *pair(ours, theirs, N, lambda: cached)])
    # The first subscriber pays for the JSON: both sides call to_json() once per event.
    rows.append(["token event, JSON made", *pair(ours, theirs, N, lambda: token_events(N))])

    text = "first line of a reply\nsecond line\n\nfourth line"

    def ours_message(_: None) -> None:
        encode_message = sse.encode_message
        for i in range(N):
            encode_message(text, event="note", id=i)

    def theirs_message(_: None) -> None:
        for i in range(N):
            ServerSentEvent(text, event="note", id=str(i)).encode()

    rows.append(["4-line text message", *pair(ours_message, theirs_message, N)])
    return [[name, us(a), us(b), f"{b / a:.1f}x"] for name, a, b in rows]


# --- decode ---------------------------------------------------------------------------


def httpx_sse_decode(chunks: list[bytes]) -> int:
    """What httpx-sse's aiter_sse does with a response's chunks; returns the event count."""
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = HttpxLineDecoder()
    events = HttpxSSEDecoder()
    count = 0
    for chunk in chunks:
        for line in lines.decode(text_decoder.decode(chunk)):
            if events.decode(line) is not None:
                count += 1
    for line in lines.flush():
        if events.decode(line) is not None:
            count += 1
    return count


def streamkit_decode(chunks: list[bytes]) -> int:
    decoder = sse.SSEDecoder()
    count = 0
    feed = decoder.feed
    for chunk in chunks:
        count += len(feed(chunk))
    decoder.feed_eof()
    return count


def bench_decode() -> list[list[Any]]:
    encoded = [sse.encode(event) for event in token_events(N)]
    stream = b"".join(encoded)
    scenarios = {
        "one event per chunk (live)": encoded,
        "4 KiB chunks": [stream[i : i + 4096] for i in range(0, len(stream), 4096)],
        "64 KiB chunks (replay)": [stream[i : i + 65536] for i in range(0, len(stream), 65536)],
    }
    rows = []
    for name, chunks in scenarios.items():
        assert streamkit_decode(chunks) == httpx_sse_decode(chunks) == N
        a, b = pair(streamkit_decode, httpx_sse_decode, N, lambda c=chunks: c)
        rows.append([name, us(a), us(b), f"{b / a:.1f}x"])
    return rows


def bench_ndjson() -> list[list[Any]]:
    events = token_events(N)
    for event in events:
        event.to_json()
    stream = b"".join(ndjson.encode(event) for event in events)
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]

    def encode(_: None) -> None:
        for event in events:
            ndjson.encode(event)

    def decode(_: None) -> None:
        decoder = ndjson.NDJSONDecoder()
        for chunk in chunks:
            decoder.feed(chunk)

    return [
        ["encode, JSON cached", us(median_per_item(encode, N))],
        ["decode to checked StreamEvents, 64 KiB chunks", us(median_per_item(decode, N))],
    ]


# --- correctness ----------------------------------------------------------------------

# (case, stream, the events the standard dispatches as (type, data), the retry it sets)
CASES: list[tuple[str, bytes, list[tuple[str, str]], int | None]] = [
    ("plain event", b"event: a\ndata: x\n\n", [("a", "x")], None),
    ("CR and CRLF line ends", b"data: x\r\ndata: y\rdata: z\n\n", [("message", "x\ny\nz")], None),
    ("event without data is not dispatched", b"event: x\n\nid: 1\n\n", [], None),
    ("leading byte order mark removed", b"\xef\xbb\xbfdata: x\n\n", [("message", "x")], None),
    ("retry only when ASCII digits", b"retry: -5\ndata: x\n\n", [("message", "x")], None),
    ("retry with a sign ignored", b"retry: +5\n\n", [], None),
]


def ours_case(stream: bytes) -> tuple[list[tuple[str, str]], int | None]:
    decoder = sse.SSEDecoder()
    out = [(m.event, m.data) for m in decoder.feed(stream)]
    decoder.feed_eof()
    return out, decoder.retry


def theirs_case(stream: bytes) -> tuple[list[tuple[str, str]], int | None]:
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(stream)
    lines = HttpxLineDecoder()
    decoder = HttpxSSEDecoder()
    out = []
    retry = None
    for line in [*lines.decode(text), *lines.flush()]:
        event = decoder.decode(line)
        if event is not None:
            out.append((event.event, event.data))
            retry = event.retry if event.retry is not None else retry
    return out, retry


def correctness() -> list[list[str]]:
    rows = []
    for name, stream, expected, retry in CASES:
        ours = ours_case(stream) == (expected, retry)
        theirs = theirs_case(stream) == (expected, retry)
        rows.append([name, "yes" if ours else "NO", "yes" if theirs else "NO"])

    # An event ended by CR CR is complete: it must come out of the chunk that ends it.
    decoder = sse.SSEDecoder()
    ours = decoder.feed(b"data: x\r\r") == [sse.SSEMessage("message", "x")]
    lines = HttpxLineDecoder()
    theirs_events = [HttpxSSEDecoder().decode(line) for line in lines.decode("data: x\r\r")]
    theirs = any(event is not None for event in theirs_events)
    rows.append(
        ["event ended by CR out at once", "yes" if ours else "NO", "yes" if theirs else "NO"]
    )

    # A peer that never ends its line: bounded or not.
    big = b"data: " + b"x" * (4 * 1024 * 1024)
    try:
        sse.SSEDecoder().feed(big)
        ours = False
    except sk.RemoteProtocolError:
        ours = True
    lines = HttpxLineDecoder()
    lines.decode(big.decode())
    theirs = False  # it buffered all of it, without a bound to stop at
    rows.append(
        ["4 MiB line refused (bounded buffer)", "yes" if ours else "NO", "yes" if theirs else "NO"]
    )
    return rows


def main() -> None:
    started = time.perf_counter()
    print(f"streamkit SSE codecs, {machine()}, {N:,} events, medians of {REPEAT}\n")
    encode = bench_encode()
    print(table("encode, µs per event", ["case", "streamkit", "sse-starlette", "ratio"], encode))
    decode = bench_decode()
    print(table("decode, µs per event", ["case", "streamkit", "httpx-sse", "ratio"], decode))
    nd = bench_ndjson()
    print(table("NDJSON, µs per event", ["case", "streamkit"], nd))
    checks = correctness()
    print(table("WHATWG rules", ["case", "streamkit", "httpx-sse"], checks))
    path = save(
        "codecs",
        {"events": N, "repeat": REPEAT, "encode": encode, "decode": decode, "ndjson": nd},
    )
    print(f"raw figures in {path}; took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
