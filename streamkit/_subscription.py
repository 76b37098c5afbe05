"""A subscriber's view of one session, made by :meth:`SessionRegistry.subscribe`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final, Self

import anyio

from ._errors import ClosedError, HistoryGap, SubscriberLagged, ValidationError
from .abc import EventCursor

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from types import TracebackType

    from ._coordinator import _Entry
    from ._events import StreamEvent
    from ._registry import SessionRegistry

__all__ = ["Subscription"]

#: A subscription with ``delivered`` hooks reports one live event in this many.
SAMPLE_EVERY: Final = 16


class Subscription:
    """A subscriber's view of one session: an async iterator of its events.

    Made by :meth:`SessionRegistry.subscribe`. Use it with ``async with`` (or iterate it
    to the end) so that it is released promptly. Checks (existence, permission, the
    subscriber bound, the resume point) happen when it is entered or first iterated.
    """

    __slots__ = (
        "_after",
        "_closed",
        "_cursor",
        "_entry",
        "_next",
        "_registry",
        "_session_id",
        "_user",
    )

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
        # The cursor's own next-event coroutine function when it reports its end to
        # this subscription (the log's cursor): __anext__ returns its coroutine, with
        # no coroutine of its own around it.
        self._next: Callable[[], Awaitable[StreamEvent]] | None = None

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
        if self._after > entry.log.last_seq:
            await registry._coord.sync(entry)  # another worker may have appended since
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
        cursor = entry.log.read(self._after)
        if registry._hooks["delivered"]:  # decided once: no cost per event without hooks
            cursor = _SampledCursor(cursor, registry, entry.log.last_seq)
        else:
            adopt = getattr(cursor, "owned_by", None)
            if adopt is not None:
                self._next = adopt(self)
        self._cursor = cursor
        return cursor

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

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        cursor = self._cursor
        if cursor is not None and self._next is not None:
            # Entered, and the cursor reports its end or failure to this subscription
            # (owned_by): ``async for`` may iterate the cursor itself, with no call of
            # this subscription's __anext__ per event. It closes the subscription exactly
            # as iterating this object does.
            return cursor
        return self

    def __anext__(self) -> Awaitable[StreamEvent]:
        step = self._next
        if step is not None:
            return step()  # the cursor calls cursor_ended() if it raises
        return self._anext()

    async def _anext(self) -> StreamEvent:
        cursor = self._cursor
        if cursor is None:
            if self._closed:
                raise StopAsyncIteration
            cursor = await self._open()
            if self._next is not None:
                return await self._next()
        try:
            return await cursor.__anext__()
        except BaseException as exc:
            await self.cursor_ended(exc)
            raise

    async def cursor_ended(self, exc: BaseException) -> None:
        """Close the subscription: its cursor raised ``exc`` (the end, or a failure)."""
        if isinstance(exc, StopAsyncIteration):
            if self._next is not None:
                # The log's own cursor (owned_by) released itself before it ended: no
                # aclose() to await, and no loop iteration for its checkpoint.
                self._release()
            else:
                await self.aclose()
            return
        if isinstance(exc, SubscriberLagged):
            self._registry._counts["lagged"] += 1
        elif isinstance(exc, HistoryGap):
            self._registry._counts["gaps"] += 1
        with anyio.CancelScope(shield=True):
            await self.aclose()

    def take_ready(self, limit: int) -> Sequence[StreamEvent]:
        """Return up to ``limit`` events already fetched and not yet returned, at once.

        Never waits; they count as iterated. Empty before the first event, or when the
        log's cursor holds none (see :meth:`streamkit.abc.EventCursor.take_ready`).
        """
        cursor = self._cursor
        return () if cursor is None else cursor.take_ready(limit)

    def _direct(self) -> AsyncIterator[StreamEvent]:
        """The open cursor itself when entered (else this subscription), for transports.

        A transport that holds the subscription open (``async with``) for a whole
        response iterates the log's cursor directly: one coroutine fewer per event. The
        subscription still closes when its ``async with`` ends.
        """
        cursor = self._cursor
        if cursor is None:
            return self
        if self._next is not None:
            # Iterated directly, the cursor reports nothing here: a transport's wait
            # cut short by its own timeout must not close the subscription.
            self._next = None
            cursor.owned_by(None)  # type: ignore[attr-defined]
        return cursor

    async def aclose(self) -> None:
        """Stop following the session. Idempotent."""
        if self._closed:
            return
        cursor = self._release()
        if cursor is not None:
            await cursor.aclose()

    def _release(self) -> EventCursor | None:
        """Close the subscription; return its cursor, for the caller to close."""
        self._closed = True
        self._next = None
        cursor, self._cursor = self._cursor, None
        entry, self._entry = self._entry, None
        if entry is not None:
            self._registry._subscriber_left(entry)
        if cursor is not None:
            self._after = cursor.position
        return cursor


class _SampledCursor(EventCursor):
    """A cursor that reports the delivery lag of one live event in :data:`SAMPLE_EVERY`.

    Made instead of the log's own cursor only when the registry has ``delivered``
    hooks. The events reported are those with ``seq`` ``live + 1``, ``live + 17``...
    where ``live`` was the log's last ``seq`` when the subscription opened (replayed
    history is not late), whether they are returned one by one or by
    :meth:`take_ready`; the lag is the seconds from the event's ``timestamp`` (made
    just before it was appended) to now.

    It takes the events up to the next one to report from the log's cursor at once
    (``take_ready``) and hands them out from its own list, so that an event costs one
    coroutine frame here as in the log's cursor, and the checks are paid once per run.
    """

    __slots__ = ("_cursor", "_i", "_last", "_next", "_ready", "_registry")

    def __init__(self, cursor: EventCursor, registry: SessionRegistry, live_after: int) -> None:
        self._cursor = cursor
        self._registry = registry
        self._next = live_after + 1  # the seq of the next event to report
        self._ready: Sequence[StreamEvent] = ()
        self._i = 0
        self._last = 0  # the seq of the event __anext__ took from the cursor itself

    @property
    def position(self) -> int:
        i = self._i
        if i < len(self._ready):  # some of what was taken ahead is not handed out yet
            return (self._ready[i - 1].seq or 0) if i else self._last
        return self._cursor.position

    async def __anext__(self) -> StreamEvent:
        i = self._i
        ready = self._ready
        if i < len(ready):
            self._i = i + 1
            return ready[i]
        cursor = self._cursor
        event = await cursor.__anext__()
        seq = self._last = event.seq or 0
        if seq >= self._next:
            self._report(event, seq)
        # Everything before the next event to report, if it is there already.
        self._ready = cursor.take_ready(self._next - seq - 1)
        self._i = 0
        return event

    def take_ready(self, limit: int) -> Sequence[StreamEvent]:
        i = self._i
        ready = self._ready
        if i < len(ready):
            taken = ready[i : i + limit]
            self._i = i + len(taken)
            return taken
        taken = self._cursor.take_ready(limit)
        if taken:
            first = taken[0].seq or 0
            while first <= self._next <= (taken[-1].seq or 0):
                index = self._next - first
                if index >= len(taken):  # pragma: no cover - a cursor's seqs are contiguous
                    break
                self._report(taken[index], self._next)
        return taken

    def _report(self, event: StreamEvent, seq: int) -> None:
        if seq == self._next:
            lag = time.time() - event.timestamp
            self._registry._emit("delivered", event, lag if lag > 0.0 else 0.0)
        # The next one: SAMPLE_EVERY after the one due (seq jumps only if events skip).
        self._next += SAMPLE_EVERY * ((seq - self._next) // SAMPLE_EVERY + 1)

    async def aclose(self) -> None:
        await self._cursor.aclose()
