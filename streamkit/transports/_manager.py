"""WebSocketManager: many text connections, per-connection send queues, O(1) broadcast.

Rules of this module, and why:

* **One writer task per connection** drains everything that connection has to send;
  one reader task feeds the application's handler. A client that reads slowly only
  ever blocks its own writer. A message leaves its queue once it is sent, so what
  waits is counted exactly.
* **Broadcast is one append.** Every target (all connections, or one group) has a
  shared ring of the last ``max_queue`` messages; each member's writer keeps its own
  cursor in it, as the session log's readers do. The producer appends once and never
  touches a connection's queue. Waking the idle writers costs O(their number) on any
  event loop (one shared ``Event`` included), so the manager's waker task does that,
  once per burst, not the producer. Direct sends go to a per-connection deque. Every
  message carries a manager-wide sequence number, so a writer merging its sources
  keeps the producer's order.
* **Bounded everywhere.** A connection may have at most ``max_queue`` messages
  waiting per source (its direct queue, each group it is in). Past that, the
  slow-client policy applies: ``disconnect`` (close with 1013, try again later) or
  ``drop_oldest`` (skip the oldest, count the drops). A ring cannot drop *its newest*
  messages for one reader without copying them per reader, which would make broadcast
  O(connections); that policy is therefore not offered.
* **Lag is found by the writer, not the producer.** A writer checks its cursors
  before each send; the heartbeat sweep checks every connection once per
  interval, which also catches a writer stuck in a send to a client that stopped
  reading.
* **Foreign exceptions stop at the channel**: the manager only ever sees
  :class:`~streamkit.Disconnected` and :class:`~streamkit.RemoteProtocolError` from it.
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
    ClosedError,
    Disconnected,
    PayloadTooLarge,
    RemoteProtocolError,
    SessionLimitExceeded,
    StreamkitError,
    ValidationError,
)
from .._validate import (
    check_choice,
    check_id,
    check_int,
    check_number,
    check_str,
    check_wire_str,
    type_name,
)
from ._channel import CloseCode, TextChannel, check_close, clip_reason, text_size
from ._serve import ServeResult, SlowClientPolicy, serve_subscription

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType
    from typing import Self

    from anyio.abc import TaskGroup

    from .._events import StreamEvent

__all__ = [
    "Connection",
    "ConnectionStatistics",
    "ManagerStatistics",
    "MessageHandler",
    "WebSocketManager",
]

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


@attrs.frozen(kw_only=True)
class ManagerStatistics:
    """A snapshot of a manager's counters, from :meth:`WebSocketManager.statistics`.

    Message and byte counts include connections that have ended.

    Attributes:
        connected: Connections open now.
        total_connections: Connections ever added.
        groups: Groups with at least one member now.
        messages_in: Text messages received.
        messages_out: Text messages sent (pings included).
        bytes_in: Their size in bytes of UTF-8.
        bytes_out: Likewise for sent messages.
        broadcasts: Calls of :meth:`WebSocketManager.broadcast` that reached a target.
        pings: Heartbeat pings broadcast.
        drops: Messages connections never got because of the slow-client policy.
        disconnects: Connections that ended, for any reason.
        slow_disconnects: Connections closed by the ``disconnect`` slow-client policy.
        ping_timeouts: Connections closed because they stopped answering.
    """

    connected: int
    total_connections: int
    groups: int
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    broadcasts: int
    pings: int
    drops: int
    disconnects: int
    slow_disconnects: int
    ping_timeouts: int


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
        else:  # cancelled from outside: the server is going away
            connection._request_close(CloseCode.GOING_AWAY, "")
        suppress = bool(scope.__exit__(exc_type, exc, tb))
        with anyio.CancelScope(shield=True):
            await connection.wait_closed()
        error = connection.error
        if (exc is None or suppress) and _is_bug(error):
            raise error  # type: ignore[misc]  # the handler or channel failed: a bug
        return suppress


class WebSocketManager:
    """Many WebSocket (or WebSocket-like) connections, with broadcast and heartbeats.

    An async context manager owning a task group: each connection runs a writer task
    draining its queue and a reader task calling the message handler; a heartbeat task
    pings every connection and closes those that stopped answering. Leaving the
    ``async with`` block closes every connection (code 1001).

    Args:
        max_connections: Connections held at once; one more raises
            :class:`~streamkit.SessionLimitExceeded`.
        max_queue: Messages that may wait for one connection, per source (its direct
            queue, each group it is in, the all-connections broadcast).
        slow_client_policy: Past ``max_queue``: ``"disconnect"`` closes the connection
            with 1013 (try again later), ``"drop_oldest"`` skips the oldest messages.
            Either way the messages lost are counted in ``drops``.
        max_message_size: The largest message, in bytes of UTF-8, either way. A
            larger one received closes the connection with 1009; a larger one sent
            raises :class:`~streamkit.PayloadTooLarge`.
        ping_interval: Seconds between heartbeat pings (``ping_message`` broadcast to
            every connection). ``None``: no pings.
        ping_timeout: A connection that received nothing (pong or any message) for
            ``ping_interval + ping_timeout`` seconds is closed with 1011. ``None``: never.
        ping_message: The ping text; clients answer with any message.
        pong_message: A received message equal to this counts as a sign of life but is
            not given to the handler. ``None``: every message goes to the handler.
        send_timeout: Seconds one send may take before the connection is closed as a
            slow client (1013). ``None``: no deadline (the heartbeat still catches a
            client that stopped reading, since it cannot answer pings).
        close_timeout: Seconds to wait for a channel to close before giving up on it.
        on_message: The default handler of received messages, ``await
            on_message(connection, text)``; :meth:`connect` and :meth:`add` can give
            another. With none, received messages only count as signs of life.

    Raises:
        ValidationError: an option is invalid; the error names it.
    """

    def __init__(
        self,
        *,
        max_connections: int = 10_000,
        max_queue: int = 256,
        slow_client_policy: SlowClientPolicy = "disconnect",
        max_message_size: int = 1024 * 1024,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        ping_message: str = '{"type":"ping"}',
        pong_message: str | None = '{"type":"pong"}',
        send_timeout: float | None = None,
        close_timeout: float = 5.0,
        on_message: MessageHandler | None = None,
    ) -> None:
        self.max_connections = check_int("max_connections", max_connections, minimum=1)
        self.max_queue = check_int("max_queue", max_queue, minimum=1)
        if slow_client_policy == "block":
            raise ValidationError(
                "slow_client_policy 'block' cannot apply to a broadcast (one append for "
                "every connection, never a wait); await connection.wait_writable() before "
                "connection.send() for back-pressure",
                field="slow_client_policy",
            )
        check_choice("slow_client_policy", slow_client_policy, ("disconnect", "drop_oldest"))
        self.slow_client_policy: SlowClientPolicy = slow_client_policy
        self.max_message_size = check_int("max_message_size", max_message_size, minimum=1)
        self.ping_interval = _optional_seconds("ping_interval", ping_interval)
        self.ping_timeout = _optional_seconds("ping_timeout", ping_timeout)
        self.ping_message = check_str("ping_message", ping_message, allow_empty=False)
        _message_size(ping_message, self.max_message_size, "ping_message")
        self.pong_message = (
            None if pong_message is None else check_str("pong_message", pong_message)
        )
        self.send_timeout = _optional_seconds("send_timeout", send_timeout)
        self.close_timeout = check_number("close_timeout", close_timeout, positive=True)
        if on_message is not None and not callable(on_message):
            raise ValidationError(
                f"on_message must be an async callable, got {type_name(on_message)}",
                field="on_message",
            )
        self.on_message = on_message
        self._connections: dict[str, Connection] = {}
        self._rings: dict[str | None, _Ring] = {None: _Ring(self.max_queue)}
        self._seq = 0
        self._pending_rings: list[_Ring] = []
        self._waker_bell: anyio.Event | None = None
        self._task_group: TaskGroup | None = None
        self._heartbeat_scope = anyio.CancelScope()
        self._waker_scope = anyio.CancelScope()
        self._running = False
        self._entered = False
        # Counters; those of ended connections are folded in when they end.
        self._total = self._broadcasts = self._pings = 0
        self._disconnects = self._slow_disconnects = self._ping_timeouts = 0
        self._ended_in = self._ended_out = self._ended_bytes_in = 0
        self._ended_bytes_out = self._ended_drops = 0

    # -- lifecycle --------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a WebSocketManager can be entered only once")
        self._entered = True
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._running = True
        task_group.start_soon(self._waker, name="streamkit WebSocket waker")
        if (
            self.ping_interval is not None
            or self.ping_timeout is not None
            or self.send_timeout is not None
        ):
            task_group.start_soon(self._heartbeat, name="streamkit WebSocket heartbeat")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._running = False
        self._heartbeat_scope.cancel()
        self._waker_scope.cancel()
        for connection in list(self._connections.values()):
            connection._request_close(CloseCode.GOING_AWAY, "server shutting down", drain=True)
        assert self._task_group is not None
        # Every connection's tasks run in this group, connect() blocks' included.
        return await self._task_group.__aexit__(exc_type, exc, tb)

    # -- connections ------------------------------------------------------------

    def connect(
        self,
        channel: TextChannel,
        *,
        user_id: str | None = None,
        groups: tuple[str, ...] | list[str] | frozenset[str] = (),
        on_message: MessageHandler | None = None,
    ) -> AbstractAsyncContextManager[Connection]:
        """Run a connection for the duration of an ``async with`` block.

        ::

            async with manager.connect(channel, user_id="alice") as connection:
                connection.send("welcome")
                await connection.wait_closed()

        The block is cancelled (and the ``async with`` exits quietly) when the
        connection ends: the peer left, a policy closed it, or the manager shut down.
        Leaving the block closes the connection: 1000 normally, 1011 when the block
        raised (the exception propagates). If the message handler fails with an
        exception that is not a :class:`~streamkit.StreamkitError`, it is raised
        from the ``async with``.

        Args:
            channel: The connection's transport (an accepted WebSocket, adapted).
            user_id: The user it belongs to, for the application's use.
            groups: Groups to join at once (see :meth:`broadcast`).
            on_message: Its message handler (default: the manager's ``on_message``).

        Returns:
            An async context manager giving the :class:`Connection`.

        Raises:
            ValidationError: an argument is invalid (raised here).
            SessionLimitExceeded: ``max_connections`` are open (raised on entry).
            ClosedError: the manager is not running (raised on entry).
        """
        connection, group_names, handler = self._prepare(channel, user_id, groups, on_message)
        return _ConnectionContext(self, connection, group_names, handler)

    def add(
        self,
        channel: TextChannel,
        *,
        user_id: str | None = None,
        groups: tuple[str, ...] | list[str] | frozenset[str] = (),
        on_message: MessageHandler | None = None,
    ) -> Connection:
        """Start a connection in the background and return its handle; never blocks.

        The connection runs in the manager's task group until it ends. A message
        handler failing with an exception that is not a
        :class:`~streamkit.StreamkitError` is a bug: it closes the connection (1011)
        and propagates out of the manager's ``async with`` block.

        Args:
            channel: The connection's transport (an accepted WebSocket, adapted).
            user_id: The user it belongs to, for the application's use.
            groups: Groups to join at once (see :meth:`broadcast`).
            on_message: Its message handler (default: the manager's ``on_message``).

        Returns:
            The :class:`Connection`.

        Raises:
            ValidationError: an argument is invalid.
            SessionLimitExceeded: ``max_connections`` are open.
            ClosedError: the manager is not running.
        """
        connection, group_names, handler = self._prepare(channel, user_id, groups, on_message)
        self._start(connection, group_names, handler, reraise=True)
        return connection

    def broadcast(self, message: str, group: str | None = None) -> int:
        """Queue ``message`` for every connection, or every member of ``group``.

        The cost does not grow with the number of connections: the message is
        appended once to the target's shared ring, and the writers of idle members
        are woken; each writer then sends it in its own time. A member that falls more
        than ``max_queue`` messages behind meets the slow-client policy.

        Args:
            message: The text to send.
            group: The group to send to; ``None``: every connection.

        Returns:
            How many connections it was queued for (``0`` for a group with no member).

        Raises:
            ValidationError: ``message`` is not a str, or ``group`` not a str.
            PayloadTooLarge: ``message`` is larger than ``max_message_size``.
        """
        size = _message_size(message, self.max_message_size)
        if group is not None and not isinstance(group, str):
            raise ValidationError(f"group must be a str, got {type_name(group)}", field="group")
        ring = self._rings.get(group)
        if ring is None or not ring.members:
            return 0
        self._publish(ring, message, size)
        self._broadcasts += 1
        return ring.members

    def get(self, connection_id: str) -> Connection | None:
        """Return the open connection with this id, or ``None``."""
        return self._connections.get(connection_id)

    def connections(self, user_id: str | None = None) -> list[Connection]:
        """Return the open connections, or those of ``user_id``."""
        if user_id is None:
            return list(self._connections.values())
        return [c for c in self._connections.values() if c.user_id == user_id]

    def group_size(self, group: str) -> int:
        """Return how many connections are in ``group`` now."""
        ring = self._rings.get(group)
        return 0 if ring is None else ring.members

    def statistics(self) -> ManagerStatistics:
        """Return a snapshot of the manager's counters (O(connections))."""
        live = self._connections.values()
        return ManagerStatistics(
            connected=len(self._connections),
            total_connections=self._total,
            groups=len(self._rings) - 1,
            messages_in=self._ended_in + sum(c._messages_in for c in live),
            messages_out=self._ended_out + sum(c._messages_out for c in live),
            bytes_in=self._ended_bytes_in + sum(c._bytes_in for c in live),
            bytes_out=self._ended_bytes_out + sum(c._bytes_out for c in live),
            broadcasts=self._broadcasts,
            pings=self._pings,
            drops=self._ended_drops + sum(c._drops for c in live),
            disconnects=self._disconnects,
            slow_disconnects=self._slow_disconnects,
            ping_timeouts=self._ping_timeouts,
        )

    def __len__(self) -> int:
        return len(self._connections)

    # -- internals --------------------------------------------------------------

    def _prepare(
        self,
        channel: object,
        user_id: str | None,
        groups: object,
        on_message: MessageHandler | None,
    ) -> tuple[Connection, tuple[str, ...], MessageHandler | None]:
        if not isinstance(channel, TextChannel):
            raise ValidationError(
                "channel must have async send_text, receive_text and close "
                f"(a TextChannel), got {type_name(channel)}",
                field="channel",
            )
        if user_id is not None:
            check_id("user_id", user_id)
        if isinstance(groups, str) or not isinstance(groups, tuple | list | frozenset | set):
            raise ValidationError(
                f"groups must be a tuple, list or set of str, got {type_name(groups)}",
                field="groups",
            )
        names = tuple(dict.fromkeys(check_wire_str("group", g, max_len=128) for g in groups))
        if on_message is not None and not callable(on_message):
            raise ValidationError(
                f"on_message must be an async callable, got {type_name(on_message)}",
                field="on_message",
            )
        handler = on_message if on_message is not None else self.on_message
        return Connection(self, channel, user_id), names, handler

    def _start(
        self,
        connection: Connection,
        groups: tuple[str, ...],
        handler: MessageHandler | None,
        *,
        reraise: bool,
    ) -> None:
        if not self._running or self._task_group is None:
            raise ClosedError("the WebSocketManager is not running: use it in `async with`")
        if len(self._connections) >= self.max_connections:
            raise SessionLimitExceeded(
                f"{self.max_connections} connections are open (max_connections)",
                limit=self.max_connections,
            )
        self._connections[connection.id] = connection
        self._total += 1
        connection._cursors[None] = _Cursor(self._ring_for(None))
        for group in groups:
            connection._cursors[group] = _Cursor(self._ring_for(group))
        self._task_group.start_soon(
            self._serve, connection, handler, reraise, name=f"streamkit WebSocket {connection.id}"
        )

    async def _serve(
        self, connection: Connection, handler: MessageHandler | None, reraise: bool
    ) -> None:
        try:
            with connection._scope:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(connection._write_loop)
                    with connection._reader_scope:
                        await connection._read_loop(handler)
                    if connection._draining:  # a graceful close: let the queue go out
                        with anyio.move_on_after(self.close_timeout):
                            await connection._writer_done.wait()
                    task_group.cancel_scope.cancel()
        finally:
            await connection._finish()
        if reraise and _is_bug(connection.error):
            raise connection.error  # type: ignore[misc]

    def _publish(self, ring: _Ring, message: str, size: int) -> None:
        self._seq += 1
        ring.append((self._seq, message, size))
        # Waking idle writers costs O(their number) on any event loop (one shared Event
        # too), so the waker task does it: the producer's cost stays O(1).
        if ring.idle and not ring.pending:
            ring.pending = True
            self._pending_rings.append(ring)
            bell = self._waker_bell
            if bell is not None:
                self._waker_bell = None
                bell.set()

    async def _waker(self) -> None:
        with self._waker_scope:
            while True:
                if not self._pending_rings:
                    bell = self._waker_bell = anyio.Event()
                    await bell.wait()
                rings, self._pending_rings = self._pending_rings, []
                for ring in rings:
                    ring.wake_idle()
                await checkpoint()

    def _ring_for(self, group: str | None) -> _Ring:
        ring = self._rings.get(group)
        if ring is None:
            ring = self._rings[group] = _Ring(self.max_queue)
        ring.members += 1
        return ring

    def _release(self, group: str | None, ring: _Ring, connection: Connection) -> None:
        ring.members -= 1
        ring.idle.discard(connection)
        if ring.members == 0 and group is not None and self._rings.get(group) is ring:
            del self._rings[group]

    def _unregister(self, connection: Connection) -> None:
        if self._connections.pop(connection.id, None) is None:
            return
        for group, cursor in connection._cursors.items():
            self._release(group, cursor.ring, connection)
        self._disconnects += 1
        self._ended_in += connection._messages_in
        self._ended_out += connection._messages_out
        self._ended_bytes_in += connection._bytes_in
        self._ended_bytes_out += connection._bytes_out
        self._ended_drops += connection._drops

    async def _heartbeat(self) -> None:
        """Pings, ping timeouts, lagging writers and send deadlines: one sweep for all.

        Send deadlines cost no timer per send: a sweep every quarter of
        ``send_timeout`` finds a send still in progress since an earlier sweep.
        """
        interval, timeout, send_timeout = self.ping_interval, self.ping_timeout, self.send_timeout
        base = interval if interval is not None else timeout
        period = min(
            base if base is not None else float("inf"),
            send_timeout / 4 if send_timeout is not None else float("inf"),
        )
        silence = None if timeout is None else (interval or 0.0) + timeout
        ping = self.ping_message
        ping_size = _message_size(ping, self.max_message_size)
        all_ring = self._rings[None]
        clock = anyio.current_time
        next_sweep = clock() + base if base is not None else float("inf")
        with self._heartbeat_scope:
            while True:
                await anyio.sleep(period)
                now = clock()
                sweep = now >= next_sweep
                for connection in list(self._connections.values()):
                    if connection.closed:
                        continue
                    if send_timeout is not None and connection._send_stuck(now, send_timeout):
                        connection._slow()
                    elif not sweep:
                        continue
                    elif (
                        silence is not None
                        and not connection._in_handler
                        and now - connection._last_received > silence
                    ):
                        self._ping_timeouts += 1
                        connection._request_close(CloseCode.INTERNAL_ERROR, "ping timeout")
                    elif self.slow_client_policy == "disconnect" and connection._lagging():
                        connection._slow()
                if sweep:
                    assert base is not None
                    next_sweep = now + base
                    if interval is not None and all_ring.members:
                        self._publish(all_ring, ping, ping_size)
                        self._pings += 1

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<WebSocketManager {state} connections={len(self._connections)}>"


def _is_bug(error: BaseException | None) -> bool:
    """Whether an error that ended a connection must propagate to its owner."""
    return isinstance(error, Exception) and not isinstance(error, StreamkitError)


def _optional_seconds(field: str, value: float | None) -> float | None:
    if value is None:
        return None
    return check_number(field, value, positive=True)
