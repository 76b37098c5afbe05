"""The WebSocket side of the ASGI app: a JSON protocol multiplexing subscriptions.

Client to server, one JSON object per text message (``request_id``, a string or an
integer, is optional and echoed in the reply)::

    {"type": "subscribe", "session_id": "...", "after": 0}
    {"type": "unsubscribe", "session_id": "..."}
    {"type": "pause" | "resume" | "cancel", "session_id": "..."}
    {"type": "ping"}

Server to client::

    {"type": "subscribed", "session_id": "...", "after": 0}
    {"type": "event", "session_id": "...", "event": {...}}
    {"type": "unsubscribed", "session_id": "...", "reason": "requested" | "ended" | "error"}
    {"type": "ack", "action": "pause", "session_id": "...", "status": "paused"}
    {"type": "pong"}
    {"type": "error", "code": "...", "message": "...", ...}

Rules of this module, and why:

* **Built on the transport adapter API.** Each subscription is
  :func:`~streamkit.transports.serve_subscription` over the connection's one shared
  channel: an event goes from the session log's cursor to the socket in the
  subscription's own task, with no queue, no second task and no timer per message.
  Sends on the channel take turns; the event loop's one clock (the HTTP streams')
  drops a client whose send outlasts ``write_timeout``, and the app's shutdown signal
  closes the connection directly: no watchdog or shutdown task per connection. A
  client that reads slowly holds back its own cursors, so the log's slow-consumer
  policy applies to this connection alone.
* **A bad message is answered, never fatal.** Malformed JSON, an unknown type, a bad
  field, an oversize message, a session the caller may not see: each gets an ``error``
  message (with the ``request_id`` when one could be read), and every other
  subscription carries on.
* ``session_id`` may be left out on ``/sessions/{id}/ws``: it defaults to the path's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from ._asgi_http import Receive, Send, check_resume_point, dump_json
from ._asgi_stream import clock_for_this_loop
from ._errors import (
    Disconnected,
    PayloadTooLarge,
    RemoteProtocolError,
    SessionLimitExceeded,
    StreamkitError,
    ValidationError,
)
from ._events import loads_json
from ._validate import check_id, check_int, type_name
from .transports import ASGIChannel, serve_subscription
from .transports._serve import Link

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup

    from ._asgi_stream import Outcome, StopSignal
    from ._events import StreamEvent
    from ._registry import SessionRegistry

__all__ = ["WebSocketOptions", "serve_websocket"]

_FIELDS: Final[dict[str, frozenset[str]]] = {
    "ping": frozenset({"type", "request_id"}),
    "subscribe": frozenset({"type", "request_id", "session_id", "after"}),
    "unsubscribe": frozenset({"type", "request_id", "session_id"}),
    "pause": frozenset({"type", "request_id", "session_id"}),
    "resume": frozenset({"type", "request_id", "session_id"}),
    "cancel": frozenset({"type", "request_id", "session_id"}),
}
_MAX_REQUEST_ID: Final = 128
#: Event messages kept for the next connection that sends them (by the event's identity).
_ENCODED_EVENTS: Final = 256
_encoded: dict[int, tuple[StreamEvent, str, str]] = {}
#: WebSocket close codes.
GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008


@attrs.frozen(kw_only=True)
class WebSocketOptions:
    """Bounds of one WebSocket connection (see :class:`~streamkit.asgi.StreamApp`)."""

    max_message_bytes: int
    max_subscriptions: int
    write_timeout: float | None


class _Connection:
    """One accepted WebSocket connection and its subscriptions."""

    def __init__(
        self,
        registry: SessionRegistry,
        *,
        user: str | None,
        default_session: str | None,
        options: WebSocketOptions,
        public_error: Callable[[StreamkitError], StreamkitError],
        link: Link,
        end: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.user = user
        self.default_session = default_session
        self.options = options
        self.public_error = public_error
        self.link = link
        self.end = end
        self.subscriptions: dict[str, anyio.CancelScope] = {}

    # -- outgoing ----------------------------------------------------------------------------

    async def put(self, message: dict[str, Any]) -> None:
        await self.link.send(dump_json(message).decode())

    async def error(
        self,
        error: StreamkitError,
        request_id: str | int | None,
        *,
        session_id: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"type": "error", **self.public_error(error).to_dict()}
        if session_id is not None:
            body.setdefault("session_id", session_id)
        if request_id is not None:
            body["request_id"] = request_id
        await self.put(body)

    # -- incoming ----------------------------------------------------------------------------

    async def handle(self, text: str, tg: TaskGroup) -> None:
        request_id: str | int | None = None
        try:
            limit = self.options.max_message_bytes
            if len(text) > limit or len(text.encode()) > limit:
                raise PayloadTooLarge(
                    f"the message is larger than the limit of {limit} bytes", field="message"
                )
            data = loads_json("the message", text)
            if not isinstance(data, dict):
                raise ValidationError(
                    f"a message must be a JSON object, got {type_name(data)}", field="message"
                )
            request_id = _request_id(data.get("request_id"))
            kind = data.get("type")
            allowed = _FIELDS.get(kind) if isinstance(kind, str) else None
            if allowed is None or not isinstance(kind, str):
                raise ValidationError(
                    f"type must be one of {', '.join(sorted(_FIELDS))}, got {kind!r}",
                    field="type",
                )
            for key in data:
                if key not in allowed:
                    raise ValidationError(
                        f"a {kind} message has no field {key!r} "
                        f"(allowed: {', '.join(sorted(allowed))})",
                        field=str(key),
                    )
            if kind == "ping":
                await self.put(_reply({"type": "pong"}, request_id))
                return
            session_id = self._session_id(data)
            if kind == "subscribe":
                after = check_int("after", data.get("after", 0), minimum=0)
                await self.subscribe(session_id, after, request_id, tg)
            elif kind == "unsubscribe":
                scope = self.subscriptions.pop(session_id, None)
                if scope is None:
                    raise ValidationError(
                        f"not subscribed to session {session_id!r}", field="session_id"
                    )
                scope.cancel()
                await self.put(
                    _reply(
                        {"type": "unsubscribed", "session_id": session_id, "reason": "requested"},
                        request_id,
                    )
                )
            else:
                await self.control(kind, session_id, request_id)
        except Disconnected:
            raise
        except StreamkitError as exc:
            await self.error(exc, request_id)

    def _session_id(self, data: dict[str, Any]) -> str:
        session_id = data.get("session_id", self.default_session)
        if session_id is None:
            raise ValidationError("session_id is required on /ws", field="session_id")
        return check_id("session_id", session_id)

    async def control(self, kind: str, session_id: str, request_id: str | int | None) -> None:
        registry = self.registry
        operation = {
            "pause": registry.pause,
            "resume": registry.resume,
            "cancel": registry.cancel,
        }[kind]
        await operation(session_id, user_id=self.user)
        session = await registry.get(session_id, user_id=self.user)
        await self.put(
            _reply(
                {
                    "type": "ack",
                    "action": kind,
                    "session_id": session_id,
                    "status": session.status.value,
                },
                request_id,
            )
        )

    async def subscribe(
        self, session_id: str, after: int, request_id: str | int | None, tg: TaskGroup
    ) -> None:
        if session_id in self.subscriptions:
            raise ValidationError(
                f"already subscribed to session {session_id!r}", field="session_id"
            )
        limit = self.options.max_subscriptions
        if len(self.subscriptions) >= limit:
            raise SessionLimitExceeded(
                f"a connection may hold at most {limit} subscriptions", limit=limit
            )
        # Ownership and existence are answered before anything is acknowledged, then
        # the resume point (as over HTTP: never a silent skip past the last event).
        check_resume_point(await self.registry.get(session_id, user_id=self.user), after)
        scope = anyio.CancelScope()
        self.subscriptions[session_id] = scope
        tg.start_soon(self.follow, session_id, after, request_id, scope)

    async def follow(
        self,
        session_id: str,
        after: int,
        request_id: str | int | None,
        scope: anyio.CancelScope,
    ) -> None:
        prefix = f'{{"type":"event","session_id":"{session_id}","event":'

        def encode(event: StreamEvent) -> str:
            # Made once per event and session, shared by every connection that sends it.
            hit = _encoded.get(id(event))
            if hit is not None and hit[0] is event and hit[1] == session_id:
                return hit[2]
            text = f"{prefix}{event.to_json()}}}"
            if len(_encoded) >= _ENCODED_EVENTS:
                _encoded.clear()
            _encoded[id(event)] = (event, session_id, text)
            return text

        with scope:
            reason = "ended"
            try:
                error: StreamkitError | None = None
                try:
                    async with self.registry.subscribe(
                        session_id, user_id=self.user, after=after
                    ) as subscription:
                        await self.put(
                            _reply(
                                {"type": "subscribed", "session_id": session_id, "after": after},
                                request_id,
                            )
                        )
                        result = await serve_subscription(
                            self.link, subscription, encode=encode, close=False
                        )
                    if result.outcome == "disconnected":
                        raise Disconnected("the WebSocket client went away")
                    error = result.error
                except Disconnected:
                    raise
                except StreamkitError as exc:
                    error = exc
                if error is not None:
                    reason = "error"
                    await self.error(error, request_id, session_id=session_id)
                if self.subscriptions.get(session_id) is scope:
                    del self.subscriptions[session_id]
                await self.put({"type": "unsubscribed", "session_id": session_id, "reason": reason})
            except Disconnected:
                self.end()  # the client is gone: the whole connection ends


class _Watch:
    """A connection's write deadline and shutdown, kept without a task of its own.

    The event loop's clock (the one that keeps the HTTP streams' deadlines) calls
    :meth:`check` a few times per ``write_timeout``: a send seen in progress for that
    long, with no send finished since, ends the connection (the watchdog's rule of
    :class:`~streamkit.transports.serve_subscription`). The app's :class:`StopSignal`
    calls :meth:`stop`. Each connection thus costs no task, timer or wake-up for them.
    """

    __slots__ = ("close_code", "end", "link", "seen", "since", "stuck", "timeout")

    def __init__(self, link: Link, timeout: float | None, end: Callable[[], None]) -> None:
        self.link = link
        self.timeout = timeout
        self.end = end
        self.seen = 0
        self.stuck = False
        self.since = 0.0
        self.close_code: int | None = None

    def check(self, now: float) -> None:
        link = self.link
        if link.timed_out:
            return
        if link.sent != self.seen:
            self.seen = link.sent
            self.stuck = False
        if not link.busy:
            self.stuck = False
        elif not self.stuck:  # the send in progress now is first seen at this look
            self.stuck, self.since = True, now
        elif self.timeout is not None and now - self.since >= self.timeout:
            link.timed_out = True
            self.end()

    def stop(self) -> None:
        if self.close_code is None:
            self.close_code = GOING_AWAY
            self.end()


def _reply(body: dict[str, Any], request_id: str | int | None) -> dict[str, Any]:
    if request_id is not None:
        body["request_id"] = request_id
    return body


def _request_id(value: object) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= _MAX_REQUEST_ID:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    raise ValidationError(
        f"request_id must be a string of at most {_MAX_REQUEST_ID} characters or an "
        f"integer, got {type_name(value)}",
        field="request_id",
    )


async def serve_websocket(
    registry: SessionRegistry,
    receive: Receive,
    send: Send,
    *,
    user: str | None,
    session_id: str | None,
    after: int,
    options: WebSocketOptions,
    stop: StopSignal,
    public_error: Callable[[StreamkitError], StreamkitError],
) -> Outcome:
    """Accept a WebSocket connection and serve the protocol until either side ends it.

    With ``session_id`` (the ``/sessions/{id}/ws`` endpoint) the connection starts
    subscribed to that session after ``after``. Setting ``stop`` closes the connection
    with code 1001.

    Returns:
        Why the connection ended: ``"write_timeout"`` (a send outlasted the write
        deadline: the client stopped reading), ``"shutdown"`` (``stop`` was set) or
        ``"disconnected"`` (the client closed it or went away).
    """
    channel = ASGIChannel(receive, send)
    try:
        await channel.accept()
    except Disconnected:
        return "disconnected"
    # Sends take turns on the one channel; its watchdog drops a client that stops
    # reading (a close frame would not get through either: the server closes the
    # socket when the app returns).
    link = Link(channel, write_timeout=options.write_timeout)
    timeout = options.write_timeout
    clock = clock_for_this_loop() if timeout is not None else None

    async with anyio.create_task_group() as tg:
        watch = _Watch(link, timeout, tg.cancel_scope.cancel)
        link.on_end = tg.cancel_scope.cancel
        connection = _Connection(
            registry,
            user=user,
            default_session=session_id,
            options=options,
            public_error=public_error,
            link=link,
            end=tg.cancel_scope.cancel,
        )

        stop.responses.add(watch)  # the app's shutdown calls watch.stop()
        if stop.is_set():
            watch.stop()
        if clock is not None and timeout is not None:
            clock.add(watch, timeout / 4)
        try:
            if session_id is not None:
                scope = anyio.CancelScope()
                connection.subscriptions[session_id] = scope
                tg.start_soon(connection.follow, session_id, after, None, scope)
            try:
                while True:
                    try:
                        text = await channel.receive_text()
                    except RemoteProtocolError as exc:  # binary: answered, not fatal
                        await connection.error(exc, None)
                        continue
                    await connection.handle(text, tg)
            except Disconnected:
                pass
            tg.cancel_scope.cancel()
        finally:
            if clock is not None:
                clock.remove(watch)
            stop.responses.discard(watch)
    close_code = watch.close_code

    if link.timed_out:
        return "write_timeout"  # a close frame would not get through either
    if close_code is not None:
        with anyio.move_on_after(options.write_timeout):
            await channel.close(close_code)
        return "shutdown"
    return "disconnected"
