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
* **A shared backend (Redis) is the truth.** What only a shared backend needs (leases,
  sessions of other workers, shared sweeps, ending a session in the store first) is in
  a coordinator chosen once when the registry is made (:mod:`streamkit._coordinator`):
  no method here tests the mode. With the memory backend the coordinator does nothing.
* **The fast path is declared.** A stream's tokens are appended from its source task
  through a :class:`~streamkit.abc.TokenSink` that calls the log's
  :meth:`~streamkit.abc.EventLog.append_nowait`; whatever it refuses comes through the
  producer loop.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeAlias

import anyio
import attrs

from ._config import RegistryConfig, StreamConfig
from ._coordinator import EntryPhase, _Entry, cancel_producer, hold, make_coordinator
from ._errors import (
    BackendError,
    ClosedError,
    InvalidTransition,
    PayloadTooLarge,
    PermissionDenied,
    SessionLimitExceeded,
    SessionNotFound,
    ValidationError,
)
from ._events import EventType, StreamEvent, make_event
from ._log import fresh_appender
from ._memory import MemoryBackend
from ._parts_chunker import too_large
from ._session import SessionState, StreamSession, check_transition, events_view, new_session_id
from ._signals import loop_clock, signal_factory
from ._stats import RegistryStatistics, SessionStatistics
from ._streamer import TokenStream, stream_tokens
from ._subscription import Subscription
from ._tasks import SessionTasks
from ._validate import EMPTY_OBJECT, check_id, check_int, freeze_json_object, type_name
from .abc import Backend, TokenSource

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ._signals import Signal

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
HookName: TypeAlias = Literal["created", "state_changed", "event", "removed", "delivered"]
_HOOK_NAMES: Final = ("created", "state_changed", "event", "removed", "delivered")

_ENDING: Final = EntryPhase.ENDING

# Keyed by str too (EventType is a StrEnum): an event's type is either.
_FINAL_STATE: Final[dict[str, SessionState]] = {
    EventType.COMPLETE: SessionState.COMPLETED,
    EventType.ERROR: SessionState.ERROR,
}


class _LogSink:
    """A session's :class:`~streamkit.abc.TokenSink`: its stream's tokens into its log.

    Called from the stream's source task. It refuses (and the registry's producer loop
    then handles the event) whatever that loop would wait for or handle otherwise: a
    paused or ending session, and an event the log will not take without waiting or
    raising. It notes no time per token: the entry reads its stream's last token time
    (``_Entry.tokens_of``), on the same clock; :class:`_ClockedLogSink` notes it when
    the registry has a clock of its own.
    """

    __slots__ = ("_append", "_entry", "_go", "_hooks", "_registry", "appended")

    def __init__(self, registry: SessionRegistry, entry: _Entry) -> None:
        self._registry = registry
        self._entry = entry
        self._append = fresh_appender(entry.log)
        self._hooks = registry._hooks["event"]
        # The entry's `resumed` signal last seen set. A pause replaces the signal with
        # an unset one (a signal is never cleared), so while it is the same object the
        # session is not paused: no call to ask it.
        self._go: Signal | None = None
        #: Events appended: added to the registry's count when the stream ends.
        self.appended = 0

    def offer(self, event: StreamEvent) -> bool:
        """Append ``event`` to the session's log now, or return ``False``."""
        entry = self._entry
        resumed = entry.resumed
        if resumed is not self._go:
            if resumed is not None and not resumed.is_set():
                return False  # paused
            self._go = resumed
        if entry.phase is _ENDING:
            return False
        try:
            stored = self._append(event)
        except (ClosedError, PayloadTooLarge, BackendError):
            # The producer loop appends it again and handles the error.
            return False
        if stored is None:
            return False
        self.appended += 1
        if self._hooks:
            self._registry._emit("event", stored)
        return True

    def take(self, event: StreamEvent) -> Awaitable[bool]:
        """Hand ``event`` to the registry's producer (a refused, start or final event)."""
        return self._registry._take(self._entry, event)

    def offer_timed(self, event: StreamEvent) -> bool:
        """:meth:`offer` for a timer's event (a heartbeat): the entry notes its time."""
        if not self.offer(event):
            return False
        self._entry.last_event_at = self._registry._event_clock()
        return True


class _ClockedLogSink(_LogSink):
    """A :class:`_LogSink` that notes each append's time on the registry's own clock."""

    __slots__ = ("_clock",)

    def __init__(self, registry: SessionRegistry, entry: _Entry) -> None:
        super().__init__(registry, entry)
        self._clock = registry._event_clock

    def offer(self, event: StreamEvent) -> bool:
        """Append ``event`` to the session's log now, or return ``False``."""
        if not super().offer(event):
            return False
        self._entry.last_event_at = self._clock()
        return True

    # Every append here notes its time already (the registry's clock, as offer_timed's).
    offer_timed = offer


def _denied(user_id: str | None, action: Action) -> str:
    # The next step, without naming the owner.
    if user_id is None:
        return (
            f"the session has an owner and no user_id was given: pass the owner's "
            f"user_id= to {action} it (or let others in with SessionRegistry(authorize=...))"
        )
    return (
        f"this user may not {action} the session: it has another owner "
        "(SessionRegistry(authorize=...) can let other users in)"
    )


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
        # Found once the loop runs (__aenter__): the loop's own clock, the registry's
        # clock for per-event times and every other time it notes (the loop's, the same
        # clock as anyio.current_time without its look-up of the backend, unless one was
        # injected), and the loop's event type.
        self._loop_clock: Callable[[], float] = anyio.current_time
        self._event_clock: Callable[[], float] = self._clock
        self._new_signal: Callable[[], Signal] | None = None
        self._entries: dict[str, _Entry] = {}
        # Upkeep queues, oldest first (see the module's rules).
        self._idle: OrderedDict[str, float] = OrderedDict()
        self._ended: OrderedDict[str, float] = OrderedDict()
        self._unwatched: OrderedDict[str, float] = OrderedDict()
        self._hooks: dict[str, list[Callable[..., object]]] = {name: [] for name in _HOOK_NAMES}
        self._tg: TaskGroup | None = None
        # Where the sessions' producers and their sources run (see _tasks).
        self._tasks: SessionTasks | None = None
        self._closing = False
        self._counts = dict.fromkeys(
            ("created", "removed", "expired", "appended", "sweeps", "heartbeats", "lagged", "gaps"),
            0,
        )
        self._delivered_gone = 0
        self._ttfts: list[float] = []
        # What only a shared backend needs, or nothing: chosen once, here.
        self._coord = make_coordinator(self)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closing:
            raise RuntimeError("a SessionRegistry can be entered only once")
        enter = getattr(self.backend, "__aenter__", None)
        if enter is not None:
            await enter()
        self._loop_clock = loop_clock()
        if self._clock is anyio.current_time:
            self._event_clock = self._loop_clock
        self._new_signal = signal_factory()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._tasks = SessionTasks(tg)
        tg.start_soon(self._sweeper, name="streamkit sweeper")
        if self.config.heartbeat_interval is not None:
            tg.start_soon(self._heartbeater, name="streamkit heartbeats")
        self._coord.start(tg)
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
        self._coord.stopping(self._entries.values())
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
                try:
                    # Every producer left runs in a scope of its own or is stopped by
                    # its stream (see _tasks).
                    for entry in self._entries.values():
                        cancel_producer(entry)
                    with anyio.CancelScope(shield=True):
                        assert self._tasks is not None
                        await self._tasks.wait()
                finally:
                    suppressed = await tg.__aexit__(exc_type, exc_val, exc_tb)
            finally:
                self._tg = None
                self._tasks = None
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
        entry = _Entry(session, log, self._event_clock())
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
        await self._coord.sync(entry)
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
        return await self._coord.list(user_id)

    def start(
        self,
        session_id: str,
        source: TokenSource,
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
        self._task_group()  # raises if the registry is not running
        tasks = self._tasks
        assert tasks is not None
        entry = self._entries.get(check_id("session_id", session_id))
        if entry is None:
            raise SessionNotFound("no such session", session_id=session_id)
        if entry.session.is_terminal or entry.finishing:
            check_transition(entry.session.status, SessionState.ACTIVE, session_id=session_id)
        if entry.producer is not None:
            raise ValidationError(
                "the session already has a producer", field="source", session_id=session_id
            )
        # The task that pulls the source appends its tokens itself through the sink (one
        # task switch per token fewer): on asyncio the producer task itself (_drive),
        # else the stream's source task; what the sink refuses comes through _produce.
        sink: _LogSink | None = None
        same_clock = self._event_clock is self._loop_clock
        if self._coord.direct_appends:
            sink = _LogSink(self, entry) if same_clock else _ClockedLogSink(self, entry)
        stream = stream_tokens(source, config, session_id=session_id, sink=sink)
        entry.stream = stream
        entry.sink = sink
        if sink is not None and same_clock:
            entry.tokens_of = stream
        # One task per session on asyncio (the producer pulls the source: _drive). With a
        # local coordinator its stream stops it (TokenStream._stop): no cancel scope per
        # session (six tracked objects); a shared backend's producer keeps its scope.
        drive = sink is not None and tasks.on_asyncio and stream.can_drive()
        local = drive and self._coord.local
        entry.producer = stream if local else anyio.CancelScope()
        if entry.resumed is None and entry.session.status is not SessionState.ACTIVE:
            # An active session's producer goes on with no signal (None): one is made
            # by the first pause.
            new_signal = self._new_signal
            assert new_signal is not None  # the registry runs: _task_group() said so
            entry.resumed = new_signal()
        if entry.subscribers == 0 and self.config.idle_producer_grace is not None:
            self._unwatched[session_id] = self._event_clock()
        if local:
            tasks.start_soon(self._drive, entry, stream, name="streamkit producer")
        else:
            tasks.start_soon(self._produce, entry, stream, tasks, drive, name="streamkit producer")

    async def _take(self, entry: _Entry, event: StreamEvent) -> bool:
        # One event the stream hands over to its producer (the sink refused it, or it is
        # the start, a heartbeat or the final event); True: stop. A method, not a
        # closure of _produce: no cells per live session.
        resumed = entry.resumed  # a pause replaces it with an unset one
        if resumed is not None and not resumed.is_set():
            await resumed.wait()
        if event.is_final:
            # Before the final event is visible: a subscriber that sees it may read
            # the registry's statistics at once.
            stream = entry.stream
            if stream is not None:
                self._record_stream(stream)
            entry.recorded = True
            state = _FINAL_STATE[event.event_type]
            if not entry.finishing:
                await self._end_quietly(entry, state, event, from_producer=True)
            return True
        if entry.finishing:  # ended elsewhere (cancel, sweep, shutdown)
            return True
        log = entry.log
        try:
            # The event is fresh from the stream: stamped in place.
            stored = log.append_nowait(event, owned=True)
            if stored is None:  # the block policy waits for a reader
                stored = await log.append(event)
        except PayloadTooLarge as exc:
            raise too_large(exc, event) from exc
        except ClosedError:
            # Another task (or worker) may have ended the session.
            await self._coord.refused(entry)
            if _finishing(entry):
                return True
            raise
        entry.last_event_at = self._event_clock()
        self._counts["appended"] += 1
        if self._hooks["event"]:
            self._emit("event", stored)
        return False

    async def _drive(self, entry: _Entry, stream: TokenStream) -> None:
        # The producer of one task per session (asyncio): this task pulls the source
        # itself (TokenStream._drive); a cancel of the session stops the stream
        # (cancel_producer), no scope around it.
        entry.recorded = False
        try:
            try:
                await stream._drive(self._loop_clock)
            finally:
                await stream.aclose()
        except Exception as exc:  # a failure of the log or backend, not of the source
            await self._producer_failed(entry, exc)
        finally:
            self._producer_ended(entry, stream)

    async def _produce(
        self, entry: _Entry, stream: TokenStream, tasks: SessionTasks, drive: bool
    ) -> None:
        scope = entry.producer
        assert isinstance(scope, anyio.CancelScope)
        entry.recorded = False
        try:
            with scope:
                if drive:
                    # One task per session, a shared backend's: this one pulls the source.
                    try:
                        await stream._drive(self._loop_clock)
                    finally:
                        await stream.aclose()
                else:
                    # The stream's source task runs in the registry's task group: no
                    # task group of the stream's own to make, enter and leave. aclose()
                    # in the finally waits for that task, as leaving `async with stream`
                    # would.
                    stream._run_in(tasks, self._loop_clock)
                    try:
                        async for event in stream:
                            if await self._take(entry, event):
                                break
                    finally:
                        await stream.aclose()
        except Exception as exc:  # a failure of the log or backend, not of the source
            await self._producer_failed(entry, exc)
        finally:
            self._producer_ended(entry, stream)

    async def _producer_failed(self, entry: _Entry, exc: Exception) -> None:
        logger.exception("streamkit: a session's producer failed")
        if not entry.finishing:
            try:
                with anyio.CancelScope(shield=True):
                    await self._end_quietly(entry, SessionState.ERROR, _error_event(exc))
            except Exception:
                # The backend is down for good. A shared backend's lease on the
                # session then lapses and a worker ends it once storage is back.
                logger.exception("streamkit: could not end a failed session")

    def _producer_ended(self, entry: _Entry, stream: TokenStream) -> None:
        entry.producer = None
        sink = entry.sink
        if sink is not None:
            entry.sink = None
            self._counts["appended"] += sink.appended
        self._unwatched.pop(entry.session.session_id, None)
        if not entry.recorded:
            self._record_stream(stream)

    def _record_stream(self, stream: TokenStream) -> None:
        ttft = stream._time_to_first_token()
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
        hold(entry, paused=True)
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
        hold(entry, paused=False)
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

        Closing is not idempotent: once closed, the session is gone, and a second
        ``close`` raises :class:`~streamkit.SessionNotFound` (as a second HTTP ``DELETE``
        answers 404), so a caller learns that it used a stale id.

        Raises:
            SessionNotFound: no such session, including one closed already.
            PermissionDenied: ``user_id`` may not control it.
        """
        try:
            entry = await self._entry(session_id, user_id, "control")
        except SessionNotFound:
            raise SessionNotFound(
                "no such session: closed already, removed after ended_session_ttl, "
                "or never created",
                session_id=session_id,
            ) from None
        if not entry.finishing:
            await self._end_quietly(entry, SessionState.CANCELLED, _final("complete", "cancelled"))
        await self._remove(entry)

    # -- hooks and statistics -----------------------------------------------------------

    def on(self, name: HookName, callback: Callable[..., object]) -> Callable[[], None]:
        """Call ``callback`` at each ``name`` moment; return a function that unregisters it.

        ``created(session)``, ``state_changed(before, after)``, ``event(event)`` and
        ``removed(session)`` are called inline, synchronously: keep them quick. A hook
        that raises is logged (logger ``streamkit.registry``) and the registry goes on.
        ``delivered(event, lag)`` reports a sample of the live events subscriptions
        return (the first, then one in 16 per subscription), with the seconds since the
        event was made; only subscriptions opened while such a hook is registered are
        sampled, and the others pay nothing for it.

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
        subscribers = producers = retained = delivered = appended = 0
        for entry in self._entries.values():
            by_state[entry.session.status.value] += 1
            if entry.sink is not None:
                appended += entry.sink.appended
            subscribers += entry.subscribers
            producers += entry.producer is not None
            stats = entry.log.statistics()
            retained += stats.retained_bytes
            delivered += stats.events_delivered
        subscribers += sum(entry.subscribers for entry in self._coord.remote_entries())
        ttfts = self._ttfts
        return RegistryStatistics(
            sessions=len(self._entries),
            by_state=MappingProxyType(by_state),
            subscribers=subscribers,
            producers=producers,
            sessions_created=self._counts["created"],
            sessions_removed=self._counts["removed"],
            sessions_expired=self._counts["expired"],
            events_appended=self._counts["appended"] + appended,
            events_delivered=delivered + self._delivered_gone,
            bytes_retained=retained,
            sweeps=self._counts["sweeps"],
            heartbeats=self._counts["heartbeats"],
            mean_time_to_first_token=sum(ttfts) / len(ttfts) if ttfts else None,
            max_time_to_first_token=max(ttfts) if ttfts else None,
            subscribers_lagged=self._counts["lagged"],
            history_gaps=self._counts["gaps"],
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
        now = self._event_clock()
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
        done += await self._coord.sweep()
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
        now = self._event_clock()
        sent = 0
        for entry in [*self._entries.values(), *self._coord.remote_entries()]:
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
        entry = self._entries.get(session_id) or self._coord.held(session_id)
        entry = await self._coord.lookup(session_id, entry)
        session = entry.session
        if session.user_id is not None and session.user_id != user_id:
            allowed = False
            if self._authorize is not None:
                verdict = self._authorize(user_id, session, action)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                allowed = verdict is True
            if not allowed:
                raise PermissionDenied(_denied(user_id, action), session_id=session_id)
        return entry

    def _snapshot(self, entry: _Entry) -> StreamSession:
        return attrs.evolve(entry.session, events=events_view(entry.log.retained()))

    def _touch(self, entry: _Entry) -> None:
        entry.last_event_at = self._event_clock()

    def _rearm(self, entry: _Entry) -> None:
        # A control call counts as activity: requeue at the back of the idle queue.
        sid = entry.session.session_id
        entry.last_event_at = self._event_clock()
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
        entry.phase = EntryPhase.ENDING
        own = entry.producer if from_producer and self._coord.local else None
        try:
            if own is not None and not isinstance(own, anyio.CancelScope):
                # One task per session (asyncio): its stream's _stop() never cuts the
                # end short (it cancels only a wait for the source), so nothing to shield.
                before, after, stored = await self._coord.end(entry, state, final, fresh=True)
                entry.session = after
            elif own is not None:
                # The producer ends its own session: its scope shields the end (a
                # scope fewer per session). Nothing else cancels that scope while the
                # session is ending but the registry's shutdown, which first stops
                # every memory log's block policy (Coordinator.stopping): an end
                # waiting for room goes on at once and is not cut short.
                own.shield = True
                try:
                    before, after, stored = await self._coord.end(entry, state, final, fresh=True)
                finally:
                    own.shield = False
                entry.session = after
            else:
                with anyio.CancelScope(shield=True):
                    before, after, stored = await self._coord.end(entry, state, final)
                    entry.session = after
        finally:
            if not from_producer:
                cancel_producer(entry)
            if entry.resumed is not None:
                entry.resumed.set()  # a paused producer must see its cancellation
            self._idle.pop(session_id, None)
            self._unwatched.pop(session_id, None)
            if not entry.remote:
                self._ended[session_id] = self._event_clock()
        hooks = self._hooks
        if hooks["event"]:
            self._emit("event", stored)
        if hooks["state_changed"]:
            self._emit("state_changed", before, after)
        return stored

    async def _end_quietly(
        self,
        entry: _Entry,
        state: SessionState,
        final: StreamEvent,
        *,
        from_producer: bool = False,
    ) -> None:
        """End a session unless it has ended already (here or on another worker)."""
        try:
            await self._finish(entry, state, final, from_producer=from_producer)
        except (InvalidTransition, ClosedError):
            return  # (a try costs less than contextlib.suppress at every session's end)

    async def _remove(self, entry: _Entry) -> None:
        if entry.removed:
            return
        entry.removed = True
        session_id = entry.session.session_id
        if entry.remote:
            # The cleanup sweep may have dropped this worker's copy of another worker's
            # session during an await before this; the session is removed all the same.
            self._coord.forget_remote(entry)
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
        hooks = self._hooks[name]
        if not hooks:
            return
        for hook in tuple(hooks):
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
        self._coord.subscriber_left(entry)
        if (
            entry.subscribers == 0
            and entry.producer is not None
            and not entry.finishing
            and self.config.idle_producer_grace is not None
        ):
            self._unwatched[entry.session.session_id] = self._event_clock()


_EMPTY: Final = EMPTY_OBJECT


def _finishing(entry: _Entry) -> bool:
    # A call, so that type checkers do not narrow ``entry.finishing`` across an await.
    return entry.finishing


def _final(kind: Literal["complete"], reason: str) -> StreamEvent:
    return make_event(EventType(kind), "", MappingProxyType({"reason": reason}))


def _error_event(exc: BaseException) -> StreamEvent:
    return make_event(
        EventType.ERROR,
        "",
        MappingProxyType({"error_type": type(exc).__name__, "message": str(exc)[:1000]}),
    )
