"""stream_tokens: events, chunking, pacing, deadline, heartbeats, cancellation, stats.

Most behaviour is checked in the three ways a source can run: an async source pulled
in the consumer's task (``direct``), an async source in the stream's producer task
(``owned``, inside ``async with``) and a sync source in a thread (``thread``).
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit as sk

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

pytestmark = pytest.mark.anyio

MODES = ["direct", "owned", "thread"]
ASYNC_MODES = ["direct", "owned"]
BUFFERED_MODES = ["owned", "thread"]

# No timer fires by surprise: chunk boundaries are exact.
EXACT = sk.StreamConfig(chunk_size=1, stream_delay=0, flush_interval=60, heartbeat_interval=None)


class Probe:
    """Records what happened to a test source, from any thread."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.gate = threading.Event()
        self.async_gate: anyio.Event | None = None


async def agen(items: Iterable[object], probe: Probe | None = None) -> AsyncIterator[Any]:
    try:
        for item in items:
            yield item
    finally:
        if probe is not None:
            probe.closed.set()


def sgen(items: Iterable[object], probe: Probe | None = None) -> Iterator[Any]:
    try:
        yield from items
    finally:
        if probe is not None:
            probe.closed.set()


def source(mode: str, items: Iterable[object], probe: Probe | None = None) -> Any:
    return sgen(items, probe) if mode == "thread" else agen(items, probe)


async def async_then_block(items: list[str], probe: Probe) -> AsyncIterator[str]:
    """Yield ``items``, then wait for the probe's gate, then yield ``"!"``."""
    try:
        for item in items:
            yield item
        assert probe.async_gate is not None
        await probe.async_gate.wait()
        yield "!"
    finally:
        probe.closed.set()


def sync_then_block(items: list[str], probe: Probe) -> Iterator[str]:
    try:
        yield from items
        probe.gate.wait(30)
        yield "!"
    finally:
        probe.closed.set()


def blocking_source(mode: str, items: list[str], probe: Probe) -> Any:
    if mode == "thread":
        return sync_then_block(items, probe)
    probe.async_gate = anyio.Event()
    return async_then_block(items, probe)


def open_gate(probe: Probe) -> None:
    probe.gate.set()
    if probe.async_gate is not None:
        probe.async_gate.set()


@contextlib.asynccontextmanager
async def opened(mode: str, stream: sk.TokenStream) -> AsyncIterator[sk.TokenStream]:
    """``async with`` in owned mode; plain iteration and ``aclose`` otherwise."""
    if mode == "owned":
        async with stream:
            yield stream
    else:
        try:
            yield stream
        finally:
            await stream.aclose()


async def collect(
    mode: str, src: Any, config: sk.StreamConfig | None = None, **kwargs: Any
) -> list[sk.StreamEvent]:
    stream = sk.stream_tokens(src, config, **kwargs)
    if mode == "owned":
        async with stream:
            return [event async for event in stream]
    return [event async for event in stream]


def types_of(events: list[sk.StreamEvent]) -> list[str]:
    return [str(event.event_type) for event in events]


def tokens_of(events: list[sk.StreamEvent]) -> list[str]:
    return [event.content for event in events if event.event_type == sk.EventType.TOKEN]


def stats_of(event: sk.StreamEvent) -> Any:
    return event.metadata["stats"]


def elapsed_of(event: sk.StreamEvent) -> float:
    elapsed = event.metadata["elapsed"]
    assert isinstance(elapsed, float)
    return elapsed


def source_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("streamkit-source")]


# --- sources and validation ---------------------------------------------------------


@pytest.mark.parametrize("bad", [42, None, object(), 3.5])
def test_rejects_a_source_that_is_not_iterable(bad: object) -> None:
    with pytest.raises(sk.ValidationError, match=type(bad).__name__) as info:
        sk.stream_tokens(bad)  # type: ignore[arg-type]
    assert info.value.field == "source"


@pytest.mark.parametrize("text", ["hello", b"hello", bytearray(b"hello")])
def test_rejects_text_itself_as_a_source(text: object) -> None:
    with pytest.raises(sk.ValidationError, match="wrap it in a list"):
        sk.stream_tokens(text)  # type: ignore[arg-type]


def test_rejects_an_iterable_whose_iter_fails() -> None:
    class Broken:
        def __iter__(self) -> Iterator[str]:
            raise OSError("no")

    class BrokenAsync:
        def __aiter__(self) -> AsyncIterator[str]:
            raise OSError("no")

    class NotAnIterator:
        def __aiter__(self) -> object:
            return 5

    with pytest.raises(sk.ValidationError, match="OSError"):
        sk.stream_tokens(Broken())
    with pytest.raises(sk.ValidationError, match="OSError"):
        sk.stream_tokens(BrokenAsync())
    with pytest.raises(sk.ValidationError, match="int"):
        sk.stream_tokens(NotAnIterator())  # type: ignore[arg-type]


def test_rejects_bad_arguments() -> None:
    with pytest.raises(sk.ValidationError, match="StreamConfig") as info:
        sk.stream_tokens(["a"], {"chunk_size": 1})  # type: ignore[arg-type]
    assert info.value.field == "config"
    with pytest.raises(sk.ValidationError) as info:
        sk.stream_tokens(["a"], session_id="no spaces")
    assert info.value.field == "session_id"
    with pytest.raises(sk.ValidationError) as info:
        sk.stream_tokens(["a"], raise_on_error=1)  # type: ignore[arg-type]
    assert info.value.field == "raise_on_error"


async def test_accepts_any_iterable_and_str_subclasses() -> None:
    class Text(str):
        pass

    events = [event async for event in sk.stream_tokens((Text(c) for c in "abc"), EXACT)]
    assert tokens_of(events) == ["a", "b", "c"]
    assert all(type(content) is str for content in tokens_of(events))


# --- the shape of a stream --------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_start_tokens_then_one_final_event(mode: str) -> None:
    words = ["Hello", ",", " world", "!"]
    with anyio.fail_after(10):
        events = await collect(mode, source(mode, words), EXACT, session_id="s-1")
    assert types_of(events) == ["start", "token", "token", "token", "token", "complete"]
    assert tokens_of(events) == words
    assert events[-1].metadata["reason"] == "completed"
    assert events[-1].is_final
    assert all(event.session_id == "s-1" for event in events)
    assert len({event.event_id for event in events}) == len(events)


@pytest.mark.parametrize("mode", MODES)
async def test_an_empty_source_gives_start_and_complete(mode: str) -> None:
    with anyio.fail_after(10):
        events = await collect(mode, source(mode, ["", ""]), EXACT)
    assert types_of(events) == ["start", "complete"]
    assert stats_of(events[-1])["tokens"] == 0


@pytest.mark.parametrize("mode", MODES)
async def test_iterating_after_the_end_stops_again(mode: str) -> None:
    stream = sk.stream_tokens(source(mode, ["a"]), EXACT)
    async with opened(mode, stream):
        events = [event async for event in stream]
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        await stream.aclose()
    assert types_of(events) == ["start", "token", "complete"]
    assert stream.outcome == "completed"


# --- chunking -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_chunk_size_tokens_per_event_last_one_shorter(mode: str) -> None:
    items = [f" w{i}" for i in range(12)]
    with anyio.fail_after(10):
        events = await collect(mode, source(mode, items), EXACT.replace(chunk_size=5))
    assert tokens_of(events) == [
        "".join(items[0:5]),
        "".join(items[5:10]),
        "".join(items[10:]),
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_not_progressive_sends_the_whole_text_once_before_the_end(mode: str) -> None:
    items = ["one", " two", " three"]
    config = EXACT.replace(enable_progressive=False, flush_interval=0)
    with anyio.fail_after(10):
        events = await collect(mode, source(mode, items), config)
    assert types_of(events) == ["start", "token", "complete"]
    assert tokens_of(events) == ["one two three"]


async def test_chunk_by_word_counts_words_whatever_the_pieces() -> None:
    pieces = ["Hel", "lo wor", "ld, how", " are", " you", "?\n", "Fine"]
    config = EXACT.replace(chunk_by="word", chunk_size=2)
    events = [event async for event in sk.stream_tokens(agen(pieces), config)]
    assert tokens_of(events) == ["Hello world,", " how are", " you?\nFine"]


async def test_chunk_by_line_counts_lines() -> None:
    pieces = ["a\nb", "c\n", "d\ne\nf"]
    config = EXACT.replace(chunk_by="line")
    events = [event async for event in sk.stream_tokens(agen(pieces), config)]
    assert tokens_of(events) == ["a\n", "bc\n", "d\n", "e\n", "f"]
    config = EXACT.replace(chunk_by="line", chunk_size=2)
    events = [event async for event in sk.stream_tokens(agen(pieces), config)]
    assert tokens_of(events) == ["a\nbc\n", "d\ne\n", "f"]


@pytest.mark.parametrize("mode", BUFFERED_MODES)
async def test_a_partial_chunk_is_flushed_while_the_source_is_silent(mode: str) -> None:
    # chunk_size is a maximum, not a wait: "a" must arrive while the source waits for
    # the gate that only this consumer opens after receiving it.
    probe = Probe()
    config = EXACT.replace(chunk_size=5, flush_interval=0.01)
    stream = sk.stream_tokens(blocking_source(mode, ["a"], probe), config)
    with anyio.fail_after(10):
        async with opened(mode, stream):
            got = []
            async for event in stream:
                got.append(event)
                if event.content == "a":
                    open_gate(probe)
    assert tokens_of(got) == ["a", "!"]


async def test_direct_mode_stops_holding_text_once_the_source_is_slow() -> None:
    probe = Probe()
    probe.async_gate = anyio.Event()

    async def slow_first() -> AsyncIterator[str]:
        await anyio.sleep(0.02)  # longer than flush_interval: the source is slow
        yield "a"
        assert probe.async_gate is not None
        await probe.async_gate.wait()
        yield "b"

    config = EXACT.replace(chunk_size=5, flush_interval=0.001)
    got = []
    with anyio.fail_after(10):
        async for event in sk.stream_tokens(slow_first(), config):
            got.append(event)
            if event.content == "a":
                open_gate(probe)
    assert tokens_of(got) == ["a", "b"]


@pytest.mark.parametrize("mode", MODES)
async def test_utf8_bytes_split_anywhere_are_decoded_whole(mode: str) -> None:
    text = "héllo 字 🙂 ok"
    pieces = [bytes([byte]) for byte in text.encode()]
    with anyio.fail_after(10):
        events = await collect(mode, source(mode, pieces), EXACT)
    tokens = tokens_of(events)
    assert "".join(tokens) == text
    assert "\ufffd" not in "".join(tokens)
    assert "🙂" in tokens  # four bytes, one event: never split
    assert events[-1].event_type == sk.EventType.COMPLETE


async def test_invalid_and_truncated_utf8_become_replacement_characters() -> None:
    events = [e async for e in sk.stream_tokens(agen([b"ok \xff", "!", b"a\xe5\xad"]), EXACT)]
    assert "".join(tokens_of(events)) == "ok \ufffd!a\ufffd"


async def test_a_surrogate_pair_split_across_items_stays_together() -> None:
    events = [e async for e in sk.stream_tokens(agen(["a\ud83d", "\ude00b", "\ud83d"]), EXACT)]
    assert tokens_of(events) == ["a", "\ud83d\ude00b", "\ud83d"]


_pieces = st.lists(st.text(max_size=12), max_size=12)


@given(
    pieces=_pieces,
    chunk_size=st.integers(1, 6),
    chunk_by=st.sampled_from(["token", "word", "line"]),
    progressive=st.booleans(),
    as_bytes=st.booleans(),
    mode=st.sampled_from(MODES),
)
async def test_concatenation_is_lossless(
    pieces: list[str],
    chunk_size: int,
    chunk_by: Any,
    progressive: bool,
    as_bytes: bool,
    mode: str,
) -> None:
    text = "".join(pieces)
    items: list[Any] = [piece.encode() for piece in pieces] if as_bytes else pieces
    config = EXACT.replace(chunk_size=chunk_size, chunk_by=chunk_by, enable_progressive=progressive)
    with anyio.fail_after(10):
        events = await collect(mode, source(mode, items), config)
    tokens = tokens_of(events)
    assert "".join(tokens) == text
    assert all(tokens)
    assert types_of(events)[0] == "start"
    assert types_of(events)[-1] == "complete"
    if not progressive:
        assert len(tokens) == (1 if text else 0)
    elif chunk_by == "token" and not as_bytes:
        assert len(tokens) == math.ceil(sum(1 for p in pieces if p) / chunk_size)
    elif chunk_by == "word":
        assert all(len(re.findall(r"(?<=\S)\s", t)) < chunk_size for t in tokens)
    elif chunk_by == "line":
        assert all(t.count("\n") <= chunk_size for t in tokens)


# --- pacing ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_stream_delay_spaces_the_chunks(mode: str) -> None:
    delay = 0.01
    with anyio.fail_after(10):
        events = await collect(
            mode, source(mode, ["a", "b", "c", "d"]), EXACT.replace(stream_delay=delay)
        )
    elapsed = [elapsed_of(e) for e in events if e.event_type == sk.EventType.TOKEN]
    assert len(elapsed) == 4
    # Chunks follow a schedule (first + i * delay): a late wake-up is made up by the
    # next gap, so the delays never add up to a drift, and no chunk is early.
    assert all(t - elapsed[0] >= i * delay - 1e-3 for i, t in enumerate(elapsed))


# --- deadline -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_deadline_completes_and_closes_a_silent_source(mode: str) -> None:
    probe = Probe()
    config = EXACT.replace(max_stream_time=0.05)
    try:
        with anyio.fail_after(10):
            stream = sk.stream_tokens(blocking_source(mode, ["a", "b"], probe), config)
            async with opened(mode, stream):
                events = [event async for event in stream]
                threads = source_threads()
    finally:
        probe.gate.set()  # lets a thread source reach its next item and stop
    for thread in threads:
        thread.join(10)
    assert types_of(events) == ["start", "token", "token", "complete"]
    assert events[-1].metadata["reason"] == "deadline"
    assert tokens_of(events) == ["a", "b"]
    assert probe.closed.is_set()
    assert stream.outcome == "deadline"
    assert not source_threads()


async def test_deadline_ends_a_source_that_never_waits() -> None:
    async def endless() -> AsyncIterator[str]:
        while True:
            yield "x"

    config = EXACT.replace(max_stream_time=0.05)
    with anyio.fail_after(10):
        events = [event async for event in sk.stream_tokens(endless(), config)]
    assert events[-1].metadata["reason"] == "deadline"
    assert set("".join(tokens_of(events))) == {"x"}


@pytest.mark.parametrize("mode", MODES)
async def test_deadline_cuts_pacing_short_and_delivers_what_was_produced(mode: str) -> None:
    items = ["a", "b", "c", "d", "e"]
    config = EXACT.replace(stream_delay=5.0, max_stream_time=0.1)
    with anyio.fail_after(10):
        events = await collect(mode, source(mode, items), config)
    text = "".join(tokens_of(events))
    assert events[-1].metadata["reason"] == "deadline"
    assert "abcde".startswith(text)
    assert text  # the first chunk is never paced
    if mode == "owned":
        assert text == "abcde"  # already buffered before the deadline: not lost


# --- heartbeats and the stall watchdog ---------------------------------------------------


@pytest.mark.parametrize("mode", BUFFERED_MODES)
async def test_heartbeats_while_the_source_is_silent(mode: str) -> None:
    probe = Probe()
    config = EXACT.replace(heartbeat_interval=0.01)
    stream = sk.stream_tokens(blocking_source(mode, ["a"], probe), config)
    got = []
    with anyio.fail_after(10):
        async with opened(mode, stream):
            async for event in stream:
                got.append(event)
                if types_of(got).count("heartbeat") == 2:
                    open_gate(probe)
    kinds = types_of(got)
    assert kinds[:2] == ["start", "token"]
    assert kinds[2:4] == ["heartbeat", "heartbeat"]
    assert kinds[-2:] == ["token", "complete"]
    assert stream.stats.heartbeats == kinds.count("heartbeat") >= 2
    assert stats_of(got[-1])["heartbeats"] == stream.stats.heartbeats


@pytest.mark.parametrize("mode", MODES)
async def test_stall_watchdog_ends_with_an_error(mode: str) -> None:
    probe = Probe()
    config = EXACT.replace(stall_timeout=0.05)
    try:
        with anyio.fail_after(10):
            stream = sk.stream_tokens(blocking_source(mode, ["a"], probe), config)
            async with opened(mode, stream):
                events = [event async for event in stream]
                threads = source_threads()
    finally:
        probe.gate.set()
    for thread in threads:
        thread.join(10)
    assert types_of(events) == ["start", "token", "error"]
    assert events[-1].metadata["error_type"] == "TimeoutError"
    assert "stall_timeout" in str(events[-1].metadata["message"])
    assert isinstance(stream.exception, TimeoutError)
    assert stream.outcome == "error"
    assert probe.closed.is_set()


# --- cancellation -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ASYNC_MODES)
async def test_a_cancelled_consumer_closes_the_async_source(mode: str) -> None:
    probe = Probe()
    stream = sk.stream_tokens(blocking_source(mode, ["a"], probe), EXACT)
    got = []
    reached_after = False
    with anyio.fail_after(10):
        async with opened(mode, stream):
            with anyio.CancelScope() as scope:
                async for event in stream:
                    got.append(event)
                    if event.content == "a":
                        scope.cancel()
                reached_after = True
            # Closed by the cancellation itself, before the `async with` ends.
            assert probe.closed.is_set()
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
    assert scope.cancelled_caught
    assert not reached_after
    assert types_of(got) == ["start", "token"]  # no error event for a cancellation
    assert stream.outcome == "closed"
    assert stream.exception is None


async def test_leaving_async_with_early_closes_the_source() -> None:
    probe = Probe()
    with anyio.fail_after(10):
        async with sk.stream_tokens(blocking_source("owned", ["a"], probe), EXACT) as stream:
            async for event in stream:
                if event.content == "a":
                    break
        assert probe.closed.is_set()
    assert stream.outcome == "closed"


async def test_aclose_closes_a_directly_pulled_source() -> None:
    probe = Probe()
    stream = sk.stream_tokens(agen(["a", "b", "c"], probe), EXACT)
    async for event in stream:
        if event.content == "a":
            break
    assert not probe.closed.is_set()
    await stream.aclose()
    assert probe.closed.is_set()
    assert stream.outcome == "closed"
    assert stream.stats.chunks == 1
    await stream.aclose()  # idempotent


async def test_aclose_before_iterating_closes_the_source() -> None:
    closed = []

    class AsyncSource:
        def __aiter__(self) -> AsyncSource:
            return self

        async def __anext__(self) -> str:
            raise StopAsyncIteration

        async def aclose(self) -> None:
            closed.append("async")

    class SyncSource:
        def __iter__(self) -> SyncSource:
            return self

        def __next__(self) -> str:
            raise StopIteration

        def close(self) -> None:
            closed.append("sync")

    await sk.stream_tokens(AsyncSource()).aclose()
    stream = sk.stream_tokens(SyncSource())
    await stream.aclose()
    assert closed == ["async", "sync"]
    assert stream.stats == sk.StreamStats()
    with pytest.raises(sk.ClosedError):
        await stream.__aenter__()


async def test_a_thread_source_cancelled_mid_stream_releases_its_thread() -> None:
    baseline = set(threading.enumerate())
    probe = Probe()
    stream = sk.stream_tokens(sync_then_block(["a"], probe), EXACT)
    got = []
    try:
        with anyio.fail_after(10), anyio.CancelScope() as scope:
            async for event in stream:
                got.append(event)
                if event.content == "a":
                    (thread,) = source_threads()
                    scope.cancel()
        assert scope.cancelled_caught
        assert types_of(got) == ["start", "token"]
        assert stream.outcome == "closed"
        assert thread.is_alive()  # still blocked inside the source's next()
    finally:
        probe.gate.set()  # the source yields its next item: the thread sees the stop
    thread.join(10)
    assert not thread.is_alive()
    assert probe.closed.is_set()  # the generator was closed in its thread
    assert not source_threads()
    assert set(threading.enumerate()) <= baseline


async def test_a_thread_source_dropped_without_aclose_stops() -> None:
    probe = Probe()
    stream = sk.stream_tokens(sync_then_block(["a"], probe), EXACT)
    try:
        with anyio.fail_after(10):
            async for event in stream:
                if event.content == "a":
                    (thread,) = source_threads()
                    break
        del stream
        gc.collect()
    finally:
        probe.gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert probe.closed.is_set()


async def test_a_thread_source_stops_even_while_waiting_for_buffer_space() -> None:
    probe = Probe()
    produced = 0

    def endless() -> Iterator[str]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield "x"
        finally:
            probe.closed.set()

    stream = sk.stream_tokens(endless(), EXACT)
    with anyio.fail_after(10):
        await stream.__anext__()  # start: the thread fills its bounded buffer
        await stream.__anext__()
        (thread,) = source_threads()
        await stream.aclose()
    thread.join(10)
    assert not thread.is_alive()
    assert probe.closed.is_set()
    assert produced < 10_000  # bounded: it did not run ahead of the consumer


# --- errors -----------------------------------------------------------------------------


async def failing(mode: str, probe: Probe) -> Any:
    if mode == "thread":

        def sync() -> Iterator[str]:
            try:
                yield "a"
                raise ValueError("boom")
            finally:
                probe.closed.set()

        return sync()

    async def asynchronous() -> AsyncIterator[str]:
        try:
            yield "a"
            raise ValueError("boom")
        finally:
            probe.closed.set()

    return asynchronous()


@pytest.mark.parametrize("mode", MODES)
async def test_a_source_that_raises_ends_with_an_error_event(mode: str) -> None:
    probe = Probe()
    stream = sk.stream_tokens(await failing(mode, probe), EXACT)
    with anyio.fail_after(10):
        async with opened(mode, stream):
            events = [event async for event in stream]
    assert types_of(events) == ["start", "token", "error"]
    assert events[-1].metadata["error_type"] == "ValueError"
    assert events[-1].metadata["message"] == "boom"
    assert stats_of(events[-1])["tokens"] == 1
    assert isinstance(stream.exception, ValueError)
    assert stream.outcome == "error"
    assert probe.closed.is_set()


@pytest.mark.parametrize("mode", MODES)
async def test_raise_on_error_raises_after_the_error_event(mode: str) -> None:
    stream = sk.stream_tokens(await failing(mode, Probe()), EXACT, raise_on_error=True)
    events: list[sk.StreamEvent] = []

    async def consume() -> None:
        async with opened(mode, stream):
            async for event in stream:
                events.append(event)  # noqa: PERF401 - keeps what came before the raise

    with anyio.fail_after(10), pytest.raises(ValueError, match="boom"):
        await consume()
    assert types_of(events) == ["start", "token", "error"]
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


@pytest.mark.parametrize("mode", MODES)
async def test_an_item_that_is_not_text_ends_with_an_error_naming_it(mode: str) -> None:
    probe = Probe()
    with anyio.fail_after(10):
        stream = sk.stream_tokens(source(mode, ["a", 3, "b"], probe), EXACT)
        async with opened(mode, stream):
            events = [event async for event in stream]
    assert tokens_of(events) == ["a"]
    assert events[-1].event_type == sk.EventType.ERROR
    assert events[-1].metadata["error_type"] == "ValidationError"
    assert events[-1].metadata["message"] == "source item 1 must be str or bytes, got int"
    assert isinstance(stream.exception, sk.ValidationError)
    assert probe.closed.is_set()


async def test_a_source_whose_close_fails_is_reported() -> None:
    class Source:
        def __aiter__(self) -> Source:
            return self

        async def __anext__(self) -> str:
            raise StopAsyncIteration

        async def aclose(self) -> None:
            raise OSError("close failed")

    events = [event async for event in sk.stream_tokens(Source(), EXACT)]
    assert events[-1].event_type == sk.EventType.ERROR
    assert events[-1].metadata["error_type"] == "OSError"


async def test_one_task_at_a_time() -> None:
    probe = Probe()
    stream = sk.stream_tokens(blocking_source("owned", [], probe), EXACT)

    async def other_reader(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await stream.__anext__()  # marks the stream busy before its first wait

    async with stream, anyio.create_task_group() as tg:
        await stream.__anext__()  # start
        await tg.start(other_reader)
        with pytest.raises(anyio.BusyResourceError):
            await stream.__anext__()
        with pytest.raises(anyio.BusyResourceError):
            await stream.aclose()
        tg.cancel_scope.cancel()
    assert probe.closed.is_set()


async def test_async_with_is_entered_once_before_iterating() -> None:
    stream = sk.stream_tokens(agen(["a"]), EXACT)
    async with stream:
        with pytest.raises(RuntimeError, match="once"):
            await stream.__aenter__()
    iterated = sk.stream_tokens(agen(["a"]), EXACT)
    await iterated.__anext__()
    with pytest.raises(RuntimeError, match="before iterating"):
        await iterated.__aenter__()
    await iterated.aclose()


# --- metadata and statistics ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_token_metadata_and_final_stats(mode: str) -> None:
    items = ["ab", "cd", "e", "fgh"]
    stream = sk.stream_tokens(source(mode, items), EXACT, session_id="abc")
    with anyio.fail_after(10):
        async with opened(mode, stream):
            events = [event async for event in stream]
    tokens = [e for e in events if e.event_type == sk.EventType.TOKEN]
    assert [e.metadata["index"] for e in tokens] == [0, 1, 2, 3]
    elapsed = [elapsed_of(e) for e in tokens]
    assert all(isinstance(t, float) and t >= 0 for t in elapsed)
    assert elapsed == sorted(elapsed)
    stats = stream.stats
    assert stats is stream.stats  # final: the same value every time
    assert (stats.tokens, stats.chunks, stats.characters, stats.heartbeats) == (4, 4, 8, 0)
    assert stats.time_to_first_token is not None
    assert stats.mean_inter_token_latency is not None
    assert stats.max_inter_token_latency is not None
    assert stats.max_inter_token_latency >= stats.mean_inter_token_latency >= 0
    assert stats.duration >= stats.time_to_first_token >= 0
    assert stats.tokens_per_second == pytest.approx(4 / stats.duration)
    assert events[-1].metadata["stats"] == stats.to_dict()
    assert events[-1].to_dict()["metadata"]["stats"]["chunks"] == 4  # JSON-ready


async def test_no_token_metadata_when_disabled() -> None:
    config = EXACT.replace(enable_metadata=False)
    events = [event async for event in sk.stream_tokens(agen(["a", "b"]), config)]
    assert all(not e.metadata for e in events if e.event_type == sk.EventType.TOKEN)
    assert stats_of(events[-1])["chunks"] == 2  # the final event keeps its stats


async def test_stats_are_live_while_streaming() -> None:
    stream = sk.stream_tokens(agen(["a", "b", "c"]), EXACT)
    assert stream.stats == sk.StreamStats()
    seen = []
    async with stream:
        async for event in stream:
            seen.append(stream.stats.chunks)
            if event.event_type == sk.EventType.TOKEN and event.content == "b":
                assert stream.stats.time_to_first_token is not None
                assert stream.outcome is None
    assert seen == [0, 1, 2, 3, 3]
    assert stream.stats.time_to_first_token is not None


def test_stats_to_dict_is_json_ready() -> None:
    stats = sk.StreamStats(tokens=2, duration=1 / 3, time_to_first_token=0.1234567)
    data = stats.to_dict()
    assert data["duration"] == 0.333333
    assert data["time_to_first_token"] == 0.123457
    assert data["mean_inter_token_latency"] is None
    assert repr(sk.StreamStats).startswith("<class 'streamkit.StreamStats'")


async def test_pause_holds_the_source_back() -> None:
    pulled = 0

    async def counting() -> AsyncIterator[str]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield f"{i} "
            await anyio.sleep(0)

    def sync_counting() -> Iterator[str]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield f"{i} "

    config = sk.StreamConfig(stream_delay=0, chunk_size=1, heartbeat_interval=None)
    for source in (counting(), sync_counting()):
        pulled = 0
        async with sk.stream_tokens(source, config) as stream:
            first = await stream.__anext__()
            assert first.event_type == sk.EventType.START
            stream.pause()
            stream.pause()
            assert stream.paused
            at_pause = pulled
            for _ in range(500):
                await anyio.sleep(0)
            assert pulled - at_pause <= 2, "a paused stream must not run ahead"
            stream.resume()
            stream.resume()
            events = [e async for e in stream]
        assert events[-1].event_type == sk.EventType.COMPLETE
        assert pulled == 1000


async def test_a_sink_takes_tokens_from_the_source_task_and_refusals_come_through() -> None:
    offered: list[str] = []
    refuse = {"b"}

    class Sink:
        def offer(self, event: sk.StreamEvent) -> bool:
            assert event.event_type == "token"
            offered.append(event.content)
            return event.content not in refuse

    step = [anyio.Event()]

    async def source() -> AsyncIterator[str]:
        for text in "abc":
            await step[0].wait()  # the consumer is waiting: the source task offers
            step[0] = anyio.Event()
            yield text

    async def release() -> None:
        for _ in range(3):
            await anyio.wait_all_tasks_blocked()
            step[0].set()

    stream = sk.stream_tokens(source(), EXACT, sink=Sink())
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, stream:
            tg.start_soon(release)
            events = [(e.event_type, e.content) async for e in stream]
    assert offered == ["a", "b", "c"]
    assert events == [("start", ""), ("token", "b"), ("complete", "")]
    assert stream.stats.chunks == 3


async def test_tokens_handed_to_a_sink_count_in_the_stats_and_item_numbers() -> None:
    # The source task makes the events of the tokens it hands to the sink itself: they
    # count as items, tokens and chunks all the same, in the final event's statistics
    # (made without a StreamStats) and in the number of a bad item after them.
    taken: list[sk.StreamEvent] = []

    class Sink:
        def offer(self, event: sk.StreamEvent) -> bool:
            taken.append(event)
            return True

    step = [anyio.Event()]

    async def source() -> AsyncIterator[object]:
        for item in ("ab", "c", "de", 7):
            await step[0].wait()  # the consumer is waiting: the source task hands it
            step[0] = anyio.Event()
            yield item

    async def release() -> None:
        for _ in range(4):
            await anyio.wait_all_tasks_blocked()
            step[0].set()

    stream = sk.stream_tokens(source(), EXACT, sink=Sink(), session_id="s1")  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, stream:
            tg.start_soon(release)
            events = [e async for e in stream]
    assert [e.content for e in taken] == ["ab", "c", "de"]
    assert [e.metadata["index"] for e in taken] == [0, 1, 2]
    assert all(e.session_id == "s1" and e.seq is None for e in taken)
    assert [str(e.event_type) for e in events] == ["start", "error"]
    final = events[-1].metadata
    assert final["message"] == "source item 3 must be str or bytes, got int"
    stats = stream.stats
    assert (stats.tokens, stats.chunks, stats.characters) == (3, 3, 5)
    assert final["stats"] == stats.to_dict()
    assert stats is stream.stats
    assert stats.time_to_first_token is not None
    assert stats.max_inter_token_latency is not None


def test_rejects_a_sink_without_offer() -> None:
    with pytest.raises(sk.ValidationError) as info:
        sk.stream_tokens(["a"], sink=lambda event: True)  # type: ignore[arg-type]
    assert info.value.field == "sink"


async def test_with_a_sink_the_timers_still_fire_flush_heartbeat_stall() -> None:
    taken: list[str] = []

    class Sink:
        def offer(self, event: sk.StreamEvent) -> bool:
            taken.append(event.content)
            return True

    async def source() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        await anyio.sleep_forever()  # silent: flush, heartbeats, then the stall watchdog
        yield "never"  # pragma: no cover

    config = sk.StreamConfig(
        chunk_size=3,
        stream_delay=0,
        flush_interval=0.01,
        heartbeat_interval=0.05,
        stall_timeout=0.3,
    )
    with anyio.fail_after(10):
        async with sk.stream_tokens(source(), config, sink=Sink()) as stream:
            events = [(e.event_type, e.content) async for e in stream]
    assert events[0] == ("start", "")
    assert ("token", "ab") in events, "the partial chunk is flushed while the source is silent"
    assert ("heartbeat", "") in events
    assert events[-1][0] == "error"
    assert stream.outcome == "error"
    assert isinstance(stream.exception, TimeoutError)
    assert taken == []  # a chunk completed by a flush goes through __anext__


async def test_with_a_sink_the_deadline_ends_a_silent_source() -> None:
    class Sink:
        def offer(self, event: sk.StreamEvent) -> bool:
            return True

    async def source() -> AsyncIterator[str]:
        yield "a"
        await anyio.sleep_forever()
        yield "never"  # pragma: no cover

    config = sk.StreamConfig(chunk_size=1, stream_delay=0, max_stream_time=0.1)
    with anyio.fail_after(10):
        async with sk.stream_tokens(source(), config, sink=Sink()) as stream:
            events = [e async for e in stream]
    assert events[-1].event_type == "complete"
    assert events[-1].metadata["reason"] == "deadline"
    assert stream.stats.chunks == 1


async def test_with_a_sink_each_of_many_silent_streams_gets_its_own_timers() -> None:
    # Streams with a sink share one timer of the loop for their waits' deadlines: each
    # one's heartbeats and stall watchdog still fire for it alone, whichever ends first.
    class Sink:
        def offer(self, event: sk.StreamEvent) -> bool:
            return True

    async def source() -> AsyncIterator[str]:
        yield "a"
        await anyio.sleep_forever()
        yield "never"  # pragma: no cover

    results: dict[int, list[str]] = {}

    async def run(i: int) -> None:
        config = sk.StreamConfig(
            chunk_size=1,
            stream_delay=0,
            heartbeat_interval=0.02 * (i + 1),
            stall_timeout=0.05 * (5 - i),
        )
        async with sk.stream_tokens(source(), config, sink=Sink()) as stream:
            results[i] = [e.event_type async for e in stream]
        assert stream.outcome == "error"
        assert isinstance(stream.exception, TimeoutError)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(run, i)
    for i in range(5):
        assert results[i][0] == "start"
        assert results[i][-1] == "error"
        assert "token" not in results[i]  # taken by the sink
    # Heartbeat due long before the stall (both counted from the last input): it came.
    assert "heartbeat" in results[0]
    assert "heartbeat" in results[1]


def test_the_shared_alarm_heap_does_not_keep_cancelled_deadlines() -> None:
    # A sink stream's consumer woken often (paced chunks, flushes) cancels a far deadline
    # (its heartbeat, its max_stream_time) at every wait: the heap that holds those
    # deadlines for every stream of a loop must not keep each one for its whole delay.
    import asyncio

    from streamkit._feeds import _COMPACT_AT, _Alarms

    async def main() -> None:
        loop = asyncio.get_running_loop()
        alarms = _Alarms()
        far = loop.time() + 3600
        kept = [alarms.call_at(far + i, lambda: None) for i in range(10)]
        for i in range(10 * _COMPACT_AT):
            alarms.call_at(far + i, lambda: None).cancel()
        assert len(alarms) <= 2 * (len(kept) + _COMPACT_AT) + 1
        fired = asyncio.Event()
        done = alarms.call_at(loop.time(), fired.set)  # due now: fires at once
        await asyncio.wait_for(fired.wait(), 10)
        done.cancel()  # after it fired: nothing to count
        assert alarms.cancelled <= _COMPACT_AT + 1
        for alarm in kept:
            assert alarm[2] is not None  # the live ones were kept

    asyncio.run(main())


def test_a_finished_event_loop_is_freed() -> None:
    # The loop-shared alarms of the streams with a sink (a registry's sessions) are kept
    # per loop: they must not keep a loop alive once its run is over (each anyio.run,
    # test or notebook cell would otherwise leave its loop and every cancelled alarm).
    import gc
    import weakref

    loops: list[weakref.ref[object]] = []

    async def main() -> None:
        import asyncio

        loops.append(weakref.ref(asyncio.get_running_loop()))
        config = sk.StreamConfig(chunk_size=1, stream_delay=0, heartbeat_interval=30)
        async with sk.SessionRegistry() as registry:
            session = await registry.create()
            async with registry.subscribe(session.session_id) as subscription:
                registry.start(session.session_id, ["a", "b"], config)
                got = [event.event_type async for event in subscription]
        assert got[-1] == sk.EventType.COMPLETE

    for _ in range(3):
        anyio.run(main, backend="asyncio")
    gc.collect()
    # (The newest loop may stay: the memory log keeps how to make futures for one loop.)
    assert [ref() for ref in loops[:-1]] == [None, None]
