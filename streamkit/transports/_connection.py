"""A connection of the WebSocket manager: its queue, cursors, writer and reader.

The rules are the manager's (see :mod:`streamkit.transports._manager`): one writer task
per connection drains its direct queue and its groups' shared rings in production
order; one reader task feeds the handler; a message leaves its queue once sent.
"""

from __future__ import annotations

import secrets
from collections import deque
from contextlib import suppress
from typing import TYPE_CHECKING, Final, TypeAlias

import anyio
import attrs
from anyio.lowlevel import checkpoint

from .._errors import (
    Disconnected,
    PayloadTooLarge,
    RemoteProtocolError,
    StreamkitError,
    ValidationError,
)
from .._validate import (
    check_str,
    check_wire_str,
    type_name,
)
from ._channel import CloseCode, TextChannel, check_close, clip_reason, text_size
from ._serve import ServeResult, serve_subscription

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable
    from types import TracebackType

    from .._events import StreamEvent
    from ._manager import WebSocketManager

__all__ = ["Connection", "ConnectionStatistics", "MessageHandler"]

#: An application's handler of received messages: ``await handler(connection, text)``.
MessageHandler: TypeAlias = "Callable[[Connection, str], Awaitable[None]]"

# (manager-wide sequence number, text, size in bytes): built once, shared by all readers.
_Entry: TypeAlias = tuple[int, str, int]

_NO_SEQ: Final = 1 << 62


def _message_size(text: object, limit: int, field: str = "message") -> int:
    """Check an outgoing message and return its size in bytes of UTF-8."""
    if not isinstance(text, str):
        raise ValidationError(f"{field} must be a str, got {type_name(text)}", field=field)
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ValidationError(
                f"{field} must be valid Unicode (it has a lone surrogate)", field=field
            ) from exc
    if size > limit:
        raise PayloadTooLarge(
            f"{field} is {size} bytes, over max_message_size ({limit})", field=field
        )
    return size


class _Ring:
    """The last ``capacity`` messages sent to one target (all, or a group)."""

    __slots__ = ("buf", "capacity", "head", "idle", "members", "pending")

    def __init__(self, capacity: int) -> None:
        self.buf: list[_Entry] = []
        self.capacity = capacity
        self.head = 0  # messages ever appended; the next one's position
        self.members = 0
        # Writers of members that wait for work; stale entries are harmless.
        self.idle: set[Connection] = set()
        self.pending = False  # queued for the manager's waker

    def append(self, entry: _Entry) -> None:
        if len(self.buf) < self.capacity:
            self.buf.append(entry)
        else:
            self.buf[self.head % self.capacity] = entry
        self.head += 1

    def wake_idle(self) -> None:
        self.pending = False
        for connection in self.idle:
            connection._ring_bell()
        self.idle.clear()


class _Cursor:
    __slots__ = ("position", "ring")

    def __init__(self, ring: _Ring) -> None:
        self.ring = ring
        self.position = ring.head  # a new member gets what comes next, no history


@attrs.frozen(kw_only=True)
class ConnectionStatistics:
    """A snapshot of one connection's counters, from :meth:`Connection.statistics`.

    Attributes:
        connection_id: The connection.
        user_id: Its user, if one was given.
        groups: The groups it is in.
        connected_at: When it was added, in :func:`anyio.current_time` seconds.
        messages_in: Text messages received.
        messages_out: Text messages sent.
        bytes_in: Their size in bytes of UTF-8.
        bytes_out: Likewise for sent messages.
        drops: Messages it never got because of the slow-client policy.
        queued: Messages waiting to be sent to it now.
        closed: Whether the connection has ended.
    """

    connection_id: str
    user_id: str | None
    groups: frozenset[str]
    connected_at: float
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    drops: int
    queued: int
    closed: bool


class Connection:
    """One connection of a :class:`WebSocketManager`: its handle for the application.

    Made by :meth:`WebSocketManager.connect` or :meth:`WebSocketManager.add`, never
    directly. Sending never blocks: :meth:`send` queues the message for the
    connection's writer task.

    Attributes:
        id: A random id, unique in practice (96 bits, URL-safe).
        user_id: The user given when it was added, or ``None``.
        channel: The :class:`~streamkit.transports.TextChannel` it runs over.
        connected_at: When it was added, in :func:`anyio.current_time` seconds.
        close_code: The close code streamkit sent or will send (``None`` while open and
            when the peer closed first).
        close_reason: The matching reason.
        peer_closed: Whether the peer went away first.
        error: The error that ended it, when one did: a
            :class:`~streamkit.StreamkitError` from the handler or the size bound, or
            the exception of a failed handler.
    """

    __slots__ = (
        "__weakref__",
        "_body_scope",
        "_bytes_in",
        "_bytes_out",
        "_closed_event",
        "_cursors",
        "_draining",
        "_drops",
        "_ended",
        "_in_handler",
        "_last_received",
        "_manager",
        "_messages_in",
        "_messages_out",
        "_private",
        "_reader_scope",
        "_room",
        "_scope",
        "_sending",
        "_stuck_out",
        "_stuck_since",
        "_wake",
        "_writer_done",
        "channel",
        "close_code",
        "close_reason",
        "connected_at",
        "error",
        "id",
        "peer_closed",
        "user_id",
    )

    def __init__(
        self, manager: WebSocketManager, channel: TextChannel, user_id: str | None
    ) -> None:
        self._manager = manager
        self.channel = channel
        self.id = secrets.token_urlsafe(12)
        self.user_id = user_id
        self.connected_at = self._last_received = anyio.current_time()
        self._private: deque[_Entry] = deque()
        self._cursors: dict[str | None, _Cursor] = {}
        self._wake: anyio.Event | None = None
        self._sending: _Entry | None = None
        # The send the manager's sweep saw in progress: messages_out then, and when.
        self._stuck_out = -1
        self._stuck_since = 0.0
        self._room: anyio.Event | None = None
        self._scope = anyio.CancelScope()
        self._reader_scope = anyio.CancelScope()
        self._draining = False
        self._in_handler = False
        self._writer_done = anyio.Event()
        self._body_scope: anyio.CancelScope | None = None
        self._closed_event = anyio.Event()
        self._ended = False
        self._messages_in = self._messages_out = 0
        self._bytes_in = self._bytes_out = self._drops = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.peer_closed = False
        self.error: BaseException | None = None

    # -- the application's side -----------------------------------------------------

    @property
    def groups(self) -> frozenset[str]:
        """The groups this connection is in."""
        return frozenset(group for group in self._cursors if group is not None)

    @property
    def closed(self) -> bool:
        """Whether the connection has ended or is closing."""
        return self._ended or self.close_code is not None or self.peer_closed

    def send(self, message: str) -> None:
        """Queue ``message`` for this connection; never blocks.

        When ``max_queue`` messages already wait, the manager's slow-client policy
        applies: ``drop_oldest`` discards the oldest waiting one; ``disconnect``
        closes the connection (code 1013) and raises.

        Args:
            message: The text to send.

        Raises:
            Disconnected: the connection is closed (or was just closed by the
                ``disconnect`` policy).
            ValidationError: ``message`` is not a str.
            PayloadTooLarge: it is larger than ``max_message_size``.
        """
        manager = self._manager
        size = _message_size(message, manager.max_message_size)
        if self.closed:
            raise Disconnected(f"connection {self.id} is closed")
        private = self._private
        if len(private) >= manager.max_queue:
            if manager.slow_client_policy == "disconnect":
                self._drops += 1
                self._slow()
                raise Disconnected(f"connection {self.id} was closed: it reads too slowly")
            if private.popleft() is not self._sending:
                self._drops += 1
            # else: it is being sent already, and stops counting against the bound
        manager._seq += 1
        private.append((manager._seq, message, size))
        if self._wake is not None:
            self._ring_bell()

    async def wait_writable(self) -> None:
        """Wait until :meth:`send` can queue a message without the slow-client policy.

        For producers that prefer back-pressure to dropping: ``await
        connection.wait_writable()`` then ``connection.send(message)``.

        Raises:
            Disconnected: the connection is closed, or closes while waiting.
        """
        limit = self._manager.max_queue
        await checkpoint()
        while not self.closed and len(self._private) >= limit:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        if self.closed:
            raise Disconnected(f"connection {self.id} is closed")

    async def serve(
        self,
        events: AsyncIterable[StreamEvent],
        *,
        encode: Callable[[StreamEvent], str] | None = None,
        after: int = 0,
        close: bool = False,
    ) -> ServeResult:
        """Send ``events`` (a session's subscription, say) to this connection until they end.

        :func:`~streamkit.transports.serve_subscription` over this connection: each
        event is queued as one message beside the connection's other messages and
        broadcasts, once there is room (:meth:`wait_writable`): a slow client holds
        back the subscription's cursor, where the log's slow-consumer policy applies.
        The manager's heartbeat, ``send_timeout`` and statistics cover these messages
        as any others. Run it in the ``connect()`` block or in a task of your own; it
        ends when the connection does.

        Args:
            events: The events, e.g. ``registry.subscribe(session_id, after=n)``.
            encode: Turns an event into the message (default: its JSON).
            after: Events whose ``seq`` is at most this are skipped.
            close: Close the connection at the end, with a code telling why (see
                :func:`~streamkit.transports.serve_subscription`).

        Returns:
            What was done: the outcome, and the ``position`` to resume after.

        Raises:
            ValidationError: an argument is invalid.
        """
        channel = _ConnectionChannel(self)
        if encode is None:
            return await serve_subscription(
                channel, events, after=after, slow_client_policy="block", close=close
            )
        return await serve_subscription(
            channel, events, encode=encode, after=after, slow_client_policy="block", close=close
        )

    def join(self, group: str) -> None:
        """Add the connection to ``group``; it gets the group's broadcasts from now on.

        Raises:
            ValidationError: ``group`` is not a non-empty str of at most 128 characters
                without CR, LF or NUL.
            Disconnected: the connection is closed.
        """
        check_wire_str("group", group, max_len=128)
        if self.closed:
            raise Disconnected(f"connection {self.id} is closed")
        if group not in self._cursors:
            ring = self._manager._ring_for(group)
            self._cursors[group] = _Cursor(ring)
            if self._wake is not None:  # the writer is idle: it must hear this ring too
                ring.idle.add(self)

    def leave(self, group: str) -> None:
        """Remove the connection from ``group``; what it had not sent yet is skipped.

        Leaving a group it is not in does nothing.

        Raises:
            ValidationError: ``group`` is not a str.
        """
        check_str("group", group)
        cursor = self._cursors.pop(group, None)
        if cursor is not None and self._manager._connections.get(self.id) is self:
            self._manager._release(group, cursor.ring, self)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Ask for the connection to be closed with ``code``; never blocks.

        Reading stops and nothing more can be queued; what was queued before is sent
        (for at most the manager's ``close_timeout``), then the channel is closed
        (waiting at most ``close_timeout`` again) and the connection removed. Await
        :meth:`wait_closed` to know when that is done. Idempotent: the first code wins.

        Raises:
            ValidationError: ``code`` is not in 1000..4999, or ``reason`` is longer than
                123 bytes.
        """
        check_close(code, reason)
        self._request_close(code, reason, drain=True)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended and its channel is closed."""
        await self._closed_event.wait()

    def statistics(self) -> ConnectionStatistics:
        """Return a snapshot of this connection's counters."""
        return ConnectionStatistics(
            connection_id=self.id,
            user_id=self.user_id,
            groups=self.groups,
            connected_at=self.connected_at,
            messages_in=self._messages_in,
            messages_out=self._messages_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            drops=self._drops,
            queued=self._queued(),
            closed=self.closed,
        )

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Connection {self.id} user={self.user_id!r} {state}>"

    # -- internals --------------------------------------------------------------

    def _queued(self) -> int:
        """Messages waiting for this connection and still retained."""
        return len(self._private) + sum(
            min(c.ring.head - c.position, c.ring.capacity) for c in self._cursors.values()
        )

    def _undelivered(self) -> int:
        """Messages queued for this connection and not sent, retained or not."""
        return len(self._private) + sum(c.ring.head - c.position for c in self._cursors.values())

    def _ring_bell(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    def _request_close(self, code: int, reason: str, *, drain: bool = False) -> None:
        """Close with ``code``; with ``drain``, send what is queued first (bounded)."""
        first = self.close_code is None and not self.peer_closed and not self._ended
        if first:
            self.close_code, self.close_reason = int(code), reason
        if drain and (first or self._draining):
            # Stop reading and let the writer finish the queue; _serve bounds the wait.
            self._draining = True
            self._reader_scope.cancel()
            if self._body_scope is not None:
                self._body_scope.cancel()
            self._ring_bell()
            if self._room is not None:
                self._room.set()
                self._room = None
        else:
            self._draining = False
            self._stop()

    def _stop(self) -> None:
        self._scope.cancel()
        if self._body_scope is not None:
            self._body_scope.cancel()
        if self._room is not None:
            self._room.set()
            self._room = None

    def _gone(self) -> None:
        """The peer went away (the channel raised Disconnected)."""
        if self.close_code is None:
            self.peer_closed = True
        self._stop()

    def _slow(self) -> None:
        if not self.closed:
            self._manager._slow_disconnects += 1
            self._drops += self._undelivered()
        self._request_close(CloseCode.TRY_AGAIN_LATER, "slow client: too many messages waiting")

    def _fail(self, error: BaseException, code: int) -> None:
        if self.error is None:
            self.error = error
        # A StreamkitError is meant for the peer; anything else is a bug, kept private.
        reason = clip_reason(str(error)) if isinstance(error, StreamkitError) else "internal error"
        self._request_close(code, reason)

    def _send_stuck(self, now: float, limit: float) -> bool:
        """Whether the send in progress has lasted ``limit`` seconds (as far as seen)."""
        if self._sending is None:
            self._stuck_out = -1
            return False
        if self._stuck_out != self._messages_out:  # a send first seen in progress now
            self._stuck_out = self._messages_out
            self._stuck_since = now
            return False
        return now - self._stuck_since >= limit

    def _lagging(self) -> bool:
        return any(c.ring.head - c.position > c.ring.capacity for c in self._cursors.values())

    async def _write_loop(self) -> None:
        """Send what this connection has to send, oldest sequence number first.

        A message leaves its source only once sent, so what waits is counted exactly:
        the one being sent is still in its queue (or before its cursor).
        """
        channel = self.channel
        manager = self._manager
        drop = manager.slow_client_policy == "drop_oldest"
        private = self._private
        cursors = self._cursors
        try:
            while True:
                source: _Cursor | None = None
                best = private[0][0] if private else _NO_SEQ
                for cursor in cursors.values():
                    ring = cursor.ring
                    position, head = cursor.position, ring.head
                    if position < head:
                        if head - position > ring.capacity:  # lapped: messages were lost
                            if not drop:
                                self._slow()
                                return
                            self._drops += head - position - ring.capacity
                            cursor.position = position = head - ring.capacity
                        seq = ring.buf[position % ring.capacity][0]
                        if seq < best:
                            best, source = seq, cursor
                if source is not None:
                    entry = source.ring.buf[source.position % source.ring.capacity]
                elif private:
                    entry = private[0]
                elif self._draining:
                    return  # everything queued before the close was sent
                else:
                    wake = self._wake = anyio.Event()
                    for cursor in cursors.values():
                        cursor.ring.idle.add(self)
                    await wake.wait()
                    continue
                # No timer per send: the manager's sweep finds a send past send_timeout.
                self._sending = entry
                await channel.send_text(entry[1])
                self._sending = None
                self._messages_out += 1
                self._bytes_out += entry[2]
                if source is not None:
                    source.position += 1
                elif private and private[0] is entry:  # not dropped meanwhile
                    private.popleft()
                    if self._room is not None:
                        self._room.set()
                        self._room = None
        except Disconnected:
            self._gone()
        except Exception as exc:  # a broken channel: reported by _serve's owner
            self._fail(exc, CloseCode.INTERNAL_ERROR)
        finally:
            self._writer_done.set()

    async def _read_loop(self, handler: MessageHandler | None) -> None:
        """Receive until the peer leaves; errors close the connection and are recorded."""
        try:
            await self._receive_all(handler)
        except Disconnected:
            self._gone()
        except PayloadTooLarge as exc:
            self._fail(exc, CloseCode.MESSAGE_TOO_BIG)
        except (ValidationError, RemoteProtocolError) as exc:
            self._fail(exc, CloseCode.INVALID_DATA)
        except StreamkitError as exc:
            self._fail(exc, CloseCode.POLICY_VIOLATION)
        except Exception as exc:  # a bug in the handler or channel: reported by the owner
            self._fail(exc, CloseCode.INTERNAL_ERROR)

    async def _receive_all(self, handler: MessageHandler | None) -> None:
        manager = self._manager
        channel = self.channel
        limit = manager.max_message_size
        pong = manager.pong_message
        clock = anyio.current_time
        while True:
            try:
                text = await channel.receive_text()
            except RemoteProtocolError as exc:
                self._fail(exc, CloseCode.UNSUPPORTED_DATA)
                return
            if not isinstance(text, str):
                raise TypeError(
                    f"{type_name(channel)}.receive_text() returned {type_name(text)}, not str"
                )
            size = text_size(text)
            self._messages_in += 1
            self._bytes_in += size
            self._last_received = clock()
            if size > limit:
                raise PayloadTooLarge(
                    f"received a message of {size} bytes, over max_message_size ({limit})"
                )
            if handler is not None and text != pong:
                # A busy handler is not a dead peer: the heartbeat waits for it.
                self._in_handler = True
                try:
                    await handler(self, text)
                finally:
                    self._in_handler = False
                    self._last_received = clock()

    async def _finish(self) -> None:
        """Close the channel (bounded by ``close_timeout``) and unregister."""
        self._stop()
        manager = self._manager
        manager._unregister(self)
        code = CloseCode.NORMAL if self.close_code is None else self.close_code
        # Shielded: this runs when the connection's owner is being cancelled.
        with anyio.move_on_after(manager.close_timeout, shield=True), suppress(Disconnected):
            await self.channel.close(code, self.close_reason or "")
        self._ended = True
        self._closed_event.set()


class _ConnectionChannel:
    """A manager connection seen as a channel by serve_subscription (send side only)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def send_text(self, text: str) -> None:
        connection = self._connection
        # The common case, room in the queue, costs no checkpoint: the subscription's
        # cursor already yields between batches.
        if connection.closed or len(connection._private) >= connection._manager.max_queue:
            await connection.wait_writable()
        connection.send(text)

    async def receive_text(self) -> str:  # pragma: no cover - never read by serving
        raise Disconnected("a served connection is read by its manager")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._connection.close(code, reason)
        await checkpoint()


class _ConnectionContext:
    """What :meth:`WebSocketManager.connect` returns: ``async with`` it."""

    __slots__ = ("_connection", "_groups", "_handler", "_manager")

    def __init__(
        self,
        manager: WebSocketManager,
        connection: Connection,
        groups: tuple[str, ...],
        handler: MessageHandler | None,
    ) -> None:
        self._manager = manager
        self._connection = connection
        self._groups = groups
        self._handler = handler

    async def __aenter__(self) -> Connection:
        connection = self._connection
        if connection._body_scope is not None:
            raise RuntimeError("a connection context can be entered only once")
        await checkpoint()
        # Cancelled when the connection ends, so the block lasts as long as it does.
        connection._body_scope = anyio.CancelScope()
        self._manager._start(connection, self._groups, self._handler, reraise=False)
        connection._body_scope.__enter__()
        return connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        connection = self._connection
        scope = connection._body_scope
        assert scope is not None
        if exc is None:
            connection._request_close(CloseCode.NORMAL, "", drain=True)
        elif isinstance(exc, Exception):
            if connection.error is None:
                connection.error = exc
            connection._request_close(CloseCode.INTERNAL_ERROR, "internal error")
        elif connection._draining:
            # The block was cancelled by the connection's own close(), which sends what
            # is queued first: let it finish (bounded by close_timeout).
            pass
        else:  # cancelled from outside: the server is going away
            connection._request_close(CloseCode.GOING_AWAY, "")
        suppress = bool(scope.__exit__(exc_type, exc, tb))
        with anyio.CancelScope(shield=True):
            await connection.wait_closed()
        error = connection.error
        if (exc is None or suppress) and _is_bug(error):
            raise error  # type: ignore[misc]  # the handler or channel failed: a bug
        return suppress


def _is_bug(error: BaseException | None) -> bool:
    """Whether an error that ended a connection must propagate to its owner."""
    return isinstance(error, Exception) and not isinstance(error, StreamkitError)
