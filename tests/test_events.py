"""StreamEvent and EventType: construction, validation, strict round-trips."""

from __future__ import annotations

import copy
import json
import math
import pickle
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit as sk
from streamkit.parts import Part, ReasoningDelta

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
event_types = st.sampled_from([t for t in sk.EventType if t != "part"]) | st.from_regex(
    r"x-[A-Za-z0-9_.:\-]{1,20}", fullmatch=True
)
ids = st.from_regex(r"[A-Za-z0-9_\-]{1,40}", fullmatch=True)


def event_strategy(
    metadata_values: st.SearchStrategy[Any], timestamps: st.SearchStrategy[float | int]
) -> st.SearchStrategy[sk.StreamEvent]:
    """Valid events whose metadata values come from ``metadata_values``."""
    return st.builds(
        sk.StreamEvent,
        event_type=event_types,
        content=st.text(alphabet=st.characters(exclude_categories=["Cs"])),
        metadata=st.dictionaries(
            st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8),
            metadata_values,
            max_size=5,
        ),
        session_id=st.none() | ids,
        seq=st.none() | st.integers(min_value=1, max_value=2**62),
        event_id=st.text(
            alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40
        ).filter(lambda s: not any(c in s for c in "\r\n\x00")),
        timestamp=timestamps,
    )


events = event_strategy(json_values, st.floats(min_value=0, max_value=4e9))


@given(events)
def test_dict_round_trip_is_lossless(event: sk.StreamEvent) -> None:
    assert sk.StreamEvent.from_dict(event.to_dict()) == event


@given(events)
def test_json_round_trip_is_lossless(event: sk.StreamEvent) -> None:
    text = event.to_json()
    assert "\n" not in text
    assert "\r" not in text
    assert sk.StreamEvent.from_json(text) == event
    assert sk.StreamEvent.from_json(text.encode()) == event


@given(events)
def test_copy_deepcopy_and_pickle_give_an_equal_event(event: sk.StreamEvent) -> None:
    for clone in (
        copy.copy(event),
        copy.deepcopy(event),
        pickle.loads(pickle.dumps(event)),
    ):
        assert clone == event
        assert clone.to_json() == event.to_json()


@pytest.mark.anyio
async def test_events_a_subscriber_gets_can_be_copied_and_pickled() -> None:
    # The streamer and the log make events on their hot path without the constructor.
    source: list[str | Part] = ["a ", ReasoningDelta(text="b")]
    got: list[sk.StreamEvent] = []
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        async with registry.subscribe(session.session_id) as subscription:
            registry.start(session.session_id, source, sk.StreamConfig(chunk_size=1))
            with anyio.fail_after(10):
                async for event in subscription:
                    got.append(event)
                    if event.is_final:
                        break
    assert [e.event_type for e in got][-1] == "complete"
    for event in got:
        for clone in (copy.copy(event), copy.deepcopy(event), pickle.loads(pickle.dumps(event))):
            assert clone == event
            assert clone.part == event.part


def test_defaults_are_filled_in() -> None:
    event = sk.StreamEvent(event_type=sk.EventType.TOKEN, content="hi")
    assert event.event_id
    assert event.timestamp > 1_600_000_000
    assert event.metadata == {}
    assert event.seq is None
    assert event.session_id is None
    other = sk.StreamEvent(event_type="token")
    assert other.event_id != event.event_id


def test_event_type_string_becomes_enum() -> None:
    event = sk.StreamEvent(event_type="complete")
    assert event.event_type is sk.EventType.COMPLETE
    assert event.is_final
    assert not sk.StreamEvent(event_type="token").is_final
    assert sk.EventType.ERROR.is_final


def test_custom_event_type_is_kept() -> None:
    event = sk.StreamEvent(event_type="x-tool-call", metadata={"name": "search"})
    assert event.event_type == "x-tool-call"
    assert not event.is_final


def test_metadata_is_read_only_and_detached() -> None:
    source: dict[str, Any] = {"a": [1, {"b": 2}]}
    event = sk.StreamEvent(event_type="metadata", metadata=source)
    source["a"].append(3)
    assert event.to_dict()["metadata"] == {"a": [1, {"b": 2}]}
    with pytest.raises(TypeError):
        event.metadata["c"] = 1  # type: ignore[index]


def test_event_is_frozen_and_hashable() -> None:
    event = sk.StreamEvent(event_type="token", content="x", metadata={"k": 1})
    with pytest.raises(AttributeError):
        event.content = "y"  # type: ignore[misc]
    assert hash(event) == hash(sk.StreamEvent.from_dict(event.to_dict()))


def test_to_json_is_compact_and_keeps_unicode() -> None:
    event = sk.StreamEvent(
        event_type="token", content="héllo\n", event_id="e1", timestamp=1.5, seq=3
    )
    assert event.to_json() == (
        '{"event_id":"e1","event_type":"token","content":"héllo\\n","timestamp":1.5,'
        '"metadata":{},"session_id":null,"seq":3}'
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_type": "bogus"}, "event_type"),
        ({"event_type": "x-"}, "event_type"),
        ({"event_type": "x-bad\ntype"}, "event_type"),
        ({"event_type": 3}, "event_type"),
        ({"event_type": ""}, "event_type"),
        ({"content": 5}, "content"),
        ({"content": None}, "content"),
        ({"content": "half \ud83d pair"}, "content"),
        ({"metadata": {"k": "\udc00"}}, "metadata.k"),
        ({"metadata": {"\udc00": 1}}, "metadata"),
        ({"timestamp": "now"}, "timestamp"),
        ({"timestamp": -1}, "timestamp"),
        ({"timestamp": math.inf}, "timestamp"),
        ({"timestamp": -1.0}, "timestamp"),
        ({"timestamp": math.nan}, "timestamp"),
        ({"metadata": {"k": {"n": "\udc00"}}}, "metadata.k.n"),
        ({"metadata": {"k": "ok", "j": math.inf}}, "metadata.j"),
        ({"timestamp": True}, "timestamp"),
        ({"metadata": []}, "metadata"),
        ({"metadata": {"x": math.nan}}, "metadata.x"),
        ({"metadata": {"x": {1: 2}}}, "metadata.x"),
        ({"metadata": {"x": object()}}, "metadata.x"),
        ({"metadata": {"x": [b"bytes"]}}, "metadata.x[0]"),
        ({"session_id": "has space"}, "session_id"),
        ({"session_id": ""}, "session_id"),
        ({"seq": -1}, "seq"),
        ({"seq": 0}, "seq"),
        ({"seq": 1.0}, "seq"),
        ({"seq": True}, "seq"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "a\rb"}, "event_id"),
        ({"event_id": "a\nb"}, "event_id"),
        ({"event_id": "a\x00b"}, "event_id"),
        ({"event_id": 7}, "event_id"),
        ({"event_id": "x" * 300}, "event_id"),
    ],
)
def test_from_dict_rejects_bad_fields(changes: dict[str, Any], field: str) -> None:
    data = {"event_id": "e1", "event_type": "token", "content": "", "timestamp": 1.0}
    data.update(changes)
    with pytest.raises(sk.ValidationError) as info:
        sk.StreamEvent.from_dict(data)
    assert info.value.field == field
    assert field.split(".", maxsplit=1)[0].split("[", maxsplit=1)[0] in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.status_hint == 400


@pytest.mark.parametrize("missing", ["event_id", "event_type", "timestamp"])
def test_from_dict_rejects_missing_fields(missing: str) -> None:
    data = {"event_id": "e1", "event_type": "token", "timestamp": 1.0}
    del data[missing]
    with pytest.raises(sk.ValidationError, match=missing) as info:
        sk.StreamEvent.from_dict(data)
    assert info.value.field == missing


def test_from_dict_rejects_unknown_fields_and_non_mappings() -> None:
    data = {"event_id": "e1", "event_type": "token", "timestamp": 1.0, "colour": "red"}
    with pytest.raises(sk.ValidationError, match="colour"):
        sk.StreamEvent.from_dict(data)
    with pytest.raises(sk.ValidationError, match="mapping"):
        sk.StreamEvent.from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        "null",
        '{"event_id":"e","event_type":"token","timestamp":NaN}',
        '{"event_id":"e","event_type":"token","timestamp":Infinity}',
        b"\xff\xfe",
        "[" * 100_000,
    ],
)
def test_from_json_rejects_bad_json(text: str | bytes) -> None:
    with pytest.raises(sk.ValidationError):
        sk.StreamEvent.from_json(text)


def test_from_json_rejects_non_text() -> None:
    with pytest.raises(sk.ValidationError, match="str or bytes"):
        sk.StreamEvent.from_json(42)  # type: ignore[arg-type]


def test_to_dict_is_plain_json_data() -> None:
    event = sk.StreamEvent(event_type="metadata", metadata={"a": [1, {"b": None}]})
    data = event.to_dict()
    assert data["metadata"] == {"a": [1, {"b": None}]}
    assert type(data["metadata"]["a"]) is list
    assert json.loads(json.dumps(data)) == data


def test_public_objects_report_the_package_module() -> None:
    assert sk.StreamEvent.__module__ == "streamkit"
    assert repr(sk.StreamEvent(event_type="token", event_id="e", timestamp=0)).startswith(
        "StreamEvent("
    )


def test_metadata_nesting_is_bounded() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(70):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(sk.ValidationError, match="deeper"):
        sk.StreamEvent(event_type="metadata", metadata=deep)


def test_error_body_without_a_field() -> None:
    assert "field" not in sk.ValidationError("bad").to_dict()


def _plain(value: Any) -> Any:
    """Metadata as the JSON encoder sees it: read-only mappings as dicts, tuples as lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def _encoder_json(event: sk.StreamEvent) -> str:
    event_type = event.event_type
    return json.dumps(
        {
            "event_id": event.event_id,
            "event_type": event_type.value if isinstance(event_type, sk.EventType) else event_type,
            "content": event.content,
            "timestamp": event.timestamp,
            "metadata": _plain(event.metadata),
            "session_id": event.session_id,
            "seq": event.seq,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


# Flat metadata (str, int and finite float values) is what to_json writes by hand; the
# other scalars and nested values go to the encoder. Both must give the same text.
flat_scalars = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
)
flat_events = event_strategy(
    flat_scalars,
    st.floats(min_value=0, max_value=4e9) | st.integers(min_value=0, max_value=2**40),
)


@given(flat_events | events)
def test_to_json_fast_path_matches_the_encoder(event: sk.StreamEvent) -> None:
    assert event.to_json() == _encoder_json(event)


# Texts whose JSON needs escapes: quotes, backslashes, control characters, line and
# paragraph separators, non-ASCII kept as it is.
_TRICKY_TOKENS = [
    'say "hi"',
    "back\\slash",
    "tab\tnew\nline\r",
    "\x00\x1f\x7f",
    "é€𝄞",
    "\u2028\u2029",
    "",
]


@pytest.mark.anyio
@pytest.mark.parametrize("metadata", [True, False])
async def test_streamer_tokens_json_matches_the_encoder(metadata: bool) -> None:
    # The streamer's tokens have a JSON writer of their own (their shape is known): the
    # same text as the encoder's, in a registry (session id and seq set) and on a bare
    # stream (neither set).
    config = sk.StreamConfig(chunk_size=1, stream_delay=0, enable_metadata=metadata)
    tokens: list[sk.StreamEvent] = []
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        async with registry.subscribe(session.session_id) as subscription:
            registry.start(session.session_id, list(_TRICKY_TOKENS), config)
            with anyio.fail_after(10):
                tokens += [e async for e in subscription if e.event_type == sk.EventType.TOKEN]
    async with sk.stream_tokens(list(_TRICKY_TOKENS), config) as stream:
        tokens += [e async for e in stream if e.event_type == sk.EventType.TOKEN]
    assert [e.content for e in tokens] == [t for t in _TRICKY_TOKENS if t] * 2
    assert all(e.seq is not None for e in tokens[:6])
    assert all(e.seq is None for e in tokens[6:])
    for event in tokens:
        assert event.to_json() == _encoder_json(event)
        assert sk.StreamEvent.from_json(event.to_json()) == event
        assert bool(event.metadata) is metadata
