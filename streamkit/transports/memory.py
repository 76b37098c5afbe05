"""An in-memory WebSocket: two connected :class:`~streamkit.transports.TextChannel` ends.

For tests (streamkit's and yours), notebooks and in-process clients. It behaves like a
real WebSocket where it matters to a server:

* Each direction has a bounded buffer: a peer that does not read makes the sender
  wait, exactly as a slow client does over TCP.
* Closing one end is seen by the other: it reads what was already sent, then gets
  :class:`~streamkit.Disconnected`; a send blocked on the closed end wakes with
  :class:`~streamkit.Disconnected`. Both ends then report the same ``close_code``
  and ``close_reason``, those of the side that closed first.
"""

from __future__ import annotations

from collections import deque

import anyio
import attrs
from anyio.lowlevel import checkpoint

from .._errors import Disconnected, ValidationError
from .._validate import check_int, type_name
from ._channel import check_close

__all__ = ["MemoryChannel", "memory_channel_pair"]


@attrs.define
class _PairState:
    """What both ends share: who closed first, and how."""

    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None


class _Pipe:
    """One direction: a bounded buffer of messages, closable from either end."""

    __slots__ = ("_buffer", "_capacity", "_changed", "closed")

    def __init__(self, capacity: int) -> None:
        self._buffer: deque[str] = deque()
        self._capacity = capacity
        self._changed: anyio.Event | None = None
        self.closed = False

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    async def put(self, text: str) -> bool:
        """Append ``text`` once there is room; ``False`` if the pipe is closed."""
        await checkpoint()
        while not self.closed:
            if len(self._buffer) < self._capacity:
                self._buffer.append(text)
                self._wake()
                return True
            await self._wait()
        return False

    async def get(self) -> str | None:
        """Return the oldest message, waiting for one; ``None`` once closed and empty."""
        await checkpoint()
        while True:
            if self._buffer:
                self._wake()
                return self._buffer.popleft()
            if self.closed:
                return None
            await self._wait()

    def close(self, *, discard: bool) -> None:
        self.closed = True
        if discard:
            self._buffer.clear()
        self._wake()


class MemoryChannel:
    """One end of an in-memory WebSocket; make a pair with :func:`memory_channel_pair`.

    It is an async iterator of the messages it receives, ending when the connection
    closes. Like a WebSocket, one task may send while another receives. There is
    nothing to release: an end nobody closes is simply collected.

    Attributes:
        name: ``"server"`` or ``"client"``, the end this is (for reprs and tests).
    """

    __slots__ = ("_closed", "_incoming", "_outgoing", "_state", "name")

    def __init__(self, name: str, outgoing: _Pipe, incoming: _Pipe, state: _PairState) -> None:
        self.name = name
        self._outgoing = outgoing
        self._incoming = incoming
        self._state = state
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether either end has closed the connection."""
        return self._state.closed_by is not None

    @property
    def close_code(self) -> int | None:
        """The close code of the end that closed first (``None`` while open)."""
        return self._state.close_code

    @property
    def close_reason(self) -> str | None:
        """The close reason of the end that closed first (``None`` while open)."""
        return self._state.close_reason

    @property
    def closed_by(self) -> str | None:
        """The name of the end that closed first (``None`` while open)."""
        return self._state.closed_by

    def _gone(self) -> Disconnected:
        state = self._state
        who = "this end" if state.closed_by == self.name else f"the {state.closed_by} end"
        return Disconnected(
            f"the in-memory WebSocket was closed by {who} "
            f"(code {state.close_code}, reason {state.close_reason!r})",
            close_code=state.close_code,
        )

    async def send_text(self, text: str) -> None:
        """Send one message to the other end, waiting while its buffer is full.

        Args:
            text: The message.

        Raises:
            Disconnected: either end has closed the connection.
            ValidationError: ``text`` is not a str.
        """
        if not isinstance(text, str):
            raise ValidationError(f"text must be a str, got {type_name(text)}", field="text")
        if not await self._outgoing.put(text):
            raise self._gone()

    async def receive_text(self) -> str:
        """Wait for the next message from the other end.

        Messages the other end sent before it closed are still delivered; then this
        raises. After this end closed, it raises at once.

        Raises:
            Disconnected: the connection is closed and nothing is left to read.
        """
        text = await self._incoming.get()
        if text is None:
            raise self._gone()
        return text

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection from this end. Idempotent.

        Args:
            code: The close code (1000 to 4999); both ends report it unless the other
                end closed first.
            reason: A short explanation (at most 123 bytes of UTF-8).

        Raises:
            ValidationError: ``code`` or ``reason`` is invalid.
        """
        self.close_nowait(code, reason)
        await checkpoint()

    def close_nowait(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection from this end without waiting. Idempotent.

        Args:
            code: The close code (1000 to 4999).
            reason: A short explanation (at most 123 bytes of UTF-8).

        Raises:
            ValidationError: ``code`` or ``reason`` is invalid.
        """
        check_close(code, reason)
        if self._closed:
            return
        self._closed = True
        state = self._state
        if state.closed_by is None:
            state.close_code, state.close_reason, state.closed_by = code, reason, self.name
        # The other end still reads what was sent to it; what it sent to us is dropped.
        self._outgoing.close(discard=False)
        self._incoming.close(discard=True)

    def __aiter__(self) -> MemoryChannel:
        return self

    async def __anext__(self) -> str:
        try:
            return await self.receive_text()
        except Disconnected:
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        state = "open" if not self.closed else f"closed {self.close_code} by {self.closed_by}"
        return f"<MemoryChannel {self.name} {state}>"


def memory_channel_pair(max_buffer: int = 16) -> tuple[MemoryChannel, MemoryChannel]:
    """Return two connected in-memory WebSocket ends: ``(server, client)``.

    Args:
        max_buffer: Messages each direction holds before the sender waits (at least 1).

    Returns:
        The server end and the client end. Hand the first to a
        :class:`~streamkit.transports.WebSocketManager`, drive the second yourself.

    Raises:
        ValidationError: ``max_buffer`` is not an int >= 1.
    """
    check_int("max_buffer", max_buffer, minimum=1)
    to_client, to_server = _Pipe(max_buffer), _Pipe(max_buffer)
    state = _PairState()
    server = MemoryChannel("server", to_client, to_server, state)
    client = MemoryChannel("client", to_server, to_client, state)
    return server, client
