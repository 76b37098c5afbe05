"""How a registry starts the tasks of its sessions: its producers and their sources.

On asyncio they are the loop's own tasks, kept in a set: anyio's ``start_soon`` gives
every task a handle, a cancel scope, an event and an entry in a weak map (since anyio
4.14), which each session paid twice at its start and again at its end (a seventh of
the instructions of a whole short session). Those tasks never need it: each runs its
work inside a cancel scope of its own that the registry cancels (a session's producer
scope, the stream's source scope), so the registry cancels them through those scopes and
waits here for them to end. On Trio they go straight into the Trio nursery of the
registry's task group: plain tasks of that group, cancelled with it, their errors raised
by its exit (anyio up to 4.13 started them so itself). Another backend, or an anyio
whose task group has no nursery there, gets the task group's ``start_soon``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import sniffio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskGroup

__all__ = ["SessionTasks"]


class SessionTasks:
    """Starts tasks that end when their own cancel scope is cancelled; waits for them.

    Duck-typed as the ``start_soon`` of a task group. A task that fails with anything
    but cancellation cancels ``group`` and its exception is raised by :meth:`wait`, as
    a task group would raise it.
    """

    __slots__ = (
        "_errors",
        "_group",
        "_idle",
        "_loop",
        "_on_done",
        "_start",
        "_tasks",
        "on_asyncio",
    )

    def __init__(self, group: TaskGroup) -> None:
        self._group = group
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start: Callable[..., object] = group.start_soon
        library = sniffio.current_async_library()
        if library == "asyncio":
            self._loop = asyncio.get_running_loop()
        elif library == "trio":
            # Private to anyio's Trio task group; without it, its start_soon.
            start = getattr(getattr(group, "_nursery", None), "start_soon", None)
            if start is not None:
                self._start = start
        #: Whether the tasks are the asyncio loop's own.
        self.on_asyncio = self._loop is not None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None
        self._errors: list[BaseException] = []
        # One bound method for every task's done callback (not one per task).
        self._on_done = self._done

    def start_soon(
        self,
        func: Callable[..., Awaitable[Any]],
        *args: Any,
        name: object = None,
    ) -> None:
        """Run ``func(*args)`` in a new task."""
        loop = self._loop
        if loop is None:
            self._start(func, *args, name=name)
            return
        task: asyncio.Task[Any] = loop.create_task(
            func(*args),  # type: ignore[arg-type]  # a coroutine function, as for start_soon
            name=None if name is None else str(name),
        )
        self._tasks.add(task)
        task.add_done_callback(self._on_done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                self._errors.append(error)
                self._group.cancel_scope.cancel()
        if not self._tasks and self._idle is not None:
            self._idle.set()

    async def wait(self) -> None:
        """Wait until every task started here has ended.

        Raises:
            BaseExceptionGroup: tasks failed (their exceptions).
        """
        while self._tasks:
            self._idle = asyncio.Event()
            await self._idle.wait()
        self._idle = None
        if self._errors:
            errors, self._errors = self._errors, []
            raise BaseExceptionGroup("unhandled errors in a session's task", errors)
