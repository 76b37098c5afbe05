"""Adapters that make real WebSockets into :class:`~streamkit.transports.TextChannel`.

* :class:`ASGIChannel` speaks the raw ASGI WebSocket messages over ``receive`` and
  ``send``: any ASGI server, no framework. The ASGI app uses it.
* :class:`StarletteChannel` wraps an accepted Starlette (or FastAPI) ``WebSocket``.
* :class:`WebsocketsChannel` wraps a connection of the ``websockets`` package (server or
  client side). That package runs on asyncio only.

No framework is imported here: each adapter duck-types the object it is given and
recognises the framework's disconnect exception by its class name. Every adapter
translates foreign exceptions at one place, into :class:`~streamkit.Disconnected`
chained with ``from``, and refuses binary messages with
:class:`~streamkit.RemoteProtocolError`. Their ``close`` is idempotent and quiet when
the peer has already gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextlib import suppress
from typing import Any, Final, Protocol, TypeAlias

from anyio.lowlevel import checkpoint

from .._errors import Disconnected, RemoteProtocolError, ValidationError
from .._validate import type_name
from ._channel import check_close, is_foreign

__all__ = ["ASGIChannel", "StarletteChannel", "WebsocketsChannel"]

#: An ASGI ``receive`` callable.
Receive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
#: An ASGI ``send`` callable.
Send: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_STARLETTE_DISCONNECT: Final = frozenset({"WebSocketDisconnect"})
_WEBSOCKETS_CLOSED: Final = frozenset({"ConnectionClosed"})
# What a peer sends when its close frame has no code (RFC 6455, 7.1.5).
_NO_STATUS: Final = 1005


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise ValidationError(f"text must be a str, got {type_name(text)}", field="text")


def _binary(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"{what}: expected a text message, got a binary one")


class ASGIChannel:
    """A :class:`~streamkit.transports.TextChannel` over raw ASGI WebSocket messages.

    Give it the ``receive`` and ``send`` of an ASGI ``websocket`` scope. Unless
    ``accepted`` is true, call :meth:`accept` first (after authenticating the scope,
    say); :meth:`close` before :meth:`accept` rejects the handshake, which servers
    answer with HTTP 403.

    Per the ASGI specification, servers raise an :class:`OSError` when the app sends on
    a connection that has gone; that (and a ``websocket.disconnect`` message) becomes
    :class:`~streamkit.Disconnected`.

    Args:
        receive: The ASGI ``receive`` callable.
        send: The ASGI ``send`` callable.
        accepted: Whether the handshake was already completed by the caller.

    Attributes:
        disconnect_code: The close code of the peer's ``websocket.disconnect`` message,
            once one was received (``None`` before).
    """

    __slots__ = ("_closed", "_receive", "_send", "_state", "disconnect_code")

    def __init__(self, receive: Receive, send: Send, *, accepted: bool = False) -> None:
        self._receive = receive
        self._send = send
        # "connecting" -> "open" -> "gone" (peer left) ; close() sets _closed.
        self._state = "open" if accepted else "connecting"
        self._closed = False
        self.disconnect_code: int | None = None

    def _gone_error(self) -> Disconnected:
        if self.disconnect_code is not None:
            return Disconnected(
                f"the WebSocket client went away (code {self.disconnect_code})",
                close_code=self.disconnect_code,
            )
        return Disconnected("the WebSocket is closed")

    def _disconnected(self, message: MutableMapping[str, Any]) -> Disconnected:
        self._state = "gone"
        code = message.get("code", _NO_STATUS)
        self.disconnect_code = code if isinstance(code, int) else _NO_STATUS
        return self._gone_error()

    async def accept(
        self, subprotocol: str | None = None, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        """Complete the handshake: wait for ``websocket.connect``, answer ``websocket.accept``.

        Args:
            subprotocol: The subprotocol to select, if the client offered some.
            headers: Extra response headers, as ASGI byte pairs.

        Raises:
            Disconnected: the client went away before the handshake completed.
            RemoteProtocolError: the server sent something other than
                ``websocket.connect``.
            RuntimeError: the handshake was already done, or the channel is closed.
        """
        if self._state != "connecting" or self._closed:
            raise RuntimeError("accept() is only valid once, before anything else")
        message = await self._call_receive()
        kind = message.get("type")
        if kind == "websocket.disconnect":
            raise self._disconnected(message)
        if kind != "websocket.connect":
            raise RemoteProtocolError(f"expected 'websocket.connect', got {kind!r}")
        reply: dict[str, Any] = {"type": "websocket.accept", "headers": list(headers)}
        if subprotocol is not None:
            reply["subprotocol"] = subprotocol
        await self._call_send(reply)
        self._state = "open"

    async def send_text(self, text: str) -> None:
        """Send one text message (``websocket.send``).

        Raises:
            Disconnected: the client went away or the channel is closed.
            ValidationError: ``text`` is not a str.
            RuntimeError: :meth:`accept` was not called.
        """
        if type(text) is not str:  # the hot path: one test, no call
            _check_text(text)
        if self._state != "open" or self._closed:
            self._check_open()
        try:  # _call_send inlined: one coroutine fewer per message
            await self._send({"type": "websocket.send", "text": text})
        except OSError as exc:
            self._state = "gone"
            raise Disconnected(f"the WebSocket client went away: {exc!r}") from exc

    async def receive_text(self) -> str:
        """Wait for the next text message (``websocket.receive``).

        Raises:
            Disconnected: the client went away (``websocket.disconnect``) or the
                channel is closed.
            RemoteProtocolError: the client sent a binary message, or the server an
                unexpected ASGI message.
            RuntimeError: :meth:`accept` was not called.
        """
        self._check_open()
        message = await self._call_receive()
        kind = message.get("type")
        if kind == "websocket.receive":
            text = message.get("text")
            if isinstance(text, str):
                return text
            raise _binary("ASGI websocket.receive")
        if kind == "websocket.disconnect":
            raise self._disconnected(message)
        raise RemoteProtocolError(f"unexpected ASGI message {kind!r} on an open WebSocket")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send ``websocket.close`` (before :meth:`accept`: reject the handshake).

        Idempotent; does nothing once the client has gone.

        Raises:
            ValidationError: ``code`` or ``reason`` is invalid.
        """
        check_close(code, reason)
        if self._closed or self._state == "gone":
            await checkpoint()
            return
        self._closed = True
        with suppress(Disconnected):  # the client left first: nothing left to close
            await self._call_send({"type": "websocket.close", "code": code, "reason": reason})

    def _check_open(self) -> None:
        if self._state == "connecting" and not self._closed:
            raise RuntimeError("call accept() before sending or receiving")
        if self._closed or self._state == "gone":
            raise self._gone_error()

    # The one boundary where the server's exceptions are translated.
    async def _call_send(self, message: MutableMapping[str, Any]) -> None:
        try:
            await self._send(message)
        except OSError as exc:
            self._state = "gone"
            raise Disconnected(f"the WebSocket client went away: {exc!r}") from exc

    async def _call_receive(self) -> MutableMapping[str, Any]:
        try:
            return await self._receive()
        except OSError as exc:
            self._state = "gone"
            raise Disconnected(f"the WebSocket client went away: {exc!r}") from exc


class _StarletteWebSocket(Protocol):
    async def receive(self) -> MutableMapping[str, Any]: ...
    async def send_text(self, data: str) -> None: ...
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class StarletteChannel:
    """A :class:`~streamkit.transports.TextChannel` over an accepted Starlette ``WebSocket``.

    Works with FastAPI's ``WebSocket`` too (it is Starlette's). Accept the socket
    first (``await websocket.accept()``), then wrap it. Starlette's
    ``WebSocketDisconnect`` and a server's :class:`OSError` become
    :class:`~streamkit.Disconnected`.

    Args:
        websocket: The accepted ``starlette.websockets.WebSocket``.

    Attributes:
        websocket: The wrapped object.
        disconnect_code: The peer's close code once it went away (``None`` before).
    """

    __slots__ = ("_closed", "_gone", "disconnect_code", "websocket")

    def __init__(self, websocket: _StarletteWebSocket) -> None:
        self.websocket = websocket
        self._closed = False
        self._gone = False
        self.disconnect_code: int | None = None

    async def send_text(self, text: str) -> None:
        """Send one text message.

        Raises:
            Disconnected: the client went away or the channel is closed.
            ValidationError: ``text`` is not a str.
        """
        _check_text(text)
        self._check_open()
        try:
            await self.websocket.send_text(text)
        except Exception as exc:
            raise self._translate(exc) from exc

    async def receive_text(self) -> str:
        """Wait for the next text message.

        Raises:
            Disconnected: the client went away or the channel is closed.
            RemoteProtocolError: the client sent a binary message.
        """
        self._check_open()
        try:
            message = await self.websocket.receive()
        except Exception as exc:
            raise self._translate(exc) from exc
        if message.get("type") == "websocket.disconnect":
            self._gone = True
            code = message.get("code", _NO_STATUS)
            self.disconnect_code = code if isinstance(code, int) else _NO_STATUS
            raise Disconnected(
                f"the WebSocket client went away (code {self.disconnect_code})",
                close_code=self.disconnect_code,
            )
        text = message.get("text")
        if isinstance(text, str):
            return text
        raise _binary("Starlette WebSocket")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket. Idempotent; does nothing once the client has gone.

        Raises:
            ValidationError: ``code`` or ``reason`` is invalid.
        """
        check_close(code, reason)
        if self._closed or self._gone:
            await checkpoint()
            return
        self._closed = True
        try:
            await self.websocket.close(code, reason)
        except Exception as exc:
            self._translate(exc)  # raises what is not a disconnect
            # the client left first: there is nothing left to close

    def _check_open(self) -> None:
        if self._closed or self._gone:
            raise Disconnected("the WebSocket is closed")

    # The one boundary where Starlette's exceptions are translated.
    def _translate(self, exc: Exception) -> Disconnected:
        if isinstance(exc, OSError) or is_foreign(exc, "starlette", _STARLETTE_DISCONNECT):
            self._gone = True
            code = getattr(exc, "code", None)
            self.disconnect_code = code if isinstance(code, int) else _NO_STATUS
            return Disconnected(
                f"the WebSocket client went away: {exc!r}", close_code=self.disconnect_code
            )
        raise exc


class _WebsocketsConnection(Protocol):
    async def send(self, message: str) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class WebsocketsChannel:
    """A :class:`~streamkit.transports.TextChannel` over a ``websockets`` connection.

    Works with the server and client connections of ``websockets`` (its asyncio
    implementation; that package does not run on Trio). Its ``ConnectionClosed``
    becomes :class:`~streamkit.Disconnected`.

    Args:
        connection: The open ``websockets`` connection.

    Attributes:
        connection: The wrapped object.
    """

    __slots__ = ("_closed", "connection")

    def __init__(self, connection: _WebsocketsConnection) -> None:
        self.connection = connection
        self._closed = False

    async def send_text(self, text: str) -> None:
        """Send one text message.

        Raises:
            Disconnected: the peer went away or the channel is closed.
            ValidationError: ``text`` is not a str.
        """
        _check_text(text)
        if self._closed:
            raise Disconnected("the WebSocket is closed")
        try:
            await self.connection.send(text)
        except Exception as exc:
            raise self._translate(exc) from exc

    async def receive_text(self) -> str:
        """Wait for the next text message.

        Raises:
            Disconnected: the peer went away or the channel is closed.
            RemoteProtocolError: the peer sent a binary message.
        """
        if self._closed:
            raise Disconnected("the WebSocket is closed")
        try:
            message = await self.connection.recv()
        except Exception as exc:
            raise self._translate(exc) from exc
        if isinstance(message, str):
            return message
        raise _binary("websockets connection")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (the closing handshake). Idempotent.

        Raises:
            ValidationError: ``code`` or ``reason`` is invalid.
        """
        check_close(code, reason)
        if self._closed:
            await checkpoint()
            return
        self._closed = True
        try:
            await self.connection.close(code, reason)
        except Exception as exc:
            self._translate(exc)  # raises what is not a disconnect

    # The one boundary where the websockets package's exceptions are translated.
    @staticmethod
    def _translate(exc: Exception) -> Disconnected:
        if isinstance(exc, OSError) or is_foreign(exc, "websockets", _WEBSOCKETS_CLOSED):
            # websockets' ConnectionClosed carries the peer's close frame, if any.
            received = getattr(exc, "rcvd", None)
            code = getattr(received, "code", None)
            return Disconnected(
                f"the WebSocket peer went away: {exc}",
                close_code=code if isinstance(code, int) else None,
            )
        raise exc
