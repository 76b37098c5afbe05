"""The running event loop's own primitives, found once: its clock and its event type.

The hot path (a token appended, a reader woken) runs these per event. Through anyio's
portable wrappers each call first finds the backend again (``anyio.current_time()``,
``anyio.Event()``) and then goes through one more layer of Python calls; found once,
the loop's own clock and event type cost what the bare loop pays. Only the waits that
the hot path makes use them: an ``asyncio.Event`` or ``trio.Event`` waits and is set
exactly like ``anyio.Event`` (anyio wraps the same objects), and cancellation by anyio's
cancel scopes reaches a task waiting on either.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Signal", "loop_clock", "signal_factory", "signal_renewer"]


class Signal(Protocol):
    """What the hot path needs of an event: set it, ask it, wait for it."""

    def set(self) -> object: ...

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


def loop_clock() -> Callable[[], float]:
    """Return the running event loop's clock: what ``anyio.current_time()`` reads.

    ``anyio.current_time()`` finds the backend again at every call, which costs most of
    its 0.4 µs; per-event timestamps call the clock this returns instead (0.1 µs): the
    loop's own ``time`` method on asyncio, ``trio.current_time`` on Trio.
    """
    backend = anyio.lowlevel.current_token().backend_class
    name = backend.__module__.rsplit(".", 1)[-1]
    if name == "_asyncio":  # the loop's own method: anyio's goes through two more calls
        loop = asyncio.get_running_loop()
        if getattr(loop.time, "__func__", None) is asyncio.BaseEventLoop.time:
            # What that method returns, without its Python frame (a loop that keeps
            # its own time, uvloop or a test's virtual clock, is asked itself).
            return time.monotonic
        return loop.time
    if name == "_trio":
        import trio

        return trio.current_time
    return backend.current_time  # pragma: no cover - anyio ships these two backends


_FACTORIES: dict[type, Callable[[], Signal]] = {}


def signal_factory() -> Callable[[], Signal]:
    """Return the constructor of the running loop's own event (``asyncio.Event``, ...).

    ``anyio.Event()`` finds the backend at every call (0.9 µs, of which 0.5 µs is the
    look-up) and its ``wait`` and ``set`` add a layer of calls to the loop's own event.
    Another backend than asyncio and Trio gets anyio's event.
    """
    backend = anyio.lowlevel.current_token().backend_class
    factory = _FACTORIES.get(backend)
    if factory is None:
        name = backend.__module__.rsplit(".", 1)[-1]
        if name == "_asyncio":
            import asyncio

            factory = asyncio.Event
        elif name == "_trio":
            import trio

            factory = trio.Event
        else:  # pragma: no cover - anyio ships these two backends
            factory = backend.create_event
        _FACTORIES[backend] = factory
    return factory


class _FutureSignal(asyncio.Future[None]):
    """A one-shot :class:`Signal` for one waiter on asyncio: the loop's own future.

    ``asyncio.Event`` makes a future per wait anyway, and its ``wait`` and ``set`` are
    Python layers around it (a deque of waiters, a ``finally`` to remove one): for the
    one task that waits (a cursor waiting for the next event) the future itself does.
    """

    __slots__ = ()

    def set(self) -> None:
        if not self.done():  # a cancelled waiter's future is done already
            self.set_result(None)

    def is_set(self) -> bool:
        return self.done()

    def wait(self) -> asyncio.Future[None]:
        return self


def signal_renewer() -> Callable[[], Signal]:
    """Return how to make an unset event to wait on, for one waiter only.

    For a waiter that waits again and again, each time on a new event of its own (a
    cursor waiting for the next event), that nobody else waits on. On asyncio it is
    :class:`_FutureSignal` itself (a bare future of the loop, which the waiter may
    await directly); on Trio ``trio.Event``.
    """
    factory = signal_factory()
    if factory.__module__ == "asyncio.locks":
        return _FutureSignal
    return factory
