"""Small checks shared by the model, the config classes and the edges.

Every check raises :class:`~streamkit.ValidationError` whose message names the field,
what was expected and what came, so that no ``KeyError`` or ``TypeError`` from deep
inside ever reaches a user. Checks return the (possibly normalised) value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from ._errors import ValidationError

#: A JSON value as streamkit stores it: read-only mappings and tuples inside.
JSONValue: TypeAlias = (
    "bool | int | float | str | tuple[JSONValue, ...] | Mapping[str, JSONValue] | None"
)

# What no wire-format field may hold (an SSE line, a header): CR, LF, NUL.
FORBIDDEN_IN_FIELDS: Final = re.compile(r"[\r\n\x00]")
_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,128}")
_MAX_JSON_DEPTH = 64
# A str may hold lone surrogates, which no UTF-8 wire format can carry.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_unicode(field: str, value: str) -> None:
    if not value.isascii() and _SURROGATE.search(value):
        raise ValidationError(
            f"{field} must be valid Unicode text, got a lone surrogate", field=field
        )


def type_name(value: object) -> str:
    """Return the name of ``value``'s type, for error messages."""
    return type(value).__name__


def check_str(field: str, value: object, *, allow_empty: bool = True) -> str:
    """Check that ``value`` is a ``str`` (and not empty unless allowed)."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a str, got {type_name(value)}", field=field)
    if not allow_empty and not value:
        raise ValidationError(f"{field} must not be empty", field=field)
    _check_unicode(field, value)
    return value


def check_wire_str(
    field: str, value: object, *, max_len: int | None = 256, allow_empty: bool = False
) -> str:
    """Check a string that may reach a wire-format field (no CR, LF or NUL)."""
    check_str(field, value, allow_empty=allow_empty)
    assert isinstance(value, str)
    if FORBIDDEN_IN_FIELDS.search(value):
        raise ValidationError(f"{field} must not contain CR, LF or NUL, got {value!r}", field=field)
    if max_len is not None and len(value) > max_len:
        raise ValidationError(
            f"{field} must be at most {max_len} characters, got {len(value)}", field=field
        )
    return value


def check_id(field: str, value: object) -> str:
    """Check an identifier: 1 to 128 characters of ``A-Z a-z 0-9 _ -``."""
    check_str(field, value, allow_empty=False)
    assert isinstance(value, str)
    if not _ID_RE.fullmatch(value):
        raise ValidationError(
            f"{field} must be 1 to 128 characters of A-Z, a-z, 0-9, '_' or '-', got {value!r}",
            field=field,
        )
    return value


def check_int(field: str, value: object, *, minimum: int | None = None) -> int:
    """Check an ``int`` (``bool`` is refused) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be an int, got {type_name(value)}", field=field)
    if minimum is not None and value < minimum:
        raise ValidationError(f"{field} must be >= {minimum}, got {value}", field=field)
    return value


def check_number(
    field: str,
    value: object,
    *,
    minimum: float | None = None,
    positive: bool = False,
) -> float:
    """Check a finite real number (``int`` or ``float``, not ``bool``); return it as float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{field} must be a number, got {type_name(value)}", field=field)
    number = float(value)
    if not math.isfinite(number):
        raise ValidationError(f"{field} must be finite, got {value!r}", field=field)
    if positive and number <= 0:
        raise ValidationError(f"{field} must be > 0, got {value!r}", field=field)
    if minimum is not None and number < minimum:
        raise ValidationError(f"{field} must be >= {minimum}, got {value!r}", field=field)
    return number


def check_choice(field: str, value: object, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of the strings ``choices``."""
    if value not in choices:
        allowed = ", ".join(map(repr, choices))
        raise ValidationError(f"{field} must be one of {allowed}, got {value!r}", field=field)
    return str(value)


def check_bool(field: str, value: object) -> bool:
    """Check a ``bool`` (``0`` and ``1`` are refused)."""
    if not isinstance(value, bool):
        raise ValidationError(f"{field} must be a bool, got {type_name(value)}", field=field)
    return value


#: The read-only empty JSON object: every empty one freezes to it, and every event or
#: session with no metadata or context shares it.
EMPTY_OBJECT: Final[Mapping[str, JSONValue]] = MappingProxyType({})


def freeze_json(field: str, value: object, _depth: int = 0) -> JSONValue:
    """Check that ``value`` is JSON-compatible and return a read-only copy of it.

    Objects become read-only mappings with ``str`` keys and arrays become tuples;
    floats must be finite. The error names the path of the offending item.
    """
    if isinstance(value, str):
        if not value.isascii():
            _check_unicode(field, value)
        return value
    if value is None or isinstance(value, int):  # bool is an int
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{field} must be finite, got {value!r}", field=field)
        return value
    if _depth >= _MAX_JSON_DEPTH:
        raise ValidationError(f"{field} nests deeper than {_MAX_JSON_DEPTH} levels", field=field)
    if type(value) is dict or isinstance(value, Mapping):  # a dict skips the ABC check
        frozen: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(
                    f"{field} keys must be str, got {type_name(key)}", field=field
                )
            if not key.isascii():
                _check_unicode(field, key)
            # Scalars inline (no path to format unless one is bad).
            if isinstance(item, str):
                if not item.isascii():
                    _check_unicode(f"{field}.{key}", item)
                frozen[key] = item
            elif item is None or isinstance(item, int):
                frozen[key] = item
            else:
                frozen[key] = freeze_json(f"{field}.{key}", item, _depth + 1)
        # An empty object is one shared mapping (a session's context, most often).
        return MappingProxyType(frozen) if frozen else EMPTY_OBJECT
    if isinstance(value, list | tuple):
        return tuple(freeze_json(f"{field}[{i}]", item, _depth + 1) for i, item in enumerate(value))
    raise ValidationError(f"{field} must be JSON-compatible, got {type_name(value)}", field=field)


def freeze_json_object(field: str, value: object) -> Mapping[str, JSONValue]:
    """Like :func:`freeze_json`, for a value that must be a JSON object (a mapping)."""
    if type(value) is not dict and not isinstance(value, Mapping):
        raise ValidationError(f"{field} must be a mapping, got {type_name(value)}", field=field)
    frozen = freeze_json(field, value)
    assert type(frozen) is MappingProxyType
    return frozen


def thaw_json(value: JSONValue) -> Any:
    """Return a plain ``dict``/``list`` copy of a value made by :func:`freeze_json`."""
    if isinstance(value, Mapping):
        return {key: thaw_json(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(item) for item in value]
    return value


def check_mapping_keys(
    what: str, data: object, *, required: frozenset[str], allowed: frozenset[str]
) -> Mapping[str, Any]:
    """Check that ``data`` is a mapping holding every required key and no unknown one."""
    if not isinstance(data, Mapping):
        raise ValidationError(f"{what} must be a mapping, got {type_name(data)}")
    for key in data:
        if key not in allowed:
            raise ValidationError(
                f"{what} has an unknown field {key!r} (allowed: {', '.join(sorted(allowed))})",
                field=str(key),
            )
    for key in sorted(required):
        if key not in data:
            raise ValidationError(f"{what} is missing the field {key!r}", field=key)
    return data
