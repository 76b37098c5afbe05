"""Where a buffered source's items wait for the stream's consumer: a task or a thread.

* :class:`TaskFeed`: an async source run inside ``async with`` by a producer task of
  the stream's own task group. The consumer waits on the feed (never on the source);
  an alarm task (or, for a stream with a sink, the wait's own deadline) wakes it when
  one of the stream's timers is due.
* :class:`ThreadFeed`: a sync source iterated by a daemon thread into a bounded
  buffer, so that a blocking model never blocks the event loop.
* :class:`DriveFeed`: no buffer; the consumer's own task pulls an async source (the
  registry's producer on asyncio, one task per session), its timers one shared alarm.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import math
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Final, Literal

import anyio
import anyio.lowlevel

from ._signals import signal_factory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._events import StreamEvent
    from ._signals import Signal

__all__ = ["BUFFER_ITEMS", "DriveFeed", "TaskFeed", "ThreadFeed"]

#: Items a source may run ahead of the consumer (per buffer; the chunker's output is
#: bounded by the same figure because the buffer is only drained when it is empty).
BUFFER_ITEMS: Final = 256
_thread_ids = itertools.count(1)


class _Alarm(list):  # type: ignore[type-arg]
    """``[when, order, callback, alarms]``: one deadline of :class:`_Alarms`; ``cancel()`` it.

    Compared as a list: ``order`` is unique, so the comparison never reaches the
    callback.
    """

    __slots__ = ()

    def cancel(self) -> None:
        if self[2] is not None:
            self[2] = None
            self[3].cancelled += 1


class _Alarms:
    """The deadlines of many feeds' waits on one asyncio loop, behind one loop timer.

    A stream with a sink has its consumer wait on the feed for most of the stream, with
    a deadline (its heartbeat, its ``max_stream_time``) far away. As a timer of the loop
    each such deadline would sit in the loop's heap, and every other timer (the sleep
    of each paced token) would pay more compares (Python calls) to go in and out of a
    heap twice as large. Here they share one loop timer, set for the earliest; their
    own heap compares lists (in C). Cancelled ones are dropped when they come up, or all
    at once when they are most of the heap (a consumer woken often cancels a far
    deadline at every wait: without that the heap would hold each for its whole delay).
    """

    __slots__ = ("_at", "_heap", "_order", "_timer", "cancelled")

    def __init__(self) -> None:
        self._heap: list[_Alarm] = []
        self._order = itertools.count()
        # Weak, as is the loop (looked up when the timer is set): what a loop's entry
        # in _LOOP_ALARMS holds must not keep the loop alive, or no loop that ever ran
        # a stream would be freed (a later anyio.run, a test, a notebook cell).
        self._timer: weakref.ref[asyncio.TimerHandle] | None = None
        self._at = math.inf
        #: Cancelled alarms still in the heap.
        self.cancelled = 0

    def __len__(self) -> int:
        """The alarms in the heap, cancelled ones included."""
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[[], object]) -> _Alarm:
        """Call ``callback`` at ``when`` (the loop's clock), unless cancelled before."""
        heap = self._heap
        if self.cancelled > _COMPACT_AT and self.cancelled * 2 > len(heap):
            heap[:] = [alarm for alarm in heap if alarm[2] is not None]
            heapq.heapify(heap)
            self.cancelled = 0
        alarm = _Alarm((when, next(self._order), callback, self))
        heapq.heappush(heap, alarm)
        if when < self._at:
            self._set(when)
        return alarm

    def _set(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            handle = timer()
            if handle is not None:
                handle.cancel()
        self._at = when
        self._timer = weakref.ref(asyncio.get_running_loop().call_at(when, self._fire))

    def _fire(self) -> None:
        due = self._at  # the loop found it due: so is every deadline up to it
        self._timer = None
        self._at = math.inf
        heap = self._heap
        while heap and (heap[0][0] <= due or heap[0][2] is None):
            alarm = heapq.heappop(heap)
            callback = alarm[2]
            if callback is not None:
                alarm[2] = None  # done: a cancel() now is a no-op
                callback()
            else:
                self.cancelled -= 1
        if heap and heap[0][0] < self._at:  # (a callback may have set one already)
            self._set(heap[0][0])


#: Cancelled alarms an :class:`_Alarms` heap may hold before it drops them at once
#: (when they are also more than half of it).
_COMPACT_AT: Final = 64

_LOOP_ALARMS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Alarms] = (
    weakref.WeakKeyDictionary()
)


def _alarms() -> _Alarms:
    loop = asyncio.get_running_loop()
    alarms = _LOOP_ALARMS.get(loop)
    if alarms is None:
        alarms = _LOOP_ALARMS[loop] = _Alarms()
    return alarms


class TaskFeed:
    """Buffer between the producer task (async source) and the consumer."""

    __slots__ = (
        "alarm",
        "alarm_at",
        "alarm_task",
        "call_at",
        "close_error",
        "closed",
        "done",
        "error",
        "gate",
        "items",
        "new_event",
        "pending",
        "space",
        "timer",
        "waiter",
    )

    def __init__(self, *, alarm_task: bool) -> None:
        self.alarm_task = alarm_task
        self.new_event = signal_factory()
        self.items: deque[object] = deque()
        # Set while paused: the producer task waits on it before pulling the next item.
        self.gate: anyio.Event | None = None
        self.done = False
        self.error: BaseException | None = None
        self.close_error: Exception | None = None
        self.waiter: Signal | None = None
        # An event the producer task made but the sink refused: the consumer returns it.
        self.pending: StreamEvent | None = None
        self.space: Signal | None = None
        self.closed = self.new_event()
        # When the waiting consumer must be woken, and the alarm task's timer, if set.
        self.alarm_at = math.inf
        self.alarm: anyio.CancelScope | None = None
        # Without an alarm task, on asyncio: the wait's deadline is one of the loop's
        # shared alarms (_Alarms) that sets the waiter (not a cancel scope and its timer
        # per wait, nor a timer per stream in the loop's heap).
        self.call_at: Callable[[float, Callable[[], object]], _Alarm] | None = None
        if not alarm_task and self.new_event is asyncio.Event:
            self.call_at = _alarms().call_at
        self.timer: _Alarm | None = None

    def pause(self) -> None:
        if self.gate is None:
            self.gate = anyio.Event()

    def resume(self) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.set()

    def take(self) -> deque[object] | None:
        items = self.items
        if not items:
            return None
        self.items = deque()
        space = self.space
        if space is not None:
            self.space = None
            space.set()
        return items

    async def wait(self, deadline: float) -> None:
        """Wait for items, or until ``deadline`` (the alarm task wakes the consumer).

        Without an alarm task (a stream with a sink, whose consumer seldom waits: the
        producer task hands the tokens to the sink) the wait has a deadline of its own.
        """
        if not self.alarm_task:
            self.alarm_at = deadline
            waiter = self.waiter = self.new_event()
            call_at = self.call_at
            if call_at is not None:
                if deadline != math.inf:
                    self.timer = call_at(deadline, waiter.set)
                try:
                    await waiter.wait()
                finally:
                    timer = self.timer
                    if timer is not None:
                        self.timer = None
                        timer.cancel()
                    self.alarm_at = math.inf
                    self.waiter = None
                return
            try:
                with anyio.CancelScope(deadline=deadline) as scope:
                    self.alarm = scope
                    await waiter.wait()
            finally:
                self.alarm = None
                self.alarm_at = math.inf
                self.waiter = None
            return
        self.alarm_at = deadline
        alarm = self.alarm
        if alarm is not None and deadline < alarm.deadline:
            alarm.deadline = deadline  # sooner than the timer is set for: move it
        waiter = self.waiter = self.new_event()
        try:
            await waiter.wait()
        finally:
            self.waiter = None

    def wake_by(self, at: float) -> None:
        """Have the alarm wake the waiting consumer by ``at`` at the latest."""
        if at < self.alarm_at:
            self.alarm_at = at
            alarm = self.alarm
            if alarm is not None and at < alarm.deadline:
                alarm.deadline = at
            waiter = self.waiter
            if self.call_at is not None and waiter is not None:
                timer = self.timer
                if timer is not None:
                    timer.cancel()
                self.timer = self.call_at(at, waiter.set)

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.set()

    def finish(self, error: BaseException | None) -> None:
        self.done = True
        self.error = error
        self.wake()

    async def run_alarm(self, now: Callable[[], float]) -> None:
        """The alarm task's loop: wake the waiting consumer once ``alarm_at`` has come.

        A deadline that moved later makes the timer fire early: it is set again for
        the new one. With nobody waiting it sleeps until a wait sets a deadline.
        """
        while True:
            with anyio.CancelScope(deadline=self.alarm_at) as alarm:
                self.alarm = alarm
                await anyio.sleep_forever()
            self.alarm = None
            if self.waiter is None:
                self.alarm_at = math.inf
            elif now() >= self.alarm_at:
                self.wake()


class DriveFeed:
    """What a stream run by its consumer's own task (:meth:`TokenStream._drive`) keeps.

    No buffer and no task: the consumer's task pulls the source itself. ``gate`` is set
    while paused (the task waits on it before pulling the next item); ``pending`` is an
    event a timer made while the task waited for the source and the sink refused: the
    task hands it on before the next item. ``alarm``: the stream's timer, one of the
    loop's shared alarms (:class:`_Alarms`), and ``at``, when it is set for. ``held``:
    the deadline or the stall, come while the source was in a shielded scope (the
    task is cut once it leaves it).
    """

    __slots__ = (
        "alarm",
        "alarms",
        "at",
        "due",
        "gate",
        "held",
        "look",
        "pending",
        "pulling",
        "stop",
    )

    def __init__(self) -> None:
        self.gate: anyio.Event | None = None
        self.pending: StreamEvent | None = None
        self.alarms = _alarms()  # (not its bound call_at: one object fewer per stream)
        self.alarm: _Alarm | None = None
        self.at = math.inf
        #: Whether the task waits for the source's next item (where timers act at once).
        self.pulling = False
        #: The alarm came while the task did not wait for the source: it looks itself.
        self.due = False
        #: Any of ``pending``, ``due``, ``gate``, ``stop`` or the stream's chunks to hand
        #: on: the task looks before it pulls again (one test per item for the five).
        self.look = False
        #: The stream's consumer stopped it (``TokenStream._stop``): the task returns.
        self.stop = False
        self.held: Literal["deadline", "stall"] | None = None

    def pause(self) -> None:
        if self.gate is None:
            self.gate = anyio.Event()
            self.look = True

    def resume(self) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.set()

    def take(self) -> None:
        """Nothing is ever buffered here (see :meth:`TaskFeed.take`)."""
        return

    def set_alarm(self, at: float, callback: Callable[[], object]) -> None:
        """Have ``callback`` run at ``at`` (instead of when it was set for)."""
        alarm = self.alarm
        if alarm is not None:
            alarm.cancel()
        self.at = at
        self.alarm = self.alarms.call_at(at, callback) if at != math.inf else None

    def stop_alarm(self) -> None:
        alarm, self.alarm = self.alarm, None
        self.at = math.inf
        if alarm is not None:
            alarm.cancel()


class ThreadFeed:
    """A daemon thread iterating a sync source into a bounded buffer.

    The thread holds this object only, never the stream. It wakes a waiting consumer
    through the event loop token; once stopped it never calls into the event
    loop again, closes the iterator and exits at its next item.
    """

    __slots__ = (
        "_iterator",
        "_lock",
        "_space",
        "_token",
        "close_error",
        "done",
        "error",
        "items",
        "paused",
        "pending",
        "stopped",
        "thread",
        "waiter",
    )

    def __init__(self, iterator: Iterator[object], token: anyio.lowlevel.EventLoopToken) -> None:
        self._iterator = iterator
        self._token = token
        # Reentrant: the stream's __del__ calls stop(), and garbage collection can run
        # it in the source thread while that thread holds the lock.
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)
        self.items: deque[object] = deque()
        self.done = False
        self.error: BaseException | None = None
        self.close_error: Exception | None = None
        self.stopped = False
        self.paused = False
        self.pending: StreamEvent | None = None  # always: a thread has no sink
        self.waiter: anyio.Event | None = None
        context = contextvars.copy_context()
        self.thread = threading.Thread(
            target=context.run,
            args=(self._run,),
            name=f"streamkit-source-{next(_thread_ids)}",
            daemon=True,
        )

    # consumer side (event loop thread)

    def pause(self) -> None:
        with self._lock:
            self.paused = True

    def resume(self) -> None:
        with self._lock:
            self.paused = False
            self._space.notify_all()

    def take(self) -> deque[object] | None:
        with self._lock:
            items = self.items
            if not items:
                return None
            self.items = deque()
            self._space.notify()
        return items

    async def wait(self, deadline: float) -> None:
        with self._lock:
            if self.items or self.done:
                return
            waiter = self.waiter = anyio.Event()
        try:
            with anyio.CancelScope(deadline=deadline):
                await waiter.wait()
        finally:
            with self._lock:
                if self.waiter is waiter:
                    self.waiter = None

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            self.waiter = None
            self._space.notify_all()

    # producer side (the source thread)

    def _signal(self, waiter: anyio.Event) -> None:
        # Not anyio.from_thread.run_sync: it would block this thread until the loop
        # ran the call, so the thread and the consumer would take turns one item at
        # a time. Scheduling without waiting lets the thread go on filling the batch.
        token = self._token
        try:
            token.backend_class.run_sync_soon(waiter.set, (), token.native_token)
        except RuntimeError:  # the event loop has finished: nobody is listening
            self.stop()

    def _put(self, item: object) -> bool:
        with self._lock:
            if self.stopped:
                return False
            items = self.items
            items.append(item)
            waiter = self.waiter
            self.waiter = None
            full = len(items) >= BUFFER_ITEMS
        if waiter is not None:
            self._signal(waiter)
        if full or self.paused:
            with self._lock:
                # A full buffer or a pause holds the thread before it pulls the next item.
                while (len(self.items) >= BUFFER_ITEMS or self.paused) and not self.stopped:
                    self._space.wait()
        return not self.stopped

    def _finish(self, error: BaseException | None) -> None:
        with self._lock:
            if self.stopped:
                return
            self.done = True
            self.error = error
            waiter = self.waiter
            self.waiter = None
        if waiter is not None:
            self._signal(waiter)

    def _run(self) -> None:
        iterator = self._iterator
        try:
            while not self.stopped:
                try:
                    item = next(iterator)
                except StopIteration:
                    self._finish(None)
                    return
                except BaseException as exc:  # a thread has nowhere else to report it
                    self._finish(exc)
                    return
                if not self._put(item):
                    return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    self.close_error = exc
            del iterator, self._iterator
