"""The duck type every WebSocket-like transport fits, and the helpers its adapters share.

Rules of this module, and why:

* :class:`TextChannel` (defined in :mod:`streamkit.abc`, beside the other interfaces)
  is a :class:`typing.Protocol`, not a base class: Starlette's
  ``WebSocket``, a ``websockets`` connection and a raw ASGI ``receive``/``send`` pair are
  all wrapped by a few lines each, and a user's own transport needs no streamkit import.
* A channel speaks text only. A binary frame is the peer breaking the contract
  (:class:`~streamkit.RemoteProtocolError`), never data silently decoded.
* Foreign exceptions (a framework's disconnect, a closed socket) become
  :class:`~streamkit.Disconnected` in the adapter, chained with ``from``; nothing past
  the adapter ever sees them. Frameworks are recognised by class name so that no
  framework is imported by streamkit.
"""

from __future__ import annotations

from enum import IntEnum

from .._errors import ValidationError
from .._validate import check_int, check_str
from ..abc import TextChannel  # the protocol lives with the interfaces

__all__ = ["CloseCode", "TextChannel"]


class CloseCode(IntEnum):
    """The WebSocket close codes streamkit sends (RFC 6455, section 7.4.1)."""

    NORMAL = 1000
    """The connection did what it was for."""
    GOING_AWAY = 1001
    """The server is shutting down."""
    UNSUPPORTED_DATA = 1003
    """The peer sent a binary message on a text-only channel."""
    INVALID_DATA = 1007
    """The peer sent a message the application could not accept (bad JSON, bad field)."""
    POLICY_VIOLATION = 1008
    """The peer did something it may not (for example, asked for a session not its own)."""
    MESSAGE_TOO_BIG = 1009
    """The peer sent a message over ``max_message_size``."""
    INTERNAL_ERROR = 1011
    """The application failed, or the peer stopped answering pings."""
    TRY_AGAIN_LATER = 1013
    """The peer read too slowly and was dropped; it may reconnect and resume."""


#: The longest close reason the WebSocket protocol carries, in bytes of UTF-8.
MAX_REASON_BYTES = 123


def check_close(code: object, reason: object) -> tuple[int, str]:
    """Check a close code and reason given by a user.

    Raises:
        ValidationError: the code is not an int in 1000..4999, or the reason is not a
            str of at most 123 bytes of UTF-8.
    """
    check_int("code", code, minimum=1000)
    assert isinstance(code, int)
    if code > 4999:
        raise ValidationError(f"code must be <= 4999, got {code}", field="code")
    check_str("reason", reason)
    assert isinstance(reason, str)
    if len(reason.encode("utf-8", "surrogatepass")) > MAX_REASON_BYTES:
        raise ValidationError(
            f"reason must be at most {MAX_REASON_BYTES} bytes of UTF-8", field="reason"
        )
    return code, reason


def clip_reason(reason: str) -> str:
    """Shorten ``reason`` to fit a close frame (for reasons made from error messages)."""
    data = reason.encode("utf-8", "replace")
    if len(data) <= MAX_REASON_BYTES:
        return data.decode("utf-8")
    return data[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def is_foreign(exc: BaseException, package: str, names: frozenset[str]) -> bool:
    """Whether ``exc`` is an instance of a class called one of ``names`` from ``package``.

    Recognising a framework's exception by name keeps the framework unimported.
    """
    prefix = package + "."
    for cls in type(exc).__mro__:
        if cls.__name__ in names and (
            cls.__module__ == package or cls.__module__.startswith(prefix)
        ):
            return True
    return False


def text_size(text: str) -> int:
    """Return the size of ``text`` in bytes of UTF-8 (cheap for ASCII)."""
    if text.isascii():  # O(1) in CPython: a flag on the string
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))
