"""Configuration: :class:`StreamConfig` for one stream, :class:`RegistryConfig` for a registry.

Both are frozen values, checked when built. ``from_dict`` takes the same names (the
seed keys ``chunk_size``, ``stream_delay``, ``max_stream_time``, ``enable_progressive``,
``enable_metadata``, ``compression_enabled``, ``heartbeat_interval``; ``max_sessions``,
``session_timeout``, ``cleanup_interval``, ``heartbeat_interval``) and refuses unknown
ones, so a typo in a configuration file is an error instead of a silent default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Self

import attrs

from ._validate import check_bool, check_choice, check_int, check_mapping_keys, check_number

__all__ = ["ChunkBy", "RegistryConfig", "SlowConsumerPolicy", "StreamConfig"]

#: How ``stream_tokens`` counts units toward ``chunk_size``.
ChunkBy = Literal["token", "word", "line"]
#: What a log does with a reader that falls more than ``max_lag`` events behind.
SlowConsumerPolicy = Literal["disconnect", "block"]

_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _int(minimum: int, *, optional: bool = False) -> _Validator:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not (optional and value is None):
            check_int(attribute.name, value, minimum=minimum)

    return validate


def _number(*, positive: bool = False, optional: bool = False) -> _Validator:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not (optional and value is None):
            check_number(attribute.name, value, minimum=0, positive=positive)

    return validate


def _bool(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_bool(attribute.name, value)


def _choice(*choices: str) -> _Validator:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_choice(attribute.name, value, choices)

    return validate


class _ConfigMixin:
    """``from_dict``, ``to_dict`` and ``replace`` for the config classes."""

    __slots__ = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build a config from a mapping with the same names as the fields.

        Keys left out take their defaults.

        Raises:
            ValidationError: a key is unknown or a value is invalid; the error names it.
        """
        names = frozenset(field.name for field in attrs.fields(cls))  # type: ignore[arg-type]
        checked = check_mapping_keys(cls.__name__, data, required=frozenset(), allowed=names)
        return cls(**checked)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dict that :meth:`from_dict` accepts."""
        return attrs.asdict(self)  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> Self:
        """Return a copy with ``changes`` applied and checked.

        Raises:
            ValidationError: a name is unknown or a value is invalid.
        """
        return self.from_dict({**self.to_dict(), **changes})


@attrs.frozen(kw_only=True)
class StreamConfig(_ConfigMixin):
    """How :func:`~streamkit.stream_tokens` shapes one stream.

    Attributes:
        chunk_size: At most this many units (see ``chunk_by``) per ``token`` event.
        stream_delay: Seconds between emitted chunks; ``0`` emits as fast as the consumer
            reads.
        max_stream_time: Seconds the whole stream may last; past it the source is closed
            and the stream completes with reason ``deadline``. ``None``: no deadline.
        enable_progressive: Emit text as it comes (``True``) or as one ``token`` event at
            the end (``False``).
        enable_metadata: Put the token index and elapsed time on each ``token`` event.
        compression_enabled: Let transports compress (gzip) when the client accepts it.
        heartbeat_interval: Seconds of source silence before a ``heartbeat`` event.
            ``None``: no heartbeats.
        chunk_by: The unit ``chunk_size`` counts: source items (``"token"``), words
            (``"word"``) or lines (``"line"``).
        flush_interval: Seconds a partial chunk waits for more text before it is sent
            anyway, so that a slow source's first words are never held back.
        stall_timeout: Seconds of source silence after which the stream ends with an
            ``error`` event (the stall watchdog). ``None``: wait forever.
    """

    chunk_size: int = attrs.field(default=5, validator=_int(1))
    stream_delay: float = attrs.field(default=0.02, validator=_number())
    max_stream_time: float | None = attrs.field(
        default=600.0, validator=_number(positive=True, optional=True)
    )
    enable_progressive: bool = attrs.field(default=True, validator=_bool)
    enable_metadata: bool = attrs.field(default=True, validator=_bool)
    compression_enabled: bool = attrs.field(default=True, validator=_bool)
    heartbeat_interval: float | None = attrs.field(
        default=30.0, validator=_number(positive=True, optional=True)
    )
    chunk_by: ChunkBy = attrs.field(default="token", validator=_choice("token", "word", "line"))
    flush_interval: float = attrs.field(default=0.05, validator=_number())
    stall_timeout: float | None = attrs.field(
        default=None, validator=_number(positive=True, optional=True)
    )


@attrs.frozen(kw_only=True)
class RegistryConfig(_ConfigMixin):
    """How a :class:`~streamkit.SessionRegistry` bounds and maintains its sessions.

    Attributes:
        max_sessions: Sessions held at once (active, paused or ended but retained).
        session_timeout: Seconds a session may stay idle (no event, no control call)
            before the sweeper expires it.
        cleanup_interval: Seconds between sweeper passes.
        heartbeat_interval: Seconds of silence before live subscribers of a session get
            a ``heartbeat`` event. ``None``: no registry heartbeats.
        max_sessions_per_user: Live (active or paused) sessions one user may hold at once;
            ended sessions, kept readable for ``ended_session_ttl``, do not count.
            ``None``: no bound.
        max_subscribers_per_session: Readers one session may have at once.
        history_max_events: Events retained per session for replay.
        history_max_bytes: Bytes of event JSON retained per session for replay.
        max_event_bytes: The largest event (as JSON) a session accepts.
        slow_consumer_policy: What happens to a reader more than ``max_lag`` events
            behind: ``"disconnect"`` ends it with :class:`~streamkit.SubscriberLagged`
            (it can resume), ``"block"`` makes the producer wait for it.
        max_lag: Events a reader may fall behind the head.
        ended_session_ttl: Seconds an ended session stays readable (for late readers
            and resumes) before the sweeper removes it.
        idle_producer_grace: Seconds a producer may run with no subscriber before its
            session is cancelled (saves LLM cost). ``None``: never.
    """

    max_sessions: int = attrs.field(default=100, validator=_int(1))
    session_timeout: float = attrs.field(default=600.0, validator=_number(positive=True))
    cleanup_interval: float = attrs.field(default=60.0, validator=_number(positive=True))
    heartbeat_interval: float | None = attrs.field(
        default=30.0, validator=_number(positive=True, optional=True)
    )
    max_sessions_per_user: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    max_subscribers_per_session: int = attrs.field(default=1000, validator=_int(1))
    history_max_events: int = attrs.field(default=10_000, validator=_int(1))
    history_max_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_int(1))
    max_event_bytes: int = attrs.field(default=1024 * 1024, validator=_int(1))
    slow_consumer_policy: SlowConsumerPolicy = attrs.field(
        default="disconnect",
        validator=_choice("disconnect", "block"),
    )
    max_lag: int = attrs.field(default=1000, validator=_int(1))
    ended_session_ttl: float = attrs.field(default=300.0, validator=_number())
    idle_producer_grace: float | None = attrs.field(
        default=None, validator=_number(positive=True, optional=True)
    )
