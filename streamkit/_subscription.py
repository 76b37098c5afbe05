"""A subscriber's view of one session, made by :meth:`SessionRegistry.subscribe`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

import anyio

from ._errors import ClosedError, ValidationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from types import TracebackType

    from ._coordinator import _Entry
    from ._events import StreamEvent
    from ._registry import SessionRegistry
    from .abc import EventCursor

__all__ = ["Subscription"]


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
        return self if cursor is None else cursor

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
