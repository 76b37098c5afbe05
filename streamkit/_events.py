"""Stream events: the one value every layer passes along.

A :class:`StreamEvent` validates when it is built through its public constructor,
``from_dict`` or ``from_json``, so an invalid event cannot exist. The streamer and the
log build events they already know are valid through :func:`make_event`, which skips
the checks: on the hot path an event costs one object, built once with its ``seq``.
"""

from __future__ import annotations

import itertools
import json
import marshal
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Self

import attrs

from ._errors import ValidationError
from ._parts import Part, part_from_dict
from ._validate import (
    EMPTY_OBJECT,
    FORBIDDEN_IN_FIELDS,
    JSONValue,
    check_id,
    check_int,
    check_mapping_keys,
    check_number,
    check_str,
    check_wire_str,
    freeze_json_object,
    thaw_json,
    type_name,
)

__all__ = [
    "EventType",
    "StreamEvent",
    "freeze_event",
    "make_event",
    "make_part_event",
    "pack_event",
    "thaw_event",
]


class EventType(StrEnum):
    """The kind of a :class:`StreamEvent`.

    Applications may also use their own types, spelled ``x-`` followed by letters,
    digits, ``_``, ``-``, ``.`` or ``:`` (for example ``"x-tool-call"``).
    """

    START = "start"
    """The first event of a stream."""
    TOKEN = "token"
    """A chunk of generated text in ``content``."""
    HEARTBEAT = "heartbeat"
    """Nothing happened for a while; keeps connections alive."""
    METADATA = "metadata"
    """Application information in ``metadata``, no text."""
    PART = "part"
    """A typed part of an agent's message other than answer text (reasoning, a tool
    call, a tool result, usage, a source, a step, app data): ``metadata["part"]`` is
    the part's dict and :attr:`StreamEvent.part` the typed part."""
    COMPLETE = "complete"
    """The stream ended normally (final)."""
    ERROR = "error"
    """The stream ended with an error (final)."""

    @property
    def is_final(self) -> bool:
        """Whether an event of this type ends a stream."""
        return self in _FINAL_TYPES


_FINAL_TYPES: Final = frozenset({EventType.COMPLETE, EventType.ERROR})
_CUSTOM_TYPE_RE = re.compile(r"x-[A-Za-z0-9_.:\-]{1,62}")
_EMPTY: Final = EMPTY_OBJECT

# A cheap unique id: a random per-process prefix and a counter (in decimal: a format spec
# such as hex costs the f-string a call of int.__format__). Unique across processes
# with overwhelming probability (64 random bits), and ten times cheaper than uuid4().
_ID_PREFIX: Final = secrets.token_hex(8)
_id_counter = itertools.count(1)


def _new_event_id() -> str:
    return f"{_ID_PREFIX}-{next(_id_counter)}"


def _convert_event_type(value: object) -> EventType | str:
    if isinstance(value, EventType):
        return value
    check_str("event_type", value, allow_empty=False)
    assert isinstance(value, str)
    try:
        return EventType(value)
    except ValueError:
        pass
    if _CUSTOM_TYPE_RE.fullmatch(value):
        return value
    known = ", ".join(t.value for t in EventType)
    raise ValidationError(
        f"event_type must be one of {known} or a custom type 'x-...' of letters, digits, "
        f"'_', '-', '.' or ':', got {value!r}",
        field="event_type",
    )


# The converters below take the common valid value at once (an exact str of ASCII
# text, a finite float, an empty dict) and leave anything else to the full check,
# which raises the error: a user's producer builds an event per token.
_search_forbidden: Final = FORBIDDEN_IN_FIELDS.search


def _convert_event_id(value: object) -> str:
    if (
        type(value) is str
        and value.isascii()
        and 0 < len(value) <= 256
        and _search_forbidden(value) is None
    ):
        return value
    return check_wire_str("event_id", value)


def _convert_content(value: object) -> str:
    if type(value) is str and value.isascii():
        return value
    return check_str("content", value)


def _convert_timestamp(value: object) -> float:
    if type(value) is float and 0 <= value < math.inf:
        return value
    return check_number("timestamp", value, minimum=0)


def _convert_metadata(value: object) -> Mapping[str, JSONValue]:
    if type(value) is dict and not value:
        return _EMPTY
    return freeze_json_object("metadata", value)


def _convert_session_id(value: object) -> str | None:
    return None if value is None else check_id("session_id", value)


def _convert_seq(value: object) -> int | None:
    return None if value is None else check_int("seq", value, minimum=1)


def _json_default(value: object) -> Any:
    # Frozen metadata holds read-only mappings; the C encoder hands them to us.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot encode {type_name(value)} as JSON")  # pragma: no cover


# One encoder for every event (json.dumps makes a new one at each call).
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default)
# The encoder's own (C) function for a str: its JSON string, non-ASCII characters kept.
_quote: Final = json.encoder.encode_basestring


def _scalar_json(value: object) -> str | None:
    """Return the JSON of a str, int or finite float as the encoder writes it, else None."""
    if type(value) is str:
        return _quote(value)
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return None


def _flat_json(event: StreamEvent) -> str | None:
    """Write an event's JSON by hand when its metadata is flat (str, int, float values).

    The same text as the encoder's, in half the time (1.8 µs against 3.7 µs for a
    token event with metadata): every event the streamer makes is flat, and its JSON is
    on the path to every transport. ``None`` for anything else (the encoder's job).
    """
    parts = []
    for key, value in event.metadata.items():
        text = _scalar_json(value)
        if text is None:
            return None
        parts.append(f"{_quote(key)}:{text}")
    timestamp = _scalar_json(event.timestamp)
    if timestamp is None:
        return None
    session_id = event.session_id
    seq = event.seq
    return (
        f'{{"event_id":{_quote(event.event_id)},"event_type":{_quote(event.event_type)},'
        f'"content":{_quote(event.content)},"timestamp":{timestamp},'
        f'"metadata":{{{",".join(parts)}}},'
        f'"session_id":{"null" if session_id is None else _quote(session_id)},'
        f'"seq":{"null" if seq is None else int.__repr__(seq)}}}'
    )


def _token_json(event: StreamEvent, metadata: Mapping[str, object]) -> str | None:
    """Write the JSON of a streamer's token event, whose shape is known, or ``None``.

    The streamer's tokens (the only events made with a size hint) carry their ``index``
    (an int) and ``elapsed`` time (a float), in that order, and a float timestamp: one
    f-string instead of :func:`_flat_json`'s walk, for the text of every token on every
    HTTP transport. Anything else (a value of another type) is :func:`_flat_json`'s.
    """
    index = metadata.get("index")
    elapsed = metadata.get("elapsed")
    timestamp = event.timestamp
    if (
        type(index) is not int
        or type(elapsed) is not float
        or type(timestamp) is not float
        or not math.isfinite(elapsed)
        or not math.isfinite(timestamp)
    ):
        return None
    session_id = event.session_id
    seq = event.seq
    return (
        f'{{"event_id":{_quote(event.event_id)},"event_type":"token",'
        f'"content":{_quote(event.content)},"timestamp":{float.__repr__(timestamp)},'
        f'"metadata":{{"index":{int.__repr__(index)},"elapsed":{float.__repr__(elapsed)}}},'
        f'"session_id":{"null" if session_id is None else _quote(session_id)},'
        f'"seq":{"null" if seq is None else int.__repr__(seq)}}}'
    )


@attrs.frozen(kw_only=True)
class StreamEvent:
    """One event of a stream: a token chunk, a heartbeat, the start or the end.

    Every field is checked when the event is built; bad values raise
    :class:`~streamkit.ValidationError` naming the field.

    Attributes:
        event_type: An :class:`EventType`, or a custom ``"x-..."`` type.
        content: The text the event carries (empty for most non-token events).
        metadata: JSON-compatible, read-only information (nested objects are read-only
            mappings and arrays are tuples).
        session_id: The session the event belongs to, if any.
        seq: The event's 1-based position in its session's log; ``None`` until a log
            stores it.
        event_id: A unique id, generated when omitted; no CR, LF or NUL.
        timestamp: When the event was made, in Unix seconds.
    """

    event_type: EventType | str = attrs.field(converter=_convert_event_type)
    content: str = attrs.field(default="", converter=_convert_content)
    metadata: Mapping[str, JSONValue] = attrs.field(
        factory=dict, converter=_convert_metadata, hash=False
    )
    session_id: str | None = attrs.field(default=None, converter=_convert_session_id)
    seq: int | None = attrs.field(default=None, converter=_convert_seq)
    event_id: str = attrs.field(factory=_new_event_id, converter=_convert_event_id)
    timestamp: float = attrs.field(factory=time.time, converter=_convert_timestamp)
    _json: str | None = attrs.field(init=False, default=None, eq=False, repr=False, hash=False)
    _part: Part | None = attrs.field(init=False, default=None, eq=False, repr=False, hash=False)
    # The size the in-memory log charges for the event, when its maker knew it cheaply
    # (the streamer's token events): saves the log its estimate. Unset otherwise.
    _size: int | None = attrs.field(init=False, default=None, eq=False, repr=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if self.event_type == "part":
            data = self.metadata.get("part")
            if not isinstance(data, Mapping):
                raise ValidationError(
                    f"a part event needs metadata.part, the part's dict, got {type_name(data)}",
                    field="metadata.part",
                )
            object.__setattr__(self, "_part", part_from_dict(thaw_json(data)))

    @classmethod
    def from_part(cls, part: Part, *, session_id: str | None = None) -> Self:
        """Build the ``part`` event that carries ``part``.

        Raises:
            ValidationError: ``part`` is not a :class:`~streamkit.parts.Part`, or
                ``session_id`` is not a valid id.
        """
        if not isinstance(part, Part):
            raise ValidationError(f"part must be a Part, got {type_name(part)}", field="part")
        return cls(
            event_type=EventType.PART, metadata={"part": part.to_dict()}, session_id=session_id
        )

    @property
    def part(self) -> Part | None:
        """The typed part a ``part`` event carries (``None`` for other events).

        The answer's text travels in ``token`` events (``content``), as it always did.
        """
        if self.event_type != "part":
            return None
        try:
            cached = self._part
        except AttributeError:  # made by make_event: parsed once, on first use
            cached = None
        if cached is None:
            cached = part_from_dict(thaw_json(self.metadata["part"]))
            _set_part(self, cached)
        return cached

    @property
    def is_final(self) -> bool:
        """Whether this event ends its stream (``complete`` or ``error``)."""
        return self.event_type in _FINAL_TYPES

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle go through the event's JSON: its read-only metadata
        # cannot be pickled, and events made on the hot path leave their caches unset.
        return (type(self).from_json, (self.to_json(),))

    def to_dict(self) -> dict[str, Any]:
        """Return the event as plain JSON-ready data (every field, nothing shared)."""
        return json.loads(self.to_json())  # type: ignore[no-any-return]

    def to_json(self) -> str:
        """Return the event as one line of compact JSON (no raw newline inside).

        The text is computed once per event and cached, so that every subscriber and
        transport shares it.
        """
        text = self._json
        if text is None:
            metadata = self.metadata
            if self._size is not None and self.event_type is _TOKEN and len(metadata) == 2:
                text = _token_json(self, metadata)  # a streamer's token
            if text is None:
                text = _flat_json(self) or _ENCODER.encode(
                    {
                        "event_id": self.event_id,
                        "event_type": self.event_type,
                        "content": self.content,
                        "timestamp": self.timestamp,
                        # A dict, not the read-only mapping: no call back into _json_default.
                        "metadata": dict(metadata),
                        "session_id": self.session_id,
                        "seq": self.seq,
                    },
                )
            object.__setattr__(self, "_json", text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build an event from data made by :meth:`to_dict`, checking every field.

        ``event_id``, ``event_type`` and ``timestamp`` are required; ``content``,
        ``metadata``, ``session_id`` and ``seq`` may be left out.

        Raises:
            ValidationError: ``data`` is not a mapping, lacks a required field, has an
                unknown one, or a field has a bad value; the error names the field.
        """
        checked = check_mapping_keys(
            "StreamEvent", data, required=_REQUIRED_FIELDS, allowed=_ALLOWED_FIELDS
        )
        return cls(**checked)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        """Build an event from JSON made by :meth:`to_json`, checking every field.

        Raises:
            ValidationError: the text is not valid JSON (``NaN`` and ``Infinity``
                included) or does not describe a valid event.
        """
        return cls.from_dict(loads_json("StreamEvent", text))


_ALLOWED_FIELDS: Final = frozenset(
    {"event_id", "event_type", "content", "timestamp", "metadata", "session_id", "seq"}
)
_REQUIRED_FIELDS: Final = frozenset({"event_id", "event_type", "timestamp"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_json(what: str, text: str | bytes) -> Any:
    """Parse strict JSON (no ``NaN``/``Infinity``), raising ``ValidationError`` on failure."""
    if not isinstance(text, str | bytes | bytearray):
        raise ValidationError(f"{what} JSON must be str or bytes, got {type_name(text)}")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from exc


_new = object.__new__
# The slots' own setters: twice as fast as object.__setattr__ by name, and they bypass
# the frozen class's __setattr__ just the same.
_slot = {name: getattr(StreamEvent, name).__set__ for name in StreamEvent.__slots__}  # type: ignore[attr-defined]
_set_type = _slot["event_type"]
_set_content = _slot["content"]
_set_metadata = _slot["metadata"]
_set_session = _slot["session_id"]
_set_seq = _slot["seq"]
_set_id = _slot["event_id"]
_set_time = _slot["timestamp"]
_set_json = _slot["_json"]
_set_part = _slot["_part"]
_set_size = _slot["_size"]
_clock = time.time


class _Unsealed(StreamEvent):
    """A :class:`StreamEvent` being made: its fields are plain slot stores.

    An event is made as one of these, its fields assigned, then sealed: its class set
    to :class:`StreamEvent` (``event.__class__ = StreamEvent``; same slots, so Python
    allows it). Nobody else sees it before. The frozen class's ``__setattr__`` (and
    the slot setters called as functions) cost a call each; with the object's own
    ``__setattr__`` and ``__delattr__`` the interpreter stores into a slot directly:
    a third of the cost of an event's nine fields.
    """

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


def make_event(  # noqa: PLR0917 - positional on purpose: the hot path calls it per token
    event_type: EventType | str,
    content: str = "",
    metadata: Mapping[str, JSONValue] = _EMPTY,
    session_id: str | None = None,
    seq: int | None = None,
    event_id: str | None = None,
    timestamp: float | None = None,
) -> StreamEvent:
    """Build an event without validation, for values the caller knows are valid.

    Internal: the streamer, the log and the backends use it on the hot path. The
    caller guarantees what the public constructor would check, and must not keep a
    reference to a mutable ``metadata`` it passes.
    """
    event: Any = _new(_Unsealed)
    event.event_type = event_type
    event.content = content
    event.metadata = metadata
    event.session_id = session_id
    event.seq = seq
    event.event_id = f"{_ID_PREFIX}-{next(_id_counter)}" if event_id is None else event_id
    event.timestamp = _clock() if timestamp is None else timestamp
    event._json = None
    event._size = None
    event.__class__ = StreamEvent  # sealed
    return event  # type: ignore[no-any-return]


def make_part_event(part: Part, session_id: str | None = None) -> StreamEvent:
    """Build the ``part`` event of a valid ``part`` without validation (internal)."""
    event = make_event(
        EventType.PART,
        "",
        MappingProxyType({"part": MappingProxyType(part._frozen_dict())}),
        session_id,
    )
    _set_part(event, part)
    return event


def stamp(event: StreamEvent, seq: int, session_id: str | None) -> None:
    """Complete ``event`` in place with its ``seq`` and ``session_id``.

    Internal: only for an event nobody else holds yet (the log's fast path for the
    streamer's fresh events), so that no one can see it change.
    """
    _set_seq(event, seq)
    _set_session(event, session_id)
    if event._json is not None:  # made before its seq was known: make it again
        _set_json(event, None)


def with_seq(event: StreamEvent, seq: int, session_id: str | None) -> StreamEvent:
    """Return a copy of a valid ``event`` stamped with ``seq`` and ``session_id``."""
    copy = make_event(
        event.event_type,
        event.content,
        event.metadata,
        session_id,
        seq,
        event.event_id,
        event.timestamp,
    )
    part = getattr(event, "_part", None)
    if part is not None:
        _set_part(copy, part)
    return copy


# --- compact storage of retained events ----------------------------------------------

#: A retained event as one flat tuple of strings and numbers, ``(event_type, content,
#: session_id, seq, event_id, timestamp, json, key, value, key, value, ...)``, or the
#: bytes of that tuple (marshal); a streamer's token as the bytes of ``(content,
#: event_id, timestamp, index, elapsed, json)``.
FrozenEvent = tuple[Any, ...] | bytes

_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_TYPES_BY_VALUE: Final[dict[str, EventType]] = {t.value: t for t in EventType}
_TOKEN: Final = EventType.TOKEN
_flatten: Final = itertools.chain.from_iterable
_dumps: Final[Callable[..., bytes]] = marshal.dumps
#: The length of a streamer token's packed tuple (freeze_event's are 7 or more).
_PACKED_TOKEN: Final = 6
_loads: Final = marshal.loads


def freeze_event(event: StreamEvent) -> tuple[Any, ...] | None:
    """Return ``event`` as a flat tuple of strings and numbers, or ``None`` if it is not flat.

    Internal: the in-memory log keeps the events every reader has passed this way (or
    as :func:`pack_event`'s bytes). A tuple holding only strings and numbers is
    untracked by the cyclic garbage collector at its first collection, while a
    :class:`StreamEvent` (and its read-only metadata mapping) stays tracked as long as
    it lives: a log of retained events would otherwise make every full collection walk
    every event of every session (tens of ms for a few hundred paced sessions, a stall
    of the whole event loop). Events whose metadata holds anything but strings,
    numbers, booleans and ``None`` (parts, stats) are few per stream and stay as they
    are.
    """
    event_type = event.event_type
    if event_type is _TOKEN:  # the common case, without the enum's slow ``value``
        event_type = "token"
    elif type(event_type) is not str:
        if not isinstance(event_type, EventType):
            return None
        event_type = event_type.value
    flat = (
        event_type,
        event.content,
        event.session_id,
        event.seq,
        event.event_id,
        event.timestamp,
        event._json,
        *_flatten(event.metadata.items()),
    )
    if len(flat) > 11 or event_type != "token":  # the streamer's tokens are flat: no look
        for value in flat[8::2]:
            if type(value) not in _SCALARS:
                return None
    return flat


def pack_event(event: StreamEvent) -> bytes | None:
    """Return :func:`freeze_event`'s tuple as bytes (marshal), or ``None``.

    Bytes are never tracked by the garbage collector, not even until a collection:
    a history that grows by one tuple per token brings every collection closer (a
    tuple counts as a new object until a collection untracks it), and with many paced
    sessions, each holding its waiting tasks, a young collection is not cheap. The
    in-memory log packs the events its only reader passes one at a time; several
    readers pass them in batches, frozen as tuples (a tenth of the cost).
    """
    metadata = event.metadata
    if event._size is not None and len(metadata) == 2:  # made by the streamer
        if event.event_type is not _TOKEN:
            return None  # a final event: its statistics are nested, never flat
        # A streamer's token (only its events come with their size): its metadata is
        # its index and elapsed time. Only what differs from token to token is kept
        # (each string costs marshal an encoding): the type and the keys are known, and
        # the log knows its seq and session (thaw_event's arguments).
        try:
            return _dumps(
                (
                    event.content,
                    event.event_id,
                    event.timestamp,
                    metadata["index"],
                    metadata["elapsed"],
                    event._json,
                ),
                2,
            )
        except KeyError:  # pragma: no cover - the streamer's tokens have both
            pass
    flat = freeze_event(event)
    if flat is None:
        return None
    try:
        return _dumps(flat, 2)
    except ValueError:  # a token published with metadata that is not flat
        return None


def thaw_event(data: FrozenEvent, seq: int, session_id: str | None) -> StreamEvent:
    """Return the event that :func:`freeze_event` or :func:`pack_event` made ``data`` from.

    ``seq`` and ``session_id``: the event's, for the forms that do not hold them (a
    streamer's token packed by :func:`pack_event`).
    """
    frozen: tuple[Any, ...] = _loads(data) if type(data) is bytes else data  # type: ignore[assignment]
    size = len(frozen)
    if size == _PACKED_TOKEN:  # (content, event_id, timestamp, index, elapsed, json)
        event = make_event(
            _TOKEN,
            frozen[0],
            MappingProxyType({"index": frozen[3], "elapsed": frozen[4]}),
            session_id,
            seq,
            frozen[1],
            frozen[2],
        )
        if frozen[5] is not None:
            _set_json(event, frozen[5])
        return event
    event_type: str = frozen[0]
    metadata: Mapping[str, JSONValue]
    if size == 7:
        metadata = _EMPTY
    elif size == 11:  # a token event's index and elapsed time: the common case
        metadata = MappingProxyType({frozen[7]: frozen[8], frozen[9]: frozen[10]})
    else:
        items = frozen[7:]
        metadata = MappingProxyType(dict(zip(items[::2], items[1::2], strict=True)))
    event = make_event(
        _TYPES_BY_VALUE.get(event_type, event_type),
        frozen[1],
        metadata,
        frozen[2],
        frozen[3],
        frozen[4],
        frozen[5],
    )
    if frozen[6] is not None:
        _set_json(event, frozen[6])
    return event
