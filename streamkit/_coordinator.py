"""What a registry does locally and what only a shared backend needs, one object each.

A :class:`~streamkit.SessionRegistry` picks its coordinator once, when it is made:

* :class:`LocalCoordinator` for a backend without leases (the memory backend): this
  process is the only writer, so every method is the local answer or does nothing.
* :class:`SharedCoordinator` for a backend with leases (Redis): other workers create and
  change sessions too. A session this registry did not create is loaded from the store
  as a *remote* entry (no producer here), cached only while it has subscribers here;
  the record is re-read from the store on every call, and one lease task per registry
  renews the leases of the sessions it owns, reads their records (so that a pause,
  resume or end made on another worker takes effect here within ``lease_ttl / 3``),
  and ends the sessions of dead workers. Ending a session there sets its state in the
  store *first*: only one worker wins, and the others adopt its state without adding
  a second final event.

The registry's methods call the coordinator where the two modes differ; none of them
tests the mode. The entry's lifecycle (:class:`EntryPhase`) lives here too.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import anyio
import attrs

from ._errors import ClosedError, InvalidTransition, SessionNotFound
from ._events import EventType, StreamEvent, make_event
from ._log import InMemoryEventLog
from ._session import SessionState, events_view
from ._signals import signal_factory

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from anyio.abc import TaskGroup

    from ._registry import SessionRegistry, _LogSink
    from ._session import StreamSession
    from ._signals import Signal
    from ._streamer import TokenStream
    from .abc import EventLog

__all__ = [
    "Coordinator",
    "EntryPhase",
    "LocalCoordinator",
    "SharedCoordinator",
    "cancel_producer",
    "hold",
    "make_coordinator",
    "producer_lost",
]

logger = logging.getLogger("streamkit.registry")

#: Sessions claimed per pass of the shared sweeps (removals, orphans).
_SWEEP_BATCH: Final = 100


class EntryPhase(enum.Enum):
    """Where a session held by this process is in its life, as this process sees it."""

    #: It may produce: active, or paused (a pause holds its producer, see ``_hold``).
    LIVE = "live"
    #: Its end is under way or done (final event, state): nothing more is appended here.
    ENDING = "ending"


class _Entry:
    """What this process holds for one session besides its record."""

    __slots__ = (
        "_noted_at",
        "delivered_gone",
        "log",
        "phase",
        "producer",
        "recorded",
        "remote",
        "removed",
        "resumed",
        "session",
        "sink",
        "stream",
        "subscribers",
        "tokens_of",
    )

    def __init__(
        self, session: StreamSession, log: EventLog, now: float, *, remote: bool = False
    ) -> None:
        self.session = session
        # Made by another worker (shared backend): no producer here, not swept here. Fixed
        # for the entry's life: where it was made, not a state it goes through.
        self.remote = remote
        self.log = log
        # What stops its producer (cancel_producer): the producer's cancel scope, or on
        # asyncio with one task per session its stream itself (TokenStream._stop).
        self.producer: anyio.CancelScope | TokenStream | None = None
        # The producer noted its stream's statistics (at the final event).
        self.recorded = False
        self.stream: TokenStream | None = None
        # Unset while paused: the producer waits for it. None (no pause yet) or set: go.
        self.resumed: Signal | None = None
        self.phase = EntryPhase.LIVE
        self.subscribers = 0
        self._noted_at = now
        # The stream whose tokens its sink appends, when its clock is the registry's:
        # the time of its last token is then activity too, read here instead of noted
        # at every token (see last_event_at).
        self.tokens_of: TokenStream | None = None
        # The session's TokenSink while its stream runs (see _registry._LogSink).
        self.sink: _LogSink | None = None
        self.delivered_gone = 0
        # Set by the registry's removal, so that a second one (two closes) does nothing.
        self.removed = False

    @property
    def last_event_at(self) -> float:
        """When the session last had an event (the registry's clock): for upkeep."""
        at = self._noted_at
        stream = self.tokens_of
        if stream is not None:
            made = stream._last_token_at
            if made is not None and made > at:
                return made
        return at

    @last_event_at.setter
    def last_event_at(self, at: float) -> None:
        self._noted_at = at

    @property
    def finishing(self) -> bool:
        """Whether the session's end is under way or done here."""
        return self.phase is EntryPhase.ENDING


def producer_lost() -> StreamEvent:
    """The final event of a session whose worker stopped renewing its lease."""
    return make_event(
        EventType.ERROR,
        "",
        MappingProxyType(
            {
                "error_type": "ProducerLost",
                "message": "the worker that owned this session stopped renewing its lease",
            }
        ),
    )


def cancel_producer(entry: _Entry) -> None:
    """Stop the session's producer, if it has one (its scope, or its stream's drive)."""
    producer = entry.producer
    if producer is None:
        return
    if isinstance(producer, anyio.CancelScope):
        producer.cancel()
    else:
        producer._stop()


def hold(entry: _Entry, *, paused: bool) -> None:
    """Stop (``paused``) or let go a session's producer, whichever worker asked."""
    if paused:
        if entry.resumed is None or entry.resumed.is_set():
            entry.resumed = signal_factory()()
        if entry.stream is not None:
            entry.stream.pause()  # the source stops before its next item
    else:
        if entry.stream is not None:
            entry.stream.resume()
        if entry.resumed is not None:
            entry.resumed.set()


class Coordinator:
    """The local coordinator's interface, and its behaviour: one process, one writer."""

    __slots__ = ("_registry",)

    #: Whether a stream's tokens may be appended from its source task (a sink).
    direct_appends: bool = True
    #: Whether only this process ends its sessions: once a session is ending, nothing
    #: cancels its producer (another worker may remove it, with a shared backend).
    local: bool = True

    def __init__(self, registry: SessionRegistry) -> None:
        self._registry = registry

    def start(self, tg: TaskGroup) -> None:
        """Start the coordinator's own tasks in the registry's task group (none here)."""

    async def lookup(self, session_id: str, entry: _Entry | None) -> _Entry:
        """Return the entry of ``session_id`` (``entry``: what the registry holds).

        Raises:
            SessionNotFound: there is no such session.
        """
        if entry is None:
            raise SessionNotFound("no such session", session_id=session_id)
        return entry

    def held(self, session_id: str) -> _Entry | None:
        """Return an entry of another worker's session held here (never, locally)."""
        return None

    def remote_entries(self) -> Iterable[_Entry]:
        """The entries of other workers' sessions held here (none, locally)."""
        return ()

    async def sync(self, entry: _Entry) -> None:
        """Bring the entry's log up to date with other workers' appends (nothing here)."""

    async def list(self, user_id: str | None) -> Sequence[StreamSession]:
        """Return snapshots of the sessions of ``user_id``, or of every session."""
        registry = self._registry
        return [
            registry._snapshot(entry)
            for entry in registry._entries.values()
            if user_id is None or entry.session.user_id == user_id
        ]

    async def refused(self, entry: _Entry) -> None:
        """The log refused an append (closed): re-read the entry's state (nothing here)."""

    async def end(
        self, entry: _Entry, state: SessionState, final: StreamEvent, *, fresh: bool = False
    ) -> tuple[StreamSession, StreamSession, StreamEvent]:
        """Append the final event, then set the state; return (before, after, stored).

        ``fresh``: ``final`` comes from the session's own stream and nothing else holds
        it, so the log may stamp it in place (no copy, its size hint kept).
        """
        registry = self._registry
        session_id = entry.session.session_id
        stored = final
        log = entry.log
        if not log.is_closed:
            taken = log.append_nowait(final, owned=True) if fresh else None
            stored = await log.append(final) if taken is None else taken
            registry._counts["appended"] += 1
        before, after = await registry.backend.store.set_state(session_id, state, now=time.time())
        return before, after, stored

    async def sweep(self) -> int:
        """The shared part of a sweep; return what it ended or removed (nothing here)."""
        return 0

    def stopping(self, entries: Iterable[_Entry]) -> None:
        """The registry shuts down: no session's end may wait for a reader now.

        A ``block``-policy log would hold a final event back until a reader makes room,
        and at shutdown no reader may come: a producer ending its own session would
        be cancelled half-way (its session never ended), and the shutdown's own end of
        a session would wait for ever. The memory log stops blocking instead.
        """
        for entry in entries:
            log = entry.log
            if type(log) is InMemoryEventLog:
                log._stop_blocking()

    def forget_remote(self, entry: _Entry) -> bool:
        """Drop ``entry`` if it is another worker's session held here; whether it was."""
        return False

    def subscriber_left(self, entry: _Entry) -> None:
        """A subscriber of ``entry`` left (a remote entry is held only while read)."""


class LocalCoordinator(Coordinator):
    """The coordinator of a backend that only this process writes (memory)."""

    __slots__ = ()


class SharedCoordinator(Coordinator):
    """The coordinator of a backend with leases, shared by several workers (Redis)."""

    __slots__ = ("_remote", "_ttl")

    local = False

    def __init__(self, registry: SessionRegistry, lease_ttl: float) -> None:
        super().__init__(registry)
        self._ttl = lease_ttl
        # Sessions of other workers that this one serves.
        self._remote: dict[str, _Entry] = {}

    def stopping(self, entries: Iterable[_Entry]) -> None:
        """The registry shuts down (nothing here: a shared log's policy is its own)."""

    def start(self, tg: TaskGroup) -> None:
        """Start the lease task."""
        tg.start_soon(self._lease_keeper, name="streamkit leases")

    def held(self, session_id: str) -> _Entry | None:
        """Return the entry of another worker's session held here, if any."""
        return self._remote.get(session_id)

    def remote_entries(self) -> Iterable[_Entry]:
        """The entries of other workers' sessions held here."""
        return tuple(self._remote.values())

    async def lookup(self, session_id: str, entry: _Entry | None) -> _Entry:
        """Return the entry of a session in the shared store, its record re-read.

        Raises:
            SessionNotFound: the store has no such record.
            BackendError: the store failed.
        """
        registry = self._registry
        record = await registry.backend.store.get(session_id)
        if record is None:
            if entry is not None:
                self._forget(entry)
            raise SessionNotFound("no such session", session_id=session_id)
        if entry is None:
            log = await registry.backend.make_log(session_id, registry.config)
            known = registry._entries.get(session_id) or self._remote.get(session_id)
            if known is None:  # nobody made it during the await
                made = _Entry(record, log, registry._clock(), remote=True)
                self._remote[session_id] = made
                return made
            entry = known
        self.adopt(entry, record)
        return entry

    async def sync(self, entry: _Entry) -> None:
        """Reload the entry's log: other workers append to it."""
        await entry.log.sync()

    async def list(self, user_id: str | None) -> Sequence[StreamSession]:
        """List the store: the sessions of every worker (others' without their events)."""
        registry = self._registry
        out: list[StreamSession] = []
        for record in await registry.backend.store.list(user_id):
            entry = registry._entries.get(record.session_id)
            out.append(
                record
                if entry is None
                else attrs.evolve(record, events=events_view(entry.log.retained()))
            )
        return out

    async def refused(self, entry: _Entry) -> None:
        """Another worker may have ended the session: take its state from the store."""
        if not entry.finishing:
            with contextlib.suppress(SessionNotFound):
                await self.lookup(entry.session.session_id, entry)

    async def end(
        self, entry: _Entry, state: SessionState, final: StreamEvent, *, fresh: bool = False
    ) -> tuple[StreamSession, StreamSession, StreamEvent]:
        """Set the state first (one worker wins), then append the final event.

        ``fresh`` is not used: a shared log's append does I/O whatever the event.
        """
        registry = self._registry
        session_id = entry.session.session_id
        before, after = await self._set_final_state(entry, state)
        stored = final
        with contextlib.suppress(ClosedError):
            stored = await entry.log.append(final)
            registry._counts["appended"] += 1
        await registry.backend.schedule_removal(session_id, registry.config.ended_session_ttl)
        return before, after, stored

    async def _set_final_state(
        self, entry: _Entry, state: SessionState
    ) -> tuple[StreamSession, StreamSession]:
        # The state first: of several workers ending a session at once, one wins the
        # store's transition and appends the final event; the others adopt its state.
        registry = self._registry
        session_id = entry.session.session_id
        try:
            return await registry.backend.store.set_state(session_id, state, now=time.time())
        except InvalidTransition:
            record = await registry.backend.store.get(session_id)
            if record is not None:
                entry.phase = EntryPhase.LIVE
                self.adopt(entry, record)
                entry.phase = EntryPhase.ENDING
            raise

    async def sweep(self) -> int:
        """Remove the due ended sessions of any worker (a dead one's included).

        Each is claimed by one worker; at most ``_SWEEP_BATCH`` per pass.
        """
        registry = self._registry
        done = 0
        for session_id in await registry.backend.claim_removals(_SWEEP_BATCH):
            entry = registry._entries.get(session_id)
            if entry is not None:
                await registry._remove(entry)
            else:
                self._remote.pop(session_id, None)
                with anyio.CancelScope(shield=True):
                    await registry.backend.delete_log(session_id)
                    await registry.backend.store.remove(session_id)
            done += 1
        for session_id, entry in list(self._remote.items()):
            if not entry.subscribers:
                del self._remote[session_id]
        return done

    def forget_remote(self, entry: _Entry) -> bool:
        """Drop ``entry`` if it is another worker's session held here; whether it was."""
        session_id = entry.session.session_id
        if self._remote.get(session_id) is entry:
            del self._remote[session_id]
            return True
        return False

    def subscriber_left(self, entry: _Entry) -> None:
        """A remote entry is cached only while someone here reads it."""
        if entry.remote and not entry.subscribers:
            self.forget_remote(entry)

    async def _lease_keeper(self) -> None:
        while True:
            await anyio.sleep(self._ttl / 3)
            try:
                await self._keep_leases()
            except Exception:
                logger.exception("streamkit: renewing leases failed")

    async def _keep_leases(self) -> None:
        """Renew owned leases, adopt remote state changes, end dead workers' sessions."""
        registry = self._registry
        backend = registry.backend
        owned = [e for e in registry._entries.values() if not e.finishing]
        if owned:
            ids = [e.session.session_id for e in owned]
            lost = set(await backend.renew_leases(ids))
            records = await backend.store.get_many(ids)
            for entry, record in zip(owned, records, strict=True):
                if entry.finishing:
                    continue
                if record is None:
                    self._forget(entry)
                    continue
                self.adopt(entry, record)
                if entry.session.session_id in lost and not entry.finishing:
                    await registry._end_quietly(entry, SessionState.ERROR, producer_lost())
        for session_id in await backend.claim_orphans(_SWEEP_BATCH):
            # Claimed by this worker alone: it must end the session.
            orphan = registry._entries.get(session_id) or self._remote.get(session_id)
            if orphan is None or orphan.finishing:  # (finishing: a finish that failed)
                found = await backend.store.get(session_id)
                if found is None or found.is_terminal:
                    continue
                log = await backend.make_log(session_id, registry.config)
                orphan = _Entry(found, log, registry._clock(), remote=True)
            await registry._end_quietly(orphan, SessionState.ERROR, producer_lost())

    def adopt(self, entry: _Entry, record: StreamSession) -> None:
        """Take a state that another worker set in the shared store."""
        registry = self._registry
        before = entry.session
        if entry.finishing or record.updated_at < before.updated_at:
            return
        entry.session = record
        if record.status is before.status:
            return
        session_id = record.session_id
        if record.is_terminal:
            entry.phase = EntryPhase.ENDING
            cancel_producer(entry)  # quietly: the final event is already there
            if entry.resumed is not None:
                entry.resumed.set()
            registry._idle.pop(session_id, None)
            registry._unwatched.pop(session_id, None)
            if not entry.remote:
                registry._ended[session_id] = registry._clock()
        else:
            hold(entry, paused=record.status is SessionState.PAUSED)
        registry._emit("state_changed", before, record)

    def _forget(self, entry: _Entry) -> None:
        """Drop an entry whose record another worker removed."""
        registry = self._registry
        session_id = entry.session.session_id
        entry.phase = EntryPhase.ENDING
        cancel_producer(entry)
        if entry.resumed is not None:
            entry.resumed.set()
        for queue in (registry._idle, registry._unwatched, registry._ended):
            queue.pop(session_id, None)
        if registry._entries.get(session_id) is entry:
            del registry._entries[session_id]
        self.forget_remote(entry)


def make_coordinator(registry: SessionRegistry) -> Coordinator:
    """Return the coordinator for the registry's backend: shared if it has leases."""
    ttl = registry.backend.lease_ttl
    return LocalCoordinator(registry) if ttl is None else SharedCoordinator(registry, ttl)
