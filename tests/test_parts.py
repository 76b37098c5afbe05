"""Typed parts: validation naming the field, exact round trips, carried by events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit as sk
from streamkit.parts import (
    DataPart,
    Part,
    ReasoningDelta,
    SourcePart,
    StepFinish,
    StepStart,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    Usage,
    part_from_dict,
    part_from_json,
)

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
wire = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00"),
    min_size=1,
    max_size=20,
)
counts = st.integers(min_value=0, max_value=2**40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=10,
)
data_names = st.from_regex(r"[A-Za-z0-9_\-]{1,20}", fullmatch=True)

parts = st.one_of(
    st.builds(TextDelta, text=text),
    st.builds(ReasoningDelta, text=text),
    st.builds(ToolCallStart, call_id=wire, name=wire),
    st.builds(ToolCallDelta, call_id=wire, delta=text),
    st.builds(ToolCallEnd, call_id=wire, name=st.none() | wire, arguments=json_values),
    st.builds(ToolResult, call_id=wire, output=json_values),
    st.builds(ToolResult, call_id=wire, error=text),
    st.builds(
        Usage,
        input_tokens=counts,
        output_tokens=counts,
        reasoning_tokens=counts,
        cached_tokens=counts,
    ),
    st.builds(SourcePart, source_id=wire, url=wire, title=st.none() | text),
    st.builds(SourcePart, source_id=wire, document=wire, title=st.none() | text),
    st.builds(StepStart),
    st.builds(StepFinish, finish_reason=st.none() | wire),
    st.builds(
        DataPart,
        name=data_names,
        value=json_values,
        data_id=st.none() | wire,
        transient=st.booleans(),
    ),
)


@given(parts)
def test_part_round_trips_through_dict_and_json(part: Part) -> None:
    assert part_from_dict(part.to_dict()) == part
    assert part_from_json(part.to_json()) == part
    assert part_from_dict(json.loads(json.dumps(part.to_dict()))) == part


@given(parts)
def test_part_event_round_trips(part: Part) -> None:
    event = sk.StreamEvent.from_part(part, session_id="s1")
    assert event.event_type == "part"
    assert event.part == part
    again = sk.StreamEvent.from_json(event.to_json())
    assert again == event
    assert again.part == part
    assert sk.StreamEvent.from_dict(event.to_dict()).part == part


def test_part_dict_shape() -> None:
    assert ToolCallEnd(call_id="c1", name="f", arguments={"a": [1, 2]}).to_dict() == {
        "type": "tool-call-end",
        "call_id": "c1",
        "name": "f",
        "arguments": {"a": [1, 2]},
    }
    assert DataPart(name="weather", value={"t": 1}, transient=True).to_dict() == {
        "type": "data-weather",
        "value": {"t": 1},
        "data_id": None,
        "transient": True,
    }
    assert Usage(input_tokens=3).to_dict() == {
        "type": "usage",
        "input_tokens": 3,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "cached_tokens": 0,
    }


def test_json_values_are_read_only() -> None:
    end = ToolCallEnd(call_id="c", arguments={"a": [1, {"b": 2}]})
    assert isinstance(end.arguments, type(sk.StreamEvent(event_type="start").metadata))
    with pytest.raises(TypeError):
        end.arguments["x"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        end.call_id = "d"  # type: ignore[misc]


BAD_INT: Any = 1
BAD_NONE: Any = None


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: ReasoningDelta(text=BAD_INT), "ReasoningDelta.text"),
        (lambda: ToolCallStart(call_id="a\nb", name="f"), "ToolCallStart.call_id"),
        (lambda: ToolCallStart(call_id="a", name=""), "ToolCallStart.name"),
        (lambda: ToolCallDelta(call_id="a", delta=BAD_NONE), "ToolCallDelta.delta"),
        (lambda: ToolCallEnd(call_id="a", arguments={1: 2}), "ToolCallEnd.arguments"),
        (lambda: ToolCallEnd(call_id="a", arguments=float("nan")), "ToolCallEnd.arguments"),
        (lambda: ToolResult(call_id="a", output=1, error="x"), "output"),
        (lambda: ToolResult(call_id="a", output=object()), "ToolResult.output"),
        (lambda: Usage(input_tokens=-1), "Usage.input_tokens"),
        (lambda: Usage(output_tokens=True), "Usage.output_tokens"),
        (lambda: SourcePart(source_id="s"), "url"),
        (lambda: SourcePart(source_id="s", url="u", document="d"), "url"),
        (lambda: StepFinish(finish_reason="a\rb"), "StepFinish.finish_reason"),
        (lambda: DataPart(name="a b", value=1), "DataPart.name"),
        (lambda: DataPart(name="a", transient=BAD_INT), "DataPart.transient"),
    ],
)
def test_bad_values_name_the_field(build: Any, field: str) -> None:
    with pytest.raises(sk.ValidationError) as info:
        build()
    assert info.value.field == field
    assert field.rsplit(".", maxsplit=1)[-1] in info.value.message


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "part"),
        ({}, "part.type"),
        ({"type": "nope"}, "part.type"),
        ({"type": "usage", "tokens": 1}, "part.tokens"),
        ({"type": "tool-call-start", "call_id": "a"}, "part.name"),
        ({"type": "data-x", "name": "y"}, "part.name"),
        ({"type": "data-", "value": 1}, "DataPart.name"),
    ],
)
def test_part_from_dict_rejects(data: Any, field: str) -> None:
    with pytest.raises(sk.ValidationError) as info:
        part_from_dict(data)
    assert info.value.field == field


def test_part_from_json_rejects_bad_json() -> None:
    with pytest.raises(sk.ValidationError, match="not valid JSON"):
        part_from_json("{")


def test_part_event_validates_its_part() -> None:
    with pytest.raises(sk.ValidationError) as info:
        sk.StreamEvent(event_type="part")
    assert info.value.field == "metadata.part"
    with pytest.raises(sk.ValidationError) as info:
        sk.StreamEvent(event_type="part", metadata={"part": {"type": "usage", "x": 1}})
    assert info.value.field == "part.x"
    with pytest.raises(sk.ValidationError, match="must be a Part"):
        sk.StreamEvent.from_part("text")  # type: ignore[arg-type]


def test_other_events_carry_no_part() -> None:
    event = sk.StreamEvent(event_type="token", content="hi")
    assert event.part is None
    # Today's text events keep their exact wire form.
    assert json.loads(event.to_json()).keys() == {
        "event_id",
        "event_type",
        "content",
        "timestamp",
        "metadata",
        "session_id",
        "seq",
    }


def test_usage_adds_up() -> None:
    total = Usage(input_tokens=1, output_tokens=2) + Usage(reasoning_tokens=3, cached_tokens=4)
    assert total == Usage(input_tokens=1, output_tokens=2, reasoning_tokens=3, cached_tokens=4)
    assert Usage().__add__(1) is NotImplemented  # type: ignore[operator]


def test_tool_result_failed() -> None:
    assert ToolResult(call_id="a", error="boom").failed
    assert not ToolResult(call_id="a", output={"ok": True}).failed


@pytest.mark.anyio
async def test_a_copied_part_event_gives_its_part_back() -> None:
    from streamkit._events import with_seq

    part = ToolCallEnd(call_id="c", name="f", arguments={"a": [1]})
    event = sk.StreamEvent.from_part(part)
    log = sk.InMemoryEventLog()
    stored = await log.append(event)  # a copy made without validation
    assert stored.part == part
    assert stored.part is stored.part  # parsed once
    copy = with_seq(event, 7, "s")
    assert copy.part is event.part
    assert with_seq(sk.StreamEvent(event_type="token", content="x"), 1, None).part is None
