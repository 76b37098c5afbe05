"""StreamAppConfig: the options of :class:`~streamkit.asgi.StreamApp` as one checked value.

In the style of :class:`~streamkit.StreamConfig` and :class:`~streamkit.RegistryConfig`:
frozen, keyword-only, checked when built (errors name the field), ``from_dict`` refuses
unknown keys, ``to_dict`` gives back what ``from_dict`` takes. What is code rather than
data (the registry, the agent, ``authenticate``) stays an argument of ``StreamApp``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Self

import attrs

from ._config import RegistryConfig, StreamConfig
from ._errors import ValidationError
from ._validate import check_bool, check_int, check_mapping_keys, check_number, type_name

__all__ = ["DEFAULT_CLIENT_CONFIG_FIELDS", "StreamAppConfig"]

#: StreamConfig fields a client may set in ``POST /sessions`` unless told otherwise.
DEFAULT_CLIENT_CONFIG_FIELDS: Final = frozenset(
    {"chunk_size", "chunk_by", "enable_progressive", "enable_metadata", "compression_enabled"}
)

_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _int(minimum: int, *, optional: bool = False) -> _Validator:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not (optional and value is None):
            check_int(attribute.name, value, minimum=minimum)

    return validate


def _seconds(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_number(attribute.name, value, positive=True)


def _bool(*, optional: bool = False) -> _Validator:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not (optional and value is None):
            check_bool(attribute.name, value)

    return validate


def _nested(cls: type[StreamConfig] | type[RegistryConfig], field: str) -> Callable[[Any], Any]:
    """A converter taking a config, or a mapping for its ``from_dict`` (errors prefixed)."""

    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            try:
                return cls.from_dict(value)
            except ValidationError as exc:
                name = f"{field}.{exc.field}" if exc.field else field
                raise ValidationError(f"{field}: {exc}", field=name) from exc
        return value

    return convert


def _chat_path(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(
            f"{attribute.name} must be a str or None, got {type_name(value)}",
            field=attribute.name,
        )
    plain = value.isprintable() and not any(c in value for c in "?#%")
    if not (plain and value.startswith("/") and len(value) > 1) or value.endswith("/"):
        raise ValidationError(
            f"{attribute.name} must be a path such as '/chat' (a leading '/', no trailing "
            f"'/', no '?', '#' or '%'), got {value!r}",
            field=attribute.name,
        )
    if "//" in value:
        raise ValidationError(
            f"{attribute.name} must not hold an empty segment, got {value!r}",
            field=attribute.name,
        )


def _stream_config(value: Any) -> Any:
    return StreamConfig() if value is None else value


def _instance(cls: type[Any], *, optional: bool = False) -> _Validator:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not (optional and value is None) and not isinstance(value, cls):
            raise ValidationError(
                f"{attribute.name} must be a {cls.__name__}, got {type_name(value)}",
                field=attribute.name,
            )

    return validate


def _field_names(value: Any) -> Any:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValidationError(
            f"client_config_fields must be a collection of str, got {type_name(value)}",
            field="client_config_fields",
        )
    names = frozenset(value)
    for name in names:
        if not isinstance(name, str):
            raise ValidationError(
                f"client_config_fields must hold str, got {type_name(name)}",
                field="client_config_fields",
            )
    return names


@attrs.frozen(kw_only=True)
class StreamAppConfig:
    """The options of a :class:`~streamkit.asgi.StreamApp`, checked when built.

    Pass it as ``StreamApp(registry, config=StreamAppConfig(...))``, or build it from a
    settings file with :meth:`from_dict`. The same names are accepted as keyword
    arguments of ``StreamApp``; keywords given there override the config's.

    Attributes:
        registry_config: The config of the app's own registry (only when no registry is
            given to the app); in :meth:`from_dict`, a mapping of its fields.
        allow_anonymous: Serve requests ``authenticate`` does not identify (or all
            requests, without ``authenticate``) as the anonymous user ``None``. Off by
            default: a StreamApp without ``authenticate`` answers 401 to everything.
        stream_config: The :class:`~streamkit.StreamConfig` agent sessions start with;
            in :meth:`from_dict`, a mapping of its fields.
        client_config_fields: The StreamConfig fields a client may override in
            ``POST /sessions`` (``"config": {...}``); others are refused with 400.
        compression: gzip event streams for clients that accept it: ``True`` always,
            ``False`` never, ``None`` as the session's ``compression_enabled`` says.
        heartbeat_interval: Seconds of silence on an event stream before a heartbeat
            (an SSE comment, an empty NDJSON line). ``None``: none.
        write_timeout: Seconds one write to a client may take before it is dropped (a
            half-open client stops reading); for WebSockets, the connection is closed.
        retry_ms: The SSE ``retry:`` hint sent at the start of each stream.
        max_body_bytes: The largest JSON request body (413 past it).
        body_timeout: Seconds a request body may take to arrive in full (408 past it).
            ``None``: wait forever.
        max_ws_message_bytes: The largest WebSocket message a client may send.
        max_ws_subscriptions: Subscriptions one WebSocket connection may hold at once.
        max_connections_per_user: Event streams and WebSockets one authenticated user
            may hold open at once (429 past it). ``None``: no bound.
        ws_send_queue: Deprecated, without effect: a WebSocket subscription now waits
            for the client one message at a time, so a slow client holds back its own
            log cursor directly (where the registry's slow-consumer policy applies).
            Setting it warns.
        expose_stats: Serve ``GET /stats`` (to authenticated callers).
        chat_path: Where the AI SDK's ``useChat`` routes are served when the app has an
            agent: ``POST {chat_path}``, ``GET {chat_path}/{chat id}/stream`` (resume)
            and ``POST {chat_path}/{chat id}/stop``. ``None``: not served.
        openai_compatible: Serve ``POST /v1/chat/completions`` (``stream: true``
            only) when the app has an agent.

    Raises:
        ValidationError: a value is invalid; the error names the field.
    """

    registry_config: RegistryConfig | None = attrs.field(
        default=None,
        validator=_instance(RegistryConfig, optional=True),
    )
    allow_anonymous: bool = attrs.field(default=False, validator=_bool())
    stream_config: StreamConfig = attrs.field(
        factory=StreamConfig, converter=_stream_config, validator=_instance(StreamConfig)
    )
    client_config_fields: frozenset[str] = attrs.field(
        default=DEFAULT_CLIENT_CONFIG_FIELDS, converter=_field_names
    )
    compression: bool | None = attrs.field(default=None, validator=_bool(optional=True))
    heartbeat_interval: float | None = attrs.field(default=15.0, validator=_seconds)
    write_timeout: float | None = attrs.field(default=30.0, validator=_seconds)
    retry_ms: int | None = attrs.field(default=3000, validator=_int(0, optional=True))
    max_body_bytes: int = attrs.field(default=64 * 1024, validator=_int(1))
    body_timeout: float | None = attrs.field(default=30.0, validator=_seconds)
    max_ws_message_bytes: int = attrs.field(default=64 * 1024, validator=_int(1))
    max_ws_subscriptions: int = attrs.field(default=32, validator=_int(1))
    max_connections_per_user: int | None = attrs.field(
        default=128, validator=_int(1, optional=True)
    )
    ws_send_queue: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    expose_stats: bool = attrs.field(default=True, validator=_bool())
    chat_path: str | None = attrs.field(default="/chat", validator=_chat_path)
    openai_compatible: bool = attrs.field(default=True, validator=_bool())

    def __attrs_post_init__(self) -> None:
        known = set(self.stream_config.to_dict())
        for name in sorted(self.client_config_fields):
            if name not in known:
                raise ValidationError(
                    f"client_config_fields names an unknown StreamConfig field {name!r}",
                    field="client_config_fields",
                )
        if self.ws_send_queue is not None:
            warnings.warn(
                "StreamApp's ws_send_queue has no effect any more (a WebSocket "
                "subscription waits for its client one message at a time); drop it",
                DeprecationWarning,
                stacklevel=4,
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build a config from a mapping with the same names as the fields.

        Keys left out take their defaults; ``stream_config`` and ``registry_config`` may
        be nested mappings.

        Raises:
            ValidationError: a key is unknown or a value is invalid; the error names it.
        """
        names = frozenset(field.name for field in attrs.fields(cls))
        checked = dict(check_mapping_keys(cls.__name__, data, required=frozenset(), allowed=names))
        for field, config_class in (
            ("stream_config", StreamConfig),
            ("registry_config", RegistryConfig),
        ):
            if isinstance(checked.get(field), Mapping):
                checked[field] = _nested(config_class, field)(checked[field])
        return cls(**checked)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain data that :meth:`from_dict` accepts."""
        data: dict[str, Any] = {}
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, StreamConfig | RegistryConfig):
                value = value.to_dict()
            elif isinstance(value, frozenset):
                value = sorted(value)
            data[field.name] = value
        return data

    def replace(self, **changes: Any) -> Self:
        """Return a copy with ``changes`` applied and checked.

        Raises:
            ValidationError: a name is unknown or a value is invalid.
        """
        names = frozenset(field.name for field in attrs.fields(type(self)))
        check_mapping_keys(type(self).__name__, changes, required=frozenset(), allowed=names)
        if not changes:
            return self
        return attrs.evolve(self, **changes)
