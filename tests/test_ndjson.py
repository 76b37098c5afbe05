"""streamkit.ndjson: byte-exact lines, strict decoding naming the line, bounds, splits.

Every decoder case runs whole, one byte at a time and split at random places; all
must give the same values and the same error.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit as sk
from streamkit import ndjson
from streamkit.ndjson import NDJSONDecoder

if TYPE_CHECKING:
    from collections.abc import Sequence

pytestmark = pytest.mark.anyio


def run(decoder: NDJSONDecoder[Any], chunks: Sequence[bytes]) -> tuple[list[Any], Exception | None]:
    out: list[Any] = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
        out += decoder.feed_eof()
    except sk.RemoteProtocolError as exc:
        return out, exc
    return out, None


def decode_every_way(data: bytes, **options: Any) -> tuple[list[Any], Exception | None]:
    rng = random.Random(len(data))
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 5))) if len(data) > 1 else []
    ways = {
        "whole": [data],
        "bytes": [data[i : i + 1] for i in range(len(data))],
        "random": [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])],
    }
    results = {how: run(NDJSONDecoder(**options), chunks) for how, chunks in ways.items()}
    out, error = results["whole"]
    for how, (other_out, other_error) in results.items():
        assert other_out == out, how
        assert repr(other_error) == repr(error), how
        assert getattr(other_error, "line", None) == getattr(error, "line", None), how
    return out, error


def event(seq: int, **changes: Any) -> sk.StreamEvent:
    fields: dict[str, Any] = {
        "event_type": "token",
        "content": f"t{seq}",
        "event_id": f"e{seq}",
        "timestamp": 1.5,
        "session_id": "s1",
        "seq": seq,
    }
    return sk.StreamEvent(**{**fields, **changes})


def line(seq: int) -> bytes:
    return ndjson.encode(event(seq))


# --- encoder --------------------------------------------------------------------------


def test_encode_bytes() -> None:
    assert ndjson.encode(event(3)) == (
        b'{"event_id":"e3","event_type":"token","content":"t3","timestamp":1.5,'
        b'"metadata":{},"session_id":"s1","seq":3}\n'
    )


def test_encode_never_puts_a_raw_newline_inside() -> None:
    encoded = ndjson.encode(event(1, content="a\nb\r\nc\u2028", metadata={"k": "x\ny"}))
    assert encoded.count(b"\n") == 1
    assert encoded.endswith(b"\n")
    assert b"\r" not in encoded
    assert NDJSONDecoder().feed(encoded) == [
        event(1, content="a\nb\r\nc\u2028", metadata={"k": "x\ny"})
    ]


def test_encode_rejects_misuse() -> None:
    with pytest.raises(sk.ValidationError) as info:
        ndjson.encode({"event_type": "token"})  # type: ignore[arg-type]
    assert info.value.field == "event"
    # Public events cannot hold a lone surrogate; the encoder still refuses one made
    # through the unchecked internal path.
    from streamkit._events import make_event

    with pytest.raises(sk.ValidationError) as info:
        ndjson.encode(make_event(sk.EventType.TOKEN, "\ud800", seq=1))
    assert info.value.field == "event"


# --- decoder --------------------------------------------------------------------------

CASES: list[tuple[str, bytes, list[int]]] = [
    ("one", line(1), [1]),
    ("two", line(1) + line(2), [1, 2]),
    ("empty", b"", []),
    ("crlf", line(1)[:-1] + b"\r\n" + line(2)[:-1] + b"\r\n", [1, 2]),
    ("blank-lines", b"\n" + line(1) + b"\n\r\n \t\n" + line(2) + b"\n", [1, 2]),
    ("no-final-newline", line(1) + line(2)[:-1], [1, 2]),
    ("blank-tail", line(1) + b"  ", [1]),
    ("bom", b"\xef\xbb\xbf" + line(1), [1]),
    ("bom-blank-first-line", b"\xef\xbb\xbf\n" + line(1), [1]),
    ("spaces-around", b"  " + line(1)[:-1] + b"  \n", [1]),
]


@pytest.mark.parametrize(("stream", "seqs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decoder_cases(stream: bytes, seqs: list[int]) -> None:
    out, error = decode_every_way(stream)
    assert error is None
    assert out == [event(seq) for seq in seqs]


BAD: list[tuple[str, bytes, int, int, type[BaseException]]] = [
    ("not-json", line(1) + b"{nope\n" + line(3), 1, 2, ValueError),
    ("not-an-event", line(1) + b'{"a": 1}\n', 1, 2, sk.ValidationError),
    ("not-an-object", b"[1, 2]\n", 0, 1, sk.ValidationError),
    ("nan", b'{"event_id":"e","event_type":"token","timestamp":NaN}\n', 0, 1, sk.ValidationError),
    ("bad-utf8", line(1) + b'{"a": "\xff"}\n', 1, 2, UnicodeDecodeError),
    ("bom-later", line(1) + b"\xef\xbb\xbf" + line(2), 1, 2, ValueError),
    ("two-boms", b"\xef\xbb\xbf\xef\xbb\xbf" + line(1), 0, 1, ValueError),
    ("truncated-at-eof", line(1) + line(2)[:20], 1, 2, ValueError),
    ("two-on-a-line", line(1)[:-1] + line(2), 0, 1, ValueError),
    ("blank-lines-count", b"\n\n" + line(3)[:5] + b"\n", 0, 3, ValueError),
]


@pytest.mark.parametrize(
    ("stream", "good", "bad_line", "cause"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_lines_are_named(
    stream: bytes, good: int, bad_line: int, cause: type[BaseException]
) -> None:
    out, error = decode_every_way(stream)
    assert len(out) == good
    assert isinstance(error, sk.RemoteProtocolError)
    assert error.line == bad_line
    assert f"line {bad_line}" in str(error)
    assert isinstance(error.__cause__, cause)


def test_after_an_error_every_call_fails() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(line(1) + b"{nope\n" + line(3)) == [event(1)]
    with pytest.raises(sk.RemoteProtocolError) as info:
        decoder.feed(line(4))
    assert info.value.line == 2
    with pytest.raises(sk.RemoteProtocolError) as again:
        decoder.feed_eof()
    assert again.value.line == 2
    assert again.value.__cause__ is info.value


def test_error_without_earlier_values_is_raised_at_once() -> None:
    decoder = NDJSONDecoder()
    with pytest.raises(sk.RemoteProtocolError):
        decoder.feed(b"{nope\n")


def test_line_bound() -> None:
    size = len(line(1)) - 1
    out, error = decode_every_way(line(1) + line(2), max_line_size=size)
    assert (out, error) == ([event(1), event(2)], None)
    out, error = decode_every_way(line(1) + line(22), max_line_size=size)
    assert out == [event(1)]
    assert isinstance(error, sk.RemoteProtocolError)
    assert error.line == 2
    assert "max_line_size" in str(error)


def test_line_bound_holds_before_the_line_ends() -> None:
    decoder = NDJSONDecoder(max_line_size=10)
    assert decoder.feed(b"0123456789") == []
    with pytest.raises(sk.RemoteProtocolError) as info:
        decoder.feed(b"x")
    assert info.value.line == 1
    decoder = NDJSONDecoder(max_line_size=len(line(1)) - 1)
    assert decoder.feed(line(1) + b"x" * 200) == [event(1)]
    with pytest.raises(sk.RemoteProtocolError) as info:
        decoder.feed(b"")
    assert info.value.line == 2


def test_parse_gives_other_values() -> None:
    decoder = NDJSONDecoder(parse=json.loads)
    assert decoder.feed(b'{"a": 1}\n[2]\n') == [{"a": 1}, [2]]
    assert decoder.feed(b"3") == []
    assert decoder.feed_eof() == [3]
    assert decoder.line == 3

    def strict(text: str) -> int:
        return int(text)

    out, error = decode_every_way(b"1\n2\nx\n", parse=strict)
    assert out == [1, 2]
    assert isinstance(error, sk.RemoteProtocolError)
    assert error.line == 3


def test_other_exceptions_from_parse_propagate() -> None:
    def broken(text: str) -> None:
        raise KeyError(text)

    with pytest.raises(KeyError):
        NDJSONDecoder(parse=broken).feed(b"1\n")


def test_misuse_is_a_local_error() -> None:
    decoder = NDJSONDecoder()
    with pytest.raises(sk.ValidationError) as info:
        decoder.feed("text")  # type: ignore[arg-type]
    assert info.value.field == "data"
    assert decoder.feed(bytearray(line(1))) == [event(1)]
    assert decoder.feed(memoryview(line(2))) == [event(2)]
    assert decoder.feed_eof() == []
    with pytest.raises(sk.ClosedError):
        decoder.feed(line(3))
    with pytest.raises(sk.ClosedError):
        decoder.feed_eof()
    with pytest.raises(sk.ValidationError) as info:
        NDJSONDecoder(parse="json")  # type: ignore[call-overload]
    assert info.value.field == "parse"
    with pytest.raises(sk.ValidationError) as info:
        NDJSONDecoder(max_line_size=0)
    assert info.value.field == "max_line_size"


def test_line_counter() -> None:
    decoder = NDJSONDecoder()
    decoder.feed(line(1) + b"\n" + line(2) + b"partial")
    assert decoder.line == 3


# --- round trip -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"]), max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
stream_events = st.builds(
    sk.StreamEvent,
    event_type=st.sampled_from([t for t in sk.EventType if t != "part"])
    | st.from_regex(r"x-[A-Za-z0-9_.:\-]{1,20}", fullmatch=True),
    content=st.text(st.characters(blacklist_categories=["Cs"])),
    metadata=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    session_id=st.none() | st.from_regex(r"[A-Za-z0-9_\-]{1,20}", fullmatch=True),
    seq=st.none() | st.integers(min_value=1, max_value=2**62),
    event_id=st.from_regex(r"[A-Za-z0-9_\-]{1,20}", fullmatch=True),
    timestamp=st.floats(min_value=0, max_value=4e9),
)


@given(st.lists(stream_events, max_size=8), st.data())
def test_events_round_trip(events: list[sk.StreamEvent], data: st.DataObject) -> None:
    stream = b"".join(ndjson.encode(e) for e in events)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(stream)])]
    out, error = run(NDJSONDecoder(), chunks)
    assert error is None
    assert out == events


# --- async helper -----------------------------------------------------------------------


class chunks_of:
    def __init__(self, *parts: bytes) -> None:
        self.parts = list(parts)

    def __aiter__(self) -> chunks_of:
        return self

    async def __anext__(self) -> bytes:
        await anyio.lowlevel.checkpoint()
        if not self.parts:
            raise StopAsyncIteration
        return self.parts.pop(0)


async def test_aiter_events() -> None:
    stream = line(1) + line(2) + line(3)[:-1]
    got = [e async for e in ndjson.aiter_events(chunks_of(stream[:9], stream[9:]))]
    assert got == [event(1), event(2), event(3)]
    events = ndjson.aiter_events(chunks_of(line(1) + b"{bad\n"))
    assert await anext(events) == event(1)
    with pytest.raises(sk.RemoteProtocolError):
        await anext(events)
    with pytest.raises(sk.ValidationError):
        ndjson.aiter_events(chunks_of(), max_line_size=0)
