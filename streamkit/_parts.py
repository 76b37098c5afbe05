"""Typed parts of an assistant message: what an agent's stream carries besides text.

A source may yield these instead of (or between) plain ``str`` pieces; the streamer
chunks the deltas and puts every other part on a ``part`` event of its own (see
:class:`~streamkit.StreamEvent`'s ``part``). Each part is a frozen, slotted attrs
class, checked when built: a bad value raises :class:`~streamkit.ValidationError`
naming the part and the field. ``to_dict`` / :func:`part_from_dict` (and the JSON
forms) round-trip every part exactly.

Rules of this module: a part's dict is ``{"type": <type>, <field>: <value>, ...}``
with every field present (``None`` included), so that the JSON of a part is one fixed
shape per type; JSON values (tool arguments and outputs, app data) are stored
read-only (mappings and tuples) and thawed to plain ``dict``/``list`` by ``to_dict``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Final, TypeAlias

import attrs

from ._errors import ValidationError
from ._validate import (
    JSONValue,
    check_bool,
    check_int,
    check_str,
    check_wire_str,
    freeze_json,
    thaw_json,
    type_name,
)

__all__ = [
    "DataPart",
    "Part",
    "ReasoningDelta",
    "SourcePart",
    "StepFinish",
    "StepStart",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolResult",
    "Usage",
    "part_from_dict",
    "part_from_json",
]

_DATA_NAME_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def _where(inst: object, attribute: attrs.Attribute[Any]) -> str:
    return f"{type(inst).__name__}.{attribute.name}"


def _v_text(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_str(_where(inst, attribute), value)


def _v_wire(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_wire_str(_where(inst, attribute), value)


def _v_opt_wire(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_wire_str(_where(inst, attribute), value, max_len=attribute.metadata.get("max", 256))


def _v_opt_text(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_str(_where(inst, attribute), value)


def _v_count(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_int(_where(inst, attribute), value, minimum=0)


def _v_bool(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_bool(_where(inst, attribute), value)


# JSON values are checked and stored read-only (mappings and tuples). Named converters,
# one per field, so that the error names the field and type checkers see `object`.
def _freeze_arguments(value: object) -> JSONValue:
    return freeze_json("ToolCallEnd.arguments", value)


def _freeze_output(value: object) -> JSONValue:
    return freeze_json("ToolResult.output", value)


def _freeze_value(value: object) -> JSONValue:
    return freeze_json("DataPart.value", value)


class Part:
    """Base class of every part; ``type`` is the part's name on the wire."""

    __slots__ = ()
    type: ClassVar[str]
    #: Whether the streamer chunks and coalesces parts of this type.
    is_delta: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        """Return the part as plain JSON-ready data: ``type`` and every field."""
        data: dict[str, Any] = {"type": self.type}
        for field in attrs.fields(type(self)):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            data[field.name] = thaw_json(value) if field.metadata.get("json") else value
        return data

    def _frozen_dict(self) -> dict[str, Any]:
        # The dict of to_dict() with the stored (read-only) JSON values: for events.
        data: dict[str, Any] = {"type": self.type}
        for field in attrs.fields(type(self)):  # type: ignore[arg-type]
            data[field.name] = getattr(self, field.name)
        return data

    def to_json(self) -> str:
        """Return the part as compact JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


@attrs.frozen(kw_only=True)
class TextDelta(Part):
    """A piece of the answer's text. A plain ``str`` from a source is the same thing.

    Attributes:
        text: The text.
    """

    type: ClassVar[str] = "text-delta"
    is_delta: ClassVar[bool] = True
    text: str = attrs.field(validator=_v_text)


@attrs.frozen(kw_only=True)
class ReasoningDelta(Part):
    """A piece of the model's reasoning (thinking, or a reasoning summary).

    Attributes:
        text: The text.
    """

    type: ClassVar[str] = "reasoning-delta"
    is_delta: ClassVar[bool] = True
    text: str = attrs.field(validator=_v_text)


@attrs.frozen(kw_only=True)
class ToolCallStart(Part):
    """The model begins a call of a tool; its arguments follow as deltas.

    Attributes:
        call_id: The call's id, unique in the stream (no CR, LF or NUL).
        name: The tool's name.
    """

    type: ClassVar[str] = "tool-call-start"
    call_id: str = attrs.field(validator=_v_wire)
    name: str = attrs.field(validator=_v_wire)


@attrs.frozen(kw_only=True)
class ToolCallDelta(Part):
    """A piece of a tool call's arguments (JSON text, cut anywhere).

    Attributes:
        call_id: The call the piece belongs to (started by a :class:`ToolCallStart`).
        delta: The piece of JSON text.
    """

    type: ClassVar[str] = "tool-call-delta"
    is_delta: ClassVar[bool] = True
    call_id: str = attrs.field(validator=_v_wire)
    delta: str = attrs.field(validator=_v_text)


@attrs.frozen(kw_only=True)
class ToolCallEnd(Part):
    """A tool call is complete: its whole arguments, parsed.

    A source may leave ``arguments`` (and ``name``) out: the streamer fills them from
    the call's start and its deltas (``{}`` when there were none), so every
    ``tool-call-end`` a stream delivers carries the complete arguments.

    Attributes:
        call_id: The call's id.
        name: The tool's name (``None``: filled by the streamer).
        arguments: The arguments as JSON data (``None``: parsed by the streamer from
            the deltas).
    """

    type: ClassVar[str] = "tool-call-end"
    call_id: str = attrs.field(validator=_v_wire)
    name: str | None = attrs.field(default=None, validator=_v_opt_wire)
    arguments: JSONValue = attrs.field(
        default=None, converter=_freeze_arguments, metadata={"json": True}
    )


@attrs.frozen(kw_only=True)
class ToolResult(Part):
    """What a tool call returned: an output, or an error.

    Attributes:
        call_id: The call's id.
        output: The tool's output as JSON data (``None`` when it failed).
        error: The error message when the tool failed, else ``None``.
    """

    type: ClassVar[str] = "tool-result"
    call_id: str = attrs.field(validator=_v_wire)
    output: JSONValue = attrs.field(default=None, converter=_freeze_output, metadata={"json": True})
    error: str | None = attrs.field(default=None, validator=_v_opt_text)

    def __attrs_post_init__(self) -> None:
        if self.error is not None and self.output is not None:
            raise ValidationError(
                "ToolResult.output must be None when ToolResult.error is set", field="output"
            )

    @property
    def failed(self) -> bool:
        """Whether the tool failed (``error`` is set)."""
        return self.error is not None


@attrs.frozen(kw_only=True)
class Usage(Part):
    """Tokens the model reports having used (counts, not the stream's pieces).

    Attributes:
        input_tokens: Prompt tokens.
        output_tokens: Generated tokens (reasoning included, as the providers count).
        reasoning_tokens: Of the output tokens, those spent reasoning.
        cached_tokens: Of the input tokens, those read from the provider's cache.
    """

    type: ClassVar[str] = "usage"
    input_tokens: int = attrs.field(default=0, validator=_v_count)
    output_tokens: int = attrs.field(default=0, validator=_v_count)
    reasoning_tokens: int = attrs.field(default=0, validator=_v_count)
    cached_tokens: int = attrs.field(default=0, validator=_v_count)

    def __add__(self, other: Usage) -> Usage:
        """Return the sum of two usages (a session's total over its streams)."""
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


@attrs.frozen(kw_only=True)
class SourcePart(Part):
    """A source the answer cites: a URL or a document.

    Attributes:
        source_id: The source's id in the stream.
        url: The URL, for a web source.
        document: The document's name or id, for a document source.
        title: A title to show, if any.
    """

    type: ClassVar[str] = "source"
    source_id: str = attrs.field(validator=_v_wire)
    url: str | None = attrs.field(default=None, validator=_v_opt_wire, metadata={"max": 8192})
    document: str | None = attrs.field(default=None, validator=_v_opt_wire, metadata={"max": 1024})
    title: str | None = attrs.field(default=None, validator=_v_opt_text)

    def __attrs_post_init__(self) -> None:
        if (self.url is None) == (self.document is None):
            raise ValidationError("SourcePart needs exactly one of url and document", field="url")


@attrs.frozen(kw_only=True)
class StepStart(Part):
    """A step of the agent begins (a model call, before its tool calls)."""

    type: ClassVar[str] = "step-start"


@attrs.frozen(kw_only=True)
class StepFinish(Part):
    """A step of the agent ends.

    Attributes:
        finish_reason: Why the model stopped (``"stop"``, ``"tool_calls"``,
            ``"length"``, ...), if known.
    """

    type: ClassVar[str] = "step-finish"
    finish_reason: str | None = attrs.field(default=None, validator=_v_opt_wire)


def _v_data_name(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_str("DataPart.name", value, allow_empty=False)
    assert isinstance(value, str)
    if not _DATA_NAME_RE.fullmatch(value):
        raise ValidationError(
            f"DataPart.name must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-', got {value!r}",
            field="DataPart.name",
        )


@attrs.frozen(kw_only=True)
class DataPart(Part):
    """Application data, typed ``data-<name>`` on the wire.

    Attributes:
        name: The data's name (its wire type is ``"data-" + name``).
        value: Any JSON value.
        data_id: An id: a later part with the same name and id replaces this one in a
            frontend (the AI SDK's rule), if any.
        transient: Delivered to live readers but not kept in the session's log, so
            a reader that resumes does not see it: the log keeps a ``heartbeat`` event
            at its ``seq`` instead (``metadata["transient"]`` names the part).
    """

    name: str = attrs.field(validator=_v_data_name)
    value: JSONValue = attrs.field(default=None, converter=_freeze_value, metadata={"json": True})
    data_id: str | None = attrs.field(default=None, validator=_v_opt_wire)
    transient: bool = attrs.field(default=False, validator=_v_bool)

    @property
    def type(self) -> str:  # type: ignore[override]
        """``"data-" + name``."""
        return f"data-{self.name}"

    def _frozen_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "value": self.value,
            "data_id": self.data_id,
            "transient": self.transient,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the part as plain JSON-ready data (``type`` is ``data-<name>``)."""
        return {
            "type": self.type,
            "value": thaw_json(self.value),
            "data_id": self.data_id,
            "transient": self.transient,
        }


#: Any part.
AnyPart: TypeAlias = (
    TextDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallDelta
    | ToolCallEnd
    | ToolResult
    | Usage
    | SourcePart
    | StepStart
    | StepFinish
    | DataPart
)

_BY_TYPE: Final[dict[str, type[Part]]] = {
    cls.type: cls
    for cls in (
        TextDelta,
        ReasoningDelta,
        ToolCallStart,
        ToolCallDelta,
        ToolCallEnd,
        ToolResult,
        Usage,
        SourcePart,
        StepStart,
        StepFinish,
    )
}


def part_from_dict(data: Mapping[str, Any]) -> Part:
    """Build a part from data made by ``Part.to_dict``, checking every field.

    ``type`` is required; other fields may be left out where they have a default.

    Raises:
        ValidationError: ``data`` is not a mapping, its ``type`` is unknown, it has an
            unknown field or lacks a required one, or a field has a bad value; the
            error names the part type and the field.
    """
    if not isinstance(data, Mapping):
        raise ValidationError(f"a part must be a mapping, got {type_name(data)}", field="part")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ValidationError(f"part.type must be a str, got {type_name(kind)}", field="part.type")
    cls: type[Part]
    kwargs = {key: value for key, value in data.items() if key != "type"}
    if kind.startswith("data-"):
        cls = DataPart
        kwargs["name"] = kind[5:]
    else:
        found = _BY_TYPE.get(kind)
        if found is None:
            known = ", ".join([*_BY_TYPE, "data-<name>"])
            raise ValidationError(
                f"part.type must be one of {known}, got {kind!r}", field="part.type"
            )
        cls = found
    names = {field.name for field in attrs.fields(cls)}  # type: ignore[arg-type]
    for key in kwargs:
        if key not in names or (cls is DataPart and key == "name" and "name" in data):
            raise ValidationError(
                f"a {kind} part has an unknown field {key!r} (allowed: "
                f"{', '.join(sorted(names - {'name'} if cls is DataPart else names))})",
                field=f"part.{key}",
            )
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [
            field.name
            for field in attrs.fields(cls)  # type: ignore[arg-type]
            if field.default is attrs.NOTHING and field.name not in kwargs
        ]
        raise ValidationError(
            f"a {kind} part is missing the field {missing[0]!r}"
            if missing
            else f"a {kind} part is invalid: {exc}",
            field=f"part.{missing[0]}" if missing else "part",
        ) from exc


def part_from_json(text: str | bytes) -> Part:
    """Build a part from JSON made by ``Part.to_json``, checking every field.

    Raises:
        ValidationError: the text is not valid JSON or does not describe a valid part.
    """
    from ._events import loads_json  # the events module imports this one

    return part_from_dict(loads_json("part", text))
