"""streamkit.sse: byte-exact encoding, the WHATWG decoding rules, bounds, the clients.

Every decoder case runs three ways: the bytes whole, one byte at a time, and split at
random places; all must give the same messages and the same error. A literal,
line-by-line transcription of the standard (``reference`` below) checks the decoder's
fast paths on generated streams.
"""

from __future__ import annotations

import http
import inspect
import itertools
import json
import random
import re
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit as sk
from streamkit import sse
from streamkit.sse import SSEComment, SSEDecoder, SSEMessage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence

pytestmark = pytest.mark.anyio

Item = SSEMessage | SSEComment


# --- helpers ------------------------------------------------------------------------


def run(decoder: SSEDecoder[Any], chunks: Sequence[bytes]) -> tuple[list[Any], Exception | None]:
    """Feed ``chunks`` then EOF; return what came out and the error that stopped it."""
    out: list[Any] = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
        out += decoder.feed_eof()
    except sk.RemoteProtocolError as exc:
        return out, exc
    return out, None


def splits(data: bytes, seed: int = 0) -> dict[str, list[bytes]]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 7))) if len(data) > 1 else []
    bounds = [0, *cuts, len(data)]
    return {
        "whole": [data],
        "bytes": [data[i : i + 1] for i in range(len(data))],
        "random": [data[a:b] for a, b in itertools.pairwise(bounds)],
    }


def decode_every_way(
    data: bytes, **options: Any
) -> tuple[list[Any], Exception | None, SSEDecoder[Any]]:
    """Decode ``data`` whole, byte by byte and at random; check all agree; return one."""
    results = []
    for how, chunks in splits(data).items():
        decoder = SSEDecoder(**options)
        out, error = run(decoder, chunks)
        results.append((how, out, error, decoder))
    _, out, error, decoder = results[0]
    for how, other_out, other_error, other in results[1:]:
        assert other_out == out, how
        assert repr(other_error) == repr(error), how
        assert (getattr(other_error, "line", None)) == getattr(error, "line", None), how
        assert other.last_event_id == decoder.last_event_id, how
        assert other.retry == decoder.retry, how
    return out, error, decoder


def reference(
    stream: bytes, *, comments: bool = False, last_event_id: str = ""
) -> tuple[list[Item], str, int | None]:
    """The WHATWG rules, transcribed line by line over the whole decoded stream."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)[:-1]  # the piece after the last line end is dropped
    data_buffer = ""
    type_buffer = ""
    id_buffer = last_event_id
    last_id = last_event_id
    retry: int | None = None
    event_retry: int | None = None
    out: list[Item] = []
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data_buffer != "":
                out.append(
                    SSEMessage(type_buffer or "message", data_buffer[:-1], last_id, event_retry)
                )
            data_buffer = type_buffer = ""
            event_retry = None
            continue
        if line.startswith(":"):
            if comments:
                note = line[1:]
                out.append(SSEComment(note[1:] if note.startswith(" ") else note))
            continue
        if ":" in line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
        else:
            field, value = line, ""
        if field == "event":
            type_buffer = value
        elif field == "data":
            data_buffer += value + "\n"
        elif field == "id":
            if "\x00" not in value:
                id_buffer = value
        elif field == "retry":
            digits = value.lstrip("0") or "0"
            if value and all(c in "0123456789" for c in value) and int(digits[:20]) < 2**63:
                retry = event_retry = int(digits)
    return out, last_id, retry


# --- encoder --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("hello",), {}, b"data: hello\n\n"),
        (("",), {}, b"data:\n\n"),
        (("a\nb",), {}, b"data: a\ndata: b\n\n"),
        (("a\r\nb\rc",), {}, b"data: a\ndata: b\ndata: c\n\n"),
        (("a\n",), {}, b"data: a\ndata:\n\n"),
        (("\n",), {}, b"data:\ndata:\n\n"),
        (("a\n\nb",), {}, b"data: a\ndata:\ndata: b\n\n"),
        (("\r\n\r",), {}, b"data:\ndata:\ndata:\n\n"),
        ((" lead",), {}, b"data:  lead\n\n"),
        (("x: y",), {}, b"data: x: y\n\n"),
        (("h\u00e9 \u20ac",), {}, "data: h\u00e9 \u20ac\n\n".encode()),
        (("a\x00b",), {}, b"data: a\x00b\n\n"),
        (("\u2028",), {}, "data: \u2028\n\n".encode()),
        (("d",), {"event": "add"}, b"event: add\ndata: d\n\n"),
        (("d",), {"event": " sp"}, b"event:  sp\ndata: d\n\n"),
        (("d",), {"id": "7"}, b"id: 7\ndata: d\n\n"),
        (("d",), {"id": 7}, b"id: 7\ndata: d\n\n"),
        (("d",), {"id": -1}, b"id: -1\ndata: d\n\n"),
        (("d",), {"id": http.HTTPStatus.OK}, b"id: 200\ndata: d\n\n"),
        (("d",), {"id": ""}, b"id:\ndata: d\n\n"),
        (("d",), {"retry": 0}, b"retry: 0\ndata: d\n\n"),
        (("d",), {"retry": 3000}, b"retry: 3000\ndata: d\n\n"),
        (("d",), {"comment": "hi"}, b": hi\ndata: d\n\n"),
        (("d",), {"comment": ""}, b":\ndata: d\n\n"),
        (("d",), {"comment": "a\r\nb\n"}, b": a\n: b\n:\ndata: d\n\n"),
        (
            ("one\ntwo",),
            {"event": "e", "id": "i", "retry": 5, "comment": "c"},
            b": c\nretry: 5\nid: i\nevent: e\ndata: one\ndata: two\n\n",
        ),
    ],
)
def test_encode_message_bytes(args: tuple[str], kwargs: dict[str, Any], expected: bytes) -> None:
    assert sse.encode_message(*args, **kwargs) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        ((None,), {}, "data"),
        ((b"x",), {}, "data"),
        (("\ud800",), {}, "data"),
        (("d",), {"event": ""}, "event"),
        (("d",), {"event": "a\nb"}, "event"),
        (("d",), {"event": "a\rb"}, "event"),
        (("d",), {"event": "a\x00b"}, "event"),
        (("d",), {"event": 3}, "event"),
        (("d",), {"event": "\udcff"}, "event"),
        (("d",), {"id": "1\n"}, "id"),
        (("d",), {"id": "\r1"}, "id"),
        (("d",), {"id": "1\x00"}, "id"),
        (("d",), {"id": 1.5}, "id"),
        (("d",), {"id": True}, "id"),
        (("d",), {"id": "\ud800"}, "id"),
        (("d",), {"retry": -1}, "retry"),
        (("d",), {"retry": 1.0}, "retry"),
        (("d",), {"retry": "10"}, "retry"),
        (("d",), {"retry": True}, "retry"),
        (("d",), {"comment": 1}, "comment"),
        (("d",), {"comment": "\ud800"}, "comment"),
    ],
)
def test_encode_message_rejects_bad_fields(
    args: tuple[Any], kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(sk.ValidationError) as info:
        sse.encode_message(*args, **kwargs)
    assert info.value.field == field


def fixed_event(**changes: Any) -> sk.StreamEvent:
    fields: dict[str, Any] = {
        "event_type": "token",
        "content": "Hi",
        "event_id": "e1",
        "timestamp": 1.5,
        "session_id": "s1",
        "seq": 3,
    }
    return sk.StreamEvent(**{**fields, **changes})


def test_encode_event_bytes() -> None:
    assert sse.encode(fixed_event()) == (
        b'id: 3\nevent: token\ndata: {"event_id":"e1","event_type":"token","content":"Hi",'
        b'"timestamp":1.5,"metadata":{},"session_id":"s1","seq":3}\n\n'
    )


def test_encode_event_without_seq_has_no_id() -> None:
    event = fixed_event(seq=None, session_id=None, event_type="complete", content="")
    assert sse.encode(event) == (
        b'event: complete\ndata: {"event_id":"e1","event_type":"complete","content":"",'
        b'"timestamp":1.5,"metadata":{},"session_id":null,"seq":null}\n\n'
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("Hi", b"id: 3\nevent: token\ndata: Hi\n\n"),
        ("", b"id: 3\nevent: token\ndata:\n\n"),
        ("a\nb\r\n", b"id: 3\nevent: token\ndata: a\ndata: b\ndata:\n\n"),
    ],
)
def test_encode_event_content_only(content: str, expected: bytes) -> None:
    assert sse.encode(fixed_event(content=content), data="content") == expected


def test_encode_event_custom_type_and_newlines_in_content() -> None:
    event = fixed_event(event_type="x-tool.call", content="line1\nline2", metadata={"k": "a\nb"})
    encoded = sse.encode(event)
    assert encoded.startswith(b"id: 3\nevent: x-tool.call\ndata: {")
    assert encoded.count(b"\n") == 4  # JSON escapes the newlines: one data line
    assert encoded == f"id: 3\nevent: x-tool.call\ndata: {event.to_json()}\n\n".encode()


def test_encode_rejects_misuse() -> None:
    with pytest.raises(sk.ValidationError) as info:
        sse.encode({"event_type": "token"})  # type: ignore[arg-type]
    assert info.value.field == "event"
    with pytest.raises(sk.ValidationError) as info:
        sse.encode(fixed_event(), data="xml")  # type: ignore[arg-type]
    assert info.value.field == "data"
    # A lone surrogate cannot be put in a public event at all ...
    with pytest.raises(sk.ValidationError) as info:
        fixed_event(content="\ud800")
    assert info.value.field == "content"
    # ... and the encoder still refuses one made through the unchecked internal path.
    from streamkit._events import make_event

    data: Literal["json", "content"]
    for data in ("json", "content"):
        with pytest.raises(sk.ValidationError) as info:
            sse.encode(make_event(sk.EventType.TOKEN, "\ud800", seq=1), data=data)
        assert info.value.field == "event"
    with pytest.raises(sk.ValidationError):
        sse.encode(make_event(sk.EventType.TOKEN, "\ud800"))


def test_encode_comment_and_retry() -> None:
    assert sse.encode_comment("ping") == b": ping\n\n"
    assert sse.encode_comment("") == b":\n\n"
    assert sse.encode_comment("a\nb") == b": a\n: b\n\n"
    assert sse.encode_retry(3000) == b"retry: 3000\n\n"
    assert sse.encode_retry(0) == b"retry: 0\n\n"
    with pytest.raises(sk.ValidationError) as info:
        sse.encode_comment(None)  # type: ignore[arg-type]
    assert info.value.field == "comment"
    with pytest.raises(sk.ValidationError):
        sse.encode_comment("\ud800")
    for bad in (-1, 2.5, "1", None):
        with pytest.raises(sk.ValidationError) as info:
            sse.encode_retry(bad)  # type: ignore[arg-type]
        assert info.value.field == "retry"


def test_heartbeat_and_retry_hint_dispatch_nothing() -> None:
    decoder = SSEDecoder()
    stream = sse.encode_message("a", id="1") + sse.encode_comment("ping") + sse.encode_retry(50)
    assert decoder.feed(stream) == [SSEMessage("message", "a", "1", None)]
    assert decoder.last_event_id == "1"
    assert decoder.retry == 50


# --- decoder: the standard's rules ---------------------------------------------------

M = SSEMessage

SPEC_CASES: list[tuple[str, bytes, list[Item], str, int | None]] = [
    ("simple", b"data: x\n\n", [M("message", "x")], "", None),
    ("no-final-blank-line", b"data: x\n", [], "", None),
    ("no-line-end", b"data: x", [], "", None),
    ("empty-stream", b"", [], "", None),
    ("multi-line", b"data: a\ndata: b\ndata: c\n\n", [M("message", "a\nb\nc")], "", None),
    ("no-colon", b"data\n\n", [M("message", "")], "", None),
    ("no-colon-twice", b"data\ndata\n\n", [M("message", "\n")], "", None),
    ("empty-value", b"data:\n\n", [M("message", "")], "", None),
    ("one-space-removed", b"data:  x \n\n", [M("message", " x ")], "", None),
    ("no-space", b"data:x\n\n", [M("message", "x")], "", None),
    ("tab-kept", b"data:\tx\n\n", [M("message", "\tx")], "", None),
    ("colon-in-value", b"data: a:b: c\n\n", [M("message", "a:b: c")], "", None),
    ("nul-in-data", b"data: a\x00b\n\n", [M("message", "a\x00b")], "", None),
    ("two-events", b"data: a\n\ndata: b\n\n", [M("message", "a"), M("message", "b")], "", None),
    ("crlf", b"data: a\r\ndata: b\r\n\r\n", [M("message", "a\nb")], "", None),
    ("cr", b"data: a\rdata: b\r\r", [M("message", "a\nb")], "", None),
    ("mixed-ends", b"data: a\rdata: b\r\ndata: c\n\r\n", [M("message", "a\nb\nc")], "", None),
    ("cr-then-crlf", b"data: a\r\r\n", [M("message", "a")], "", None),
    ("lf-cr", b"data: a\n\r", [M("message", "a")], "", None),
    ("extra-blank-lines", b"\n\ndata: a\n\n\n\n", [M("message", "a")], "", None),
    ("bom", b"\xef\xbb\xbfdata: x\n\n", [M("message", "x")], "", None),
    ("bom-only", b"\xef\xbb\xbf", [], "", None),
    ("two-boms", b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", [], "", None),
    ("bom-later", b"data: x\n\n\xef\xbb\xbfdata: y\n\n", [M("message", "x")], "", None),
    ("bom-in-value", b"data: \xef\xbb\xbfx\n\n", [M("message", "\ufeffx")], "", None),
    ("almost-bom", b"\xef\xbbdata: x\n\ndata: y\n\n", [M("message", "y")], "", None),
    ("short-almost-bom", b"\xefdata: x\n\ndata: y\n\n", [M("message", "y")], "", None),
    (
        "utf8",
        "data: h\u00e9 \u20ac \U0001f600\n\n".encode(),
        [M("message", "h\u00e9 \u20ac \U0001f600")],
        "",
        None,
    ),
    ("invalid-utf8", b"data: a\xffb\n\n", [M("message", "a\ufffdb")], "", None),
    ("truncated-utf8", b"data: \xe2\x82\n\n", [M("message", "\ufffd")], "", None),
    (
        "truncated-utf8-lines",
        b"data: \xe2\x82\ndata: \xac\n\n",
        [M("message", "\ufffd\n\ufffd")],
        "",
        None,
    ),
    ("invalid-event-type", b"event: \xff\ndata: x\n\n", [M("\ufffd", "x")], "", None),
    ("invalid-id", b"id: \xff\ndata: x\n\n", [M("message", "x", "\ufffd")], "\ufffd", None),
    (
        "case-sensitive",
        b"Data: x\n\nDATA: y\n\nEvent: e\ndata: z\n\n",
        [M("message", "z")],
        "",
        None,
    ),
    ("space-before-colon", b"data : x\n\n", [], "", None),
    ("space-before-name", b" data: x\n\n", [], "", None),
    ("unknown-field", b"foo: bar\ndata: x\nfoo\n\n", [M("message", "x")], "", None),
    ("event-type", b"event: add\ndata: 1\n\n", [M("add", "1")], "", None),
    (
        "event-type-no-carry",
        b"event: add\ndata: 1\n\ndata: 2\n\n",
        [M("add", "1"), M("message", "2")],
        "",
        None,
    ),
    ("event-type-empty", b"event:\ndata: x\n\n", [M("message", "x")], "", None),
    ("event-type-no-colon", b"event\ndata: x\n\n", [M("message", "x")], "", None),
    ("event-type-reset-without-data", b"event: add\n\ndata: x\n\n", [M("message", "x")], "", None),
    ("event-type-last-wins", b"event: a\nevent: b\ndata: x\n\n", [M("b", "x")], "", None),
    ("event-type-spaces", b"event:  a b \ndata: x\n\n", [M(" a b ", "x")], "", None),
    ("event-type-after-data", b"data: x\nevent: late\n\n", [M("late", "x")], "", None),
    ("id", b"id: 1\ndata: a\n\n", [M("message", "a", "1")], "1", None),
    (
        "id-persists",
        b"id: 1\ndata: a\n\ndata: b\n\n",
        [M("message", "a", "1"), M("message", "b", "1")],
        "1",
        None,
    ),
    (
        "id-reset-empty",
        b"id: 1\ndata: a\n\nid:\ndata: b\n\n",
        [M("message", "a", "1"), M("message", "b", "")],
        "",
        None,
    ),
    (
        "id-reset-no-colon",
        b"id: 1\ndata: a\n\nid\ndata: b\n\n",
        [M("message", "a", "1"), M("message", "b", "")],
        "",
        None,
    ),
    (
        "id-with-nul-ignored",
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [M("message", "a", "1"), M("message", "b", "1")],
        "1",
        None,
    ),
    ("id-without-data", b"id: 5\n\n", [], "5", None),
    ("id-then-eof", b"id: 5\n", [], "", None),
    ("id-after-data", b"data: a\nid: 7\n\n", [M("message", "a", "7")], "7", None),
    ("id-last-wins", b"id: 1\nid: 2\ndata: a\n\n", [M("message", "a", "2")], "2", None),
    ("id-space-kept", b"id:  1\ndata: a\n\n", [M("message", "a", " 1")], " 1", None),
    ("id-no-space", b"id:1\ndata: a\n\n", [M("message", "a", "1")], "1", None),
    ("retry-alone", b"retry: 1000\n\n", [], "", 1000),
    ("retry-without-blank", b"retry: 1000\n", [], "", 1000),
    ("retry-in-event", b"retry: 1000\ndata: x\n\n", [M("message", "x", "", 1000)], "", 1000),
    (
        "retry-not-carried",
        b"retry: 5\ndata: a\n\ndata: b\n\n",
        [M("message", "a", "", 5), M("message", "b")],
        "",
        5,
    ),
    ("retry-zero", b"retry: 0\n\n", [], "", 0),
    ("retry-leading-zeros", b"retry: 007\n\n", [], "", 7),
    ("retry-negative", b"retry: -1\n\n", [], "", None),
    ("retry-plus", b"retry: +1\n\n", [], "", None),
    ("retry-float", b"retry: 1.5\n\n", [], "", None),
    ("retry-exponent", b"retry: 1e3\n\n", [], "", None),
    ("retry-empty", b"retry:\n\n", [], "", None),
    ("retry-no-colon", b"retry\n\n", [], "", None),
    ("retry-two-spaces", b"retry:  10\n\n", [], "", None),
    ("retry-trailing-space", b"retry: 10 \n\n", [], "", None),
    ("retry-underscore", b"retry: 1_000\n\n", [], "", None),
    ("retry-arabic-digits", "retry: \u0661\u0662\n\n".encode(), [], "", None),
    ("retry-fullwidth-digits", "retry: \uff11\n\n".encode(), [], "", None),
    ("retry-max", b"retry: 9223372036854775807\n\n", [], "", 2**63 - 1),
    ("retry-too-big", b"retry: 9223372036854775808\n\n", [], "", None),
    ("retry-huge", b"retry: " + b"9" * 5000 + b"\n\n", [], "", None),
    ("retry-zeros-then-small", b"retry: " + b"0" * 5000 + b"12\n\n", [], "", 12),
    ("retry-bad-keeps-old", b"retry: 10\n\nretry: x\n\n", [], "", 10),
    ("empty-data-not-dispatched", b"event: x\n\n\n\nid\n\n", [], "", None),
    ("comment", b": hi\ndata: x\n\n", [M("message", "x")], "", None),
    ("comment-bare", b":\n\n", [], "", None),
    ("comment-between-data", b"data: a\n: c\ndata: b\n\n", [M("message", "a\nb")], "", None),
    (
        "canonical",
        b"id: 1\nevent: token\ndata: {}\n\nid: 2\nevent: token\ndata: {}\n\n",
        [M("token", "{}", "1"), M("token", "{}", "2")],
        "2",
        None,
    ),
    ("canonical-pending-type", b"event: a\n\nevent: b\ndata: x\n\n", [M("b", "x")], "", None),
    (
        "canonical-after-pending-data",
        b"data: a\nid: 1\nevent: t\ndata: b\n\n",
        [M("t", "a\nb", "1")],
        "1",
        None,
    ),
    ("canonical-after-retry", b"retry: 5\nid: 1\ndata: b\n\n", [M("message", "b", "1", 5)], "1", 5),
    ("canonical-after-type", b"event: e\ndata: b\n\n", [M("e", "b")], "", None),
    ("canonical-nul-id", b"id: 1\x00\nevent: t\ndata: b\n\n", [M("t", "b")], "", None),
    ("canonical-two-data", b"id: 1\ndata: a\ndata: b\n\n", [M("message", "a\nb", "1")], "1", None),
    ("canonical-cr", b"id: 1\revent: t\rdata: a\rb\r\r", [M("t", "a", "1")], "1", None),
    ("canonical-empty-fields", b"id:\nevent:\ndata:\n\n", [M("message", "")], "", None),
    (
        "canonical-then-partial",
        b"id: 1\ndata: a\n\nid: 2\nevent: t\n",
        [M("message", "a", "1")],
        "1",
        None,
    ),
    (
        "canonical-then-comment",
        b"data: a\n\n: ping\n\ndata: b\n\n",
        [M("message", "a"), M("message", "b")],
        "",
        None,
    ),
]


@pytest.mark.parametrize(
    ("stream", "expected", "last_event_id", "retry"),
    [case[1:] for case in SPEC_CASES],
    ids=[case[0] for case in SPEC_CASES],
)
def test_spec_cases(
    stream: bytes, expected: list[Item], last_event_id: str, retry: int | None
) -> None:
    out, error, decoder = decode_every_way(stream)
    assert error is None
    assert out == expected
    assert decoder.last_event_id == last_event_id
    assert decoder.retry == retry
    assert reference(stream) == (expected, last_event_id, retry)


def test_comments_are_surfaced_on_request() -> None:
    stream = b": ping\n:\n:  two\n:x\ndata: a\n: mid\n\n"
    out, error, _ = decode_every_way(stream, comments=True)
    assert error is None
    assert out == [
        SSEComment("ping"),
        SSEComment(""),
        SSEComment(" two"),
        SSEComment("x"),
        SSEComment("mid"),
        M("message", "a"),
    ]


def test_message_defaults_and_shape() -> None:
    assert M() == M("message", "", "", None)
    message = M(data="x")
    assert (message.event, message.data, message.id, message.retry) == ("message", "x", "", None)
    with pytest.raises(AttributeError):
        message.data = "y"  # type: ignore[misc]


def test_message_is_dispatched_when_its_line_ends_not_later() -> None:
    # A CR ends a line at once: the event must not wait for the next chunk.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [M("message", "a")]
    assert decoder.feed(b"\ndata: b\n") == []  # that LF ended the CR's line, not a new one
    assert decoder.feed(b"\n") == [M("message", "b")]


def test_lf_after_split_crlf_is_not_an_empty_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [M("message", "a")]


def test_one_event_per_chunk() -> None:
    # The live case: the server flushes every event, so each chunk is one event.
    events = [
        sse.encode_message("a", id=1, event="token"),
        sse.encode_message("b", id=2, event="token"),
        sse.encode_message("c"),
        b"event: e\n",
        sse.encode_message("d"),
        sse.encode_message("e", id=""),
        b"data: f\r\n\r\n",
        b": ping\n\n",
        b"data: g\n\ndata: h\n\n",
        b"id: 1\x00\ndata: i\n\n",
    ]
    decoder = SSEDecoder()
    out = [decoder.feed(chunk) for chunk in events]
    assert out == [
        [M("token", "a", "1")],
        [M("token", "b", "2")],
        [M("message", "c", "2")],
        [],
        [M("e", "d", "2")],
        [M("message", "e", "")],
        [M("message", "f", "")],
        [],
        [M("message", "g", ""), M("message", "h", "")],
        [M("message", "i", "")],
    ]
    assert decoder.line == 27
    assert reference(b"".join(events))[0] == [m for ms in out for m in ms]


def test_many_event_types() -> None:
    # Event types are decoded once and remembered, up to a bound.
    stream = b"".join(sse.encode_message("d", event=f"t{i % 100}") for i in range(300))
    for chunks in ([stream], [stream[i : i + 15] for i in range(0, len(stream), 15)]):
        decoder = SSEDecoder()
        out = [m for chunk in chunks for m in decoder.feed(chunk)]
        assert [m.event for m in out] == [f"t{i % 100}" for i in range(300)]
    live = SSEDecoder()
    live.feed(b"\n")
    for i in range(100):
        assert live.feed(sse.encode_message("d", event=f"u{i}")) == [M(f"u{i}", "d")]


def test_incomplete_event_is_discarded_at_eof() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\nid: 9\n") == [M("message", "a")]
    assert decoder.feed_eof() == []
    assert decoder.last_event_id == ""


def test_starting_last_event_id() -> None:
    decoder = SSEDecoder(last_event_id="41")
    assert decoder.last_event_id == "41"
    assert decoder.feed(b"data: a\n\nid: 42\ndata: b\n\n") == [
        M("message", "a", "41"),
        M("message", "b", "42"),
    ]
    for bad in ("a\nb", "a\x00", "\r"):
        with pytest.raises(sk.ValidationError) as info:
            SSEDecoder(last_event_id=bad)
        assert info.value.field == "last_event_id"


def test_line_counter() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 1\nevent: t\ndata: a\n\n")
    assert decoder.line == 4
    decoder.feed(b": c\r\ndata: b\r\n\r\npartial")
    assert decoder.line == 7


def test_bytearray_and_memoryview_are_accepted() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(bytearray(b"data: a\n")) == []
    assert decoder.feed(memoryview(b"\n")) == [M("message", "a")]


def test_misuse_is_a_local_error() -> None:
    decoder = SSEDecoder()
    with pytest.raises(sk.ValidationError) as info:
        decoder.feed("data: x\n\n")  # type: ignore[arg-type]
    assert info.value.field == "data"
    assert decoder.feed_eof() == []
    with pytest.raises(sk.ClosedError):
        decoder.feed(b"data: x\n\n")
    with pytest.raises(sk.ClosedError):
        decoder.feed_eof()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"comments": 1}, "comments"),
        ({"max_line_size": 0}, "max_line_size"),
        ({"max_line_size": "1"}, "max_line_size"),
        ({"max_event_size": 0}, "max_event_size"),
        ({"last_event_id": 1}, "last_event_id"),
    ],
)
def test_bad_options(options: dict[str, Any], field: str) -> None:
    with pytest.raises(sk.ValidationError) as info:
        SSEDecoder(**options)
    assert info.value.field == field


# --- decoder: bounds -------------------------------------------------------------------


def test_line_at_the_bound_passes_and_one_more_byte_fails() -> None:
    line = b"data: " + b"x" * 14  # 20 bytes
    out, error, _ = decode_every_way(line + b"\n\n", max_line_size=20)
    assert (out, error) == ([M("message", "x" * 14)], None)
    out, error, _ = decode_every_way(b"data: a\n\n" + line + b"y\n\n", max_line_size=20)
    assert out == [M("message", "a")]
    assert isinstance(error, sk.RemoteProtocolError)
    assert error.line == 3
    assert "max_line_size" in str(error)


def test_long_line_fails_before_its_end_arrives() -> None:
    decoder = SSEDecoder(max_line_size=10)
    assert decoder.feed(b"data: a\n\n: 45678") == [M("message", "a")]
    with pytest.raises(sk.RemoteProtocolError) as info:
        decoder.feed(b"9abc")  # 11 bytes and no line end yet
    assert info.value.line == 3
    with pytest.raises(sk.RemoteProtocolError) as again:
        decoder.feed(b"\n\n")
    assert again.value.line == 3
    assert again.value.__cause__ is info.value
    with pytest.raises(sk.RemoteProtocolError):
        decoder.feed_eof()


def test_long_unterminated_tail_in_a_chunk_fails() -> None:
    decoder = SSEDecoder(max_line_size=10)
    assert decoder.feed(b"data: a\n\ndata: 0123456789") == [M("message", "a")]
    with pytest.raises(sk.RemoteProtocolError) as info:
        decoder.feed(b"")
    assert info.value.line == 3


@pytest.mark.parametrize(
    "stream",
    [
        b": " + b"c" * 30 + b"\ndata: a\n\n",  # a comment
        b"foo: " + b"f" * 30 + b"\ndata: a\n\n",  # an unknown field
        b"id: " + b"1" * 30 + b"\ndata: a\n\n",
        b"id: 1\nevent: " + b"t" * 30 + b"\ndata: a\n\n",
    ],
)
def test_line_bound_applies_to_every_line(stream: bytes) -> None:
    out, error, _ = decode_every_way(stream, max_line_size=20)
    assert out == []
    assert isinstance(error, sk.RemoteProtocolError)
    assert error.line == (1 if not stream.startswith(b"id: 1\n") else 2)


def test_event_size_counts_data_lines_with_framing() -> None:
    # Each data line counts its value and 6 bytes: 3 lines of 2 bytes make 24.
    stream = b"data: ab\ndata: cd\ndata: ef\n\n"
    out, error, _ = decode_every_way(stream, max_event_size=24)
    assert (out, error) == ([M("message", "ab\ncd\nef")], None)
    out, error, _ = decode_every_way(b"data: 1\n\n" + stream, max_event_size=23)
    assert out == [M("message", "1")]
    assert isinstance(error, sk.RemoteProtocolError)
    assert error.line == 5
    assert "max_event_size" in str(error)


def test_event_size_is_per_event_and_ignores_comments() -> None:
    stream = b"data: abcd\n\n" * 5 + (b": " + b"c" * 10 + b"\n") * 5 + b"data: abcd\n\n"
    out, error, _ = decode_every_way(stream, max_event_size=10, max_line_size=100)
    assert error is None
    assert out == [M("message", "abcd")] * 6


def test_many_small_events_with_small_bounds_stay_exact() -> None:
    # The fast paths step aside when a run of events is longer than the bounds.
    stream = b"".join(sse.encode_message(f"m{i}", id=i, event="t") for i in range(200))
    stream += b": ping\n\n" + stream
    out, error, _ = decode_every_way(stream, max_line_size=40, max_event_size=40)
    assert error is None
    assert out == reference(stream)[0]
    assert len(out) == 400


def test_large_chunk_with_scattered_other_lines() -> None:
    # Canonical events read in runs between comments, retries and multi-line events.
    parts = []
    for i in range(3000):
        parts.append(sse.encode_message(f"m{i}", id=i, event="token"))
        if i % 7 == 0:
            parts.append(b": ping\n\n")
        if i % 11 == 0:
            parts.append(sse.encode_message(f"a\nb{i}", retry=i))
    stream = b"".join(parts)
    out, error = run(SSEDecoder(max_line_size=64, max_event_size=100), [stream])
    assert error is None
    assert out == reference(stream)[0]
    assert len(out) == 3000 + 273


def test_a_large_event_in_one_byte_chunks_is_linear() -> None:
    # A quadratic decoder (rescanning or copying its buffer per chunk) would copy about
    # 2 TB here and take hours; the per-test timeout bounds it. No timing figure is
    # asserted. (2 MiB, not more: a linear decoder takes seconds even under coverage
    # on a loaded machine.)
    size = 2 * 1024 * 1024
    stream = b"data: " + b"x" * size + b"\n\n"
    decoder = SSEDecoder(max_line_size=size + 10, max_event_size=size + 10)
    feed = decoder.feed
    view = memoryview(stream)
    out: list[SSEMessage] = []
    for i in range(len(stream)):
        out += feed(view[i : i + 1])
    assert len(out) == 1
    assert len(out[0].data) == size


# --- decoder: generated streams against the reference -----------------------------------

atoms = st.sampled_from(
    [
        b"data",
        b"data:",
        b"data: x",
        b"data:  y",
        b"data: {}",
        b"id: 1",
        b"id: 2",
        b"id:",
        b"id",
        b"id: a\x00b",
        b"event: e",
        b"event: token",
        b"event:",
        b"retry: 10",
        b"retry: x",
        b":c",
        b": ping",
        b"",
        b"",
        b"Data: z",
        b"\xef\xbb\xbfdata: q",
        b"data: \xff\xe2\x82",
        b"data: \xe2\x82\xac",
        b"id: 7\nevent: token\ndata: {}\n",
        b"data: canonical\n",
        b"id:3\nevent:t\ndata:c\n",
    ]
) | st.binary(max_size=6)
line_ends = st.sampled_from([b"\n", b"\n", b"\r", b"\r\n"])
streams = st.builds(
    lambda bom, lines, tail: bom + b"".join(a + e for a, e in lines) + tail,
    st.sampled_from([b"", b"", b"\xef\xbb\xbf", b"\xef\xbb"]),
    st.lists(st.tuples(atoms, line_ends), max_size=40),
    st.sampled_from([b"", b"data: tail", b"\r"]),
)


def random_chunks(data: st.DataObject, stream: bytes) -> list[bytes]:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@given(streams, st.data(), st.booleans())
def test_decoder_matches_the_reference(stream: bytes, data: st.DataObject, comments: bool) -> None:
    decoder = SSEDecoder(comments=comments, last_event_id="0")
    out, error = run(decoder, random_chunks(data, stream))
    assert error is None
    assert (out, decoder.last_event_id, decoder.retry) == reference(
        stream, comments=comments, last_event_id="0"
    )


@given(streams, st.data(), st.integers(1, 30), st.integers(1, 30))
def test_bounds_do_not_depend_on_chunking(
    stream: bytes, data: st.DataObject, max_line: int, max_event: int
) -> None:
    options: dict[str, Any] = {"max_line_size": max_line, "max_event_size": max_event}
    out, error = run(SSEDecoder(**options), [stream])
    split_out, split_error = run(SSEDecoder(**options), random_chunks(data, stream))
    assert split_out == out
    assert repr(split_error) == repr(error)
    assert getattr(split_error, "line", None) == getattr(error, "line", None)
    if error is None:  # without an error, the bounds change nothing
        assert out == reference(stream)[0]


# --- round trips ----------------------------------------------------------------------

wire_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00"))
messages = st.lists(
    st.tuples(
        st.text(st.characters(blacklist_categories=["Cs"])),  # data: anything
        st.none() | wire_text.filter(bool),  # event
        st.none() | wire_text | st.integers(min_value=0),  # id
        st.none() | st.integers(min_value=0, max_value=2**63 - 1),  # retry
        st.none() | st.text(st.characters(blacklist_categories=["Cs"])),  # comment
    ),
    max_size=8,
)


@given(messages, st.data())
def test_encode_message_round_trips(items: list[Any], data: st.DataObject) -> None:
    stream = b"".join(
        sse.encode_message(d, event=e, id=i, retry=r, comment=c) for d, e, i, r, c in items
    )
    expected = []
    last_id = ""
    for d, e, i, r, _ in items:
        if i is not None:
            last_id = str(i)
        expected.append(M(e or "message", d.replace("\r\n", "\n").replace("\r", "\n"), last_id, r))
    decoder = SSEDecoder()
    out, error = run(decoder, random_chunks(data, stream))
    assert error is None
    assert out == expected
    assert decoder.last_event_id == last_id


@given(st.lists(st.text(st.characters(blacklist_categories=["Cs"])), max_size=5), st.data())
def test_comments_round_trip(notes: list[str], data: st.DataObject) -> None:
    stream = b"".join(sse.encode_comment(note) for note in notes)
    decoder = SSEDecoder(comments=True)
    out, error = run(decoder, random_chunks(data, stream))
    assert error is None
    expected = [
        SSEComment(line)
        for note in notes
        for line in note.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    ]
    assert out == expected


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
    stream = b"".join(sse.encode(event) for event in events)
    decoder = SSEDecoder()
    out, error = run(decoder, random_chunks(data, stream))
    assert error is None
    assert [message.to_event() for message in out] == events
    assert [message.event for message in out] == [str(event.event_type) for event in events]
    last_id = ""
    for event, message in zip(events, out, strict=True):
        if event.seq is not None:
            last_id = str(event.seq)
        assert message.id == last_id


@given(st.lists(stream_events, max_size=8), st.data())
def test_content_only_round_trip(events: list[sk.StreamEvent], data: st.DataObject) -> None:
    stream = b"".join(sse.encode(event, data="content") for event in events)
    out, error = run(SSEDecoder(), random_chunks(data, stream))
    assert error is None
    assert [m.data for m in out] == [
        e.content.replace("\r\n", "\n").replace("\r", "\n") for e in events
    ]


def test_message_that_is_not_an_event() -> None:
    with pytest.raises(sk.RemoteProtocolError, match="not a stream event") as info:
        M("token", '{"event_type": "token"}', "4").to_event()
    assert isinstance(info.value.__cause__, sk.ValidationError)
    with pytest.raises(sk.RemoteProtocolError):
        M("message", "not json").to_event()


# --- async helpers ----------------------------------------------------------------------


class chunks_of:
    """An async iterator over ``parts`` (a class: nothing is left for the GC to close)."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = list(parts)

    def __aiter__(self) -> chunks_of:
        return self

    async def __anext__(self) -> bytes:
        await anyio.lowlevel.checkpoint()
        if not self.parts:
            raise StopAsyncIteration
        return self.parts.pop(0)


async def test_aiter_sse() -> None:
    got = [m async for m in sse.aiter_sse(chunks_of(b"data: a\n", b"\nid: 1\ndata: b\n\ndata: c"))]
    assert got == [M("message", "a"), M("message", "b", "1")]
    with_comments = [
        m async for m in sse.aiter_sse(chunks_of(b": hi\n", b"data: a\n\n"), comments=True)
    ]
    assert with_comments == [SSEComment("hi"), M("message", "a")]


async def test_aiter_sse_raises_for_bad_bytes_after_the_good_ones() -> None:
    messages = sse.aiter_sse(
        chunks_of(b"data: a\n\ndata: " + b"x" * 50 + b"\n\n"), max_line_size=20
    )
    assert await anext(messages) == M("message", "a")
    with pytest.raises(sk.RemoteProtocolError):
        await anext(messages)


async def test_aiter_events() -> None:
    events = [fixed_event(seq=1), fixed_event(seq=2, event_type="complete", content="")]
    stream = b"".join(sse.encode(e) for e in events)
    got = [e async for e in sse.aiter_events(chunks_of(stream[:7], stream[7:]))]
    assert got == events
    with pytest.raises(sk.RemoteProtocolError):
        async for _ in sse.aiter_events(chunks_of(b"data: nope\n\n")):
            pass
    with pytest.raises(sk.ValidationError):
        sse.aiter_events(chunks_of(), max_line_size=0)


# --- the reconnecting client ------------------------------------------------------------


class FakeResponse:
    def __init__(
        self,
        status_code: int = 200,
        body: Sequence[bytes | BaseException] = (),
        headers: Mapping[str, str] | None = None,
        *,
        hang: anyio.Event | None = None,
    ) -> None:
        self.status_code = status_code
        self.headers = {"content-type": "text/event-stream"} if headers is None else headers
        self.body = body
        self.hang = hang

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for part in self.body:
            await anyio.lowlevel.checkpoint()
            if isinstance(part, BaseException):
                raise part
            yield part
        if self.hang is not None:
            await self.hang.wait()


class FakeServer:
    """A scripted fetch: each call takes the next response (or raises the next error)."""

    def __init__(self, *script: FakeResponse | BaseException) -> None:
        self.script = list(script)
        self.requests: list[dict[str, str]] = []
        self.open = 0
        self.closed = 0

    @asynccontextmanager
    async def fetch(self, url: str, headers: Mapping[str, str]) -> AsyncIterator[FakeResponse]:
        assert url == "http://test/events"
        self.requests.append(dict(headers))
        step = self.script.pop(0) if self.script else FakeResponse(204)
        if isinstance(step, BaseException):
            raise step
        self.open += 1
        try:
            yield step
        finally:
            self.closed += 1


class Clock:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await anyio.lowlevel.checkpoint()


def client(server: FakeServer, clock: Clock, **options: Any) -> sse.EventSource:
    options = {"jitter": 0.0, "min_delay": 0.0, **options}
    return sse.connect("http://test/events", fetch=server.fetch, sleep=clock.sleep, **options)


async def test_connect_resumes_with_last_event_id_until_204() -> None:
    server = FakeServer(
        FakeResponse(body=[b"id: 1\ndata: a\n\n", b"id: 2\ndata: b\n\nid: 3\n"]),
        FakeResponse(body=[b"data: c\n\n"]),
        FakeResponse(204),
    )
    clock = Clock()
    with anyio.fail_after(5):
        async with client(server, clock, delay=1.5) as source:
            assert source.url == "http://test/events"
            got = []
            async for message in source:
                got.append(message)
                assert source.last_event_id == message.id
    assert got == [M("message", "a", "1"), M("message", "b", "2"), M("message", "c", "2")]
    assert server.requests[0] == {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    assert server.requests[1]["Last-Event-ID"] == "2"
    assert server.requests[2]["Last-Event-ID"] == "2"
    assert clock.waits == [1.5, 1.5]
    assert source.connections == 2
    assert source.last_event_id == "2"
    assert server.open == server.closed == 3  # the 204 too


async def test_connect_honours_retry_within_floor_and_ceiling() -> None:
    server = FakeServer(
        FakeResponse(body=[b"retry: 250\ndata: a\n\n"]),
        FakeResponse(body=[b"retry: 1\ndata: b\n\n"]),
        FakeResponse(body=[b"retry: 99999999\ndata: c\n\n"]),
        FakeResponse(body=[b"retry: 1000\n\n"]),  # takes effect though nothing is dispatched
    )
    clock = Clock()
    async with client(server, clock, min_delay=0.1, max_delay=30) as source:
        initial = source.retry
        assert initial is None
        first = await anext(source)
        assert (first.data, source.retry) == ("a", 250)
        got = [first.data] + [m.data async for m in source]
        assert source.retry == 1000
    assert got == ["a", "b", "c"]
    assert clock.waits[:3] == [0.25, 0.1, 30]
    assert clock.waits[3] == 1.0 * 2  # that connection gave no message: backoff


async def test_connect_backs_off_on_failures_and_resets_after_success() -> None:
    server = FakeServer(
        OSError("refused"),
        sk.Disconnected("reset"),
        FakeResponse(503),
        FakeResponse(body=[b"data: a\n\n", sk.Disconnected("dropped")]),
        FakeResponse(),  # ends at once, without a message
    )
    clock = Clock()
    async with client(server, clock, delay=1.0, backoff=3.0, max_delay=20.0) as source:
        got = [m.data async for m in source]
        assert source.retry is None
    assert got == ["a"]
    # three failures in a row: 3, 9, 27 capped at 20; the dropped connection had given a
    # message, which resets the count (1); the empty one did not (3)
    assert clock.waits == [3.0, 9.0, 20.0, 1.0, 3.0]


async def test_connect_jitter_stays_within_its_fraction() -> None:
    draws = iter([0.0, 1.0, 0.5])
    server = FakeServer(OSError(), OSError(), OSError())
    clock = Clock()
    async with client(
        server, clock, delay=10.0, backoff=1.0, jitter=0.25, random=lambda: next(draws)
    ) as source:
        assert [m async for m in source] == []
    assert clock.waits == [7.5, 12.5, 10.0]


async def test_connect_default_jitter_and_sleep() -> None:
    server = FakeServer(OSError())
    async with sse.connect(
        "http://test/events", fetch=server.fetch, delay=0.001, min_delay=0.0, max_delay=0.002
    ) as source:
        with anyio.fail_after(5):
            assert [m async for m in source] == []
    assert len(server.requests) == 2


async def test_connect_gives_up_after_max_retries() -> None:
    cause = OSError("refused")
    server = FakeServer(cause, OSError(), OSError())
    clock = Clock()
    async with client(server, clock, max_retries=2) as source:
        with pytest.raises(sk.Disconnected, match="3 attempts") as info:
            async for _ in source:
                pass
    assert info.value.__cause__ is not cause  # the last failure is the cause
    assert isinstance(info.value.__cause__, OSError)
    assert len(server.requests) == 3
    server = FakeServer(FakeResponse(), FakeResponse())
    async with client(server, clock, max_retries=1) as source:
        with pytest.raises(sk.Disconnected, match="without an event"):
            async for _ in source:
                pass


@pytest.mark.parametrize(
    "response",
    [
        FakeResponse(404),
        FakeResponse(401),
        FakeResponse(200, headers={"content-type": "text/html"}),
        FakeResponse(200, headers={}),
    ],
)
async def test_connect_stops_on_a_fatal_answer(response: FakeResponse) -> None:
    server = FakeServer(response)
    async with client(server, Clock()) as source:
        with pytest.raises(sk.RemoteProtocolError, match=r"HTTP|Content-Type"):
            async for _ in source:
                pass
        assert [m async for m in source] == []  # closed
    assert server.open == server.closed == 1


async def test_connect_finds_headers_in_any_case() -> None:
    headers = {"X-Other": "1", "Content-Type": "Text/Event-Stream; charset=utf-8"}
    server = FakeServer(FakeResponse(body=[b"data: a\n\n"], headers=headers))
    async with client(server, Clock()) as source:
        assert [m.data async for m in source] == ["a"]


async def test_connect_stops_on_bad_bytes() -> None:
    server = FakeServer(FakeResponse(body=[b"data: " + b"x" * 100 + b"\n\n"]))
    async with client(server, Clock(), max_line_size=50) as source:
        with pytest.raises(sk.RemoteProtocolError):
            async for _ in source:
                pass
    assert server.open == server.closed == 1


async def test_connect_events_end_after_the_final_event() -> None:
    events = [
        fixed_event(seq=1),
        fixed_event(seq=2, event_type="complete", content=""),
        fixed_event(seq=3),
    ]
    server = FakeServer(
        FakeResponse(body=[sse.encode(events[0])]),
        FakeResponse(body=[sse.encode(events[1]) + sse.encode(events[2])], hang=anyio.Event()),
    )
    clock = Clock()
    async with client(server, clock, last_event_id="0") as source:
        got = [event async for event in source.events()]
        assert server.open == server.closed == 2  # closed without waiting for the exit
    assert got == events[:2]
    assert server.requests[0]["Last-Event-ID"] == "0"
    assert server.requests[1]["Last-Event-ID"] == "1"


async def test_connect_closes_the_response_when_left_early() -> None:
    server = FakeServer(FakeResponse(body=[b"data: a\n\n"], hang=anyio.Event()))
    async with client(server, Clock()) as source:
        async for _ in source:
            break
        assert server.closed == 0
    assert server.open == server.closed == 1


async def test_connect_closes_the_response_when_cancelled() -> None:
    server = FakeServer(FakeResponse(body=[b"data: a\n\n"], hang=anyio.Event()))
    got: list[SSEMessage] = []
    with anyio.CancelScope() as scope:
        async with client(server, Clock()) as source:
            async for message in source:
                got.append(message)
                scope.cancel()
    assert scope.cancelled_caught
    assert got == [M("message", "a")]
    assert server.open == server.closed == 1


async def test_connect_lets_other_errors_through() -> None:
    server = FakeServer(FakeResponse(body=[b"data: a\n\n", KeyError("bug")]))
    async with client(server, Clock()) as source:
        with pytest.raises(KeyError):
            async for _ in source:
                pass
    assert server.open == server.closed == 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"url": ""}, "url"),
        ({"url": None}, "url"),
        ({"fetch": "x"}, "fetch"),
        ({"headers": [("a", "b")]}, "headers"),
        ({"headers": {"a b": "c"}}, "headers"),
        ({"headers": {"a\n": "c"}}, "headers"),
        ({"headers": {"a": "b\r\nEvil: 1"}}, "headers['a']"),
        ({"headers": {"a": 1}}, "headers['a']"),
        ({"headers": {"last-event-id": "1"}}, "headers"),
        ({"last_event_id": "1\n"}, "last_event_id"),
        ({"last_event_id": None}, "last_event_id"),
        ({"delay": -1}, "delay"),
        ({"min_delay": -1}, "min_delay"),
        ({"max_delay": "1"}, "max_delay"),
        ({"min_delay": 5, "max_delay": 1}, "min_delay"),
        ({"backoff": 0.5}, "backoff"),
        ({"backoff": 1e9}, "backoff"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
        ({"max_retries": -1}, "max_retries"),
        ({"sleep": 1}, "sleep"),
        ({"random": 1}, "random"),
        ({"max_line_size": 0}, "max_line_size"),
        ({"max_event_size": 0}, "max_event_size"),
    ],
)
def test_connect_checks_its_arguments(options: dict[str, Any], field: str) -> None:
    options = {"url": "http://test/events", "fetch": FakeServer().fetch, **options}
    with pytest.raises(sk.ValidationError) as info:
        sse.connect(**options)
    assert info.value.field == field
    with pytest.raises(sk.ValidationError) as info:
        sse.EventSource(**options)
    assert info.value.field == field


def test_connect_takes_the_arguments_of_event_source() -> None:
    # The options are defined once, by EventSource; connect shows and forwards them.
    connect = inspect.signature(sse.connect)
    assert connect.parameters == inspect.signature(sse.EventSource).parameters
    assert connect.return_annotation == "EventSource"
    source = sse.connect("http://test/events", fetch=FakeServer().fetch, max_retries=2)
    assert isinstance(source, sse.EventSource)
    assert source.url == "http://test/events"


def test_the_client_is_exported_by_the_codec_module() -> None:
    for name in ("EventSource", "Fetch", "SSEResponse", "connect", "httpx_fetch"):
        assert name in sse.__all__
        assert name in dir(sse)
        assert getattr(sse, name).__module__ == "streamkit.sse"
    with pytest.raises(AttributeError, match="has no attribute 'conect'"):
        sse.conect  # type: ignore[attr-defined]  # noqa: B018


async def test_connect_sends_extra_headers() -> None:
    server = FakeServer(FakeResponse(body=[b"data: a\n\n"]))
    async with client(server, Clock(), headers={"Authorization": "Bearer t"}) as source:
        assert [m.data async for m in source] == ["a"]
    assert server.requests[0]["Authorization"] == "Bearer t"


# --- the httpx fetcher ------------------------------------------------------------------


class Body(httpx.AsyncByteStream):
    def __init__(self, parts: Sequence[bytes | Exception]) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, Exception):
                raise part
            yield part


def mock_transport(
    handler: Callable[[httpx.Request], httpx.Response], seen: list[httpx.Request]
) -> httpx.MockTransport:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.MockTransport(record)


def sse_response(*parts: bytes | Exception, status: int = 200) -> httpx.Response:
    return httpx.Response(status, headers={"content-type": "text/event-stream"}, stream=Body(parts))


async def test_httpx_fetch_streams_and_translates_errors() -> None:
    seen: list[httpx.Request] = []
    answers: Iterator[httpx.Response] = iter(
        [
            sse_response(b"id: \xc3\xa9\ndata: a\n\n", httpx.ReadError("boom")),
            sse_response(b"data: b\n\n"),
            httpx.Response(204),
        ]
    )
    transport = mock_transport(lambda request: next(answers), seen)
    async with httpx.AsyncClient(transport=transport) as http:
        source = sse.connect(
            "http://test/events", fetch=sse.httpx_fetch(http), sleep=Clock().sleep, jitter=0
        )
        async with source:
            got = [m.data async for m in source]
    assert got == ["a", "b"]
    assert seen[0].headers["accept"] == "text/event-stream"
    assert "last-event-id" not in seen[0].headers
    assert (b"Last-Event-ID", "\u00e9".encode()) in seen[1].headers.raw  # sent as UTF-8


async def test_httpx_fetch_connect_errors_are_retried() -> None:
    seen: list[httpx.Request] = []
    answers: Iterator[httpx.Response | Exception] = iter(
        [httpx.ConnectError("refused"), sse_response(b"data: a\n\n"), httpx.Response(204)]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async with httpx.AsyncClient(transport=mock_transport(handler, seen)) as http:
        source = sse.connect("http://test/events", fetch=sse.httpx_fetch(http), sleep=Clock().sleep)
        async with source:
            assert [m.data async for m in source] == ["a"]
    assert len(seen) == 3


async def test_httpx_fetch_bad_scheme_is_not_retried() -> None:
    async with httpx.AsyncClient() as http:
        source = sse.connect("ftp://test/events", fetch=sse.httpx_fetch(http))
        async with source:
            with pytest.raises(httpx.UnsupportedProtocol):
                await anext(source)


async def test_httpx_fetch_makes_its_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []
    answers = iter([sse_response(b"data: a\n\n"), httpx.Response(204)])
    transport = mock_transport(lambda request: next(answers), seen)
    made: list[httpx.AsyncClient] = []

    class Client(httpx.AsyncClient):
        def __init__(self, **options: Any) -> None:
            super().__init__(transport=transport, **options)
            made.append(self)

    monkeypatch.setattr(httpx, "AsyncClient", Client)
    async with sse.connect("http://test/events", sleep=Clock().sleep) as source:
        assert [m.data async for m in source] == ["a"]
    assert len(made) == 2
    assert all(client.is_closed for client in made)
    assert made[0].timeout.read is None
    assert made[0].timeout.connect == 10.0


def test_httpx_fetch_checks_its_client() -> None:
    with pytest.raises(sk.ValidationError) as info:
        sse.httpx_fetch(object())  # type: ignore[arg-type]
    assert info.value.field == "client"


def test_httpx_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(ImportError, match=r"streamkit\[httpx\]"):
        sse.connect("http://test/events")


def test_json_in_data_is_what_to_event_reads() -> None:
    event = fixed_event(metadata={"a": [1, 2]})
    (message,) = SSEDecoder().feed(sse.encode(event))
    assert json.loads(message.data)["metadata"] == {"a": [1, 2]}
    assert message.to_event() == event


def test_encode_message_names_the_field_with_a_lone_surrogate() -> None:
    # The fields before the bad one are checked and pass (event and id are absent).
    with pytest.raises(sk.ValidationError) as info:
        sse.encode_message("ok", comment="\ud800")
    assert info.value.field == "comment"
