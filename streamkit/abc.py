"""Interfaces that storage backends implement and types that users pass in.

Implementers subclass the abstract base classes here; they inherit the async context
manager and async iterator plumbing. Two backends ship: the in-memory one (the default of
:class:`~streamkit.SessionRegistry`) and Redis (``streamkit.backends.redis``). Both run
the same conformance suite, :func:`streamkit.testing.check_event_log`.

The contracts, in short:

* :class:`EventLog` is one session's append-only log. ``append`` stamps a monotonic
  ``seq`` (1, 2, 3, ...) and the session id; after a final event (``complete`` or
  ``error``) or :meth:`EventLog.aclose` it refuses more with :class:`~streamkit.ClosedError`.
* :meth:`EventLog.read` returns an :class:`EventCursor`: it replays the retained events
  with ``seq > after``, then follows live ones, and stops after the final event (or at
  the end of the retained tail of a closed log). A resume point older than what is
  retained raises :class:`~streamkit.HistoryGap`; a reader that falls too far behind
  raises :class:`~streamkit.SubscriberLagged` (``disconnect`` policy) or makes the
  producer wait (``block`` policy). Nothing is ever skipped silently.
* :class:`SessionStore` keeps session records (:class:`~streamkit.StreamSession`
  snapshots) and enforces the session count bounds atomically.
* :class:`Backend` makes logs and owns a store; the registry goes through it for every
  piece of shared state.
* :class:`TextChannel` is the duck type of a WebSocket-like transport (a
  :class:`typing.Protocol`: implementations need no streamkit import);
  :mod:`streamkit.transports` adapts real transports to it.
* :data:`TokenSource` is what a producer may be.

This module sits in the streaming core layer (see docs/concepts.md): it imports only
the model, so every layer above can implement or use these interfaces.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, Self, TypeAlias, runtime_checkable

import attrs

from ._parts import Part

if TYPE_CHECKING:
    from types import TracebackType

    from ._config import RegistryConfig
    from ._events import StreamEvent
    from ._session import SessionState, StreamSession

__all__ = [
    "Backend",
    "EventCursor",
    "EventLog",
    "LogStatistics",
    "SessionStore",
    "TextChannel",
    "TokenSink",
    "TokenSource",
]

#: What :func:`~streamkit.stream_tokens` and :meth:`~streamkit.SessionRegistry.start`
#: accept as a producer: any async or sync iterable of text chunks (``str``, or
#: ``bytes`` of UTF-8, decoded incrementally) and of typed parts (:mod:`streamkit.parts`).
#: The one spelling of the type: the streamer and the registry import it from here.
TokenSource: TypeAlias = (
    AsyncIterable[str]
    | AsyncIterable[bytes]
    | AsyncIterable[str | Part]
    | Iterable[str]
    | Iterable[bytes]
    | Iterable[str | Part]
)


@attrs.frozen(kw_only=True)
class LogStatistics:
    """A snapshot of one event log's counters, from :meth:`EventLog.statistics`.

    Attributes:
        session_id: The session the log belongs to.
        last_seq: The sequence number of the newest event (``0`` if none yet); also the
            number of events ever appended.
        oldest_seq: The sequence number of the oldest retained event (``last_seq + 1``
            when none is retained).
        retained_events: Events held for replay.
        retained_bytes: Their size, as the log accounts it (see the implementation).
        readers: Cursors currently reading.
        events_delivered: Events handed to readers, summed over all readers.
        readers_lagged: Readers ended with :class:`~streamkit.SubscriberLagged`.
        producer_waits: Times an append waited for a slow reader (``block`` policy).
        closed: Whether the log takes no more appends.
    """

    session_id: str
    last_seq: int
    oldest_seq: int
    retained_events: int
    retained_bytes: int
    readers: int
    events_delivered: int
    readers_lagged: int
    producer_waits: int
    closed: bool


class EventCursor(AsyncIterator["StreamEvent"], metaclass=ABCMeta):
    """A reader's position in an :class:`EventLog`: iterate it to get events in order.

    A cursor is an async iterator and an async context manager; leaving the ``async
    with`` block (or calling :meth:`aclose`) releases it. It belongs to one task.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def position(self) -> int:
        """The ``seq`` of the last event this cursor returned (its resume point)."""

    @abstractmethod
    async def __anext__(self) -> StreamEvent:
        """Return the next event, waiting for one if the log is live.

        Raises:
            StopAsyncIteration: the final event was returned, the log was closed and
                its tail read, or the cursor was closed.
            HistoryGap: on the first call, ``after`` is older than what is retained.
            SubscriberLagged: the reader fell too far behind (``disconnect`` policy),
                or events it had not read yet left the retention window.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Release the cursor; later iteration ends at once. Idempotent."""

    def take_ready(self, limit: int) -> Sequence[StreamEvent]:
        """Return up to ``limit`` events the cursor already holds, without waiting.

        What it returns counts as iterated (the position moves past it). Transports
        use it to send a backlog in one write. The default holds nothing: ``()``.
        """
        return ()

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class EventLog(metaclass=ABCMeta):
    """One session's append-only event log, read through cursors.

    The log's limits (retained events and bytes, the largest event, the slow-consumer
    policy and lag) are set when it is made; see :class:`~streamkit.RegistryConfig` for
    their meaning. Properties reflect what this process knows; they never block.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def session_id(self) -> str:
        """The session this log belongs to; appended events are stamped with it."""

    @property
    @abstractmethod
    def last_seq(self) -> int:
        """The ``seq`` of the newest event, ``0`` before the first append."""

    @property
    @abstractmethod
    def oldest_seq(self) -> int:
        """The ``seq`` of the oldest retained event (``last_seq + 1`` if none is)."""

    @property
    @abstractmethod
    def is_closed(self) -> bool:
        """Whether the log takes no more appends (final event appended, or closed)."""

    @abstractmethod
    async def append(self, event: StreamEvent) -> StreamEvent:
        """Store ``event`` as the next one and return the stored copy.

        The stored event carries the next ``seq`` and the log's ``session_id``; the
        argument itself is never changed. A ``complete`` or ``error`` event is final:
        the log closes after it. Under the ``block`` policy this waits while the
        slowest reader is more than ``max_lag`` events behind.

        Args:
            event: The event to store.

        Returns:
            The stored event.

        Raises:
            ClosedError: the log is closed.
            PayloadTooLarge: the event is larger than the log's ``max_event_bytes``.
            ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`.
        """

    def append_nowait(self, event: StreamEvent, *, owned: bool = False) -> StreamEvent | None:
        """Store ``event`` as the next one if that takes no waiting; return the stored event.

        The declared fast path: it never yields, so a producer may call it where it must
        not wait (the registry appends a stream's tokens from the task that runs the
        stream's source). It returns ``None``, having stored nothing, when storing would
        mean waiting: the ``block`` policy holding the producer back, or a log whose
        appends do I/O. The caller then awaits :meth:`append`, which waits or raises.
        A log implements it when it can store without waiting; the default stores
        nothing and always returns ``None`` (for a log that is not closed).

        Args:
            event: The event to store.
            owned: The caller made ``event`` and holds the only reference to it (its
                ``seq`` is ``None``): the log may stamp it in place, with its ``seq``
                and session id, instead of storing a copy. Never pass an event another
                task may hold.

        Returns:
            The stored event (``event`` itself when it was stamped in place), or
            ``None`` when the event was not taken.

        Raises:
            ClosedError: the log is closed.
            PayloadTooLarge: the event is larger than the log's ``max_event_bytes``.
            ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`.
        """
        from ._errors import ClosedError, ValidationError
        from ._events import StreamEvent

        if not isinstance(event, StreamEvent):
            raise ValidationError("event must be a StreamEvent", field="event")
        if self.is_closed:
            raise ClosedError("the event log is closed", session_id=self.session_id)
        return None

    @abstractmethod
    def read(self, after: int = 0) -> EventCursor:
        """Return a cursor over the events with ``seq > after``, replayed then live.

        Nothing is checked until the cursor's first ``__anext__``: that is where a
        :class:`~streamkit.HistoryGap` comes out when ``after < oldest_seq - 1``. A
        cursor on a closed log with ``after >= last_seq`` ends at once; on a live log
        it waits for the next event.

        Args:
            after: The last ``seq`` the reader already has (``0``: from the start).

        Raises:
            ValidationError: ``after`` is not an ``int >= 0``.
        """

    @abstractmethod
    def retained(self) -> Sequence[StreamEvent]:
        """Return a read-only view of the retained events, oldest first."""

    @abstractmethod
    def statistics(self) -> LogStatistics:
        """Return a snapshot of the log's counters."""

    async def sync(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Reload this process's view of a log other processes also write.

        After it, the properties and :meth:`retained` include what other processes
        appended. The in-memory log is always in sync: the default does nothing.

        Raises:
            BackendError: the storage failed.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Close the log for writers. Idempotent.

        Later appends raise :class:`~streamkit.ClosedError`; readers get the retained
        tail and then stop, without a final event unless one was appended before.
        """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@runtime_checkable
class TokenSink(Protocol):
    """Where a stream's producer task may hand its ``token`` events (the fast path).

    Given to :func:`~streamkit.stream_tokens` as ``sink=``. Inside ``async with``, while
    the stream's consumer waits for items, the task that runs the source makes each
    ``token`` event itself and offers it here instead of waking the consumer. The
    registry gives one that appends to the session's log with
    :meth:`EventLog.append_nowait`.
    """

    def offer(self, event: StreamEvent) -> bool:
        """Take ``event`` and return ``True``, or return ``False`` having done nothing.

        An event refused is returned by the stream's ``__anext__`` as usual, before
        any later one: nothing is lost and the order holds. Called from the stream's
        producer task, never for a ``start``, ``heartbeat`` or final event; it must
        not block and should not raise (an exception fails the stream's source).
        """
        ...


class SessionStore(metaclass=ABCMeta):
    """Where session records live: what the registry needs from storage.

    A record is a :class:`~streamkit.StreamSession` snapshot without its events (the
    events are in the session's :class:`EventLog`). Counting bounds are enforced by
    :meth:`add` atomically, so that ``max_sessions`` stays exact under concurrency even
    when several processes share the store.
    """

    __slots__ = ()

    @abstractmethod
    async def add(
        self,
        session: StreamSession,
        *,
        max_sessions: int,
        max_sessions_per_user: int | None,
    ) -> None:
        """Store a new record, unless a count bound would be exceeded.

        Args:
            session: The new record; its id must not be in the store.
            max_sessions: How many records the store may hold at once.
            max_sessions_per_user: How many live (not ended) records one ``user_id`` may
                hold (``None``: no bound; anonymous sessions are not counted per user). A
                record stops counting when :meth:`set_state` ends it.

        Raises:
            SessionLimitExceeded: a bound is reached; nothing was stored.
            ValidationError: the id is already in use.
        """

    @abstractmethod
    async def get(self, session_id: str) -> StreamSession | None:
        """Return the record of ``session_id``, or ``None`` if there is none."""

    @abstractmethod
    async def set_state(
        self, session_id: str, state: SessionState, *, now: float
    ) -> tuple[StreamSession, StreamSession]:
        """Move a session to ``state`` if the transition table allows it.

        Args:
            session_id: The session.
            state: The requested state.
            now: The time of the change, Unix seconds.

        Returns:
            The record before and after the change.

        Raises:
            SessionNotFound: there is no such record.
            InvalidTransition: the move is not allowed from the current state.
        """

    @abstractmethod
    async def remove(self, session_id: str) -> StreamSession | None:
        """Delete a record and return it (``None`` if there was none)."""

    @abstractmethod
    async def list(self, user_id: str | None = None) -> Sequence[StreamSession]:
        """Return the records of ``user_id``, or every record if it is ``None``."""

    @abstractmethod
    async def count(self) -> int:
        """Return how many records the store holds."""

    async def get_many(self, session_ids: Sequence[str]) -> Sequence[StreamSession | None]:
        """Return the records of ``session_ids``, in order (``None`` for a missing one).

        The default calls :meth:`get` for each; a networked store does it in one trip.
        """
        return [await self.get(session_id) for session_id in session_ids]


class Backend(metaclass=ABCMeta):
    """A storage backend: a :class:`SessionStore` and a maker of :class:`EventLog`.

    A backend that several processes share (Redis) also has *leases*: each live session
    is owned by the backend instance (worker) that created it, which renews its leases;
    when a worker dies, its leases expire and another worker claims its sessions
    (:meth:`claim_orphans`) and ends them. Ended sessions are scheduled for removal so
    that any worker can remove them (:meth:`claim_removals`). A process-local backend
    has no leases: :attr:`lease_ttl` is ``None`` and the registry never calls those
    methods (their defaults do nothing).
    """

    __slots__ = ()

    @property
    def lease_ttl(self) -> float | None:
        """Seconds a lease lasts without renewal; ``None`` for a process-local backend."""
        return None

    async def renew_leases(self, session_ids: Collection[str]) -> Collection[str]:
        """Renew this worker's leases on ``session_ids``; return those it lost.

        Raises:
            BackendError: the storage failed.
        """
        return ()

    async def claim_orphans(self, limit: int) -> Sequence[str]:
        """Claim up to ``limit`` live sessions whose owner's lease expired.

        Each is claimed by exactly one caller, which must end it.

        Raises:
            BackendError: the storage failed.
        """
        return ()

    async def schedule_removal(self, session_id: str, delay: float) -> None:  # noqa: B027
        """Let any worker remove the ended session ``session_id`` after ``delay`` s.

        Raises:
            BackendError: the storage failed.
        """

    async def claim_removals(self, limit: int) -> Sequence[str]:
        """Claim up to ``limit`` ended sessions now due for removal.

        Raises:
            BackendError: the storage failed.
        """
        return ()

    @property
    @abstractmethod
    def store(self) -> SessionStore:
        """The store of session records."""

    @abstractmethod
    async def make_log(self, session_id: str, config: RegistryConfig) -> EventLog:
        """Return the log of ``session_id`` with the limits of ``config``.

        Raises:
            BackendError: the storage failed.
        """

    @abstractmethod
    async def delete_log(self, session_id: str) -> None:
        """Free the storage of a session's log (the registry removed the session)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release the backend's resources (connections). The default does nothing."""


@runtime_checkable
class TextChannel(Protocol):
    """Anything that sends and receives WebSocket text messages.

    Implementations are adapters over a real transport (see
    :mod:`streamkit.transports`) or the in-memory pair of
    :func:`~streamkit.transports.memory_channel_pair`. The contract:

    * :meth:`send_text` and :meth:`receive_text` raise
      :class:`~streamkit.Disconnected` once the peer has gone (or the channel was
      closed locally), and only that: framework exceptions never leak out.
    * :meth:`receive_text` raises :class:`~streamkit.RemoteProtocolError` for a message
      that is not text (a binary frame).
    * :meth:`close` is idempotent and returns quietly when the peer has already gone.

    One task may send while another receives; two tasks must not send (or receive)
    at the same time on one channel.
    """

    async def send_text(self, text: str) -> None:
        """Send one text message.

        Args:
            text: The message.

        Raises:
            Disconnected: the peer has gone or the channel is closed.
        """
        ...

    async def receive_text(self) -> str:
        """Wait for the next text message and return it.

        Returns:
            The message.

        Raises:
            Disconnected: the peer has gone or the channel is closed.
            RemoteProtocolError: the peer sent a message that is not text.
        """
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the channel with a WebSocket close code and reason. Idempotent.

        Args:
            code: The close code (1000 to 4999).
            reason: A short explanation (at most 123 bytes of UTF-8).
        """
        ...
