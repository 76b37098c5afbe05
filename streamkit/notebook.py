"""Keep a registry running across notebook cells, on the kernel's own event loop.

``async with SessionRegistry()`` cannot span cells: the registry's task group is an
anyio cancel scope, which must be left by the task that entered it, and a cell that
awaits ``__aenter__`` is not the one that would await ``__aexit__``. :func:`start` runs
the registry in a task of its own on the running asyncio loop (Jupyter's kernel runs
one); :func:`stop` asks that task to leave the ``async with`` and waits for it::

    import streamkit as sk
    from streamkit import notebook

    registry = await notebook.start(sk.SessionRegistry())    # one cell
    session = await registry.create()                        # any later cell
    ...
    await notebook.stop(registry)                            # the last cell

Background tasks (producers, the sweeper, heartbeats) run between cells, as they do
inside ``async with``. Without ``await`` (or with a Trio kernel), use
:class:`streamkit.blocking.BlockingRegistry`, whose methods block.
"""

from __future__ import annotations

import asyncio

from ._errors import ClosedError, ValidationError
from ._registry import SessionRegistry
from ._validate import type_name

__all__ = ["start", "stop"]

# The registries run by start(), each with the event that ends it and the task holding it.
_running: dict[SessionRegistry, tuple[asyncio.Event, asyncio.Task[None]]] = {}


def _loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "streamkit.notebook needs a running asyncio event loop (a Jupyter cell with "
            "`await`); from sync code or under Trio use streamkit.blocking.BlockingRegistry"
        ) from None


async def start(registry: SessionRegistry) -> SessionRegistry:
    """Enter ``registry`` in a background task of the running asyncio loop and return it.

    The registry then runs until :func:`stop` (or until the loop closes), whichever
    cell calls it.

    Args:
        registry: A registry that was never entered.

    Returns:
        ``registry``, running.

    Raises:
        ValidationError: ``registry`` is not a :class:`~streamkit.SessionRegistry`.
        RuntimeError: no asyncio loop is running here, or the registry was entered
            before.
        Exception: whatever entering the registry raised (a backend that cannot connect).
    """
    if not isinstance(registry, SessionRegistry):
        raise ValidationError(
            f"registry must be a SessionRegistry, got {type_name(registry)}", field="registry"
        )
    loop = _loop()
    if registry in _running:
        raise RuntimeError("this registry is running already: stop it first")
    entered = loop.create_future()
    leave = asyncio.Event()

    async def hold() -> None:
        async with registry:
            entered.set_result(None)
            await leave.wait()

    task = loop.create_task(hold(), name="streamkit notebook registry")
    try:
        await asyncio.wait([task, entered], return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    if task.done():
        task.result()  # entering failed: raise why
    _running[registry] = (leave, task)
    return registry


async def stop(registry: SessionRegistry) -> None:
    """Leave a registry that :func:`start` entered, as leaving ``async with`` would.

    Every live session ends (final ``complete`` event with reason ``shutdown``) and the
    registry's background tasks finish before this returns.

    Args:
        registry: A registry returned by :func:`start`.

    Raises:
        ClosedError: ``registry`` is not running (never started, or stopped already).
        Exception: whatever a background task of the registry failed with.
    """
    held = _running.pop(registry, None)
    if held is None:
        raise ClosedError("this registry is not running: start it with streamkit.notebook.start")
    leave, task = held
    leave.set()
    await task
