"""A blocking facade for sync code: threads, scripts, notebooks and sync web apps.

Everything here drives the real async objects through an anyio blocking portal (an
event loop in a helper thread); there is no second copy of the logic. ::

    from streamkit.blocking import BlockingRegistry

    with BlockingRegistry() as registry:
        session = registry.create(user_id="alice")
        registry.start(session.session_id, ["Hello", " world"])
        for event in registry.subscribe(session.session_id, user_id="alice"):
            print(event.event_type, event.content)

A plain ``for`` loop over :func:`stream_tokens` works the same way, one portal per
stream. Calls must not be made from inside the portal's own event loop thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import anyio.from_thread

from ._errors import ClosedError
from ._registry import SessionRegistry
from ._streamer import stream_tokens as _stream_tokens

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.from_thread import BlockingPortal

    from ._config import RegistryConfig, StreamConfig
    from ._events import StreamEvent
    from ._registry import Authorize, HookName, RegistryStatistics, SessionStatistics
    from ._session import StreamSession
    from .abc import Backend, TokenSource

__all__ = ["BlockingRegistry", "BlockingSubscription", "stream_tokens"]

_T = TypeVar("_T")
Backend_ = Literal["asyncio", "trio"]
_END = object()


async def _next(iterator: AsyncIterator[_T]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


def _iterate(portal: BlockingPortal, iterator: AsyncIterator[_T]) -> Iterator[_T]:
    while True:
        item = portal.call(_next, iterator)
        if item is _END:
            return
        yield item


def stream_tokens(
    source: TokenSource,
    config: StreamConfig | None = None,
    *,
    session_id: str | None = None,
    backend: Backend_ = "asyncio",
) -> Iterator[StreamEvent]:
    """Iterate :func:`streamkit.stream_tokens` from sync code.

    The stream runs in an event loop in a helper thread, under ``async with``, so
    heartbeats and timers work as in async code. Leaving the loop early closes the
    stream and its source.

    Raises:
        ValidationError: bad ``source`` or ``config`` (when iteration starts).
    """
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        stream = _stream_tokens(source, config, session_id=session_id)
        with portal.wrap_async_context_manager(stream):
            yield from _iterate(portal, stream)


def _closed_error() -> ClosedError:
    return ClosedError(
        "the BlockingRegistry is not running (it was left, or never entered with `with`): "
        "iterate its subscriptions inside the `with` block"
    )


class BlockingSubscription(Iterator["StreamEvent"]):
    """A sync iterator over a :class:`~streamkit.Subscription`; close it or use ``with``.

    Iterating it after its :class:`BlockingRegistry` was left raises
    :class:`~streamkit.ClosedError`; closing it then does nothing.
    """

    def __init__(self, portal: BlockingPortal, subscription: Any, owner: BlockingRegistry) -> None:
        self._portal = portal
        self._subscription = subscription
        self._owner = owner
        self._closed = False

    def _running(self) -> bool:
        return self._owner._portal is self._portal

    def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        if not self._running():
            raise _closed_error()
        try:
            return self._portal.call(func, *args)
        except RuntimeError:
            # The registry was left while this call was on its way: the portal stopped.
            if self._running() and not self._owner._leaving:
                raise
            raise _closed_error() from None

    @property
    def position(self) -> int:
        """The ``seq`` of the last event returned: resume after it."""
        return int(self._subscription.position)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> StreamEvent:
        if self._closed:
            raise StopIteration
        item = self._call(_next, self._subscription)
        if item is _END:
            self.close()
            raise StopIteration
        if item.is_final:
            # Nothing follows a final event: end here, without asking a registry that
            # may be stopping.
            self.close()
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop following the session. Idempotent; nothing to do once the registry was left."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(ClosedError):
                self._call(self._subscription.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockingRegistry(AbstractContextManager["BlockingRegistry"]):
    """A :class:`~streamkit.SessionRegistry` for sync code, run in a helper thread.

    Use it as a context manager: entering starts the event loop thread and the
    registry; leaving ends every session (as the async registry does) and the thread.
    Each method blocks until the registry's answer is ready and raises what the async
    method raises.

    Args:
        config: As for :class:`~streamkit.SessionRegistry`.
        backend: As for :class:`~streamkit.SessionRegistry` (a storage backend).
        authorize: As for :class:`~streamkit.SessionRegistry`.
        event_loop: ``"asyncio"`` (default) or ``"trio"``.
    """

    def __init__(
        self,
        config: RegistryConfig | None = None,
        *,
        backend: Backend | None = None,
        authorize: Authorize | None = None,
        event_loop: Backend_ = "asyncio",
    ) -> None:
        self.registry = SessionRegistry(config, backend=backend, authorize=authorize)
        self._event_loop = event_loop
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._leaving = False

    def __enter__(self) -> Self:
        stack = ExitStack()
        try:
            portal = stack.enter_context(anyio.from_thread.start_blocking_portal(self._event_loop))
            stack.enter_context(portal.wrap_async_context_manager(self.registry))
        except BaseException:
            stack.close()
            raise
        self._stack, self._portal = stack, portal
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        stack = self._stack
        self._leaving = True
        try:
            if stack is not None:
                # Other threads may go on calling while the registry ends its sessions:
                # their readers get the final events.
                stack.close()
        finally:
            self._stack, self._portal, self._leaving = None, None, False

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        portal = self._portal
        if portal is None:
            raise ClosedError("the BlockingRegistry is not running (use it with `with`)")
        return portal.call(lambda: func(*args, **kwargs))

    def create(
        self, *, user_id: str | None = None, context: dict[str, Any] | None = None
    ) -> StreamSession:
        """Create a session; see :meth:`streamkit.SessionRegistry.create`."""
        return self._call(self.registry.create, user_id=user_id, context=context)  # type: ignore[no-any-return]

    def get(self, session_id: str, *, user_id: str | None = None) -> StreamSession:
        """Return a session's snapshot; see :meth:`streamkit.SessionRegistry.get`."""
        return self._call(self.registry.get, session_id, user_id=user_id)  # type: ignore[no-any-return]

    def list(self, user_id: str | None = None) -> Sequence[StreamSession]:
        """Return snapshots of sessions; see :meth:`streamkit.SessionRegistry.list`."""
        return self._call(self.registry.list, user_id)  # type: ignore[no-any-return]

    def start(
        self,
        session_id: str,
        source: TokenSource,
        config: StreamConfig | None = None,
    ) -> None:
        """Run a producer in the background; see :meth:`streamkit.SessionRegistry.start`."""
        portal = self._portal
        if portal is None:
            raise ClosedError("the BlockingRegistry is not running (use it with `with`)")
        portal.call(self.registry.start, session_id, source, config)

    def publish(
        self, session_id: str, event: StreamEvent, *, user_id: str | None = None
    ) -> StreamEvent:
        """Append an application event; see :meth:`streamkit.SessionRegistry.publish`."""
        return self._call(self.registry.publish, session_id, event, user_id=user_id)  # type: ignore[no-any-return]

    def subscribe(
        self, session_id: str, *, user_id: str | None = None, after: int = 0
    ) -> BlockingSubscription:
        """Follow a session from sync code; see :meth:`streamkit.SessionRegistry.subscribe`."""
        portal = self._portal
        if portal is None:
            raise ClosedError("the BlockingRegistry is not running (use it with `with`)")
        subscription = self.registry.subscribe(session_id, user_id=user_id, after=after)
        return BlockingSubscription(portal, subscription, self)

    def pause(self, session_id: str, *, user_id: str | None = None) -> StreamSession:
        """Pause a session; see :meth:`streamkit.SessionRegistry.pause`."""
        return self._call(self.registry.pause, session_id, user_id=user_id)  # type: ignore[no-any-return]

    def resume(self, session_id: str, *, user_id: str | None = None) -> StreamSession:
        """Resume a session; see :meth:`streamkit.SessionRegistry.resume`."""
        return self._call(self.registry.resume, session_id, user_id=user_id)  # type: ignore[no-any-return]

    def cancel(self, session_id: str, *, user_id: str | None = None) -> StreamSession:
        """Cancel a session; see :meth:`streamkit.SessionRegistry.cancel`."""
        return self._call(self.registry.cancel, session_id, user_id=user_id)  # type: ignore[no-any-return]

    def close(self, session_id: str, *, user_id: str | None = None) -> None:
        """Remove a session; see :meth:`streamkit.SessionRegistry.close`."""
        self._call(self.registry.close, session_id, user_id=user_id)

    def on(self, name: HookName, callback: Callable[..., object]) -> Callable[[], None]:
        """Register a hook (called in the registry's thread); see :meth:`SessionRegistry.on`."""
        return self.registry.on(name, callback)

    def statistics(self) -> RegistryStatistics:
        """Return the registry's figures."""
        return self._call(self.registry.statistics)  # type: ignore[no-any-return]

    def session_statistics(
        self, session_id: str, *, user_id: str | None = None
    ) -> SessionStatistics:
        """Return one session's figures."""
        return self._call(self.registry.session_statistics, session_id, user_id=user_id)  # type: ignore[no-any-return]
