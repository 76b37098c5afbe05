"""Fuzzing the decoders: SSE and NDJSON bytes, WebSocket messages from the peer.

What holds for any input, split anywhere:

- only the documented errors come out (:class:`~streamkit.RemoteProtocolError` for bad
  bytes, :class:`~streamkit.ClosedError` after the end; :class:`~streamkit.Disconnected`
  for a peer that left), and the output and the error do not depend on the splits;
- memory is bounded: an endless line or event raises its error after at most
  ``max_line_size`` (or ``max_event_size``) bytes and one chunk, and lines the decoder
  does not keep (comments, ids, blank lines) cost nothing however many come;
- time is linear: the bytes handed to the parsing stages add up to the input once,
  however small the chunks (counted, never timed).

The fast cases run in the normal suite; the ``slow`` ones (``bash scripts/soak``) run
over 100,000 random inputs per decoder.
"""

from __future__ import annotations

import contextlib
import json
import random
import tracemalloc
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit as sk
from streamkit import ndjson, sse
from streamkit.transports import ASGIChannel, WebSocketManager, WebsocketsChannel

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping, Sequence

pytestmark = pytest.mark.anyio

# -- inputs --------------------------------------------------------------------------------

_EVENT_JSON = sk.StreamEvent(event_type="token", content="hi", seq=3, event_id="e1").to_json()

SSE_PIECES: list[bytes] = [
    b"data",
    b"data:",
    b"data: ",
    b"id: ",
    b"id:",
    b"event: ",
    b"event:token",
    b"retry: ",
    b"retry:12",
    b":",
    b": ping",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\xef\xbb\xbf",
    b"\xef",
    b"\x00",
    b"x",
    b"\xff",
    b"\xc3",
    b"123",
    b" ",
    _EVENT_JSON.encode(),
    b"data: " + _EVENT_JSON.encode() + b"\n\n",
    b"id: 7\nevent: token\ndata: " + _EVENT_JSON.encode() + b"\n\n",
]

NDJSON_PIECES: list[bytes] = [
    _EVENT_JSON.encode() + b"\n",
    _EVENT_JSON.encode(),
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b"\xef\xbb\xbf",
    b"{",
    b"}",
    b"[",
    b"null",
    b'{"event_type":"token"}',
    b'{"event_type": 1}',
    b"\xff",
    b"\xc3",
    b"NaN",
    b"1e999",
    b"x",
]


def pieces_bytes(pieces: list[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes made of format-shaped pieces and random bytes."""
    piece = st.sampled_from(pieces) | st.binary(max_size=12)
    return st.lists(piece, max_size=40).map(b"".join)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for point in points:
        out.append(data[last:point])
        last = point
    out.append(data[last:])
    return out


Outcome = tuple[list[Any], tuple[str, str, int | None] | None]


def run(decoder: Any, chunks: Sequence[bytes]) -> Outcome:
    """Feed ``chunks`` then EOF; return what came out and the error (type, text, line)."""
    out: list[Any] = []
    try:
        for chunk in chunks:
            out.extend(decoder.feed(chunk))
        out.extend(decoder.feed_eof())
    except sk.RemoteProtocolError as exc:
        # Only the documented error; the decoder stays failed, with the same error.
        with pytest.raises(sk.RemoteProtocolError):
            decoder.feed(b"\n")
        return out, ("RemoteProtocolError", exc.message, exc.line)
    with pytest.raises(sk.ClosedError):
        decoder.feed(b"x")
    return out, None


def sse_decoder(limits: tuple[int, int] | None) -> sse.SSEDecoder[sse.SSEMessage | sse.SSEComment]:
    if limits is None:
        return sse.SSEDecoder(comments=True)
    return sse.SSEDecoder(comments=True, max_line_size=limits[0], max_event_size=limits[1])


def ndjson_decoder(max_line: int | None) -> ndjson.NDJSONDecoder[sk.StreamEvent]:
    if max_line is None:
        return ndjson.NDJSONDecoder()
    return ndjson.NDJSONDecoder(max_line_size=max_line)


LIMITS = st.none() | st.tuples(st.integers(1, 80), st.integers(1, 160))


# -- SSE -----------------------------------------------------------------------------------


@given(
    data=pieces_bytes(SSE_PIECES), cuts=st.lists(st.integers(0, 2000), max_size=12), limits=LIMITS
)
def test_sse_any_bytes_any_split(
    data: bytes, cuts: list[int], limits: tuple[int, int] | None
) -> None:
    whole = run(sse_decoder(limits), [data])
    assert run(sse_decoder(limits), split(data, cuts)) == whole
    # One byte at a time: the worst chunking.
    assert run(sse_decoder(limits), [data[i : i + 1] for i in range(len(data))]) == whole
    for message in whole[0]:
        if isinstance(message, sse.SSEMessage):
            with contextlib.suppress(sk.RemoteProtocolError):
                message.to_event()


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_sse_random_bytes(data: bytes, cuts: list[int]) -> None:
    assert run(sse_decoder((64, 128)), split(data, cuts)) == run(sse_decoder((64, 128)), [data])


# -- NDJSON --------------------------------------------------------------------------------


@given(
    data=pieces_bytes(NDJSON_PIECES),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
    max_line=st.none() | st.integers(1, 200),
)
def test_ndjson_any_bytes_any_split(data: bytes, cuts: list[int], max_line: int | None) -> None:
    whole = run(ndjson_decoder(max_line), [data])
    assert run(ndjson_decoder(max_line), split(data, cuts)) == whole
    assert run(ndjson_decoder(max_line), [data[i : i + 1] for i in range(len(data))]) == whole


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_ndjson_random_bytes(data: bytes, cuts: list[int]) -> None:
    assert run(ndjson_decoder(64), split(data, cuts)) == run(ndjson_decoder(64), [data])


# -- bounded memory ------------------------------------------------------------------------

CHUNK = 64 * 1024
LIMIT = 256 * 1024


def feed_until_error(decoder: Any, chunk: bytes, budget: int) -> int:
    """Feed ``chunk`` repeatedly until the decoder raises; return the bytes it took."""
    fed = 0
    while fed < budget:
        fed += len(chunk)
        try:
            decoder.feed(chunk)
        except sk.RemoteProtocolError:
            return fed
    raise AssertionError(f"no error after {fed} bytes")


def peak_while(fn: Callable[[], object]) -> int:
    """The peak of memory allocated (net) while ``fn`` runs, in bytes."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("make", "chunk"),
    [
        pytest.param(lambda: sse.SSEDecoder(max_line_size=LIMIT), b"x" * CHUNK, id="sse-line"),
        pytest.param(
            lambda: sse.SSEDecoder(max_line_size=LIMIT, max_event_size=LIMIT),
            b"data: " + b"x" * 1000 + b"\n",
            id="sse-event",
        ),
        pytest.param(lambda: ndjson.NDJSONDecoder(max_line_size=LIMIT), b"[" * CHUNK, id="ndjson"),
    ],
)
def test_endless_input_raises_before_it_grows(make: Callable[[], Any], chunk: bytes) -> None:
    decoder = make()
    fed: list[int] = []
    peak = peak_while(lambda: fed.append(feed_until_error(decoder, chunk, 100 * LIMIT)))
    assert fed[0] <= LIMIT + len(chunk)
    # What it held is about the limit (the bytes themselves, split lines, a copy).
    assert peak < 4 * LIMIT + 4 * len(chunk)


@pytest.mark.parametrize(
    "line",
    [b": heartbeat\n", b"id: 12\n", b"event: token\n", b"retry: 3000\n", b"\n", b"junk\n"],
    ids=["comment", "id", "event", "retry", "blank", "unknown"],
)
def test_sse_lines_that_are_not_kept_cost_nothing(line: bytes) -> None:
    decoder = sse.SSEDecoder(max_line_size=1024, max_event_size=1024)
    chunk = line * (4096 // len(line))

    def feed() -> None:
        for _ in range(64):  # 256 KiB of such lines
            assert decoder.feed(chunk) == []

    assert peak_while(feed) < 128 * 1024


def test_ndjson_blank_lines_cost_nothing() -> None:
    decoder = ndjson.NDJSONDecoder(max_line_size=1024)
    chunk = b" \r\n" * (4096 // 3)

    def feed() -> None:
        for _ in range(64):  # 256 KiB of blank lines
            assert decoder.feed(chunk) == []

    assert peak_while(feed) < 128 * 1024


# -- linear time (counted) -----------------------------------------------------------------


class CountingSSE(sse.SSEDecoder[sse.SSEMessage]):
    """Counts the bytes handed to the block and line stages of the decoder."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.blocked = 0
        self.lined = 0
        self.canonical = 0

    def _block(self, block: bytes, out: list[Any]) -> sk.RemoteProtocolError | None:
        self.blocked += len(block)
        return super()._block(block, out)

    def _lines(self, block: bytes, out: list[Any]) -> sk.RemoteProtocolError | None:
        self.lined += len(block)
        return super()._lines(block, out)

    def _canonical(self, block: bytes, start: int, end: int, out: list[Any]) -> bool:
        self.canonical += end - start
        return super()._canonical(block, start, end, out)


class CountingNDJSON(ndjson.NDJSONDecoder[Any]):
    """Counts the bytes of the lines the decoder reads."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(parse=json.loads, **kwargs)
        self.read = 0

    def _read(self, line: bytes, n: int, out: list[Any]) -> sk.RemoteProtocolError | None:
        self.read += len(line)
        return super()._read(line, n, out)


def sse_streams() -> list[tuple[str, bytes]]:
    event = b"id: 1\nevent: token\ndata: " + _EVENT_JSON.encode() + b"\n\n"
    mixed = b"data: a\ndata: b\n: note\nid: 2\n\n"
    return [
        ("canonical", event * 400),
        ("multi-line", mixed * 800),
        ("crlf", event.replace(b"\n", b"\r\n") * 400),
        ("one-long-event", b"data: " + b"y" * 60_000 + b"\n\n"),
        ("many-data-lines", b"data: z\n" * 8000 + b"\n"),
    ]


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
@pytest.mark.parametrize(("name", "stream"), sse_streams(), ids=[n for n, _ in sse_streams()])
def test_sse_work_is_linear(name: str, stream: bytes, chunk_size: int) -> None:
    decoder = CountingSSE(max_line_size=1 << 20, max_event_size=1 << 20)
    for i in range(0, len(stream), chunk_size):
        decoder.feed(stream[i : i + chunk_size])
    decoder.feed_eof()
    # Every byte reaches the block stage once; each stage sees it at most once more
    # (the whole-block attempt, then a run or the line reader).
    assert decoder.blocked <= len(stream)
    assert decoder.lined <= len(stream)
    assert decoder.canonical <= 2 * len(stream)


@pytest.mark.parametrize("chunk_size", [1, 3, 4096])
def test_ndjson_work_is_linear(chunk_size: int) -> None:
    stream = b'{"a": [1, 2, 3], "b": "' + b"q" * 2000 + b'"}\n'
    stream = stream * 20 + b"\n" * 5000 + b'{"c": 1}\r\n' * 3000
    decoder = CountingNDJSON(max_line_size=1 << 20)
    values = []
    for i in range(0, len(stream), chunk_size):
        values.extend(decoder.feed(stream[i : i + chunk_size]))
    values.extend(decoder.feed_eof())
    assert len(values) == 3020
    assert decoder.read <= len(stream)


# -- WebSocket messages from the peer ------------------------------------------------------

ASGI_MESSAGE = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["websocket.receive", "websocket.disconnect", "websocket.connect", "http.request", "x"]
        )
        | st.text(max_size=5)
        | st.none()
        | st.integers()
    },
    optional={
        "text": st.text(max_size=20) | st.none() | st.integers(),
        "bytes": st.binary(max_size=20) | st.none(),
        "code": st.integers(-5, 5000) | st.none() | st.text(max_size=3),
    },
)


@given(messages=st.lists(ASGI_MESSAGE, min_size=1, max_size=10))
async def test_asgi_channel_peer_messages(messages: list[dict[str, Any]]) -> None:
    queue = list(messages)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return queue.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    channel = ASGIChannel(receive, send, accepted=True)
    while queue:
        message = queue[0]
        try:
            text = await channel.receive_text()
        except sk.Disconnected:
            assert message["type"] == "websocket.disconnect"
            assert isinstance(channel.disconnect_code, int)
            with pytest.raises(sk.Disconnected):
                await channel.receive_text()
            break
        except sk.RemoteProtocolError:
            assert message["type"] != "websocket.disconnect"
            assert not (
                message["type"] == "websocket.receive" and isinstance(message.get("text"), str)
            )
        else:
            assert message["type"] == "websocket.receive"
            assert text == message["text"]


class FakeConnection:
    """A ``websockets`` connection whose peer sends the given items (an exception: raised)."""

    def __init__(self, items: list[object]) -> None:
        self.items = items
        self.closed: tuple[int, str] | None = None

    async def send(self, message: str) -> None:
        pass

    async def recv(self) -> str | bytes:
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


class ConnectionClosed(Exception):
    """Named as the ``websockets`` package's disconnect exception."""

    __module__ = "websockets.exceptions"


PEER_ITEM = (
    st.text(max_size=30)
    | st.binary(max_size=30)
    | st.sampled_from([ConnectionClosed("bye"), OSError("reset"), ConnectionResetError()])
)


@given(items=st.lists(PEER_ITEM, min_size=1, max_size=10))
async def test_websockets_channel_peer_messages(items: list[object]) -> None:
    connection = FakeConnection(list(items))
    channel = WebsocketsChannel(connection)
    for item in items:
        try:
            text = await channel.receive_text()
        except sk.Disconnected:
            assert isinstance(item, BaseException)
            break
        except sk.RemoteProtocolError:
            assert isinstance(item, bytes)
        else:
            assert text == item


@given(items=st.lists(st.text(max_size=40) | st.binary(max_size=10), min_size=1, max_size=8))
async def test_manager_survives_any_peer_messages(items: list[str | bytes]) -> None:
    received: list[str] = []

    async def on_message(connection: Any, text: str) -> None:
        received.append(text)

    async with WebSocketManager(
        max_message_size=20, ping_interval=None, on_message=on_message
    ) as manager:
        connection = FakeConnection([*items, ConnectionClosed("end")])
        with anyio.fail_after(5):
            async with manager.connect(WebsocketsChannel(connection)) as conn:
                await conn.wait_closed()
        # Messages up to the first bad one are handed over; the bad one closes the
        # connection with its code (1003 binary, 1009 too big); the manager goes on.
        expected: list[str] = []
        code: int | None = None  # None: the peer closed first
        for item in items:
            if isinstance(item, bytes):
                code = 1003
                break
            if len(item.encode()) > 20:
                code = 1009
                break
            if item != '{"type":"pong"}':
                expected.append(item)
        assert received == expected
        assert conn.close_code == code
        assert conn.peer_closed == (code is None)
        assert manager.statistics().connected == 0


# -- the long run: 100,000+ random cases per decoder ---------------------------------------


def random_input(rng: random.Random, pieces: list[bytes]) -> bytes:
    parts = []
    for _ in range(rng.randrange(30)):
        if rng.random() < 0.7:
            parts.append(rng.choice(pieces))
        else:
            parts.append(rng.randbytes(rng.randrange(12)))
    return b"".join(parts)


def random_cuts(rng: random.Random, size: int) -> list[int]:
    return [rng.randrange(size + 1) for _ in range(rng.randrange(8))]


@pytest.mark.slow
def test_sse_100k_random_cases() -> None:
    rng = random.Random(10)
    for _ in range(100_000):
        data = random_input(rng, SSE_PIECES)
        limits = None if rng.random() < 0.5 else (rng.randrange(1, 80), rng.randrange(1, 160))
        whole = run(sse_decoder(limits), [data])
        assert run(sse_decoder(limits), split(data, random_cuts(rng, len(data)))) == whole, data


@pytest.mark.slow
def test_ndjson_100k_random_cases() -> None:
    rng = random.Random(11)
    for _ in range(100_000):
        data = random_input(rng, NDJSON_PIECES)
        max_line = None if rng.random() < 0.5 else rng.randrange(1, 200)
        whole = run(ndjson_decoder(max_line), [data])
        assert run(ndjson_decoder(max_line), split(data, random_cuts(rng, len(data)))) == whole, (
            data
        )


@pytest.mark.slow
async def test_asgi_channel_100k_random_messages() -> None:
    rng = random.Random(12)
    kinds = ["websocket.receive", "websocket.receive", "websocket.disconnect", "websocket.x"]
    for _ in range(100_000):
        message: dict[str, Any] = {"type": rng.choice(kinds)}
        if rng.random() < 0.7:
            message["text"] = rng.randbytes(rng.randrange(8)).decode("latin-1")
        if rng.random() < 0.3:
            message["bytes"] = rng.randbytes(4)
        if rng.random() < 0.5:
            message["code"] = rng.randrange(-1, 5000)

        async def receive(message: dict[str, Any] = message) -> MutableMapping[str, Any]:
            return message

        async def send(message: MutableMapping[str, Any]) -> None:
            pass

        channel = ASGIChannel(receive, send, accepted=True)
        try:
            assert await channel.receive_text() == message["text"]
        except (sk.Disconnected, sk.RemoteProtocolError):
            assert message["type"] != "websocket.receive" or not isinstance(
                message.get("text"), str
            )
