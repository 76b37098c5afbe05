"""Session states, the table of allowed transitions, and the session record.

Rules of this module:

* The transition table, :data:`TRANSITIONS`, is the only place that says which state
  may follow which. Code never compares states to decide whether a move is legal; it
  calls :func:`check_transition`, and the docs draw their diagram from the table.
* Terminal states (``completed``, ``error``, ``cancelled``, ``expired``) have no way
  out. Moving to the state a session is already in is not a transition and is refused.
* :class:`StreamSession` is an immutable snapshot. A change of state makes a new
  snapshot (:meth:`StreamSession.transition`); the registry keeps the current one.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Self

import attrs

from ._errors import InvalidTransition, ValidationError
from ._events import StreamEvent, loads_json
from ._validate import (
    JSONValue,
    check_id,
    check_mapping_keys,
    check_number,
    freeze_json_object,
    thaw_json,
    type_name,
)

__all__ = [
    "TRANSITIONS",
    "SessionState",
    "StreamSession",
    "check_transition",
    "new_session_id",
    "transition_diagram",
]


class SessionState(StrEnum):
    """Where a session is in its life. See :data:`TRANSITIONS` for the allowed moves."""

    ACTIVE = "active"
    """Producing (or ready to produce) events."""
    PAUSED = "paused"
    """The producer is not pulled; subscribers stay connected."""
    COMPLETED = "completed"
    """Ended normally (terminal)."""
    ERROR = "error"
    """Ended because the producer failed (terminal)."""
    CANCELLED = "cancelled"
    """Ended on request (terminal)."""
    EXPIRED = "expired"
    """Ended because it stayed idle past the session timeout (terminal)."""

    @property
    def is_terminal(self) -> bool:
        """Whether no state may follow this one."""
        return not TRANSITIONS[self]


_INF: Final = float("inf")

#: The terminal states (those :data:`TRANSITIONS` lets nothing follow).
_ENDINGS: Final = frozenset(
    {SessionState.COMPLETED, SessionState.ERROR, SessionState.CANCELLED, SessionState.EXPIRED}
)

#: The allowed moves: each state maps to the states that may follow it.
TRANSITIONS: Final[Mapping[SessionState, frozenset[SessionState]]] = MappingProxyType(
    {
        SessionState.ACTIVE: _ENDINGS | {SessionState.PAUSED},
        SessionState.PAUSED: _ENDINGS | {SessionState.ACTIVE},
        SessionState.COMPLETED: frozenset(),
        SessionState.ERROR: frozenset(),
        SessionState.CANCELLED: frozenset(),
        SessionState.EXPIRED: frozenset(),
    }
)
assert {state for state in SessionState if state.is_terminal} == _ENDINGS


def check_transition(
    current: SessionState, requested: SessionState, *, session_id: str | None = None
) -> None:
    """Raise unless the table allows moving from ``current`` to ``requested``.

    Raises:
        InvalidTransition: the move is not in :data:`TRANSITIONS`; the error names both
            states.
    """
    if requested not in TRANSITIONS[current]:
        raise InvalidTransition(current.value, requested.value, session_id=session_id)


def transition_diagram() -> str:
    """Return the transition table as a Mermaid state diagram (the docs show it)."""
    lines = ["stateDiagram-v2", f"    [*] --> {SessionState.ACTIVE.value}"]
    for state, targets in TRANSITIONS.items():
        lines.extend(
            f"    {state.value} --> {target.value}" for target in SessionState if target in targets
        )
        if not targets:
            lines.append(f"    {state.value} --> [*]")
    return "\n".join(lines)


#: Bytes of randomness in a session id: 144 bits, 24 URL-safe characters.
SESSION_ID_BYTES: Final = 18


def new_session_id() -> str:
    """Return a new unguessable, URL-safe session id (144 bits from :mod:`secrets`)."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def _convert_state(value: object) -> SessionState:
    if isinstance(value, SessionState):
        return value
    try:
        return SessionState(value)  # type: ignore[arg-type]
    except ValueError:
        known = ", ".join(s.value for s in SessionState)
        raise ValidationError(
            f"status must be one of {known}, got {value!r}", field="status"
        ) from None


def _convert_session_id(value: object) -> str:
    return check_id("session_id", value)


def _convert_user_id(value: object) -> str | None:
    return None if value is None else check_id("user_id", value)


def _convert_context(value: object) -> Mapping[str, JSONValue]:
    return freeze_json_object("context", value)


def _convert_created(value: object) -> float:
    return check_number("created_at", value, minimum=0)


def _convert_updated(value: object) -> float:
    return check_number("updated_at", value, minimum=0)


def _convert_events(value: object) -> Sequence[StreamEvent]:
    if isinstance(value, _EventsView):
        return value
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ValidationError(
            f"events must be a sequence of StreamEvent, got {type_name(value)}", field="events"
        )
    for index, event in enumerate(value):
        if not isinstance(event, StreamEvent):
            raise ValidationError(
                f"events[{index}] must be a StreamEvent, got {type_name(event)}",
                field="events",
            )
    return tuple(value)


class _EventsView(Sequence[StreamEvent]):
    """A read-only, live view of the events a log retains (made by the registry)."""

    __slots__ = ("_events",)
    __hash__ = None  # type: ignore[assignment]  # a live view has no stable hash

    def __init__(self, events: Sequence[StreamEvent]) -> None:
        self._events = events

    def __len__(self) -> int:
        return len(self._events)

    def __getitem__(self, index: Any) -> Any:
        return self._events[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"<events view: {len(self)} events>"


def events_view(events: Sequence[StreamEvent]) -> Sequence[StreamEvent]:
    """Wrap a log's mutable sequence of events as a read-only view for a snapshot."""
    return _EventsView(events)


@attrs.frozen(kw_only=True)
class StreamSession:
    """A snapshot of one session: who owns it, its state, its context and its events.

    Snapshots are immutable values; the registry hands out a new one after each
    change. Build one directly only in tests or when restoring a record.

    Attributes:
        session_id: An unguessable URL-safe id (see :func:`new_session_id`).
        user_id: The owner, or ``None`` for an anonymous session.
        status: The :class:`SessionState`.
        context: JSON-compatible, read-only application context.
        created_at: Creation time, Unix seconds.
        updated_at: Time of the last state change, Unix seconds.
        events: A read-only view of the events the session's log retains.
    """

    session_id: str = attrs.field(factory=new_session_id, converter=_convert_session_id)
    user_id: str | None = attrs.field(default=None, converter=_convert_user_id)
    status: SessionState = attrs.field(default=SessionState.ACTIVE, converter=_convert_state)
    context: Mapping[str, JSONValue] = attrs.field(
        factory=dict, converter=_convert_context, hash=False
    )
    created_at: float = attrs.field(factory=time.time, converter=_convert_created)
    updated_at: float = attrs.field(
        default=attrs.Factory(lambda self: self.created_at, takes_self=True),
        converter=_convert_updated,
    )
    events: Sequence[StreamEvent] = attrs.field(
        factory=tuple, converter=_convert_events, hash=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if self.updated_at < self.created_at:
            raise ValidationError(
                f"updated_at ({self.updated_at}) is earlier than created_at ({self.created_at})",
                field="updated_at",
            )

    @property
    def is_terminal(self) -> bool:
        """Whether the session has ended."""
        return self.status.is_terminal

    def transition(self, status: SessionState, *, now: float | None = None) -> Self:
        """Return a copy in state ``status``, if the transition table allows the move.

        Raises:
            InvalidTransition: the move is not allowed from the current state.
        """
        check_transition(self.status, status, session_id=self.session_id)
        if type(now) is float and 0.0 <= now < _INF:  # (NaN fails both): valid as it is
            updated = now
        else:
            updated = time.time() if now is None else check_number("updated_at", now, minimum=0)
        updated = max(updated, self.created_at)
        if type(self) is not StreamSession:  # a subclass may hold more
            return attrs.evolve(self, status=status, updated_at=updated)
        # Every other field is already valid: copied as it is, not converted again, with
        # plain slot stores (see _UnsealedSession).
        copy: Any = _new(_UnsealedSession)
        copy.session_id = self.session_id
        copy.user_id = self.user_id
        copy.status = status
        copy.context = self.context
        copy.created_at = self.created_at
        copy.updated_at = updated
        copy.events = self.events
        copy.__class__ = StreamSession  # sealed
        return copy  # type: ignore[no-any-return]

    def to_dict(self, *, include_events: bool = True) -> dict[str, Any]:
        """Return the session as plain JSON-ready data.

        Args:
            include_events: Whether to include the retained events (as dicts).
        """
        data: dict[str, Any] = {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "status": self.status.value,
            "context": thaw_json(self.context),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if include_events:
            data["events"] = [event.to_dict() for event in self.events]
        return data

    def to_json(self, *, include_events: bool = True) -> str:
        """Return :meth:`to_dict` as compact JSON."""
        import json

        return json.dumps(
            self.to_dict(include_events=include_events), ensure_ascii=False, separators=(",", ":")
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build a session from data made by :meth:`to_dict`, checking every field.

        ``session_id``, ``status`` and ``created_at`` are required.

        Raises:
            ValidationError: a field is missing, unknown or has a bad value.
        """
        checked = dict(
            check_mapping_keys(
                "StreamSession", data, required=_REQUIRED_FIELDS, allowed=_ALLOWED_FIELDS
            )
        )
        if "events" in checked:
            raw = checked["events"]
            if not isinstance(raw, list | tuple):
                raise ValidationError(
                    f"events must be a list, got {type_name(raw)}", field="events"
                )
            checked["events"] = tuple(StreamEvent.from_dict(item) for item in raw)
        return cls(**checked)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        """Build a session from JSON made by :meth:`to_json`.

        Raises:
            ValidationError: the JSON is invalid or does not describe a valid session.
        """
        return cls.from_dict(loads_json("StreamSession", text))


_ALLOWED_FIELDS: Final = frozenset(
    {"session_id", "user_id", "status", "context", "created_at", "updated_at", "events"}
)
_REQUIRED_FIELDS: Final = frozenset({"session_id", "status", "created_at"})


_new = object.__new__


class _UnsealedSession(StreamSession):
    """A :class:`StreamSession` being copied by :meth:`StreamSession.transition`.

    Its fields are plain slot stores (the object's own ``__setattr__``), then it is
    sealed: its class set to :class:`StreamSession` (same slots). The frozen class's
    slot setters, called as functions, cost a call with an argument tuple each.
    """

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


# transition() copies these fields by name: a new field must be copied there too.
assert [field.name for field in attrs.fields(StreamSession)] == [
    "session_id",
    "user_id",
    "status",
    "context",
    "created_at",
    "updated_at",
    "events",
]
