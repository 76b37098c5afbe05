"""Transports: carry text messages over WebSockets, with no web framework required.

* :class:`TextChannel` is the duck type of a WebSocket: async ``send_text``,
  ``receive_text`` and ``close``. Adapters make one out of raw ASGI
  (:class:`ASGIChannel`), Starlette or FastAPI (:class:`StarletteChannel`) and the
  ``websockets`` package (:class:`WebsocketsChannel`); :func:`memory_channel_pair` makes
  two connected in-memory ends for tests.
* :func:`serve_subscription` is the adapter API: it serves a session's subscription
  (or any async iterable of events) over any channel, with a codec, heartbeats, a
  write deadline, a slow-client policy and a resume point. StreamApp's WebSocket
  endpoints and :meth:`Connection.follow` are built on it; so are your own adapters
  (``docs/transports.md``).
* :class:`WebSocketManager` runs many connections: a bounded send queue per
  connection with a slow-client policy, broadcast to all or to a group at a cost that
  does not grow with the number of connections, heartbeat pings that find dead
  connections, and statistics.

Whatever the framework, a peer going away surfaces as :class:`~streamkit.Disconnected`.
See ``docs/websocket.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from ..abc import TextChannel as TextChannel
    from ._channel import CloseCode as CloseCode
    from ._connection import Connection as Connection
    from ._connection import ConnectionStatistics as ConnectionStatistics
    from ._connection import MessageHandler as MessageHandler
    from ._manager import ManagerStatistics as ManagerStatistics
    from ._manager import WebSocketManager as WebSocketManager
    from ._serve import ServeOutcome as ServeOutcome
    from ._serve import ServeResult as ServeResult
    from ._serve import SlowClientPolicy as SlowClientPolicy
    from ._serve import serve_subscription as serve_subscription
    from .memory import MemoryChannel as MemoryChannel
    from .memory import memory_channel_pair as memory_channel_pair
    from .websocket import ASGIChannel as ASGIChannel
    from .websocket import StarletteChannel as StarletteChannel
    from .websocket import WebsocketsChannel as WebsocketsChannel

# The same names, each with the module it loads when first read (see streamkit/_lazy.py;
# tests/test_exports.py holds the two lists equal).
_LAZY: dict[str, str] = {
    "CloseCode": "._channel",
    "TextChannel": "..abc",
    "Connection": "._connection",
    "ConnectionStatistics": "._connection",
    "MessageHandler": "._connection",
    "ManagerStatistics": "._manager",
    "WebSocketManager": "._manager",
    "ServeOutcome": "._serve",
    "ServeResult": "._serve",
    "SlowClientPolicy": "._serve",
    "serve_subscription": "._serve",
    "MemoryChannel": ".memory",
    "memory_channel_pair": ".memory",
    "ASGIChannel": ".websocket",
    "StarletteChannel": ".websocket",
    "WebsocketsChannel": ".websocket",
}

__all__ = [
    "ASGIChannel",
    "CloseCode",
    "Connection",
    "ConnectionStatistics",
    "ManagerStatistics",
    "MemoryChannel",
    "MessageHandler",
    "ServeOutcome",
    "ServeResult",
    "SlowClientPolicy",
    "StarletteChannel",
    "TextChannel",
    "WebSocketManager",
    "WebsocketsChannel",
    "memory_channel_pair",
    "serve_subscription",
]

# Type checkers read the imports above instead, so that a misspelt name is an error.
if not TYPE_CHECKING:  # pragma: no branch
    __getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY)
del TYPE_CHECKING  # not a public name
