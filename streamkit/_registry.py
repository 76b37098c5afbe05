"""SessionRegistry: sessions with owners, producers in the background, and their upkeep.

Rules of this module:

* **Every task has an owner.** The registry is an async context manager around one task
  group: producers, the sweeper and the heartbeat task run in it, and leaving the block
  ends them all. Before it does, every live session gets its final event, so that its
  subscribers end cleanly instead of hanging.
* **Exactly one final event per session.** Whoever ends a session (its producer, a
  cancel, the sweeper, shutdown) goes through :meth:`SessionRegistry._finish`, which
  marks the session as finishing *before* it awaits anything: a second caller finds
  it marked and does nothing.
* **Bounds are checked before any await** (in the store, atomically), so
  ``max_sessions`` is exact under any number of concurrent ``create`` calls.
* **Upkeep costs what it finds.** Sessions sit in insertion-ordered maps keyed by
  their last activity (or end, or the time they lost their last subscriber); a sweep
  walks each map from the oldest entry and stops at the first that is not due.
* The registry's clock (``anyio.current_time`` unless one is injected) drives every
  deadline; session timestamps are wall-clock Unix seconds.
* **A shared backend (Redis) is the truth.** With a backend that has leases
  (``backend.lease_ttl`` is not ``None``), other workers create and change sessions
  too: a session this registry did not create is loaded from the store as a *remote*
  entry (no producer here), cached only while it has subscribers here; the record is
  re-read from the store on every call, and one lease task per registry renews the
  leases of the sessions it owns, reads their records (so that a pause, resume or end
  made on another worker takes effect here within ``lease_ttl / 3``), and ends the
  sessions of dead workers. Ending a session there sets its state in the store
  *first*: only one worker wins, and the others adopt its state without adding a
  second final event. With the memory backend none of this runs.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeAlias

import anyio
import attrs

from ._config import RegistryConfig, StreamConfig
from ._errors import (
    ClosedError,
    InvalidTransition,
    PermissionDenied,
    SessionLimitExceeded,
    SessionNotFound,
    ValidationError,
)
from ._events import EventType, StreamEvent, make_event
from ._memory import MemoryBackend
from ._session import SessionState, StreamSession, check_transition, events_view, new_session_id
from ._streamer import StreamStats, TokenStream, loop_clock, stream_tokens
from ._validate import check_id, check_int, freeze_json_object, type_name
from .abc import Backend, EventCursor, EventLog, LogStatistics

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

__all__ = [
    "Authorize",
    "HookName",
    "RegistryStatistics",
    "SessionRegistry",
    "SessionStatistics",
    "Subscription",
]

logger = logging.getLogger("streamkit.registry")

#: What a session is asked for: ``read`` (get, subscribe) or ``control`` (everything else).
Action: TypeAlias = Literal["read", "control"]
#: ``authorize(user_id, session, action)`` may let a user other than the owner in; it
#: returns ``True`` to allow, and may be a coroutine function.
Authorize: TypeAlias = Callable[[str | None, StreamSession, Action], "bool | Awaitable[bool]"]
#: The moments a hook can be registered for with :meth:`SessionRegistry.on`.
HookName: TypeAlias = Literal["created", "state_changed", "event", "removed"]
_HOOK_NAMES: Final = ("created", "state_changed", "event", "removed")

_FINAL_STATE: Final = {
    EventType.COMPLETE: SessionState.COMPLETED,
    EventType.ERROR: SessionState.ERROR,
}


@attrs.frozen(kw_only=True)
class SessionStatistics:
    """A snapshot of one session's figures, from :meth:`SessionRegistry.session_statistics`.

    Attributes:
        session_id: The session.
        status: Its state.
        subscribers: Subscriptions reading it now.
        log: The counters of its event log.
        stream: The statistics of its producer's stream, if it has had one.
    """

    session_id: str
    status: SessionState
    subscribers: int
    log: LogStatistics
    stream: StreamStats | None


@attrs.frozen(kw_only=True)
class RegistryStatistics:
    """A snapshot of a registry's figures, from :meth:`SessionRegistry.statistics`.

    Attributes:
        sessions: Sessions held now (live and ended-but-retained).
        by_state: How many of them are in each state.
        subscribers: Subscriptions reading now, over all sessions.
        producers: Producers running now.
        sessions_created: Sessions created since the registry started.
        sessions_removed: Sessions removed (closed, or swept after they ended).
        sessions_expired: Sessions the sweeper expired for idleness.
        events_appended: Events appended to logs through this registry.
        events_delivered: Events handed to subscribers.
        bytes_retained: Bytes retained by the logs of sessions held now.
        sweeps: Sweeper passes.
        heartbeats: Heartbeat events sent by the registry.
        mean_time_to_first_token: Mean time to first token of finished streams, seconds.
        max_time_to_first_token: The largest such time, seconds.
    """

    sessions: int
    by_state: MappingProxyType[str, int]
    subscribers: int
    producers: int
    sessions_created: int
    sessions_removed: int
    sessions_expired: int
    events_appended: int
    events_delivered: int
    bytes_retained: int
    sweeps: int
    heartbeats: int
    mean_time_to_first_token: float | None
    max_time_to_first_token: float | None


class _Entry:
    """What this process holds for one session besides its record."""

    __slots__ = (
        "delivered_gone",
        "finishing",
        "last_event_at",
        "log",
        "producer",
        "remote",
        "resumed",
        "session",
        "stream",
        "subscribers",
    )

    def __init__(
        self, session: StreamSession, log: EventLog, now: float, *, remote: bool = False
    ) -> None:
        self.session = session
        # Made by another worker (shared backend): no producer here, not swept here.
        self.remote = remote
        self.log = log
        self.producer: anyio.CancelScope | None = None
        self.stream: TokenStream | None = None
        # Set while the session may produce; a pause clears it and the producer waits.
        self.resumed: anyio.Event | None = None
        self.finishing = False
        self.subscribers = 0
        self.last_event_at = now
        self.delivered_gone = 0


class SessionRegistry:
    """Holds sessions: creates them, runs their producers, and serves their subscribers.

    Use it as an async context manager; it owns the tasks it starts::

        async with SessionRegistry(RegistryConfig(max_sessions=100)) as registry:
            session = await registry.create(user_id="alice")
            registry.start(session.session_id, source)
            async for event in registry.subscribe(session.session_id, user_id="alice"):
                ...

    Args:
        config: Bounds and upkeep intervals; :class:`~streamkit.RegistryConfig` defaults.
        backend: Where records and logs live; in this process's memory by default.
        authorize: Lets users other than the owner read or control a session.
        clock: Monotonic seconds for timeouts and sweeps; ``anyio.current_time`` by
            default. Tests inject one they can advance.
    """

    def __init__(
        self,
        config: RegistryConfig | None = None,
        *,
        backend: Backend | None = None,
        authorize: Authorize | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if config is not None and not isinstance(config, RegistryConfig):
            raise ValidationError(
                f"config must be a RegistryConfig, got {type_name(config)}", field="config"
            )
        if backend is not None and not isinstance(backend, Backend):
            raise ValidationError(
                f"backend must be a streamkit.abc.Backend, got {type_name(backend)}",
                field="backend",
            )
        if authorize is not None and not callable(authorize):
            raise ValidationError("authorize must be callable", field="authorize")
        if clock is not None and not callable(clock):
            raise ValidationError("clock must be callable", field="clock")
        self.config = config or RegistryConfig()
        self.backend = backend or MemoryBackend()
        self._authorize = authorize
        self._clock = clock or anyio.current_time
        self._entries: dict[str, _Entry] = {}
        # Sessions of other workers that this one serves (shared backends only).
        self._remote: dict[str, _Entry] = {}
        self._lease_ttl = self.backend.lease_ttl
        # Upkeep queues, oldest first (see the module's rules).
        self._idle: OrderedDict[str, float] = OrderedDict()
        self._ended: OrderedDict[str, float] = OrderedDict()
        self._unwatched: OrderedDict[str, float] = OrderedDict()
        self._hooks: dict[str, list[Callable[..., object]]] = {name: [] for name in _HOOK_NAMES}
        self._tg: TaskGroup | None = None
        self._closing = False
        self._counts = dict.fromkeys(
            ("created", "removed", "expired", "appended", "sweeps", "heartbeats"), 0
        )
        self._delivered_gone = 0
        self._ttfts: list[float] = []

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closing:
            raise RuntimeError("a SessionRegistry can be entered only once")
        enter = getattr(self.backend, "__aenter__", None)
        if enter is not None:
            await enter()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._sweeper, name="streamkit sweeper")
        if self.config.heartbeat_interval is not None:
            tg.start_soon(self._heartbeater, name="streamkit heartbeats")
        if self._lease_ttl is not None:
            tg.start_soon(self._lease_keeper, name="streamkit leases")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None, "the registry was not entered"
        self._closing = True
        try:
            with anyio.CancelScope(shield=True):
                for entry in list(self._entries.values()):
                    if not entry.session.is_terminal and not entry.finishing:
                        await self._end_quietly(
                            entry, SessionState.CANCELLED, _final("complete", "shutdown")
                        )
        finally:
            tg.cancel_scope.cancel()
            try:
                suppressed = await tg.__aexit__(exc_type, exc_val, exc_tb)
            finally:
                self._tg = None
                # Not in a shielded scope: a backend may exit a task group of its own.
                await self.backend.aclose()
        return suppressed

    def _task_group(self) -> TaskGroup:
        if self._tg is None or self._closing:
            raise ClosedError("the registry is not running (use it with `async with`)")
        return self._tg

    # -- sessions -----------------------------------------------------------------------

    async def create(
        self,
        *,
        user_id: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> StreamSession:
        """Create a session owned by ``user_id`` (``None``: anonymous).

        Args:
            user_id: The owner; 1 to 128 characters of ``A-Z a-z 0-9 _ -``.
            context: JSON-compatible application data kept with the session.

        Returns:
            The new session's snapshot.

        Raises:
            SessionLimitExceeded: ``max_sessions`` or ``max_sessions_per_user`` reached.
            ValidationError: a bad ``user_id`` or ``context``.
            ClosedError: the registry is not running.
        """
        self._task_group()
        if user_id is not None:
            check_id("user_id", user_id)
        frozen = freeze_json_object("context", {} if context is None else context)
        now = time.time()
        session = StreamSession(
            session_id=new_session_id(), user_id=user_id, context=frozen, created_at=now
        )
        await self.backend.store.add(
            session,
            max_sessions=self.config.max_sessions,
            max_sessions_per_user=self.config.max_sessions_per_user,
        )
        try:
            log = await self.backend.make_log(session.session_id, self.config)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.backend.store.remove(session.session_id)
            raise
        entry = _Entry(session, log, self._clock())
        self._entries[session.session_id] = entry
        self._idle[session.session_id] = entry.last_event_at
        self._counts["created"] += 1
        self._emit("created", session)
        return self._snapshot(entry)

    async def get(self, session_id: str, *, user_id: str | None = None) -> StreamSession:
        """Return a snapshot of a session, its retained events included.

        Raises:
            SessionNotFound: no such session.
            PermissionDenied: ``user_id`` may not read it.
        """
        entry = await self._entry(session_id, user_id, "read")
        if self._lease_ttl is not None:
            await entry.log.sync()
        return self._snapshot(entry)

    async def list(self, user_id: str | None = None) -> Sequence[StreamSession]:
        """Return snapshots of the sessions of ``user_id`` (every session if ``None``).

        With a shared backend this lists the store: the sessions of every worker
        (those of other workers without their events).

        Raises:
            ValidationError: a bad ``user_id``.
            BackendError: the shared store failed.
        """
        if user_id is not None:
            check_id("user_id", user_id)
        if self._lease_ttl is not None:
            out: list[StreamSession] = []
            for record in await self.backend.store.list(user_id):
                entry = self._entries.get(record.session_id)
                out.append(
                    record
                    if entry is None
                    else attrs.evolve(record, events=events_view(entry.log.retained()))
                )
            return out
        return [
            self._snapshot(entry)
            for entry in self._entries.values()
            if user_id is None or entry.session.user_id == user_id
        ]

    def start(
        self,
        session_id: str,
        source: AsyncIterable[str] | Iterable[str] | AsyncIterable[bytes] | Iterable[bytes],
        config: StreamConfig | None = None,
    ) -> None:
        """Run ``source`` through :func:`~streamkit.stream_tokens` in the background.

        Every event of the stream is appended to the session's log; its final event
        ends the session (``completed`` or ``error``). Returns at once.

        Raises:
            SessionNotFound: no such session in this registry.
            InvalidTransition: the session has ended.
            ValidationError: the session already has a producer, or ``source`` is not
                an iterable of text.
            ClosedError: the registry is not running.
        """
        tg = self._task_group()
        entry = self._entries.get(check_id("session_id", session_id))
        if entry is None:
            raise SessionNotFound("no such session", session_id=session_id)
        if entry.session.is_terminal or entry.finishing:
            check_transition(entry.session.status, SessionState.ACTIVE, session_id=session_id)
        if entry.producer is not None:
            raise ValidationError(
                "the session already has a producer", field="source", session_id=session_id
            )
        stream = stream_tokens(source, config, session_id=session_id)  # validates source
        entry.stream = stream
        entry.producer = anyio.CancelScope()
        if entry.resumed is None:
            entry.resumed = anyio.Event()
            if entry.session.status is SessionState.ACTIVE:
                entry.resumed.set()
        if entry.subscribers == 0 and self.config.idle_producer_grace is not None:
            self._unwatched[session_id] = self._clock()
        tg.start_soon(self._produce, entry, stream, name="streamkit producer")

    async def _produce(self, entry: _Entry, stream: TokenStream) -> None:
        log = entry.log
        append = getattr(log, "_append_fresh", log.append)
        hooks = self._hooks["event"]
        scope = entry.producer
        assert scope is not None
        clock = self._clock
        if clock is anyio.current_time:
            clock = loop_clock()  # the same clock, found once instead of at every event
        try_append = getattr(log, "_try_append_fresh", None)
        if try_append is not None and self._lease_ttl is None:

            def push(event: StreamEvent) -> bool:
                # The stream's source task appends its tokens itself (one task switch
                # per token fewer); anything this loop would wait for or handle
                # otherwise is refused and comes through the loop below.
                resumed = entry.resumed
                if (
                    entry.finishing
                    or (resumed is not None and not resumed.is_set())
                    or not try_append(event)
                ):
                    return False
                entry.last_event_at = clock()
                self._counts["appended"] += 1
                if hooks:
                    self._emit("event", event)
                return True

            stream._set_sink(push)
        recorded = False
        try:
            with scope:
                async with stream:
                    async for event in stream:
                        resumed = entry.resumed  # a pause replaces it with an unset one
                        if resumed is not None and not resumed.is_set():
                            await resumed.wait()
                        if event.is_final:
                            # Before the final event is visible: a subscriber that sees
                            # it may read the registry's statistics at once.
                            self._record_stream(stream)
                            recorded = True
                            state = _FINAL_STATE[EventType(event.event_type)]
                            if not entry.finishing:
                                await self._end_quietly(entry, state, event, from_producer=True)
                            break
                        if entry.finishing:  # ended elsewhere (cancel, sweep, shutdown)
                            break
                        try:
                            stored = await append(event)
                        except ClosedError:
                            # Another task (or worker) may have ended the session.
                            if not _finishing(entry) and self._lease_ttl is not None:
                                with contextlib.suppress(SessionNotFound):
                                    await self._fresh(entry.session.session_id, entry)
                            if _finishing(entry):
                                break
                            raise
                        entry.last_event_at = clock()
                        self._counts["appended"] += 1
                        if hooks:
                            self._emit("event", stored)
        except Exception as exc:  # a failure of the log or backend, not of the source
            logger.exception("streamkit: a session's producer failed")
            if not entry.finishing:
                try:
                    with anyio.CancelScope(shield=True):
                        await self._end_quietly(entry, SessionState.ERROR, _error_event(exc))
                except Exception:
                    # The backend is down for good. A shared backend's lease on the
                    # session then lapses and a worker ends it once storage is back.
                    logger.exception("streamkit: could not end a failed session")
        finally:
            entry.producer = None
            self._unwatched.pop(entry.session.session_id, None)
            if not recorded:
                self._record_stream(stream)

    def _record_stream(self, stream: TokenStream) -> None:
        ttft = stream.stats.time_to_first_token
        if ttft is not None:
            self._ttfts.append(ttft)
            if len(self._ttfts) > 10_000:
                del self._ttfts[:5_000]

    async def publish(
        self, session_id: str, event: StreamEvent, *, user_id: str | None = None
    ) -> StreamEvent:
        """Append an application event to a session's log; return the stored copy.

        A ``complete`` or ``error`` event ends the session (``completed``/``error``).

        Raises:
            SessionNotFound: no such session.
            PermissionDenied: ``user_id`` may not control it.
            ClosedError: the session has ended.
            PayloadTooLarge: the event is larger than ``max_event_bytes``.
            ValidationError: ``event`` is not a StreamEvent.
        """
        if not isinstance(event, StreamEvent):
            raise ValidationError(
                f"event must be a StreamEvent, got {type_name(event)}", field="event"
            )
        entry = await self._entry(session_id, user_id, "control")
        if entry.finishing:
            raise ClosedError("the session has ended", session_id=session_id)
        if event.is_final:
            state = _FINAL_STATE[EventType(event.event_type)]
            try:
                return await self._finish(entry, state, event)
            except InvalidTransition:  # ended on another worker meanwhile
                raise ClosedError("the session has ended", session_id=session_id) from None
        stored = await entry.log.append(event)
        self._touch(entry)
        self._counts["appended"] += 1
        self._emit("event", stored)
        return stored

    def subscribe(
        self, session_id: str, *, user_id: str | None = None, after: int = 0
    ) -> Subscription:
        """Follow a session: replay its retained events after ``after``, then live ones.

        The subscription ends after the session's final event. Checks happen when it
        is entered or first iterated.

        Args:
            session_id: The session.
            user_id: Who reads; must be the owner unless ``authorize`` allows.
            after: The last ``seq`` the reader already has (``0``: from the start).

        Raises:
            ValidationError: bad ``session_id`` or ``after`` (at once), or ``after``
                past the session's last event (when the subscription starts).
            SessionNotFound, PermissionDenied, SessionLimitExceeded, HistoryGap:
                when the subscription starts.
            SubscriberLagged: while reading, if the reader falls too far behind.
        """
        check_id("session_id", session_id)
        check_int("after", after, minimum=0)
        return Subscription(self, session_id, user_id, after)

    async def pause(self, session_id: str, *, user_id: str | None = None) -> StreamSession:
        """Stop pulling from the session's producer; subscribers stay connected.

        Raises:
            SessionNotFound: no such session.
            PermissionDenied: ``user_id`` may not control it.
            InvalidTransition: the session is not active.
        """
        entry = await self._entry(session_id, user_id, "control")
        await self._set_state(entry, SessionState.PAUSED)
        _hold(entry, paused=True)
        return self._snapshot(entry)

    async def resume(self, session_id: str, *, user_id: str | None = None) -> StreamSession:
        """Let a paused session's producer go on.

        Raises:
            SessionNotFound: no such session.
            PermissionDenied: ``user_id`` may not control it.
            InvalidTransition: the session is not paused.
        """
        entry = await self._entry(session_id, user_id, "control")
        await self._set_state(entry, SessionState.ACTIVE)
        _hold(entry, paused=False)
        return self._snapshot(entry)

    async def cancel(self, session_id: str, *, user_id: str | None = None) -> StreamSession:
        """End a session now: its producer is cancelled and it gets its final event.

        Raises:
            SessionNotFound: no such session.
            PermissionDenied: ``user_id`` may not control it.
            InvalidTransition: the session has already ended.
        """
        entry = await self._entry(session_id, user_id, "control")
        if entry.finishing:
            check_transition(entry.session.status, SessionState.CANCELLED, session_id=session_id)
        await self._finish(entry, SessionState.CANCELLED, _final("complete", "cancelled"))
        return self._snapshot(entry)

    async def close(self, session_id: str, *, user_id: str | None = None) -> None:
        """Cancel the session if it is live, then remove it and free its memory.

        Raises:
            SessionNotFound: no such session.
            PermissionDenied: ``user_id`` may not control it.
        """
        entry = await self._entry(session_id, user_id, "control")
        if not entry.finishing:
            await self._end_quietly(entry, SessionState.CANCELLED, _final("complete", "cancelled"))
        await self._remove(entry)

    # -- hooks and statistics -----------------------------------------------------------

    def on(self, name: HookName, callback: Callable[..., object]) -> Callable[[], None]:
        """Call ``callback`` at each ``name`` moment; return a function that unregisters it.

        ``created(session)``, ``state_changed(before, after)``, ``event(event)`` and
        ``removed(session)`` are called inline, synchronously: keep them quick. A hook
        that raises is logged (logger ``streamkit.registry``) and the registry goes on.

        Raises:
            ValidationError: unknown ``name`` or a ``callback`` that is not callable.
        """
        if name not in self._hooks:
            raise ValidationError(
                f"name must be one of {', '.join(_HOOK_NAMES)}, got {name!r}", field="name"
            )
        if not callable(callback) or inspect.iscoroutinefunction(callback):
            raise ValidationError("callback must be a plain (not async) callable", field="callback")
        hooks = self._hooks[name]
        hooks.append(callback)

        def unregister() -> None:
            if callback in hooks:
                hooks.remove(callback)

        return unregister

    def statistics(self) -> RegistryStatistics:
        """Return a snapshot of the registry's figures."""
        by_state = dict.fromkeys((s.value for s in SessionState), 0)
        subscribers = producers = retained = delivered = 0
        for entry in self._entries.values():
            by_state[entry.session.status.value] += 1
            subscribers += entry.subscribers
            producers += entry.producer is not None
            stats = entry.log.statistics()
            retained += stats.retained_bytes
            delivered += stats.events_delivered
        subscribers += sum(entry.subscribers for entry in self._remote.values())
        ttfts = self._ttfts
        return RegistryStatistics(
            sessions=len(self._entries),
            by_state=MappingProxyType(by_state),
            subscribers=subscribers,
            producers=producers,
            sessions_created=self._counts["created"],
            sessions_removed=self._counts["removed"],
            sessions_expired=self._counts["expired"],
            events_appended=self._counts["appended"],
            events_delivered=delivered + self._delivered_gone,
            bytes_retained=retained,
            sweeps=self._counts["sweeps"],
            heartbeats=self._counts["heartbeats"],
            mean_time_to_first_token=sum(ttfts) / len(ttfts) if ttfts else None,
            max_time_to_first_token=max(ttfts) if ttfts else None,
        )

    async def session_statistics(
        self, session_id: str, *, user_id: str | None = None
    ) -> SessionStatistics:
        """Return the figures of one session.

        Raises:
            SessionNotFound: no such session.
            PermissionDenied: ``user_id`` may not read it.
        """
        entry = await self._entry(session_id, user_id, "read")
        return SessionStatistics(
            session_id=session_id,
            status=entry.session.status,
            subscribers=entry.subscribers,
            log=entry.log.statistics(),
            stream=entry.stream.stats if entry.stream is not None else None,
        )

    # -- upkeep -------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Run one sweeper pass now; return how many sessions it expired or removed.

        Expires sessions idle longer than ``session_timeout``, cancels producers that
        had no subscriber for ``idle_producer_grace``, and removes sessions that ended
        more than ``ended_session_ttl`` ago. With a shared backend it also removes the
        due ended sessions of any worker (at most 100 per pass). The background sweeper
        calls this every ``cleanup_interval``.

        Raises:
            BackendError: a shared backend failed.
        """
        now = self._clock()
        config = self.config
        done = 0
        self._counts["sweeps"] += 1
        idle_before = now - config.session_timeout
        while self._idle:
            session_id, since = next(iter(self._idle.items()))
            if since > idle_before:
                break
            del self._idle[session_id]
            entry = self._entries.get(session_id)
            if entry is None or entry.finishing:
                continue
            if entry.last_event_at > since:  # active since it was queued: requeue
                self._idle[session_id] = entry.last_event_at
                continue
            self._counts["expired"] += 1
            await self._end_quietly(entry, SessionState.EXPIRED, _final("complete", "expired"))
            done += 1
        grace = config.idle_producer_grace
        if grace is not None:
            while self._unwatched:
                session_id, since = next(iter(self._unwatched.items()))
                if since > now - grace:
                    break
                del self._unwatched[session_id]
                entry = self._entries.get(session_id)
                if entry is not None and not entry.finishing and entry.subscribers == 0:
                    await self._end_quietly(
                        entry, SessionState.CANCELLED, _final("complete", "unwatched")
                    )
                    done += 1
        ended_before = now - config.ended_session_ttl
        while self._ended:
            session_id, since = next(iter(self._ended.items()))
            if since > ended_before:
                break
            del self._ended[session_id]
            entry = self._entries.get(session_id)
            if entry is not None:
                await self._remove(entry)
                done += 1
        if self._lease_ttl is not None:
            done += await self._sweep_shared()
        return done

    async def _sweep_shared(self) -> int:
        # Ended sessions of any worker (a dead one's included) whose time is up; each
        # is claimed by one worker. Bounded work per sweep.
        done = 0
        for session_id in await self.backend.claim_removals(_SWEEP_BATCH):
            entry = self._entries.get(session_id)
            if entry is not None:
                await self._remove(entry)
            else:
                self._remote.pop(session_id, None)
                with anyio.CancelScope(shield=True):
                    await self.backend.delete_log(session_id)
                    await self.backend.store.remove(session_id)
            done += 1
        for session_id, entry in list(self._remote.items()):
            if not entry.subscribers:
                del self._remote[session_id]
        return done

    async def emit_heartbeats(self) -> int:
        """Send heartbeats to watched sessions that have been silent; return how many.

        A live session with at least one subscriber and no event for
        ``heartbeat_interval`` gets a ``heartbeat`` event. The heartbeat task calls this
        every half interval.
        """
        interval = self.config.heartbeat_interval
        if interval is None:
            return 0
        now = self._clock()
        sent = 0
        for entry in [*self._entries.values(), *self._remote.values()]:
            if (
                entry.subscribers
                and not entry.finishing
                and now - entry.last_event_at >= interval
                and not entry.log.is_closed
            ):
                try:
                    with anyio.CancelScope(shield=True):
                        await entry.log.append(
                            make_event(EventType.HEARTBEAT, "", _EMPTY, entry.session.session_id)
                        )
                except ClosedError:  # ended on another worker; its final event is there
                    continue
                entry.last_event_at = now
                sent += 1
        self._counts["heartbeats"] += sent
        return sent

    async def _sweeper(self) -> None:
        while True:
            await anyio.sleep(self.config.cleanup_interval)
            try:
                await self.sweep()
            except Exception:
                logger.exception("streamkit: a sweep failed")

    async def _lease_keeper(self) -> None:
        ttl = self._lease_ttl
        assert ttl is not None
        while True:
            await anyio.sleep(ttl / 3)
            try:
                await self._keep_leases()
            except Exception:
                logger.exception("streamkit: renewing leases failed")

    async def _keep_leases(self) -> None:
        """Renew owned leases, adopt remote state changes, end dead workers' sessions."""
        owned = [e for e in self._entries.values() if not e.finishing]
        if owned:
            ids = [e.session.session_id for e in owned]
            lost = set(await self.backend.renew_leases(ids))
            records = await self.backend.store.get_many(ids)
            for entry, record in zip(owned, records, strict=True):
                if entry.finishing:
                    continue
                if record is None:
                    self._forget(entry)
                    continue
                self._adopt(entry, record)
                if entry.session.session_id in lost and not entry.finishing:
                    await self._end_quietly(entry, SessionState.ERROR, _producer_lost())
        for session_id in await self.backend.claim_orphans(_SWEEP_BATCH):
            # Claimed by this worker alone: it must end the session.
            orphan = self._entries.get(session_id) or self._remote.get(session_id)
            if orphan is None or orphan.finishing:  # (finishing: a finish that failed)
                found = await self.backend.store.get(session_id)
                if found is None or found.is_terminal:
                    continue
                log = await self.backend.make_log(session_id, self.config)
                orphan = _Entry(found, log, self._clock(), remote=True)
            await self._end_quietly(orphan, SessionState.ERROR, _producer_lost())

    async def _heartbeater(self) -> None:
        interval = self.config.heartbeat_interval
        assert interval is not None
        while True:
            await anyio.sleep(interval / 2)
            try:
                await self.emit_heartbeats()
            except Exception:
                logger.exception("streamkit: sending heartbeats failed")

    # -- internals ----------------------------------------------------------------------

    async def _entry(self, session_id: str, user_id: str | None, action: Action) -> _Entry:
        check_id("session_id", session_id)
        if user_id is not None:
            check_id("user_id", user_id)
        entry = self._entries.get(session_id) or self._remote.get(session_id)
        if self._lease_ttl is not None:
            entry = await self._fresh(session_id, entry)
        elif entry is None:
            raise SessionNotFound("no such session", session_id=session_id)
        session = entry.session
        if session.user_id is not None and session.user_id != user_id:
            allowed = False
            if self._authorize is not None:
                verdict = self._authorize(user_id, session, action)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                allowed = verdict is True
            if not allowed:
                raise PermissionDenied(
                    f"this user may not {action} the session", session_id=session_id
                )
        return entry

    async def _fresh(self, session_id: str, entry: _Entry | None) -> _Entry:
        """Return the entry of a session in a shared store, its record re-read.

        Raises:
            SessionNotFound: the store has no such record.
            BackendError: the store failed.
        """
        record = await self.backend.store.get(session_id)
        if record is None:
            if entry is not None:
                self._forget(entry)
            raise SessionNotFound("no such session", session_id=session_id)
        if entry is None:
            log = await self.backend.make_log(session_id, self.config)
            known = self._entries.get(session_id) or self._remote.get(session_id)
            if known is None:  # nobody made it during the await
                made = _Entry(record, log, self._clock(), remote=True)
                self._remote[session_id] = made
                return made
            entry = known
        self._adopt(entry, record)
        return entry

    def _adopt(self, entry: _Entry, record: StreamSession) -> None:
        """Take a state that another worker set in the shared store."""
        before = entry.session
        if entry.finishing or record.updated_at < before.updated_at:
            return
        entry.session = record
        if record.status is before.status:
            return
        session_id = record.session_id
        if record.is_terminal:
            entry.finishing = True
            if entry.producer is not None:
                entry.producer.cancel()  # quietly: the final event is already there
            if entry.resumed is not None:
                entry.resumed.set()
            self._idle.pop(session_id, None)
            self._unwatched.pop(session_id, None)
            if not entry.remote:
                self._ended[session_id] = self._clock()
        else:
            _hold(entry, paused=record.status is SessionState.PAUSED)
        self._emit("state_changed", before, record)

    def _forget(self, entry: _Entry) -> None:
        """Drop an entry whose record another worker removed."""
        session_id = entry.session.session_id
        entry.finishing = True
        if entry.producer is not None:
            entry.producer.cancel()
        if entry.resumed is not None:
            entry.resumed.set()
        for queue in (self._idle, self._unwatched, self._ended):
            queue.pop(session_id, None)
        if self._entries.get(session_id) is entry:
            del self._entries[session_id]
        if self._remote.get(session_id) is entry:
            del self._remote[session_id]

    def _snapshot(self, entry: _Entry) -> StreamSession:
        return attrs.evolve(entry.session, events=events_view(entry.log.retained()))

    def _touch(self, entry: _Entry) -> None:
        entry.last_event_at = self._clock()

    def _rearm(self, entry: _Entry) -> None:
        # A control call counts as activity: requeue at the back of the idle queue.
        sid = entry.session.session_id
        entry.last_event_at = self._clock()
        if not entry.finishing and not entry.remote:
            self._idle.pop(sid, None)
            self._idle[sid] = entry.last_event_at

    async def _set_state(self, entry: _Entry, state: SessionState) -> None:
        check_transition(entry.session.status, state, session_id=entry.session.session_id)
        if entry.finishing:
            raise ClosedError("the session has ended", session_id=entry.session.session_id)
        before, after = await self.backend.store.set_state(
            entry.session.session_id, state, now=time.time()
        )
        entry.session = after
        self._rearm(entry)
        self._emit("state_changed", before, after)

    async def _finish(
        self,
        entry: _Entry,
        state: SessionState,
        final: StreamEvent,
        *,
        from_producer: bool = False,
    ) -> StreamEvent:
        """End a session once: its final event, its state, its producer. Idempotent."""
        session_id = entry.session.session_id
        if entry.finishing:
            raise ClosedError("the session has ended", session_id=session_id)
        check_transition(entry.session.status, state, session_id=session_id)
        entry.finishing = True
        stored = final
        try:
            with anyio.CancelScope(shield=True):
                if self._lease_ttl is None:
                    if not entry.log.is_closed:
                        stored = await entry.log.append(final)
                        self._counts["appended"] += 1
                    before, after = await self.backend.store.set_state(
                        session_id, state, now=time.time()
                    )
                else:
                    before, after = await self._finish_shared(entry, state)
                    with contextlib.suppress(ClosedError):
                        stored = await entry.log.append(final)
                        self._counts["appended"] += 1
                    await self.backend.schedule_removal(session_id, self.config.ended_session_ttl)
                entry.session = after
        finally:
            if entry.producer is not None and not from_producer:
                entry.producer.cancel()
            if entry.resumed is not None:
                entry.resumed.set()  # a paused producer must see its cancellation
            self._idle.pop(session_id, None)
            self._unwatched.pop(session_id, None)
            if not entry.remote:
                self._ended[session_id] = self._clock()
        self._emit("event", stored)
        self._emit("state_changed", before, after)
        return stored

    async def _finish_shared(
        self, entry: _Entry, state: SessionState
    ) -> tuple[StreamSession, StreamSession]:
        # The state first: of several workers ending a session at once, one wins the
        # store's transition and appends the final event; the others adopt its state.
        session_id = entry.session.session_id
        try:
            return await self.backend.store.set_state(session_id, state, now=time.time())
        except InvalidTransition:
            record = await self.backend.store.get(session_id)
            if record is not None:
                entry.finishing = False
                self._adopt(entry, record)
                entry.finishing = True
            raise

    async def _end_quietly(
        self,
        entry: _Entry,
        state: SessionState,
        final: StreamEvent,
        *,
        from_producer: bool = False,
    ) -> None:
        """End a session unless it has ended already (here or on another worker)."""
        with contextlib.suppress(InvalidTransition, ClosedError):
            await self._finish(entry, state, final, from_producer=from_producer)

    async def _remove(self, entry: _Entry) -> None:
        session_id = entry.session.session_id
        if self._remote.get(session_id) is entry:
            del self._remote[session_id]
        elif self._entries.pop(session_id, None) is None:
            return
        self._ended.pop(session_id, None)
        self._idle.pop(session_id, None)
        self._unwatched.pop(session_id, None)
        self._delivered_gone += entry.log.statistics().events_delivered
        with anyio.CancelScope(shield=True):
            await entry.log.aclose()
            await self.backend.delete_log(session_id)
            removed = await self.backend.store.remove(session_id)
        self._counts["removed"] += 1
        self._emit("removed", removed or entry.session)

    def _emit(self, name: str, *args: object) -> None:
        for hook in tuple(self._hooks[name]):
            try:
                hook(*args)
            except Exception:
                logger.exception("streamkit: a %r hook raised; it was ignored", name)

    def _subscriber_joined(self, entry: _Entry) -> None:
        if entry.subscribers >= self.config.max_subscribers_per_session:
            raise SessionLimitExceeded(
                f"the session has its maximum of {self.config.max_subscribers_per_session} "
                "subscribers",
                limit=self.config.max_subscribers_per_session,
                session_id=entry.session.session_id,
            )
        entry.subscribers += 1
        self._unwatched.pop(entry.session.session_id, None)

    def _subscriber_left(self, entry: _Entry) -> None:
        entry.subscribers -= 1
        session_id = entry.session.session_id
        if entry.remote and not entry.subscribers and self._remote.get(session_id) is entry:
            del self._remote[session_id]  # cached only while someone here reads it
        if (
            entry.subscribers == 0
            and entry.producer is not None
            and not entry.finishing
            and self.config.idle_producer_grace is not None
        ):
            self._unwatched[entry.session.session_id] = self._clock()


class Subscription:
    """A subscriber's view of one session: an async iterator of its events.

    Made by :meth:`SessionRegistry.subscribe`. Use it with ``async with`` (or iterate it
    to the end) so that it is released promptly. Checks (existence, permission, the
    subscriber bound, the resume point) happen when it is entered or first iterated.
    """

    __slots__ = ("_after", "_closed", "_cursor", "_entry", "_registry", "_session_id", "_user")

    def __init__(
        self, registry: SessionRegistry, session_id: str, user_id: str | None, after: int
    ) -> None:
        self._registry = registry
        self._session_id = session_id
        self._user = user_id
        self._after = after
        self._cursor: EventCursor | None = None
        self._entry: _Entry | None = None
        self._closed = False

    @property
    def session_id(self) -> str:
        """The session this subscription follows."""
        return self._session_id

    @property
    def position(self) -> int:
        """The ``seq`` of the last event returned: resume after it."""
        return self._after if self._cursor is None else self._cursor.position

    async def _open(self) -> EventCursor:
        if self._closed:
            raise ClosedError("the subscription is closed", session_id=self._session_id)
        registry = self._registry
        entry = await registry._entry(self._session_id, self._user, "read")
        if self._after > entry.log.last_seq and registry._lease_ttl is not None:
            await entry.log.sync()  # another worker may have appended since
        if self._after > entry.log.last_seq:
            # A reader cannot have seen an event that does not exist yet; following
            # from there would skip the events up to it when they come.
            raise ValidationError(
                f"after={self._after} is past the last event ({entry.log.last_seq})",
                field="after",
                session_id=self._session_id,
            )
        registry._subscriber_joined(entry)
        self._entry = entry
        self._cursor = entry.log.read(self._after)
        return self._cursor

    async def __aenter__(self) -> Self:
        if self._cursor is None:
            await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        cursor = self._cursor
        if cursor is None:
            if self._closed:
                raise StopAsyncIteration
            cursor = await self._open()
        try:
            return await cursor.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise

    def take_ready(self, limit: int) -> Sequence[StreamEvent]:
        """Return up to ``limit`` events already fetched and not yet returned, at once.

        They count as iterated. Empty when the cursor holds none (or cannot tell).
        """
        take = getattr(self._cursor, "take_ready", None)
        return take(limit) if take is not None else ()

    async def aclose(self) -> None:
        """Stop following the session. Idempotent."""
        if self._closed:
            return
        self._closed = True
        cursor, self._cursor = self._cursor, None
        entry, self._entry = self._entry, None
        if entry is not None:
            self._registry._subscriber_left(entry)
        if cursor is not None:
            self._after = cursor.position
            await cursor.aclose()


_EMPTY: Final[MappingProxyType[str, Any]] = MappingProxyType({})
#: Sessions claimed per pass of the shared sweeps (removals, orphans).
_SWEEP_BATCH: Final = 100


def _hold(entry: _Entry, *, paused: bool) -> None:
    """Stop (``paused``) or let go a session's producer, whichever worker asked."""
    if paused:
        if entry.resumed is not None and entry.resumed.is_set():
            entry.resumed = anyio.Event()
        if entry.stream is not None:
            entry.stream.pause()  # the source stops before its next item
    else:
        if entry.stream is not None:
            entry.stream.resume()
        if entry.resumed is not None:
            entry.resumed.set()


def _finishing(entry: _Entry) -> bool:
    return entry.finishing


def _final(kind: Literal["complete"], reason: str) -> StreamEvent:
    return make_event(EventType(kind), "", MappingProxyType({"reason": reason}))


def _producer_lost() -> StreamEvent:
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


def _error_event(exc: BaseException) -> StreamEvent:
    return make_event(
        EventType.ERROR,
        "",
        MappingProxyType({"error_type": type(exc).__name__, "message": str(exc)[:1000]}),
    )
