"""The in-memory event log: one append-only list per session, read through cursors.

Rules of this module, and why:

* **Append is O(1) whatever the number of readers.** The log keeps no per-reader queue.
  Readers are positions (a ``seq``); the events live once, in one list, and a reader
  finds its next event by index arithmetic (``seq - base``).
* **One wake-up per batch, not per event.** The first reader that has caught up and
  must wait makes an :class:`anyio.Event` that ``append`` sets (if there is one) and
  forgets; a woken reader takes every event available (up to ``_MAX_BATCH``) as one
  list slice and hands them out without yielding. A producer appending a burst of
  events thus costs each reader one task switch for the burst.
* **The producer wakes one reader, whatever their number.** Setting an event costs one
  step per task waiting on it, so the readers that wait after the first one wait on a
  second event, which the first sets when it wakes (or leaves, if it is cancelled).
  An append costs the same with one reader or a thousand.
* **Append does not yield unless it must wait** (``block`` policy with a reader too
  far behind). A producer pulling from a real source yields there; a cursor yields
  when it waits for events and, when it did not have to wait, once per batch, so a
  reader that never waits still lets other tasks run and sees cancellation. (The last
  event of a closed log comes without one: nothing follows it.)
* **Never a silent skip.** A reader whose next event has left the retention window, or
  that fell more than its allowed lag behind (``disconnect`` policy), gets
  :class:`~streamkit.SubscriberLagged` carrying the last ``seq`` it received.
* **Lag allowance.** A reader may be at most ``max_lag`` events behind the head, except
  that a reader opened far behind (a resume) starts with its initial backlog as its
  allowance, which then only shrinks as it catches up (never below ``max_lag``). A
  resume is therefore not disconnected for the backlog it asked for, only for falling
  further behind. Lag is enforced while the log is open; once it is closed, readers may
  take their time over the retained tail.
* **Byte accounting is an estimate** for events whose JSON has not been computed yet:
  a fixed overhead plus the length of the content, ids and metadata (see
  :func:`estimate_size`). Computing the JSON costs several microseconds per event, more
  than the whole rest of the path; transports compute and cache it later anyway. When
  the estimate could be near ``max_event_bytes`` the exact UTF-8 length of the JSON is
  used, so the size bound itself is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import math
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol, overload

import anyio
import anyio.lowlevel

from ._errors import ClosedError, HistoryGap, PayloadTooLarge, SubscriberLagged, ValidationError
from ._events import (
    EventType,
    FrozenEvent,
    StreamEvent,
    freeze_event,
    make_event,
    pack_event,
    stamp,
    thaw_event,
)
from ._events import _slot as _event_slots
from ._session import new_session_id
from ._signals import Signal, _FutureSignal, signal_renewer
from ._validate import check_choice, check_id, check_int, type_name
from .abc import EventCursor, EventLog, LogStatistics

if TYPE_CHECKING:
    from ._config import RegistryConfig, SlowConsumerPolicy

__all__ = ["InMemoryEventLog", "estimate_size", "fresh_appender", "token_size"]

_TOKEN: Final = EventType.TOKEN
_dumps: Final[Callable[..., bytes]] = marshal.dumps
_Future: Final = asyncio.Future
_set_seq: Final = _event_slots["seq"]
_set_session: Final = _event_slots["session_id"]
_set_json: Final = _event_slots["_json"]
_set_size: Final = _event_slots["_size"]

#: Most events a reader takes from the log at once.
_MAX_BATCH: Final = 1024
#: Evicted slots kept at the head of the list before it is compacted.
_COMPACT_AT: Final = 256
#: Appends between two freezes of the events that several readers have all passed: this
#: many, or as many as there are readers if there are more.
_FREEZE_EVERY: Final = 8


def _skeleton_size() -> int:
    # The JSON of an event with every variable part empty: the fixed overhead.
    event = make_event("", "", {}, "", 1, "", 1_700_000_000.123456)
    return len(event.to_json()) + 6  # room for a longer seq and timestamp


_SKELETON: Final = _skeleton_size()


_PLAIN_SCALARS: Final = frozenset({int, float, bool, type(None)})


def _value_size(value: object) -> int:
    if type(value) is str:
        return len(value) + 2
    if value is None or isinstance(value, bool | int | float):
        return 24
    # Nested values (a final event's stats, a part) likewise, without writing the JSON.
    if isinstance(value, Mapping):
        return _items_size(value) + 2
    if isinstance(value, tuple | list):
        return 2 + sum(_value_size(item) + 1 for item in value)
    return len(repr(value))  # pragma: no cover - frozen metadata holds only the above


def _items_size(mapping: Mapping[str, object]) -> int:
    size = 0
    # The common cases inline (this runs for every event): str, then numbers.
    for key, value in mapping.items():
        if type(value) is str:
            size += len(key) + len(value) + 6
        elif type(value) in _PLAIN_SCALARS:
            size += len(key) + 28
        else:
            size += len(key) + 4 + _value_size(value)
    return size


def estimate_size(event: StreamEvent) -> int:
    """Return the size the log charges for ``event``: its JSON length, or an estimate.

    Exact when the event's JSON was already computed (and cached); otherwise a fixed
    overhead plus the lengths of the content, ids, type and metadata items, counting
    24 for a number (nested mappings and arrays item by item). Exact for ASCII text in
    the common cases; it undercounts text that JSON escapes or that is not ASCII.
    """
    text = event._json
    if text is not None:
        return len(text)
    hint = event._size  # the streamer's token events come with it
    if hint is not None:
        return hint + len(event.session_id or "")
    size = (
        _SKELETON
        + len(event.content)
        + len(event.event_id)
        + len(event.event_type)
        + len(event.session_id or "")
    )
    metadata = event.metadata
    if metadata:
        size += _items_size(metadata)
    return size


def token_size(metadata: bool) -> int:
    """Return :func:`estimate_size` of a streamer's ``token`` event less three lengths.

    See :func:`_token_size` (this is it, found once for each ``metadata``).
    """
    return _TOKEN_SIZES[metadata]


def _token_size(metadata: bool) -> int:
    """Return :func:`estimate_size` of a streamer's ``token`` event less three lengths.

    Those of its content, its ``event_id`` and its ``session_id``: what
    the streamer adds to it when it makes the event (the content's and the id's), and
    what :func:`estimate_size` adds (the session's). ``metadata``: whether
    the event carries the streamer's ``index`` and ``elapsed``.
    """
    sample = make_event(
        EventType.TOKEN,
        "",
        MappingProxyType({"index": 0, "elapsed": 0.0}) if metadata else MappingProxyType({}),
        None,
        None,
        "",
        0.0,
    )
    return estimate_size(sample)


def final_size(event: StreamEvent, stats_size: int) -> int:
    """Return :func:`estimate_size` of a final event less its ``session_id``'s length.

    ``stats_size``: what the item-by-item estimate counts for the value of its
    ``stats`` metadata item (:func:`stats_size`), known beforehand: the same figure,
    without walking the statistics. The streamer gives its final events this hint.
    """
    size = _SKELETON + len(event.content) + len(event.event_id) + len(event.event_type)
    for key, value in event.metadata.items():
        size += len(key) + 4 + (stats_size if key == "stats" else _value_size(value))
    return size


#: :func:`final_size` of a ``complete`` event whose ``event_id``, ``reason`` and ``stats``
#: count nothing: a streamer's ``complete`` event is this plus the three
#: (``len(event_id) + len(reason) + stats_size``), a sum instead of a walk of its items.
COMPLETE_SIZE: Final = final_size(
    make_event(
        EventType.COMPLETE, "", MappingProxyType({"reason": "", "stats": ""}), None, None, "", 0.0
    ),
    0,
)


def stats_size(stats: Mapping[str, object]) -> int:
    """Return what :func:`estimate_size` counts for a final event's ``stats`` value."""
    return _value_size(stats)


_TOKEN_SIZES: Final = {False: _token_size(False), True: _token_size(True)}


def _exact_size(event: StreamEvent) -> int:
    text = event.to_json()
    return len(text) if text.isascii() else len(text.encode())


class _Reader:
    """A reader's state as the log sees it: where it is, and how far it may lag."""

    __slots__ = ("allow", "pos", "swaps")

    def __init__(self, pos: int, allow: int) -> None:
        self.pos = pos
        self.allow = allow
        # Transient events this reader gets in place of their stand-ins, by seq.
        self.swaps: dict[int, StreamEvent] | None = None


_NO_EVENTS: Final[list[StreamEvent]] = []
_PART: Final = "part"


def transient_standin(event: StreamEvent) -> StreamEvent | None:
    """Return the stand-in stored for a transient part event, or ``None`` for others.

    A transient part (``DataPart(transient=True)``) is not kept in a log: the log
    stores a ``heartbeat`` event in its place (same ``seq``, so the sequence has no
    hole), whose ``metadata["transient"]`` names the part's type, and hands the part
    itself to the readers that were reading when it came. A resume or a replay gets
    the heartbeat.
    """
    part = event.metadata.get("part")
    if not (isinstance(part, Mapping) and part.get("transient") is True):
        return None
    kind = part.get("type")
    return make_event(
        "heartbeat",
        "",
        {"transient": kind if isinstance(kind, str) else "data"},
        event.session_id,
        None,
        event.event_id,
        event.timestamp,
    )


def _swapped(batch: list[StreamEvent], swaps: dict[int, StreamEvent]) -> list[StreamEvent]:
    """``batch`` with the stand-ins of transient events a reader is owed put back."""
    out = list(batch)
    for index, event in enumerate(out):
        full = swaps.pop(event.seq or 0, None)
        if full is not None:
            out[index] = full
    return out


def _checked_size(event: StreamEvent, limit: int, session_id: str) -> int:
    """Return the size to account for ``event``; raise if its JSON is over ``limit``."""
    size = estimate_size(event)
    if size * 6 > limit:
        # JSON may escape a character into up to six: look at the real size.
        size = _exact_size(event)
        if size > limit:
            raise PayloadTooLarge(
                f"event is {size} bytes as JSON, more than max_event_bytes ({limit})",
                field="event",
                session_id=session_id,
            )
    return size


#: What a cursor's one-event batch holds before its first event.
_NO_EVENT: Final = make_event("", "", {}, "", 0, "", 0.0)


#: The running loop and how to make its futures, for the cursors that start on it: one
#: object per loop, not per reader (the newest loop only: a second loop, in another
#: thread or a later run, replaces it).
_FUTURE_OF: Final[list[tuple[asyncio.AbstractEventLoop, Callable[[], Any]]]] = []


def _future_maker(loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Future[Any]]:
    """Return how to make an exact ``asyncio.Future`` of ``loop``.

    What asyncio's ``loop.create_future`` makes, without its Python frame; exact on any
    loop (the log tells its futures from Trio's events by their type, and a task awaits
    an exact future on its fast path).
    """
    for known, maker in _FUTURE_OF:
        if known is loop:
            return maker
    maker = partial(_Future, loop=loop)
    _FUTURE_OF[:] = [(loop, maker)]
    return maker


def _wake_all(waiting: list[Any]) -> None:
    """Wake the readers that wait behind the first: futures on asyncio, an event on Trio."""
    for signal in waiting:
        if type(signal) is asyncio.Future:
            if not signal.done():  # a cancelled waiter's future is done already
                signal.set_result(None)
        else:
            signal.set()


def _thawed(stored: list[Any], first: int, session_id: str) -> list[Any]:
    """``stored`` (events from seq ``first`` on) with the frozen ones rebuilt.

    A function of its own: a comprehension in ``_Cursor._next`` naming one of its
    locals would make that local a cell, one more object for every call.
    """
    return [
        e if type(e) is StreamEvent else thaw_event(e, seq, session_id)
        for seq, e in enumerate(stored, first)
    ]


class _Owner(Protocol):
    """What a cursor tells when ``__anext__`` raises (see :meth:`_Cursor.owned_by`).

    With ``StopAsyncIteration`` the cursor has released itself already: the owner need
    not await its ``aclose()``.
    """

    async def cursor_ended(self, exc: BaseException) -> None: ...


class _Cursor(EventCursor):
    """A cursor over an :class:`InMemoryEventLog` (see the module rules)."""

    __slots__ = (
        "_after",
        "_bare",
        "_batch",
        "_done",
        "_future",
        "_i",
        "_live",
        "_log",
        "_one",
        "_owner",
        "_renew",
        "_state",
        "_upto",
        "_waited",
    )

    def __init__(self, log: InMemoryEventLog, after: int) -> None:
        self._log = log
        # This cursor's own event to wait on for the producer, made for each wait; on
        # asyncio the loop's bare future, awaited itself (_bare).
        self._renew: Callable[[], Any] = anyio.Event
        self._bare = False
        # The loop's create_future on asyncio (found once the cursor starts), else None:
        # what a reader waiting behind the first one waits on.
        self._future: Callable[[], asyncio.Future[None]] | None = None
        self._after = after
        # The seq of the last event of the current batch.
        self._upto = after
        self._state: _Reader | None = None
        self._batch = _NO_EVENTS
        #: The batch of one event, reused (a reader kept up with the log gets one at a time).
        self._one: list[StreamEvent] = [_NO_EVENT]
        self._i = 0
        self._done = False
        self._waited = False
        # The last event returned was the one new event this reader waited for.
        self._live = False
        # Told when __anext__ raises (see owned_by).
        self._owner: _Owner | None = None

    @property
    def position(self) -> int:
        """The ``seq`` of the last event this cursor returned (its resume point)."""
        if self._i:
            return self._batch[self._i - 1].seq or 0
        state = self._state
        return self._after if state is None else state.pos

    def owned_by(self, owner: _Owner | None) -> Callable[[], Coroutine[Any, Any, StreamEvent]]:
        """Report to ``owner`` whatever ``__anext__`` raises; return ``__anext__`` itself.

        For a wrapper that must close itself when the cursor ends or fails (a
        subscription): it hands out the cursor's own coroutine instead of one of its
        own around it. ``owner.cursor_ended(exc)`` is awaited before ``exc`` propagates.
        ``None`` stops the reports.
        """
        self._owner = owner
        return self._next

    def take_ready(self, limit: int) -> Sequence[StreamEvent]:
        """Return up to ``limit`` events already fetched and not yet returned.

        Never waits; what it returns counts as iterated (the position moves past it).
        Transports use it to send a backlog in one write.
        """
        i = self._i
        batch = self._batch
        if i >= len(batch):
            return _NO_EVENTS
        end = min(len(batch), i + limit)
        self._i = end
        return batch[i:end]

    def park(self) -> asyncio.Future[None] | None:
        """A bare future to await for the next event, or ``None``: await ``__anext__``.

        Only when waiting is the whole of what ``__anext__`` would do: the one live
        event was delivered, nothing came since, several readers read the log and
        another reader already waits for the producer (asyncio). After the future is
        done, :meth:`take_live` gives the event (or ``None``: await ``__anext__``).
        """
        future = self._future
        if future is None or not self._live or self._i != 1:
            return None
        log = self._log
        passed = self._upto
        if log._last != passed or log._data is None or log._closed or len(log._readers) == 1:
            return None
        state = self._state
        assert state is not None
        state.pos = passed
        log._delivered += 1
        self._batch = _NO_EVENTS
        self._i = 0
        self._live = False
        if log._room is not None:
            log._wake_room()
        self._waited = True
        return log._listed(future())

    def take_live(self) -> StreamEvent | None:
        """The one new event after :meth:`park`'s future, or ``None``: await ``__anext__``."""
        state = self._state
        if state is None or not self._waited or self._i:
            return None
        log = self._log
        last = log._last
        if last != state.pos + 1 or state.swaps:
            return None
        event = log._buf[last - log._base]
        if type(event) is not StreamEvent:
            return None
        return self._hold(event, last, state)

    def _hold(self, event: StreamEvent, seq: int, state: _Reader) -> StreamEvent:
        """Hold ``event`` (seq ``seq``), the one new event this reader waited for, and return it.

        The newest event is always retained, and one event is within any allowance.
        """
        self._waited = False
        state.allow = self._log._max_lag
        batch = self._one
        batch[0] = event
        self._batch = batch
        self._upto = seq
        self._i = 1
        self._live = True
        return event

    async def _next(self) -> StreamEvent:
        try:
            i = self._i
            batch = self._batch
            if i < len(batch):
                self._i = i + 1
                return batch[i]
            log = self._log
            state = self._state
            if state is None:
                state = self._start()
            elif self._live:
                # The one event this reader waited for was delivered (batch is _one): the
                # reader keeps up with the log (a paced stream). Pass it, and wait for the
                # next one here; anything but exactly one new event goes the general way.
                passed = self._upto
                state.pos = passed
                log._delivered += 1
                if passed == log._cold + 1 and len(log._readers) == 1:
                    # The only reader has passed it: pack it now (see _buf), inline.
                    index = passed - log._base
                    if index >= log._head:
                        event = log._buf[index]
                        if type(event) is StreamEvent:
                            metadata = event.metadata
                            frozen: bytes | None
                            if (
                                event._size is not None
                                and len(metadata) == 2
                                and event.event_type is _TOKEN
                            ):
                                # pack_event's streamer token, inline (see there).
                                frozen = _dumps(
                                    (
                                        event.content,
                                        event.event_id,
                                        event.timestamp,
                                        metadata["index"],
                                        metadata["elapsed"],
                                        event._json,
                                    ),
                                    2,
                                )
                            else:
                                frozen = pack_event(event)
                            if frozen is not None:
                                log._buf[index] = frozen
                    log._cold = passed
                elif passed > log._cold and len(log._readers) == 1:
                    log._freeze(passed, pack_event)
                if log._room is not None:
                    log._wake_room()
                if log._last == passed and log._data is None and not log._closed:
                    # While it waits the cursor still holds the event it passed (_one,
                    # _i = 1): its position is that event's seq, and nothing is ready.
                    signal = log._data = self._renew()
                    try:
                        # An appended event resolves the future with itself (asyncio);
                        # anything else wakes it with None.
                        if self._bare:
                            got = await signal  # the loop's future
                        else:
                            got = await signal.wait()
                    except BaseException:
                        self._live = False  # counted already: hold nothing
                        self._batch = _NO_EVENTS
                        self._i = 0
                        raise
                    finally:
                        if log._data is signal:  # left before any data came
                            log._data = None
                        others = log._others
                        if others is not None:
                            log._others = None
                            _wake_all(others)
                    if got is None:
                        last = log._last
                        if last == passed + 1 and not state.swaps:
                            got = log._buf[last - log._base]
                            if type(got) is not StreamEvent:
                                got = None
                    if got is not None:
                        batch[0] = got  # batch is _one
                        self._upto = passed + 1
                        return got  # type: ignore[no-any-return]
                    self._waited = True
                self._live = False
                self._batch = _NO_EVENTS
                self._i = 0
            elif batch:
                # The whole previous batch was delivered: advance, and tell a waiting producer.
                passed = self._upto
                state.pos = passed
                log._delivered += i
                self._batch = _NO_EVENTS
                self._i = 0
                if passed > log._cold and len(log._readers) == 1:
                    log._freeze(passed, pack_event)  # the only reader has passed them
                if log._room is not None:
                    log._wake_room()
            while True:
                pos = state.pos
                last = log._last
                if pos < last:
                    if last == pos + 1 and (self._waited or log._closed):
                        # The live case: the one event this reader waited for, or the
                        # last event of a closed log (its final event, appended in the
                        # same step as the token before it): no checkpoint for that one,
                        # its reader ends at the next call.
                        event = log._buf[last - log._base]
                        if type(event) is not StreamEvent:  # frozen before this reader came
                            event = thaw_event(event, last, log._session_id)
                        if state.swaps:
                            event = state.swaps.pop(last, event)
                        return self._hold(event, last, state)
                    oldest = log._base + log._head
                    if pos + 1 < oldest:
                        raise self._lagged(f"events after {pos} left the retention window", oldest)
                    if not log._closed:
                        backlog = last - pos
                        if backlog > state.allow:
                            raise self._lagged(
                                f"the reader fell {backlog} events behind (allowed {state.allow})",
                                oldest,
                            )
                        state.allow = backlog if backlog > log._max_lag else log._max_lag
                    if not self._waited:
                        self._waited = True
                        if self._bare:  # asyncio: anyio's checkpoint, without its look-ups
                            await asyncio.sleep(0)
                        else:
                            await anyio.lowlevel.checkpoint()
                        continue
                    self._waited = False
                    # Several events (one new event after a wait took the live case above).
                    start = pos + 1 - log._base
                    stored: list[Any] = log._buf[start : start + _MAX_BATCH]
                    if pos < log._cold:  # a replay: some events are kept frozen
                        stored = _thawed(stored, pos + 1, log._session_id)
                    if state.swaps:
                        stored = _swapped(stored, state.swaps)
                    self._batch = batch = stored
                    self._upto = pos + len(stored)
                    self._i = 1
                    return batch[0]
                if log._closed or self._done:
                    self._finish()
                    raise StopAsyncIteration
                data = log._data
                if data is None:
                    # The reader the producer wakes; it wakes the other waiting readers in
                    # turn (inline: one coroutine frame fewer per wake-up).
                    data = log._data = self._renew()
                    try:
                        if self._bare:
                            await data  # the loop's own future
                        else:
                            await data.wait()
                    finally:
                        if log._data is data:  # left before any data came: the next is first
                            log._data = None
                        others = log._others
                        if others is not None:
                            log._others = None
                            _wake_all(others)
                elif (future := self._future) is not None:
                    # A future of its own (asyncio), listed for the first reader to set: no
                    # coroutine and no deque entry per wait, as a shared asyncio.Event
                    # makes (a young object fewer per delivery for the collector), and an
                    # exact future takes the task's fast path.
                    waiter = log._listed(future())
                    try:
                        await waiter
                    except BaseException:
                        others = log._others
                        if others is not None and waiter in others:
                            others.remove(waiter)
                        raise
                else:
                    # Trio: one event they all wait on (its wait parks the task).
                    others = log._others
                    if others is None:
                        others = log._others = [self._renew()]
                    await others[0].wait()
                self._waited = True
        except BaseException as exc:
            owner = self._owner
            if owner is not None:
                await owner.cursor_ended(exc)
            raise

    # The coroutine function itself: no frame of its own around it per event.
    __anext__ = _next

    def _start(self) -> _Reader:
        if self._done:
            raise StopAsyncIteration
        log = self._log
        after = self._after
        oldest = log._base + log._head
        if after < oldest - 1:
            self._done = True
            raise HistoryGap(
                f"cannot resume after {after}: the oldest retained event is {oldest}",
                after=after,
                oldest_seq=oldest,
                session_id=log._session_id,
            )
        state = _Reader(after, max(log._max_lag, log._last - after))
        self._state = state
        renew = signal_renewer()
        if renew is _FutureSignal:  # asyncio: the loop's own futures, exact ones
            self._future = self._renew = _future_maker(asyncio.get_running_loop())
            self._bare = True
        else:
            self._renew = renew
        log._readers.add(state)
        log._freeze_at = log._last  # the readers changed: look again at the next append
        if log._block:
            log._limit = min(log._limit, after + state.allow)
        return state

    def _lagged(self, why: str, oldest: int) -> SubscriberLagged:
        log = self._log
        state = self._state
        assert state is not None
        pos = state.pos
        log._lagged += 1
        self._finish()
        return SubscriberLagged(
            f"reader disconnected: {why}; resume after {pos}",
            after=pos,
            oldest_seq=oldest,
            session_id=log._session_id,
        )

    def _finish(self) -> None:
        self._done = True
        self._live = False
        state = self._state
        if state is None:
            return
        self._state = None
        log = self._log
        if self._upto != state.pos:  # else the batch held was passed (and counted): a wait
            log._delivered += self._i
        self._after = self.position if self._i else state.pos
        self._batch = _NO_EVENTS
        self._i = 0
        log._readers.discard(state)
        log._freeze_at = log._last
        if log._room is not None:
            log._wake_room()

    async def aclose(self) -> None:
        """Release the cursor; later iteration ends at once. Idempotent."""
        self._finish()
        await anyio.lowlevel.checkpoint()

    def __del__(self) -> None:
        # A cursor dropped without aclose() must not hold a blocked producer forever.
        if self._state is not None:
            with contextlib.suppress(Exception):  # interpreter shutdown
                self._finish()


class _RetainedView(Sequence[StreamEvent]):
    """A live, read-only view of the events a log retains, oldest first."""

    __slots__ = ("_log",)

    def __init__(self, log: InMemoryEventLog) -> None:
        self._log = log

    def __len__(self) -> int:
        log = self._log
        return len(log._buf) - log._head

    @overload
    def __getitem__(self, index: int) -> StreamEvent: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[StreamEvent]: ...

    def __getitem__(self, index: int | slice) -> StreamEvent | Sequence[StreamEvent]:
        log = self._log
        if isinstance(index, slice):
            first = log._base + log._head
            seqs = range(first, first + len(log._buf) - log._head)[index]
            session_id = log._session_id
            return tuple(
                e if type(e) is StreamEvent else thaw_event(e, seq, session_id)
                for seq, e in zip(seqs, log._buf[log._head :][index], strict=True)
            )
        size = len(log._buf) - log._head
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("retained event index out of range")
        event = log._buf[log._head + index]
        if type(event) is StreamEvent:
            return event
        return thaw_event(event, log._base + log._head + index, log._session_id)

    def __repr__(self) -> str:
        return f"<retained events: {len(self)}>"


class InMemoryEventLog(EventLog):
    """An :class:`~streamkit.abc.EventLog` held in this process's memory.

    Args:
        session_id: The session the log belongs to; a new unguessable id if omitted.
        history_max_events: Events retained for replay (the oldest go first).
        history_max_bytes: Bytes retained for replay, as :func:`estimate_size` counts
            them. The newest event is always retained.
        max_event_bytes: The largest event accepted (exact JSON size in UTF-8).
        slow_consumer_policy: ``"disconnect"``: a reader more than its allowed lag
            behind gets :class:`~streamkit.SubscriberLagged`; ``"block"``: ``append``
            waits until every reader is within its allowed lag.
        max_lag: Events a reader may fall behind the newest one.

    Raises:
        ValidationError: an argument is invalid.
    """

    __slots__ = (
        "_base",
        "_big",
        "_block",
        "_buf",
        "_bytes",
        "_closed",
        "_cold",
        "_data",
        "_delivered",
        "_freeze_at",
        "_head",
        "_lagged",
        "_last",
        "_limit",
        "_max_bytes",
        "_max_event_bytes",
        "_max_events",
        "_max_lag",
        "_others",
        "_policy",
        "_readers",
        "_room",
        "_session_id",
        "_sizes",
        "_waits",
    )

    def __init__(
        self,
        session_id: str | None = None,
        *,
        history_max_events: int = 10_000,
        history_max_bytes: int = 16 * 1024 * 1024,
        max_event_bytes: int = 1024 * 1024,
        slow_consumer_policy: SlowConsumerPolicy = "disconnect",
        max_lag: int = 1000,
    ) -> None:
        self._session_id = (
            new_session_id() if session_id is None else check_id("session_id", session_id)
        )
        self._max_events = check_int("history_max_events", history_max_events, minimum=1)
        self._max_bytes = check_int("history_max_bytes", history_max_bytes, minimum=1)
        self._max_event_bytes = check_int("max_event_bytes", max_event_bytes, minimum=1)
        # An event whose estimated size is above this could be over max_event_bytes as
        # JSON (a character escapes into up to six): its exact size is looked at.
        self._big = self._max_event_bytes // 6
        self._max_lag = check_int("max_lag", max_lag, minimum=1)
        check_choice("slow_consumer_policy", slow_consumer_policy, ("disconnect", "block"))
        self._policy: SlowConsumerPolicy = slow_consumer_policy
        self._block = slow_consumer_policy == "block"
        # Events live in _buf[_head:]; _buf[i] has seq _base + i.
        # Events every reader has passed (seq <= _cold) are kept frozen (freeze_event):
        # flat tuples the garbage collector does not track, so that a long history costs
        # full collections nothing. _freeze_at: the seq at whose append to look again.
        self._buf: list[Any] = []
        self._cold = 0
        self._freeze_at = 1
        self._sizes: list[int] = []
        self._head = 0
        self._base = 1
        self._last = 0
        self._bytes = 0
        self._closed = False
        # Set once when events arrive or the log closes: the first reader that caught up
        # waits on it, and sets _others, the events of the other readers that caught up.
        self._data: Any = None  # a Signal, or on asyncio an exact future
        self._others: list[Any] | None = None
        # Set when a reader advances or leaves; a blocked producer waits on it.
        self._room: Signal | None = None
        self._readers: set[_Reader] = set()
        # Block policy: a lower bound of min(reader.pos + reader.allow), the highest seq
        # the producer may append without looking at the readers again.
        self._limit: float = math.inf
        self._delivered = 0
        self._lagged = 0
        self._waits = 0

    @classmethod
    def from_config(cls, session_id: str | None, config: RegistryConfig) -> InMemoryEventLog:
        """Make a log with the history, size and lag settings of a registry config."""
        return cls(
            session_id,
            history_max_events=config.history_max_events,
            history_max_bytes=config.history_max_bytes,
            max_event_bytes=config.max_event_bytes,
            slow_consumer_policy=config.slow_consumer_policy,
            max_lag=config.max_lag,
        )

    @property
    def session_id(self) -> str:
        """The session this log belongs to; appended events are stamped with it."""
        return self._session_id

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest event, ``0`` before the first append."""
        return self._last

    @property
    def oldest_seq(self) -> int:
        """The ``seq`` of the oldest retained event (``last_seq + 1`` if none is)."""
        return self._base + self._head

    @property
    def is_closed(self) -> bool:
        """Whether the log takes no more appends (final event appended, or closed)."""
        return self._closed

    async def append(self, event: StreamEvent) -> StreamEvent:
        """Store a copy of ``event`` stamped with the next ``seq`` and return it.

        See :meth:`streamkit.abc.EventLog.append`.

        Raises:
            ClosedError: the log is closed.
            PayloadTooLarge: the event's JSON is larger than ``max_event_bytes``.
            ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`.
        """
        if not isinstance(event, StreamEvent):
            raise ValidationError(
                f"event must be a StreamEvent, got {type_name(event)}", field="event"
            )
        if self._closed:
            raise self._closed_error()
        if self._block and self._last + 1 > self._limit:
            await self._wait_for_room()
        if event.event_type == _PART:
            standin = transient_standin(event)
            if standin is not None:
                return self._append_transient(event, standin)
        stored = make_event(
            event.event_type,
            event.content,
            event.metadata,
            self._session_id,
            self._last + 1,
            event.event_id,
            event.timestamp,
        )
        hint = event._size  # a size hint does not count the session id: it still holds
        if hint is not None:
            _set_size(stored, hint)
        self._commit(stored)
        return stored

    def append_nowait(self, event: StreamEvent, *, owned: bool = False) -> StreamEvent | None:
        """Store ``event`` now unless the ``block`` policy would make the producer wait.

        See :meth:`streamkit.abc.EventLog.append_nowait`. Never yields. With
        ``owned=True`` an event whose ``seq`` is ``None`` is stamped in place (one
        object per event fewer: the streamer's fresh events take this path).

        Returns:
            The stored event, or ``None`` (nothing stored) when the ``block`` policy
            would wait for a reader: await :meth:`append` then.

        Raises:
            ClosedError: the log is closed.
            PayloadTooLarge: the event's JSON is larger than ``max_event_bytes``.
            ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`.
        """
        if type(event) is not StreamEvent and not isinstance(event, StreamEvent):
            raise ValidationError(
                f"event must be a StreamEvent, got {type_name(event)}", field="event"
            )
        if self._closed:
            raise self._closed_error()
        seq = self._last + 1
        if self._block and seq > self._limit and not self._has_room():
            return None
        event_type = event.event_type
        if event_type == _PART:
            standin = transient_standin(event)
            if standin is not None:
                return self._append_transient(event, standin)
        session_id = self._session_id
        if owned and event.seq is None:
            # stamp(), inline: this runs for every token of every stream.
            _set_seq(event, seq)
            _set_session(event, session_id)
            if event._json is None:
                size = event._size
                size = estimate_size(event) if size is None else size + len(session_id)
            else:  # made before its seq was known: to be made again
                _set_json(event, None)
                size = estimate_size(event)
            stored = event
        else:
            stored = make_event(
                event_type,
                event.content,
                event.metadata,
                session_id,
                seq,
                event.event_id,
                event.timestamp,
            )
            size = estimate_size(stored)
        if size * 6 > self._max_event_bytes:
            self._commit(stored)  # could be too large: the exact size decides
            return stored
        # _store(), inline.
        buf = self._buf
        buf.append(stored)
        self._sizes.append(size)
        self._last = seq
        self._bytes += size
        if len(buf) - self._head > self._max_events or self._bytes > self._max_bytes:
            self._evict()
        if event_type in _FINAL:
            self._closed = True
        data = self._data
        if data is not None:
            self._data = None
            if type(data) is _Future:  # asyncio: the reader's own future
                if not data.done():  # a cancelled reader's is done already
                    data.set_result(stored)
            else:
                data.set()
        if seq >= self._freeze_at:
            self._freeze_passed()
        return stored

    def append_fresh(self, event: StreamEvent) -> StreamEvent | None:
        """:meth:`append_nowait` with ``owned=True`` for an event nobody has seen yet.

        Internal: the registry's sink hands the streamer's events this way. A ``token``
        event made by the streamer (its size known, no
        ``seq``, no JSON yet) is stamped and stored with no other look; any other event
        goes through :meth:`append_nowait`.

        Raises:
            ClosedError: the log is closed.
            PayloadTooLarge: the event's JSON is larger than ``max_event_bytes``.
        """
        size = event._size
        if size is None or event.seq is not None:
            return self.append_nowait(event, owned=True)
        if self._closed:
            raise self._closed_error()
        seq = self._last + 1
        if seq > self._limit and self._block and not self._has_room():  # _limit: inf unless block
            return None
        _set_seq(event, seq)
        session_id = self._session_id
        if event.session_id is not session_id:
            _set_session(event, session_id)
        size += len(session_id)
        if size > self._big:
            self._commit(event)  # could be too large: the exact size decides
            return event
        buf = self._buf
        buf.append(event)
        self._sizes.append(size)
        self._last = seq
        total = self._bytes = self._bytes + size
        # More than _max_events retained: len(buf) - _head, which is seq + 1 - _base - _head.
        if seq - self._base - self._head >= self._max_events or total > self._max_bytes:
            self._evict()
        data = self._data
        if data is not None:
            self._data = None
            if type(data) is _Future:  # asyncio: the reader's own future
                if not data.done():  # a cancelled reader's is done already
                    data.set_result(event)
            else:
                data.set()
        if seq >= self._freeze_at:
            self._freeze_passed()
        return event

    def _append_transient(self, event: StreamEvent, standin: StreamEvent) -> StreamEvent:
        """Store ``standin`` for the transient ``event``; owe ``event`` to the readers."""
        seq = self._last + 1
        stamp(standin, seq, self._session_id)  # made by transient_standin: ours to stamp
        full = make_event(
            event.event_type,
            event.content,
            event.metadata,
            self._session_id,
            seq,
            event.event_id,
            event.timestamp,
        )
        _checked_size(full, self._max_event_bytes, self._session_id)
        self._commit(standin)
        for reader in self._readers:
            if reader.swaps is None:
                reader.swaps = {}
            reader.swaps[seq] = full
        return standin

    def _commit(self, event: StreamEvent) -> None:
        self._store(event, _checked_size(event, self._max_event_bytes, self._session_id))

    def _store(self, event: StreamEvent, size: int) -> None:
        buf = self._buf
        buf.append(event)
        self._sizes.append(size)
        self._last += 1
        self._bytes += size
        if len(buf) - self._head > self._max_events or self._bytes > self._max_bytes:
            self._evict()
        if event.event_type in _FINAL:
            self._closed = True
        data = self._data
        if data is not None:
            self._data = None
            if type(data) is _Future:  # asyncio: the reader's own future
                if not data.done():  # a cancelled reader's is done already
                    data.set_result(None)
            else:
                data.set()
        if self._last >= self._freeze_at:
            self._freeze_passed()

    def _listed(self, waiter: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """List ``waiter``, a reader's own future, for the reader that waits first to set."""
        others = self._others
        if others is None:
            self._others = [waiter]
        else:
            others.append(waiter)
        return waiter

    def _wake_room(self) -> None:
        """Wake the producer waiting for room (the ``block`` policy): a reader moved on."""
        room, self._room = self._room, None
        if room is not None:
            room.set()

    def _freeze_passed(self) -> None:
        """Freeze the events every reader has passed (see ``_buf``).

        With no reader, every event (the new one too); with one, the reader does it as
        it moves on (at once, so that no event lives long enough to reach an old
        generation of the garbage collector); with more, every few appends (at least
        as many as there are readers).
        """
        readers = self._readers
        if not readers:  # one at a time: packed, like those of a single reader
            self._freeze_at = self._last + 1
            self._freeze(self._last, pack_event)
        elif len(readers) == 1:
            self._freeze_at = self._last + _FREEZE_EVERY
        else:  # a look at every reader: amortised over as many appends as there are readers
            self._freeze_at = self._last + max(_FREEZE_EVERY, len(readers))
            self._freeze(min(reader.pos for reader in readers))

    def _freeze(
        self,
        upto: int,
        freeze: Callable[[StreamEvent], FrozenEvent | None] = freeze_event,
    ) -> None:
        """Freeze the events up to ``seq`` ``upto`` that are not yet."""
        buf = self._buf
        base = self._base
        start = max(self._cold + 1, base + self._head) - base
        end = upto + 1 - base
        for i in range(start, end):
            event = buf[i]
            if type(event) is StreamEvent:
                frozen = freeze(event)
                if frozen is not None:
                    buf[i] = frozen
        self._cold = max(self._cold, upto)

    def _evict(self) -> None:
        buf = self._buf
        sizes = self._sizes
        head = self._head
        count = len(buf) - head
        while count > 1 and (count > self._max_events or self._bytes > self._max_bytes):
            self._bytes -= sizes[head]
            head += 1
            count -= 1
        if head >= _COMPACT_AT and head * 2 >= len(buf):
            del buf[:head]
            del sizes[:head]
            self._base += head
            head = 0
        self._head = head

    def _has_room(self) -> bool:
        # Block policy: recompute the bound from the readers; room for the next event?
        self._limit = min((reader.pos + reader.allow for reader in self._readers), default=math.inf)
        return self._last + 1 <= self._limit

    async def _wait_for_room(self) -> None:
        while True:
            if not self._block or self._has_room():
                return
            self._waits += 1
            room = self._room
            if room is None:
                room = self._room = anyio.Event()
            await room.wait()
            if self._closed:
                raise self._closed_error()

    def _stop_blocking(self) -> None:
        """Never again hold an append back for a reader (``block`` policy): the owner stops.

        The registry's shutdown calls it before it ends the log's session: its final
        event (and the one the producer may be waiting to append) must not wait for a
        reader that may never read again. A producer waiting for room goes on.
        """
        if self._block:
            self._block = False
            self._limit = math.inf
            # Nor is a reader lagged for what it could not hold back any more.
            self._max_lag = sys.maxsize
            for reader in self._readers:
                reader.allow = sys.maxsize
            self._wake_room()

    def _closed_error(self) -> ClosedError:
        return ClosedError("the event log is closed", session_id=self._session_id)

    def read(self, after: int = 0) -> EventCursor:
        """Return a cursor over the events with ``seq > after``, replayed then live.

        See :meth:`streamkit.abc.EventLog.read`.

        Raises:
            ValidationError: ``after`` is not an ``int >= 0``.
        """
        return _Cursor(self, check_int("after", after, minimum=0))

    def retained(self) -> Sequence[StreamEvent]:
        """Return a live, read-only view of the retained events, oldest first."""
        return _RetainedView(self)

    def statistics(self) -> LogStatistics:
        """Return a snapshot of the log's counters."""
        return LogStatistics(
            session_id=self._session_id,
            last_seq=self._last,
            oldest_seq=self._base + self._head,
            retained_events=len(self._buf) - self._head,
            retained_bytes=self._bytes,
            readers=len(self._readers),
            events_delivered=self._delivered,
            readers_lagged=self._lagged,
            producer_waits=self._waits,
            closed=self._closed,
        )

    async def aclose(self) -> None:
        """Close the log for writers; readers get the retained tail, then stop.

        A producer waiting for room (``block`` policy) gets
        :class:`~streamkit.ClosedError`. Idempotent.
        """
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close the log for writers, like :meth:`aclose`, without yielding."""
        if self._closed:
            return
        self._closed = True
        data, self._data = self._data, None
        if data is not None:
            _wake_all([data])
        self._wake_room()
        others, self._others = self._others, None
        if others:
            _wake_all(others)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<InMemoryEventLog {state} last_seq={self._last} "
            f"retained={len(self._buf) - self._head} readers={len(self._readers)}>"
        )


_FINAL: Final = frozenset({"complete", "error"})


def fresh_appender(log: EventLog) -> Callable[[StreamEvent], StreamEvent | None]:
    """Return how to append the streamer's fresh events to ``log`` without waiting.

    The memory log's :meth:`InMemoryEventLog.append_fresh` when ``log`` appends as
    it does (not a subclass that changes ``append_nowait``), else ``append_nowait``
    with ``owned=True``.
    """
    if (
        isinstance(log, InMemoryEventLog)
        and type(log).append_nowait is InMemoryEventLog.append_nowait
        and type(log).append_fresh is InMemoryEventLog.append_fresh
    ):
        return log.append_fresh
    return partial(log.append_nowait, owned=True)
