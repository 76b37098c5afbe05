"""The default backend: session records and logs held in this process's memory."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ._errors import SessionLimitExceeded, SessionNotFound, ValidationError
from ._log import InMemoryEventLog
from ._session import _ENDINGS
from .abc import Backend, EventLog, SessionStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._config import RegistryConfig
    from ._session import SessionState, StreamSession

__all__ = ["MemoryBackend", "MemorySessionStore"]


class MemorySessionStore(SessionStore):
    """Session records in a dict.

    Every method completes without yielding, so the count bounds hold exactly under any
    number of concurrent tasks. The per-user count holds live sessions only: a session
    leaves it when it ends, not when its retained record is removed.
    """

    __slots__ = ("_per_user", "_sessions")

    def __init__(self) -> None:
        self._sessions: dict[str, StreamSession] = {}
        self._per_user: Counter[str] = Counter()

    async def add(
        self,
        session: StreamSession,
        *,
        max_sessions: int,
        max_sessions_per_user: int | None,
    ) -> None:
        """Store a new record unless a bound is reached (see :class:`~streamkit.abc.SessionStore`).

        Raises:
            SessionLimitExceeded: a count bound is reached.
            ValidationError: the id is already in use.
        """
        if session.session_id in self._sessions:
            raise ValidationError("session id already in use", field="session_id")
        if len(self._sessions) >= max_sessions:
            raise SessionLimitExceeded(
                f"the registry holds its maximum of {max_sessions} sessions", limit=max_sessions
            )
        user = session.user_id
        if (
            user is not None
            and max_sessions_per_user is not None
            and self._per_user[user] >= max_sessions_per_user
        ):
            raise SessionLimitExceeded(
                f"this user holds the maximum of {max_sessions_per_user} sessions",
                limit=max_sessions_per_user,
            )
        self._sessions[session.session_id] = session
        if user is not None:
            self._per_user[user] += 1

    async def get(self, session_id: str) -> StreamSession | None:
        """Return the record of ``session_id``, or ``None``."""
        return self._sessions.get(session_id)

    async def set_state(
        self, session_id: str, state: SessionState, *, now: float
    ) -> tuple[StreamSession, StreamSession]:
        """Move a session to ``state`` if the table allows it; return (before, after).

        Raises:
            SessionNotFound: there is no such record.
            InvalidTransition: the move is not allowed.
        """
        before = self._sessions.get(session_id)
        if before is None:
            raise SessionNotFound("no such session", session_id=session_id)
        after = before.transition(state, now=now)
        self._sessions[session_id] = after
        if state in _ENDINGS and before.status not in _ENDINGS:  # (is_terminal, no calls)
            self._forget_live(after)
        return before, after

    def _forget_live(self, session: StreamSession) -> None:
        user = session.user_id
        if user is not None:
            self._per_user[user] -= 1
            if not self._per_user[user]:
                del self._per_user[user]

    async def remove(self, session_id: str) -> StreamSession | None:
        """Delete a record and return it (``None`` if there was none)."""
        session = self._sessions.pop(session_id, None)
        if session is not None and not session.is_terminal:
            self._forget_live(session)
        return session

    async def list(self, user_id: str | None = None) -> Sequence[StreamSession]:
        """Return the records of ``user_id``, or all of them."""
        if user_id is None:
            return list(self._sessions.values())
        return [s for s in self._sessions.values() if s.user_id == user_id]

    async def count(self) -> int:
        """Return how many records the store holds."""
        return len(self._sessions)


class MemoryBackend(Backend):
    """Keeps everything in this process: the default of :class:`~streamkit.SessionRegistry`."""

    __slots__ = ("_store",)

    def __init__(self) -> None:
        self._store = MemorySessionStore()

    @property
    def store(self) -> MemorySessionStore:
        """The store of session records."""
        return self._store

    async def make_log(self, session_id: str, config: RegistryConfig) -> EventLog:
        """Return a new in-memory log with the limits of ``config``."""
        return InMemoryEventLog.from_config(session_id, config)

    async def delete_log(self, session_id: str) -> None:
        """Nothing to free: the registry drops its reference to the log."""
