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

from ._channel import CloseCode as CloseCode
from ._channel import TextChannel as TextChannel
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

# Show public objects as streamkit.transports.X in reprs, tracebacks and docs.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("streamkit.transports._"):
        _obj.__module__ = __name__
del _name, _obj
