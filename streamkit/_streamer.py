"""stream_tokens: turn any producer of text into a well-behaved stream of events.

Rules of this module:

* A stream is ``start``, then ``token`` events, then exactly one final event
  (``complete`` or ``error``). The ``content`` of the ``token`` events, concatenated,
  is exactly the text the source produced: the chunker only ever cuts between
  characters, never drops or repeats one, and holds back a trailing high surrogate
  and incomplete UTF-8 bytes until the rest arrives.
* Cancellation is never swallowed and never becomes an ``error`` event. A
  cancellation or an error inside ``__anext__`` closes the stream and its source.
* No task switch per token on the fast path, and no cancel scope per token.

Where the source runs (the reason for the three modes):

* A sync iterable runs in a dedicated daemon thread that feeds a bounded buffer, so
  a blocking model never blocks the event loop. Closing the stream sets a stop flag
  the thread checks after every item: it closes the iterator and exits at its next
  item. The thread never holds a reference to the stream, so a stream dropped
  without ``aclose`` stops its thread when it is garbage collected.
* An async iterable inside ``async with`` runs in a producer task of the stream's
  own task group, feeding the same kind of buffer. The consumer waits on the
  *buffer* (never on the source), and an alarm task of the same group wakes it when
  a timer is due (flush, heartbeat, stall, deadline), so timers fire while the
  source is silent and no item is ever lost to a timeout. One wake-up per batch of
  items, not per item, and no timer set per wait: the alarm's timer moves only when
  a deadline comes sooner than it is set for (a timer per wait cost a third of the
  CPU of a stream of tokens 50 ms apart, bench/bench_capacity.py). A consumer that
  only stores events (the registry's, appending to a log) may give the stream a
  *sink* (:class:`~streamkit.abc.TokenSink`, ``stream_tokens(sink=...)``): while the
  consumer waits for items, the producer task makes the ``token`` events itself and
  offers them to the sink, so a slow source's token costs no wake-up of the consumer
  at all. Whatever the sink refuses, and every other event (start, heartbeat, final),
  goes through the consumer as usual, in order.
* An async iterable iterated without ``async with`` is pulled in the consumer's own
  task: a task group held across the consumer's ``async for`` would corrupt the
  cancel-scope stack if the loop were left with ``break``, so there is no task to
  wait in. The pull is started by hand (``send(None)``): a source that has its
  next item ready costs no scope and no timer at all; only a pull that would block
  is awaited under a cancel scope for the deadline and the stall watchdog (both of
  which end the stream, so cancelling the source there loses nothing). Heartbeats
  cannot be sent while the consumer's own task waits in the source: use
  ``async with`` for them.
"""

from __future__ import annotations

import asyncio
import codecs
import enum
import math
import sys
import time
import types
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._chunker import Chunker
from ._config import StreamConfig
from ._errors import ClosedError, ValidationError
from ._events import _ID_PREFIX, EventType, StreamEvent, _id_counter, _Unsealed, make_event
from ._events import _slot as _event_slots
from ._feeds import BUFFER_ITEMS, DriveFeed, TaskFeed, ThreadFeed
from ._log import COMPLETE_SIZE, final_size, stats_size, token_size
from ._parts import Part, TextDelta
from ._parts_chunker import PartsChunker, accept_part, part_event
from ._signals import loop_clock
from ._stats import StreamStats, figures_data
from ._validate import EMPTY_OBJECT, JSONValue, check_id, type_name
from .abc import TokenSource  # what stream_tokens accepts

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

    from .abc import TokenSink

__all__ = ["StreamOutcome", "StreamStats", "TokenSource", "TokenStream", "stream_tokens"]

#: How a stream ended: ``completed`` (the source ran out), ``deadline``
#: (``max_stream_time`` passed), ``error`` (the source failed or stalled, or yielded
#: a bad item) or ``closed`` (the consumer closed it or was cancelled before the end).
StreamOutcome = Literal["completed", "deadline", "error", "closed"]

# Seconds a source's aclose() (or the producer task's exit) may take before the
# stream stops waiting for it; closing is shielded from cancellation, so it is bounded.
_CLOSE_TIMEOUT: Final = 5.0
# Error messages on error events are cut to this many characters.
_MAX_MESSAGE: Final = 1000


class Spawner(Protocol):
    """Where a stream starts its source task: a task group, or what a registry uses."""

    def start_soon(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> object: ...


#: The next event id's number (shared: no bound method per stream).
_next_id: Final = _id_counter.__next__


class DriveSink(Protocol):
    """The sink of a stream run by :meth:`TokenStream._drive`.

    A :class:`~streamkit.abc.TokenSink` that also takes what it refuses (``take``,
    awaited) and a timer's events (``offer_timed``).
    """

    def offer(self, event: StreamEvent) -> bool: ...

    def offer_timed(self, event: StreamEvent) -> bool: ...

    def take(self, event: StreamEvent) -> Awaitable[bool]: ...


class _Phase(enum.IntEnum):
    """A stream's phases, in order: it only ever moves forward."""

    #: Made, not started: the first ``__anext__`` starts the source and returns ``start``.
    NEW = 0
    #: Running: ``token`` events (and heartbeats) while the source produces.
    RUNNING = 1
    #: The source is closed: the rest of its text, then the final event.
    FINISHING = 2
    #: Ended: the final event was returned, or the stream was closed.
    DONE = 3


_NEW: Final = _Phase.NEW
_RUNNING: Final = _Phase.RUNNING
_FINISHING: Final = _Phase.FINISHING
_DONE: Final = _Phase.DONE

_EMPTY: Final = EMPTY_OBJECT
_TOKEN: Final = EventType.TOKEN
_new: Final = object.__new__
_wall_clock: Final = time.time
_set_size: Final = _event_slots["_size"]


# What the log charges for a text stream's statistics (see _final_event), found once.
_TEXT_STATS_SIZE = 0


def _text_stats_size() -> int:
    global _TEXT_STATS_SIZE  # noqa: PLW0603 - a constant, computed at first use
    _TEXT_STATS_SIZE = stats_size(MappingProxyType(StreamStats().to_dict()))
    return _TEXT_STATS_SIZE


# --- the stream -----------------------------------------------------------------------


#: How often the drive looks again whether a source left its shielded scope, once its
#: deadline or stall has come (see _shielded).
_SHIELD_RETRY: Final = 0.005


def _shielded(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` waits inside a shielded anyio cancel scope that it entered itself.

    The drive cuts a source's wait by cancelling the task (as :func:`asyncio.timeout`
    does), which would go through a shield of anyio's; anyio's own cancellation waits
    until the shielded scope is left. The task's scopes are anyio's internals (there is
    no public way to see them): with another layout of anyio, nothing is shielded.
    """
    backend = sys.modules.get("anyio._backends._asyncio")
    states = getattr(backend, "_task_states", None)
    if states is None:  # no anyio scope was ever entered on asyncio
        return False
    scope = getattr(states.get(task), "cancel_scope", None)
    # The task's own scopes, innermost first (the registry's producer scope is never
    # shielded while its source is pulled).
    while scope is not None and getattr(scope, "_host_task", None) is task:
        if getattr(scope, "shield", False):
            return True
        scope = getattr(scope, "_parent_scope", None)
    return False


class TokenStream:
    """The events of one stream, made by :func:`stream_tokens`.

    An async iterator of :class:`~streamkit.StreamEvent` and an async context manager.
    Iterate it directly, or inside ``async with`` (recommended, and what transports do):
    there the source runs in a task of the stream's own, so heartbeats and the flush of
    a partial chunk also happen while an async source is silent, and leaving the block
    closes the source. Without ``async with``, close the stream with :meth:`aclose`
    when you stop early.

    Iterate it from one task at a time.
    """

    __slots__ = (
        "__weakref__",
        "_alarm_scope",
        "_anext",
        "_busy",
        "_cancelling",
        "_chars",
        "_chunk_by",
        "_chunker",
        "_chunks",
        "_cut",
        "_cut_by",
        "_deadline",
        "_decoder",
        "_ended_at",
        "_entered",
        "_exception",
        "_fast",
        "_feed",
        "_final_stats",
        "_first_token_at",
        "_flush",
        "_handed",
        "_heartbeat",
        "_heartbeats",
        "_held",
        "_items",
        "_iterator",
        "_itl_max",
        "_last_beat",
        "_last_input",
        "_last_token_at",
        "_max_time",
        "_metadata",
        "_next_emit",
        "_now",
        "_out",
        "_outcome",
        "_paced",
        "_parts",
        "_paused",
        "_phase",
        "_producer_scope",
        "_progressive",
        "_raise_on_error",
        "_raised",
        "_session_id",
        "_sink",
        "_size",
        "_slow",
        "_source",
        "_stall",
        "_started_at",
        "_stopping",
        "_stream_delay",
        "_sync",
        "_tg",
        "_tokens",
        "_whole",
    )

    def __init__(
        self,
        source: object,
        iterator: AsyncIterator[object] | Iterator[object],
        config: StreamConfig,
        session_id: str | None,
        raise_on_error: bool,
        *,
        sink: TokenSink | None = None,
    ) -> None:
        # Use stream_tokens(): it validates what this trusts.
        self._source = source
        self._iterator: Any = iterator
        self._sync = not hasattr(iterator, "__anext__")
        self._session_id = session_id
        self._raise_on_error = raise_on_error
        self._stream_delay = config.stream_delay
        self._max_time = config.max_stream_time
        self._progressive = config.enable_progressive
        self._metadata = config.enable_metadata
        self._heartbeat = config.heartbeat_interval
        self._chunk_by = config.chunk_by
        # What the log charges for a token event, less its content and id (_log).
        self._size = token_size(config.enable_metadata)
        self._flush = config.flush_interval
        self._stall = config.stall_timeout
        self._out: deque[str] = deque()
        self._parts: PartsChunker | None = None  # made at the first part
        self._chunker = Chunker(
            self._out, config.chunk_size, config.chunk_by if config.enable_progressive else "whole"
        )
        # Every source piece is a chunk of its own (chunk_size=1, by token): _push makes
        # the event from the piece itself, with no chunker and no queue in between.
        self._whole = config.chunk_size == 1 and self._chunker.feed == self._out.append
        self._phase = _NEW
        self._fast = False
        self._paced = config.stream_delay > 0
        self._busy = False
        self._entered = False
        # The stream's own task group (``async with``), or where _run_in runs the source.
        self._tg: TaskGroup | Spawner | None = None
        self._feed: TaskFeed | ThreadFeed | DriveFeed | None = None
        self._producer_scope: anyio.CancelScope | None = None
        self._alarm_scope: anyio.CancelScope | None = None
        self._anext: Callable[[], Any] | None = None
        # The sink itself, not its bound `offer`: one object fewer per live stream.
        self._sink: Any = sink
        self._decoder: codecs.IncrementalDecoder | None = None
        self._held = ""
        self._slow = False
        self._outcome: StreamOutcome | None = None
        self._exception: BaseException | None = None
        self._raised = False
        self._final_stats: StreamStats | None = None
        # When a text stream's final event was made: its final statistics, made from
        # the counters (which no longer move) only if they are read.
        self._ended_at: float | None = None
        self._items = 0
        self._tokens = 0
        # Source pieces the producer task made into a chunk and handed to the sink
        # itself: each one an item, a token and a chunk, counted once (see _produce_to_sink).
        self._handed = 0
        self._chunks = 0
        self._chars = 0
        self._heartbeats = 0
        self._started_at = 0.0
        self._deadline = math.inf
        self._last_input = 0.0
        self._paused = False
        self._last_beat = 0.0
        self._next_emit = -math.inf
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None
        self._itl_max = 0.0
        # anyio.current_time, bound to the event loop's backend when the stream starts.
        self._now: Callable[[], float] = anyio.current_time
        # Run by its consumer's task (_drive): how a timer's event reaches the sink, and
        # that task, which the deadline and the stall cancel out of the source's wait
        # (its cancellation requests before: see _drive).
        self._cut: asyncio.Task[Any] | None = None
        self._cancelling = 0
        # _stop() was called: the drive returns at its next look (see _stop).
        self._stopping = False
        self._cut_by: Literal["deadline", "stall", "stopped"] | None = None

    def __repr__(self) -> str:
        state = ("new", "running", "finishing", "ended")[self._phase]
        return (
            f"<streamkit.TokenStream {state} outcome={self._outcome!r} "
            f"session_id={self._session_id!r}>"
        )

    def __del__(self) -> None:
        # A stream dropped without aclose() (``break`` out of ``async for``) must not
        # leave its source thread behind: it exits at its next item.
        feed = getattr(self, "_feed", None)
        if isinstance(feed, ThreadFeed):
            feed.stop()

    # --- public surface ---------------------------------------------------------------

    @property
    def stats(self) -> StreamStats:
        """The figures so far: live while the stream runs, final once it has ended.

        Raises:
            anyio.NoEventLoopError: read outside the event loop while the stream runs.
        """
        final = self._final_stats
        if final is not None:
            return final
        if self._ended_at is not None:
            final = self._final_stats = self._make_stats(self._ended_at)
            return final
        if self._phase == _NEW:
            return StreamStats()
        return self._make_stats(anyio.current_time())

    @property
    def outcome(self) -> StreamOutcome | None:
        """How the stream ended, or ``None`` while it has not."""
        return self._outcome

    @property
    def exception(self) -> BaseException | None:
        """The exception behind an ``error`` outcome, or ``None``.

        The source's own exception, a :class:`~streamkit.ValidationError` for a bad
        item, or a ``TimeoutError`` from the stall watchdog.
        """
        return self._exception

    @property
    def session_id(self) -> str | None:
        """The session id put on every event, if any."""
        return self._session_id

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` holds the source back."""
        return self._paused

    def pause(self) -> None:
        """Stop pulling from the source; :meth:`resume` goes on where it stopped.

        A source running in a task (``async with``) or a thread stops before its next
        item: at most the item being produced now is read. Text already read is still
        delivered. Iterated without ``async with``, the source is only ever pulled
        while you iterate, so stopping iteration is pausing. Idempotent.
        """
        self._paused = True
        feed = self._feed
        if feed is not None:
            feed.pause()

    def resume(self) -> None:
        """Pull from the source again after :meth:`pause`.

        The stall watchdog counts silence from the moment of resuming. Idempotent.
        """
        if not self._paused:
            return
        self._paused = False
        feed = self._feed
        if feed is not None:
            feed.resume()
            if isinstance(feed, DriveFeed) and feed.pending is not None:
                # Refused during the pause while the source is silent: handed on at
                # once (the alarm runs after the resume is complete).
                feed.set_alarm(self._now(), self._on_alarm)
        if self._phase == _RUNNING:
            self._last_input = self._now()

    async def __aenter__(self) -> Self:
        """Own the stream: an async source runs in a task of the stream's own.

        Raises:
            ClosedError: the stream was already closed.
            RuntimeError: the stream was already entered or iterated.
        """
        if self._phase == _DONE:
            raise ClosedError("the stream is closed", session_id=self._session_id)
        if self._entered or self._phase != _NEW:
            raise RuntimeError("enter the stream with `async with` once, before iterating it")
        self._entered = True
        if not self._sync:
            tg = anyio.create_task_group()
            await tg.__aenter__()
            self._tg = tg
        return self

    def _run_in(self, tg: Spawner, clock: Callable[[], float]) -> None:
        """Own the stream as ``async with`` does, its source task in ``tg`` instead.

        For a caller that already runs in ``tg`` and closes the stream itself
        (:meth:`aclose` in a ``finally``), as the registry's producer task does: the
        stream needs no task group of its own (making, entering and leaving one is a
        third of the cost of ending a session). :meth:`aclose` waits for the source
        task to end, as leaving ``async with`` does. ``clock``: the running loop's
        (:func:`~streamkit._signals.loop_clock`), found once by the caller.
        """
        assert not self._entered, "a stream is entered once"
        assert self._phase == _NEW, "before it is iterated"
        self._entered = True
        self._now = clock
        if not self._sync:
            self._tg = tg

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        if tg is None:
            await self.aclose()
            return None
        self._tg = None
        assert isinstance(tg, TaskGroup)  # entered with `async with`: its own group
        try:
            await self.aclose()  # the producer task has ended when this returns
        finally:
            # The body's own exception is not handed to the task group, which would
            # wrap it in an ExceptionGroup: the group has no task left to fail.
            # Cancellation is, so that the group sees it as its own when it is.
            if exc is not None and isinstance(exc, anyio.get_cancelled_exc_class()):
                await tg.__aexit__(exc_type, exc, tb)
            else:
                await tg.__aexit__(None, None, None)
        return None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        """Return the next event.

        Raises:
            StopAsyncIteration: after the final event (or once closed).
            anyio.BusyResourceError: another task is iterating the stream.
            BaseException: the source's exception after the ``error`` event, when the
                stream was made with ``raise_on_error=True``.
        """
        out = self._out
        if out and self._fast:
            return self._token_event(out.popleft(), self._now())
        if self._busy:
            raise anyio.BusyResourceError("iterating")
        self._busy = True
        try:
            return await self._advance()
        except StopAsyncIteration:
            raise
        except BaseException:
            if self._phase != _DONE:
                await self._abort()
            raise
        finally:
            self._busy = False

    async def aclose(self) -> None:
        """Close the stream and its source; idempotent.

        An async source's ``aclose()`` runs (bounded and shielded from cancellation); a
        sync source's thread stops at its next item and closes the iterator. No event
        is emitted.

        Raises:
            anyio.BusyResourceError: another task is iterating the stream (cancel that
                task instead).
        """
        if self._phase == _DONE:
            return
        if self._busy:
            raise anyio.BusyResourceError("iterating")
        await self._abort()

    # --- internals --------------------------------------------------------------------

    def _figures(
        self, now: float
    ) -> tuple[int, int, int, int, float | None, float | None, float | None, float, float]:
        """The text figures at ``now``, in :func:`~streamkit._stats.figures_data`'s order."""
        duration = now - self._started_at
        first = self._first_token_at
        parts = self._parts
        gaps = self._chunks - 1 + (0 if parts is None else parts.delta_events)
        tokens = self._tokens + self._handed
        return (
            tokens,
            self._chunks,
            self._chars,
            self._heartbeats,
            None if first is None else first - self._started_at,
            ((self._last_token_at or 0.0) - (first or 0.0)) / gaps if gaps > 0 else None,
            self._itl_max if gaps > 0 else None,
            tokens / duration if duration > 0 else 0.0,
            duration,
        )

    def _make_stats(self, now: float) -> StreamStats:
        tokens, chunks, chars, beats, ttft, mean_itl, max_itl, rate, duration = self._figures(now)
        parts = self._parts
        return StreamStats(
            tokens=tokens,
            chunks=chunks,
            characters=chars,
            heartbeats=beats,
            time_to_first_token=ttft,
            mean_inter_token_latency=mean_itl,
            max_inter_token_latency=max_itl,
            tokens_per_second=rate,
            duration=duration,
            reasoning_tokens=0 if parts is None else parts.reasoning_tokens,
            tool_calls=0 if parts is None else parts.tool_calls,
            usage=None if parts is None else parts.usage,
        )

    def _time_to_first_token(self) -> float | None:
        """``stats.time_to_first_token``, without making the statistics."""
        first = self._first_token_at
        return None if first is None else first - self._started_at

    def _token_event(self, text: str, now: float) -> StreamEvent:
        if type(text) is not str:  # a part, queued by the parts chunker
            return part_event(self, text, now)  # type: ignore[arg-type]
        index = self._chunks
        self._chunks = index + 1
        self._chars += len(text)
        last = self._last_token_at
        if last is None:
            self._first_token_at = now
        elif now - last > self._itl_max:  # the mean gap is (last - first) / gaps
            self._itl_max = now - last
        self._last_token_at = now
        if now >= self._deadline:
            self._fast = False
        # The event, made here: this runs for every chunk of every stream.
        event: Any = _new(_Unsealed)  # see _Unsealed
        event.event_type = _TOKEN
        event.content = text
        if self._metadata:
            # round(elapsed, 6) for elapsed >= 0, without round()'s decimal conversion.
            elapsed = int((now - self._started_at) * 1e6 + 0.5) / 1e6
            event.metadata = MappingProxyType({"index": index, "elapsed": elapsed})
        else:
            event.metadata = _EMPTY
        event.session_id = self._session_id
        event.seq = None
        event_id = f"{_ID_PREFIX}-{next(_id_counter)}"
        event.event_id = event_id
        event.timestamp = _wall_clock()
        event._json = None
        event._size = self._size + len(text) + len(event_id)
        event.__class__ = StreamEvent  # sealed
        return event  # type: ignore[no-any-return]

    def _start(self) -> StreamEvent:
        if self._now is anyio.current_time:
            self._now = loop_clock()
        now = self._now()
        self._started_at = self._last_input = self._last_beat = now
        if self._max_time is not None:
            self._deadline = now + self._max_time
        self._phase = _RUNNING
        self._fast = not self._paced
        if self._sync:
            feed = ThreadFeed(self._iterator, anyio.lowlevel.current_token())
            feed.paused = self._paused
            self._feed = feed
            self._iterator = None  # the thread owns it now
            feed.thread.start()
        elif self._tg is not None:
            # A stream with a sink needs no alarm task: its consumer seldom waits.
            task_feed = TaskFeed(alarm_task=self._sink is None)
            if self._paused:
                task_feed.pause()
            self._feed = task_feed
            scope = self._producer_scope = anyio.CancelScope()
            produce = self._produce if self._sink is None else self._produce_to_sink
            self._tg.start_soon(produce, scope, task_feed, name="streamkit producer")
            if task_feed.alarm_task:
                alarm = self._alarm_scope = anyio.CancelScope()
                self._tg.start_soon(self._alarm, alarm, task_feed, name="streamkit alarm")
        else:
            self._anext = self._iterator.__anext__
        return make_event(EventType.START, "", _EMPTY, self._session_id)

    async def _advance(self) -> StreamEvent:
        while True:
            phase = self._phase
            if phase == _RUNNING:
                now = self._now()
                if now >= self._deadline:
                    await self._finish("deadline")
                    continue
                if self._out:
                    if self._paced:
                        if not await self._pace(now):
                            continue
                        now = self._now()
                    return self._token_event(self._out.popleft(), now)
                if self._anext is not None:
                    now = await self._fill_direct()
                    if self._out and self._fast:
                        return self._token_event(self._out.popleft(), now)
                else:
                    beat = await self._fill_buffered()
                    if beat is not None:
                        return beat
            elif phase == _FINISHING:
                if self._out:
                    if self._paced:
                        await self._pace(self._now())
                    return self._token_event(self._out.popleft(), self._now())
                return self._final_event()
            elif phase == _NEW:
                return self._start()
            else:
                exc = self._exception
                if self._raise_on_error and exc is not None and not self._raised:
                    self._raised = True
                    raise exc
                raise StopAsyncIteration

    async def _pace(self, now: float) -> bool:
        """Wait for the next chunk's slot; ``False`` if the deadline came first."""
        target = self._next_emit
        if now < target:
            await anyio.sleep_until(min(target, self._deadline))
            if self._phase == _RUNNING and self._now() >= self._deadline:
                return False
        else:
            target = now  # late (slow source): restart the schedule, never burst
        self._next_emit = target + self._stream_delay
        return True

    def _accept(self, item: object) -> bool:
        """Take one source item into the chunker; ``False`` (and an error) if invalid."""
        index = self._items
        self._items = index + 1
        if type(item) is str:
            text = item
        elif isinstance(item, str):
            text = str(item)
        elif isinstance(item, bytes | bytearray):
            decoder = self._decoder
            if decoder is None:
                decoder = self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
            text = decoder.decode(item)
        elif isinstance(item, Part):
            if type(item) is not TextDelta:
                self._whole = False  # text goes through the parts chunker from now on
                return accept_part(self, item, index + self._handed)
            text = item.text
        else:
            self._exception = ValidationError(
                f"source item {index + self._handed} must be str or bytes, got {type_name(item)}",
                field="source",
                session_id=self._session_id,
            )
            return False
        if self._held:
            text = self._held + text
            self._held = ""
        if text:
            if "\ud800" <= text[-1] <= "\udbff":  # keep a surrogate pair together
                self._held = text[-1]
                text = text[:-1]
                if not text:
                    return True
            self._tokens += 1
            self._chunker.feed(text)
        return True

    async def _fill_buffered(self) -> StreamEvent | None:
        """Move source items into chunks, or wait for them while running the timers.

        Returns a heartbeat event when one is due; otherwise returns once there is a
        chunk to send or the stream is finishing.
        """
        feed = self._feed
        assert feed is not None
        assert not isinstance(feed, DriveFeed)
        while True:
            done = feed.done
            items = feed.take()
            if items is not None:
                self._last_input = self._now()
                accept = self._accept
                for item in items:
                    if not accept(item):
                        await self._finish("error")
                        return None
                if self._out:
                    return None
            if done:
                self._exception = feed.error
                await self._finish("completed" if feed.error is None else "error")
                return None
            now = self._now()
            wake = self._deadline
            if now >= wake:
                await self._finish("deadline")
                return None
            if self._progressive and self._chunker.has_partial:
                at = self._last_input + self._flush
                if now >= at:
                    self._chunker.flush()
                    return None
                wake = min(wake, at)
            if self._heartbeat is not None:
                at = max(self._last_input, self._last_beat) + self._heartbeat
                if now >= at:
                    self._last_beat = now
                    self._heartbeats += 1
                    return make_event(EventType.HEARTBEAT, "", _EMPTY, self._session_id)
                wake = min(wake, at)
            if self._stall is not None:
                at = self._last_input + self._stall
                if now >= at:
                    self._stalled()
                    await self._finish("error")
                    return None
                wake = min(wake, at)
            await feed.wait(wake)
            pending = feed.pending
            if pending is not None:
                feed.pending = None
                return pending
            if self._out:
                return None

    def _stalled(self) -> None:
        self._exception = TimeoutError(
            f"the source was silent for {self._stall:g} s (stall_timeout)"
        )

    async def _fill_direct(self) -> float:
        """Pull the source in this task until there is a chunk to send or it ends.

        Returns the time of the last pull.
        """
        anext = self._anext
        assert anext is not None
        out = self._out
        while True:
            began = self._now()
            if self._slow and self._progressive and self._chunker.has_partial:
                self._chunker.flush()  # the source is slow: do not hold its text back
                return began
            limit = self._deadline
            if self._stall is not None:
                limit = min(limit, began + self._stall)
            try:
                if limit == math.inf:
                    item = await anext()
                else:
                    with anyio.CancelScope(deadline=limit) as scope:
                        item = await anext()
                    if scope.cancelled_caught:
                        if self._now() >= self._deadline:
                            await self._finish("deadline")
                        else:
                            self._stalled()
                            await self._finish("error")
                        return began
            except StopAsyncIteration:
                await self._finish("completed")
                return began
            except Exception as exc:
                self._exception = exc
                await self._finish("error")
                return began
            now = self._now()
            self._slow = now - began > self._flush
            if not self._accept(item):
                await self._finish("error")
            elif not out and now < self._deadline:
                continue
            return now

    async def _produce(self, scope: anyio.CancelScope, feed: TaskFeed) -> None:
        """The producer task (``async with`` mode): source items into the feed.

        :meth:`_produce_to_sink` is this loop with the sink's path in front: kept as two
        loops so that a stream without a sink pays no test of that path per item; a
        change to the buffering here belongs there too.
        """
        iterator = self._iterator
        anext = iterator.__anext__
        try:
            with scope:
                try:
                    while True:
                        gate = feed.gate
                        if gate is not None:
                            await gate.wait()
                        item = await anext()
                        items = feed.items
                        items.append(item)
                        if feed.waiter is not None:
                            feed.wake()
                        if len(items) >= BUFFER_ITEMS:
                            space = feed.space = feed.new_event()
                            await space.wait()
                except StopAsyncIteration:
                    feed.finish(None)
                except Exception as exc:
                    feed.finish(exc)
        finally:
            await self._source_ended(iterator, feed)

    async def _source_ended(self, iterator: Any, feed: TaskFeed) -> None:
        """The end of the producer task: close the source, then say it is closed."""
        try:
            feed.close_error = await self._close_async_source(iterator)
        finally:
            feed.closed.set()

    async def _produce_to_sink(self, scope: anyio.CancelScope, feed: TaskFeed) -> None:
        """:meth:`_produce` for a stream with a sink: tokens to it while the consumer waits."""
        iterator = self._iterator
        anext = iterator.__anext__
        assert self._sink is not None
        sink = self._sink.offer
        clock = self._now
        # The common case, handled below without a call: one source piece is one chunk,
        # no pacing. Off for good at the first item that is not a str (a part, bytes):
        # the consumer's chunkers take those, and the text after them. What these fields
        # are cannot change while it is on.
        inline = self._whole and not self._paced
        metadata = self._metadata
        session_id = self._session_id
        size = self._size
        started = self._started_at
        id_prefix = f"{_ID_PREFIX}-"
        pushed = 0
        try:
            with scope:
                try:
                    while True:
                        gate = feed.gate
                        if gate is not None:
                            await gate.wait()
                        item = await anext()
                        if type(item) is not str:
                            inline = handed = False
                        elif feed.waiter is None:
                            handed = False
                        elif (
                            inline
                            and item
                            and not self._held
                            and (item[-1] < "\ud800" or item[-1] > "\udbff")
                        ):
                            # _push and _token_event's common case, inline: this runs for every
                            # token of every session of the registry.
                            now = clock()
                            handed = now < self._deadline
                            if handed:
                                self._last_input = now
                                self._handed += 1  # an item, a token and a chunk
                                index = self._chunks
                                self._chunks = index + 1
                                self._chars += len(item)
                                last = self._last_token_at
                                if last is None:
                                    self._first_token_at = now
                                elif now - last > self._itl_max:
                                    self._itl_max = now - last
                                self._last_token_at = now
                                event: Any = _new(_Unsealed)  # see _Unsealed
                                event.event_type = _TOKEN
                                event.content = item
                                if metadata:
                                    elapsed = int((now - started) * 1e6 + 0.5) / 1e6
                                    event.metadata = MappingProxyType(
                                        {"index": index, "elapsed": elapsed}
                                    )
                                else:
                                    event.metadata = _EMPTY
                                event.session_id = session_id
                                event.seq = None
                                event_id = f"{id_prefix}{_next_id()}"
                                event.event_id = event_id
                                event.timestamp = _wall_clock()
                                event._json = None
                                event._size = size + len(item) + len(event_id)
                                event.__class__ = StreamEvent  # sealed
                                if not sink(event):
                                    feed.pending = event
                                    feed.wake()
                        else:
                            handed = self._push(item, sink, feed)
                        if handed:
                            pushed += 1
                            if pushed == BUFFER_ITEMS:
                                # A source that never waits would never let the sink's readers
                                # run: yield as a full buffer would.
                                pushed = 0
                                await anyio.lowlevel.checkpoint()
                            continue
                        items = feed.items
                        items.append(item)
                        if feed.waiter is not None:
                            feed.wake()
                        if len(items) >= BUFFER_ITEMS:
                            space = feed.space = feed.new_event()
                            await space.wait()
                except StopAsyncIteration:
                    feed.finish(None)
                except Exception as exc:
                    feed.finish(exc)
        finally:
            await self._source_ended(iterator, feed)

    def _push(self, text: str, sink: Callable[[StreamEvent], bool], feed: TaskFeed) -> bool:
        """Hand a source item's chunks to the sink from the producer task.

        Only while the consumer waits for items (so every event it returned has been
        handled, and it has nothing queued): the events go to the sink without waking
        the consumer, a task switch per token saved. Returns ``False``, with nothing
        done, when the item must go the usual way: the deadline has passed, or pacing
        holds the next chunk back. The consumer is woken when something is left for
        it: a chunk pacing holds back, or an event the sink refused (it returns that one
        first). A partial chunk left only moves the alarm to its flush time, if sooner.
        """
        now = self._now()
        paced = self._paced
        if now >= self._deadline or (paced and now < self._next_emit):
            return False
        self._last_input = now
        if self._held or not text or "\ud800" <= text[-1] <= "\udbff":
            self._accept(text)  # a str is always accepted
        else:  # the common case of _accept, inline: this runs for every token
            self._items += 1
            self._tokens += 1
            self._chunker.feed(text)
        out = self._out
        while out:
            event = self._token_event(out.popleft(), now)
            if paced:
                self._next_emit = now + self._stream_delay
            if not sink(event):
                feed.pending = event
                feed.wake()
                return True
            if paced:
                break
        if out:
            feed.wake()
        elif self._progressive and self._chunker.has_partial:  # a partial chunk is held
            if self._flush > 0:
                feed.wake_by(now + self._flush)
            else:
                feed.wake()
        return True

    def can_drive(self) -> bool:
        """Whether :meth:`_drive` may run this stream (asyncio): an unpaced async source, a sink."""
        return (
            self._sink is not None
            and not self._sync
            and not self._paced
            and self._phase == _NEW
            and not self._entered
        )

    async def _drive(self, clock: Callable[[], float]) -> None:
        """Run the whole stream in the caller's task (the registry's producer), no other.

        The one-task form of ``async with`` and a sink (:meth:`_produce_to_sink`, which
        Trio, paced streams and sync sources keep): the caller's task pulls the source
        itself and hands each ``token`` event to the sink (a :class:`DriveSink`); its
        ``take`` is awaited for the ``start`` event, each event the sink refuses and the
        final event, and returns ``True`` to stop (the caller then closes the stream with
        :meth:`aclose`). The timers are one of the loop's shared alarms: while the
        task waits for the source, a due heartbeat or flushed chunk goes to the sink's
        ``offer_timed`` (or ``offer``) from the alarm, and if refused to ``take`` before the
        next item; the deadline and the stall watchdog cut the wait short by
        cancelling the task (as :func:`asyncio.timeout` does). A pause holds the task
        before its next pull. Asyncio only; check :meth:`can_drive` first.
        """
        self._entered = True
        self._now = clock
        task = self._cut = asyncio.current_task()
        assert task is not None
        self._cancelling = task.cancelling()
        self._busy = True
        # One coroutine for the whole stream (none for its loop): each resumption of the
        # task passes through every coroutine of its chain.
        try:
            start = self._start()  # no task group: the source is pulled here (self._anext)
            feed = self._feed = DriveFeed()
            if self._paused:
                feed.pause()
            if self._stopping or await self._sink.take(start):
                return
            # The readers that were already due to run (woken by the start event, or
            # about to take their place in the log) run before the first pull, as when
            # the source had a task of its own: else a fast source's first items would
            # be packed away as history (no reader yet) and thawed again for each.
            await asyncio.sleep(0)
            self._due(self._now())  # sets the first alarm
            result: Literal["completed", "error", "deadline", "stall"]
            anext = self._anext
            assert anext is not None
            sink: DriveSink = self._sink
            clock = self._now
            out = self._out
            # _produce_to_sink's inline case: one source piece is one chunk.
            inline = self._whole
            metadata = self._metadata
            session_id = self._session_id
            size = self._size
            started = self._started_at
            id_prefix = f"{_ID_PREFIX}-"
            pushed = 0
            while True:
                if feed.look:  # something to do before the next pull (rare)
                    if feed.stop:
                        return
                    pending = feed.pending
                    if pending is not None:
                        feed.pending = None
                        if await sink.take(pending):
                            return
                        continue
                    if out:  # a flushed chunk the alarm left, or the rest of a source piece
                        chunk = self._token_event(out.popleft(), clock())
                        if not sink.offer(chunk) and await sink.take(chunk):
                            return
                        continue
                    if feed.due:  # the alarm came while the task was not waiting for the source
                        due = self._due(clock())
                        if isinstance(due, str):
                            result = due
                            break
                        if due is not None and not sink.offer_timed(due) and await sink.take(due):
                            return
                        continue
                    gate = feed.gate
                    if gate is not None:
                        await gate.wait()  # (the alarm sets it when the deadline comes)
                        continue
                    feed.look = False
                feed.pulling = True
                try:
                    item = await anext()
                except StopAsyncIteration:
                    result = "completed"
                    break
                except Exception as exc:
                    self._exception = exc
                    result = "error"
                    break
                except asyncio.CancelledError:
                    if self._cut_by is None:
                        raise
                    # The alarm cancelled this task for the deadline or the stall (as
                    # asyncio.timeout does), or _stop() did: unless another cancellation
                    # came with it.
                    assert self._cut is not None
                    if self._cut.uncancel() > self._cancelling:
                        raise
                    if self._cut_by == "stopped":
                        return
                    result = self._cut_by
                    break
                finally:
                    feed.pulling = False
                now = clock()
                if now >= self._deadline:
                    # The deadline came with the item (before its alarm): delivered at the end.
                    result = "deadline" if self._accept(item) else "error"
                    break
                if (
                    inline
                    and type(item) is str
                    and item
                    and not self._held
                    and (item[-1] < "\ud800" or item[-1] > "\udbff")
                ):
                    # _token_event's common case, inline: one source piece, one chunk.
                    self._last_input = now
                    self._handed += 1  # an item, a token and a chunk
                    index = self._chunks
                    self._chunks = index + 1
                    self._chars += len(item)
                    last = self._last_token_at
                    if last is None:
                        self._first_token_at = now
                    elif now - last > self._itl_max:
                        self._itl_max = now - last
                    self._last_token_at = now
                    event: Any = _new(_Unsealed)  # see _Unsealed
                    event.event_type = _TOKEN
                    event.content = item
                    if metadata:
                        elapsed = int((now - started) * 1e6 + 0.5) / 1e6
                        event.metadata = MappingProxyType({"index": index, "elapsed": elapsed})
                    else:
                        event.metadata = _EMPTY
                    event.session_id = session_id
                    event.seq = None
                    event_id = f"{id_prefix}{_next_id()}"
                    event.event_id = event_id
                    event.timestamp = _wall_clock()
                    event._json = None
                    event._size = size + len(item) + len(event_id)
                    event.__class__ = StreamEvent  # sealed
                    if not sink.offer(event):
                        if await sink.take(event):
                            return
                        continue
                    pushed += 1
                    if pushed >= BUFFER_ITEMS:
                        # A source that never waits would never let the sink's readers run.
                        pushed = 0
                        await asyncio.sleep(0)  # (anyio's checkpoint on asyncio)
                    continue
                if type(item) is not str:
                    inline = False  # parts and bytes: through the chunkers from now on
                self._last_input = now
                if not self._accept(item):
                    result = "error"
                    break
                pushed += 1  # the item, and each chunk it completed
                while out:
                    chunk = self._token_event(out.popleft(), now)
                    if not sink.offer(chunk) and await sink.take(chunk):
                        return
                    pushed += 1
                if self._progressive and self._chunker.has_partial:
                    at = self._last_input + self._flush
                    if at < feed.at:
                        feed.set_alarm(at, self._on_alarm)
                if pushed >= BUFFER_ITEMS:
                    # As above: readers run however the source's items are chunked.
                    pushed = 0
                    await asyncio.sleep(0)
            if result == "stall":
                self._stalled()
                result = "error"
            await self._finish(result)
            while out:
                chunk = self._token_event(out.popleft(), self._now())
                if not sink.offer(chunk) and await sink.take(chunk):
                    return
            await sink.take(self._final_event())
        finally:
            self._busy = False
            made = self._feed
            if isinstance(made, DriveFeed):
                made.stop_alarm()

    def _stop(self) -> None:
        """Stop :meth:`_drive`: its caller's cancel (the registry's producer, asyncio).

        What a cancel scope around the drive would do, without one per stream (six
        tracked objects per live session): a task waiting for the source is cancelled
        out of that wait, as the deadline does, and the drive returns with no final
        event; anywhere else the task returns before its next pull (a pause lets it
        go). The caller wakes what its sink's ``take`` may wait for, and closes the
        stream (:meth:`aclose`) as after any return of the drive. Before the drive
        begins, it returns at once. The source's closing is never cut short, nor a
        shielded anyio scope it waits in.
        """
        if self._stopping:
            return
        self._stopping = True
        feed = self._feed
        if not isinstance(feed, DriveFeed):
            return  # not begun: the drive looks first
        feed.stop = feed.look = True
        if feed.pulling and self._cut_by is None and self._phase == _RUNNING:
            self._cut_stopped(feed)
        gate = feed.gate
        if gate is not None:
            gate.set()  # paused: let it go (it looks again before it pulls)

    def _cut_stopped(self, feed: DriveFeed) -> None:
        """Cancel the drive's wait for the source for :meth:`_stop`, once no shield holds it."""
        assert self._cut is not None
        if _shielded(self._cut):  # (see _on_alarm): the alarm looks again
            feed.set_alarm(self._now() + _SHIELD_RETRY, self._on_alarm)
            return
        self._cut_by = "stopped"
        self._cut.cancel()

    def _due(
        self, now: float, *, beat: bool = True
    ) -> StreamEvent | Literal["deadline", "stall"] | None:
        """:meth:`_drive`'s timers at ``now``: act on what is due, set the alarm for the next.

        Returns ``"deadline"`` or ``"stall"`` when the stream must end, a heartbeat
        event to hand on, or ``None``. A due partial chunk is flushed into ``_out``.
        ``beat=False``: an event still waits to be handed on; a heartbeat due now is
        not made (nor counted), the next one is due a heartbeat interval from now.
        """
        feed = self._feed
        assert isinstance(feed, DriveFeed)
        feed.due = False
        if feed.held is not None:  # come while the source was shielded (see _on_alarm)
            return feed.held
        wake = self._deadline
        if now >= wake:
            return "deadline"
        if self._progressive and self._chunker.has_partial:
            at = self._last_input + self._flush
            if now >= at:
                self._chunker.flush()
            else:
                wake = min(wake, at)
        made: StreamEvent | None = None
        if self._heartbeat is not None:
            at = max(self._last_input, self._last_beat) + self._heartbeat
            if now >= at:
                if beat:
                    self._last_beat = now
                    self._heartbeats += 1
                    made = make_event(EventType.HEARTBEAT, "", _EMPTY, self._session_id)
                at = now + self._heartbeat
            wake = min(wake, at)
        if self._stall is not None:
            at = self._last_input + self._stall
            if now >= at:
                return "stall"
            wake = min(wake, at)
        if wake != feed.at or feed.alarm is None:
            feed.set_alarm(wake, self._on_alarm)
        return made

    def _on_alarm(self) -> None:
        """:meth:`_drive`'s alarm: a timer is due (or the alarm was set too early)."""
        feed = self._feed
        assert isinstance(feed, DriveFeed)
        feed.alarm = None
        if self._phase != _RUNNING:
            return
        if feed.stop:  # _stop() came while the source was shielded
            if feed.pulling and self._cut_by is None:
                self._cut_stopped(feed)
            return  # (else the task returns at its next look)
        if not feed.pulling:
            # The task looks at the timers itself before it pulls again; a pause holds
            # it: the deadline lets it go.
            feed.due = feed.look = True
            gate = feed.gate
            if gate is not None and self._now() >= self._deadline:
                gate.set()
            return
        sink: DriveSink = self._sink
        pending = feed.pending
        # An event refused before (a pause, a full log): offered again.
        if pending is not None and _offered(
            sink.offer if pending.event_type is _TOKEN else sink.offer_timed, pending
        ):
            feed.pending = pending = None
        now = self._now()
        due = self._due(now, beat=pending is None)
        if isinstance(due, str):
            if self._cut_by is None:  # (else _stop() cut it already)
                assert self._cut is not None
                if _shielded(self._cut):
                    # The source waits in a shielded anyio scope (closing a connection,
                    # say): held back, as that scope holds back any cancellation, until
                    # it leaves; an item it then yields does not undo the stall.
                    feed.held = due
                    feed.due = feed.look = True  # if it yields first: ends before its next pull
                    feed.set_alarm(now + _SHIELD_RETRY, self._on_alarm)
                    return
                self._cut_by = due
                self._cut.cancel()  # the task waits for the source (see _drive)
            return
        if due is not None and not _offered(sink.offer_timed, due):
            feed.pending = pending = due
        out = self._out
        while out and pending is None:
            event = self._token_event(out.popleft(), now)
            if not _offered(sink.offer, event):
                feed.pending = pending = event
        if pending is not None or out:
            feed.look = True  # handed on by the task before its next pull

    async def _alarm(self, scope: anyio.CancelScope, feed: TaskFeed) -> None:
        """The alarm task (``async with`` mode): wakes the consumer when a timer is due."""
        with scope:
            await feed.run_alarm(self._now)

    async def _close_async_source(self, iterator: Any) -> Exception | None:
        """Run the source's ``aclose()`` (and the iterable's, if it is another object)."""
        if (
            type(iterator) is types.AsyncGeneratorType
            and iterator.ag_frame is None
            and self._source is iterator
        ):
            return None  # an async generator that ran to its end: nothing to close
        error: Exception | None = None
        closers = [
            aclose
            for obj in ((iterator, self._source) if self._source is not iterator else (iterator,))
            if (aclose := getattr(obj, "aclose", None)) is not None
            # An async generator that ran to its end has nothing left to close.
            and not (isinstance(obj, types.AsyncGeneratorType) and obj.ag_frame is None)
        ]
        if not closers:
            return None
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            for aclose in closers:
                try:
                    await aclose()
                except Exception as exc:
                    error = error or exc
        return error

    async def _close_source(self) -> Exception | None:
        """Stop the source wherever it runs; return an exception its closing raised."""
        feed = self._feed
        if isinstance(feed, ThreadFeed):
            feed.stop()
            return feed.close_error
        if isinstance(feed, TaskFeed):
            assert self._producer_scope is not None
            if self._alarm_scope is not None:
                self._alarm_scope.cancel()
            if not feed.closed.is_set():  # the producer task has not ended by itself
                self._producer_scope.cancel()
                with anyio.move_on_after(_CLOSE_TIMEOUT + 1, shield=True):
                    await feed.closed.wait()
            return feed.close_error
        iterator = self._iterator
        if iterator is None:
            return None
        self._iterator = None
        if self._sync:  # never started: no thread to stop
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    return exc
            return None
        return await self._close_async_source(iterator)

    async def _finish(self, outcome: StreamOutcome) -> None:
        """Close the source, flush what it produced, and queue the final event."""
        self._phase = _FINISHING
        self._fast = False
        if outcome != "completed":
            self._paced = False  # the end is due now: no more pacing
        iterator = self._iterator
        if (
            type(iterator) is types.AsyncGeneratorType
            and iterator.ag_frame is None
            and self._source is iterator
            and type(self._feed) is DriveFeed
        ):
            # Pulled by the drive to its end: nothing to close (_close_source's
            # answer, without its two coroutines: this runs at every session's end).
            self._iterator = None
            close_error = None
        else:
            close_error = await self._close_source()
        if close_error is not None and self._exception is None:
            self._exception = close_error
            outcome = "error"
        self._outcome = outcome
        feed = self._feed
        if outcome == "deadline" and feed is not None:
            # What the source produced before the deadline is still delivered.
            items = feed.take()
            if items is not None:
                for item in items:
                    if not self._accept(item):
                        self._outcome = "error"
                        break
        if self._decoder is not None:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._tokens += 1
                self._chunker.feed(tail)
        if self._held:
            self._tokens += 1
            self._chunker.feed(self._held)
            self._held = ""
        self._chunker.flush()

    def _final_event(self) -> StreamEvent:
        now = self._now()
        self._phase = _DONE
        # A text stream's statistics always have the same keys and kinds of values, so
        # the size the log charges for them is known: the final event comes with its
        # size, as token events do (walking the statistics cost as much as making them).
        if self._parts is None:
            self._ended_at = now
            stats_data = MappingProxyType(figures_data(*self._figures(now)))
            size = _TEXT_STATS_SIZE or _text_stats_size()
        else:
            stats = self._final_stats = self._make_stats(now)
            stats_data = MappingProxyType(stats.to_dict())
            size = stats_size(stats_data)
        outcome = self._outcome
        exc = self._exception
        if outcome == "error" and exc is not None:
            metadata: Mapping[str, JSONValue] = MappingProxyType(
                {
                    "error_type": type(exc).__name__,
                    "message": str(exc)[:_MAX_MESSAGE],
                    "stats": stats_data,
                }
            )
            event = make_event(EventType.ERROR, "", metadata, self._session_id)
        else:
            metadata = MappingProxyType({"reason": outcome, "stats": stats_data})
            event = make_event(EventType.COMPLETE, "", metadata, self._session_id)
            if outcome is not None:  # (always, once finished)
                # final_size(event, size) as a sum: the two items are known.
                _set_size(event, COMPLETE_SIZE + len(event.event_id) + len(outcome) + size)
                return event
        _set_size(event, final_size(event, size))
        return event

    async def _abort(self) -> None:
        """End the stream now, without a final event (closed, cancelled or failed)."""
        started = self._phase != _NEW
        self._phase = _DONE
        self._fast = False
        self._out.clear()
        if self._outcome is None:
            self._outcome = "closed"
        try:
            await self._close_source()
        finally:
            if self._final_stats is None and self._ended_at is None:
                self._final_stats = (
                    self._make_stats(anyio.current_time()) if started else StreamStats()
                )


def _offered(offer: Callable[[StreamEvent], bool], event: StreamEvent) -> bool:
    """``offer(event)`` from an alarm: anything it raises leaves the event to the task.

    An exception must not leave the loop's shared alarms (the other streams' timers)
    half-fired; the task hands the event to its consumer, where it raises again.
    """
    try:
        return offer(event)
    except Exception:
        return False


def stream_tokens(
    source: TokenSource,
    config: StreamConfig | None = None,
    *,
    session_id: str | None = None,
    raise_on_error: bool = False,
    sink: TokenSink | None = None,
) -> TokenStream:
    """Turn a producer of text into a stream of events.

    The stream is ``start``, ``token`` events, then one final event: ``complete``
    (metadata ``reason``: ``"completed"`` or ``"deadline"``, and ``stats``) or
    ``error`` (metadata ``error_type``, ``message`` and ``stats``). The ``content``
    of the ``token`` events, concatenated, is exactly the source's text.

    Sources: an async iterable of ``str``; a sync iterable of ``str`` (run in a
    worker thread, so a blocking model never blocks the event loop); either may
    yield UTF-8 ``bytes`` instead, decoded incrementally (invalid bytes become
    U+FFFD). For SDK chunk objects, see :mod:`streamkit.sources`.

    A source that raises, or yields an item that is not ``str`` or ``bytes``, ends
    the stream with an ``error`` event; the exception is kept on
    :attr:`TokenStream.exception` and, with ``raise_on_error=True``, raised by the
    next ``__anext__`` after the ``error`` event. Cancellation always propagates.

    Args:
        source: The producer of text.
        config: How to chunk, pace, bound and watch the stream; defaults to
            ``StreamConfig()``.
        session_id: Put on every event.
        raise_on_error: Raise the source's exception after the ``error`` event.
        sink: Where the task that runs an async source may hand ``token`` events
            itself (inside ``async with`` only; see :class:`~streamkit.abc.TokenSink`):
            while the consumer waits for items, each new ``token`` event is offered to
            ``sink.offer`` and, if taken, never returned by ``__anext__``. For a
            consumer that only stores events (the registry appends them to a log):
            a slow source's token then costs no wake-up of the consumer.

    Returns:
        The stream: iterate it, ideally inside ``async with``.

    Raises:
        ValidationError: ``source`` is not an iterable (or is a ``str`` or ``bytes``
            itself), ``config`` is not a ``StreamConfig``, ``session_id`` is not
            a valid id, or ``sink`` has no callable ``offer``.
    """
    if config is None:
        config = StreamConfig()
    elif not isinstance(config, StreamConfig):
        raise ValidationError(
            f"config must be a StreamConfig, got {type_name(config)}", field="config"
        )
    if session_id is not None:
        check_id("session_id", session_id)
    if not isinstance(raise_on_error, bool):
        raise ValidationError(
            f"raise_on_error must be a bool, got {type_name(raise_on_error)}",
            field="raise_on_error",
        )
    if sink is not None and not callable(getattr(sink, "offer", None)):
        raise ValidationError(
            f"sink must have an offer(event) method, got {type_name(sink)}", field="sink"
        )
    iterator: AsyncIterator[object] | Iterator[object]
    if isinstance(source, str | bytes | bytearray | memoryview):
        raise ValidationError(
            f"source must be an iterable of text, got a {type_name(source)} itself "
            "(wrap it in a list to stream it as one piece)",
            field="source",
        )
    if hasattr(type(source), "__aiter__"):
        try:
            iterator = source.__aiter__()  # type: ignore[union-attr]
        except Exception as exc:
            raise ValidationError(
                f"source.__aiter__() failed: {type_name(exc)}: {exc}", field="source"
            ) from exc
        if not hasattr(iterator, "__anext__"):
            raise ValidationError(
                f"source.__aiter__() must return an async iterator, got {type_name(iterator)}",
                field="source",
            )
    elif hasattr(type(source), "__iter__"):
        try:
            iterator = iter(source)  # type: ignore[arg-type]
        except Exception as exc:
            raise ValidationError(
                f"iter(source) failed: {type_name(exc)}: {exc}", field="source"
            ) from exc
    else:
        raise ValidationError(
            "source must be an async iterable or an iterable of str or bytes, got "
            f"{type_name(source)}",
            field="source",
        )
    return TokenStream(source, iterator, config, session_id, raise_on_error, sink=sink)
