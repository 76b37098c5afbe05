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

from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.lowlevel import checkpoint

from .._errors import (
    ClosedError,
    SessionLimitExceeded,
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
from ._channel import CloseCode, TextChannel
from ._connection import (
    Connection,
    MessageHandler,
    _ConnectionContext,
    _Cursor,
    _is_bug,
    _message_size,
    _Ring,
)

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType
    from typing import Self

    from anyio.abc import TaskGroup

    from ._serve import SlowClientPolicy

__all__ = ["ManagerStatistics", "WebSocketManager"]


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


def _optional_seconds(field: str, value: float | None) -> float | None:
    if value is None:
        return None
    return check_number(field, value, positive=True)
