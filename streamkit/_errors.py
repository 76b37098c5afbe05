"""Every exception streamkit raises, in one place.

The tree::

    StreamkitError                       (status_hint 500)
    ├── ValidationError(ValueError)      400  bad input made locally: a field, an argument
    │   └── PayloadTooLarge              413  an event, body or message over its size bound
    ├── RemoteProtocolError(ValueError)  400  bytes from a peer that break the wire format
    ├── SessionNotFound(LookupError)     404  no such session (or not visible to the caller)
    ├── PermissionDenied                 403  the caller may not read or control the session
    ├── SessionLimitExceeded             429  a count bound was reached (sessions, subscribers)
    ├── InvalidTransition                409  a session state change the table forbids
    ├── ClosedError                      409  the log or session has ended: no more appends
    ├── HistoryGap                       410  the resume point is no longer retained
    │   └── SubscriberLagged             410  a reader fell too far behind the head
    ├── BackendError                     503  the storage backend (Redis) failed
    └── Disconnected                     499  the peer of a transport went away

Local misuse and remote garbage are different classes on purpose: a server answers the
first with a bug report and the second with a 400 to the peer. Every error carries a
``status_hint``, the HTTP status the ASGI layer answers with, and, where one applies,
the ``session_id`` it concerns. Foreign exceptions (redis, a framework's WebSocket
disconnect) are translated at the boundary that meets them and chained with ``from``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BackendError",
    "ClosedError",
    "Disconnected",
    "HistoryGap",
    "InvalidTransition",
    "PayloadTooLarge",
    "PermissionDenied",
    "RemoteProtocolError",
    "SessionLimitExceeded",
    "SessionNotFound",
    "StreamkitError",
    "SubscriberLagged",
    "ValidationError",
]


class StreamkitError(Exception):
    """Base class of every error streamkit raises.

    Attributes:
        message: The human-readable explanation.
        session_id: The session the error concerns, when there is one.
        status_hint: The HTTP status a server should answer with.
    """

    status_hint: ClassVar[int] = 500
    #: A short stable code for JSON error bodies and WebSocket error messages.
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.session_id = session_id

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description: ``code``, ``message`` and known context."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.session_id is not None:
            body["session_id"] = self.session_id
        return body


class ValidationError(StreamkitError, ValueError):
    """A value made or passed locally is invalid.

    Attributes:
        field: The name of the offending field or argument, when one is known.
    """

    status_hint = 400
    code = "invalid"

    def __init__(
        self, message: str, *, field: str | None = None, session_id: str | None = None
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.field is not None:
            body["field"] = self.field
        return body


class PayloadTooLarge(ValidationError):
    """An event, request body or message is larger than its configured bound."""

    status_hint = 413
    code = "too_large"


class RemoteProtocolError(StreamkitError, ValueError):
    """A peer sent bytes that break the wire format (SSE, NDJSON, WebSocket JSON).

    Attributes:
        line: The 1-based line number where the problem was found, when known.
    """

    status_hint = 400
    code = "protocol_error"

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class SessionNotFound(StreamkitError, LookupError):
    """No session with this id exists, or the caller may not know that it does."""

    status_hint = 404
    code = "not_found"


class PermissionDenied(StreamkitError):
    """The caller is not allowed to read or control this session."""

    status_hint = 403
    code = "forbidden"


class SessionLimitExceeded(StreamkitError):
    """A count bound was reached: sessions, sessions per user, subscribers, connections.

    Attributes:
        limit: The bound that was reached.
    """

    status_hint = 429
    code = "limit_exceeded"

    def __init__(self, message: str, *, limit: int, session_id: str | None = None) -> None:
        super().__init__(message, session_id=session_id)
        self.limit = limit

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["limit"] = self.limit
        return body


class InvalidTransition(StreamkitError):
    """A session state change that the transition table does not allow.

    Attributes:
        current: The state the session is in.
        requested: The state that was asked for.
    """

    status_hint = 409
    code = "invalid_transition"

    def __init__(self, current: str, requested: str, *, session_id: str | None = None) -> None:
        super().__init__(
            f"cannot move a session from {current!r} to {requested!r}", session_id=session_id
        )
        self.current = current
        self.requested = requested


class ClosedError(StreamkitError):
    """The log, session or resource has ended and takes no more input."""

    status_hint = 409
    code = "closed"


class HistoryGap(StreamkitError):
    """The requested resume point is older than what the log still retains.

    The events between ``after`` and ``oldest_seq`` are gone; a client can restart from
    ``oldest_seq - 1`` knowing that it missed them, but is never silently skipped ahead.

    Attributes:
        after: The sequence number the reader asked to resume after.
        oldest_seq: The oldest sequence number still retained (``None`` if none is).
    """

    status_hint = 410
    code = "history_gap"

    def __init__(
        self,
        message: str,
        *,
        after: int,
        oldest_seq: int | None,
        session_id: str | None = None,
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.after = after
        self.oldest_seq = oldest_seq

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["after"] = self.after
        body["oldest_seq"] = self.oldest_seq
        return body


class SubscriberLagged(HistoryGap):
    """A reader fell more than the allowed lag behind the head and was disconnected.

    ``after`` is the last sequence number the reader received: resume from it.
    """

    code = "lagged"


class BackendError(StreamkitError):
    """The storage backend failed (for example, Redis is unreachable)."""

    status_hint = 503
    code = "backend_error"


class Disconnected(StreamkitError):
    """The peer of a transport went away (closed socket, WebSocket close frame).

    Attributes:
        close_code: The WebSocket close code the peer sent, when one is known.
    """

    status_hint = 499
    code = "disconnected"

    def __init__(
        self, message: str, *, close_code: int | None = None, session_id: str | None = None
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.close_code = close_code

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.close_code is not None:
            body["close_code"] = self.close_code
        return body
