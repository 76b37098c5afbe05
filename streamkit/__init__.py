"""streamkit: durable, resumable, multi-subscriber event streams for LLM output.

Turn any token producer into a stream of :class:`StreamEvent` values that many
subscribers can follow and any client can resume, over SSE, NDJSON, WebSocket, a pure
ASGI app or a plain ``async for``, on asyncio or Trio.

``import streamkit`` loads the model (events, sessions, configs, errors); every other
name loads its module the first time it is read.
"""

from __future__ import annotations

from ._config import ChunkBy as ChunkBy
from ._config import RegistryConfig as RegistryConfig
from ._config import SlowConsumerPolicy as SlowConsumerPolicy
from ._config import StreamConfig as StreamConfig
from ._errors import BackendError as BackendError
from ._errors import ClosedError as ClosedError
from ._errors import Disconnected as Disconnected
from ._errors import HistoryGap as HistoryGap
from ._errors import InvalidTransition as InvalidTransition
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import PermissionDenied as PermissionDenied
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import SessionLimitExceeded as SessionLimitExceeded
from ._errors import SessionNotFound as SessionNotFound
from ._errors import StreamkitError as StreamkitError
from ._errors import SubscriberLagged as SubscriberLagged
from ._errors import ValidationError as ValidationError
from ._events import EventType as EventType
from ._events import StreamEvent as StreamEvent
from ._session import TRANSITIONS as TRANSITIONS
from ._session import SessionState as SessionState
from ._session import StreamSession as StreamSession
from ._session import check_transition as check_transition
from ._session import new_session_id as new_session_id
from ._version import __version__ as __version__

# Everything else loads when first read (see streamkit/_lazy.py): `import streamkit`
# costs the model above, not the streamer, the registry, the transports or the ASGI app.
# isort: split
from typing import TYPE_CHECKING

from ._lazy import lazy_exports as _lazy_exports
from ._lazy import rehome as _rehome

if TYPE_CHECKING:
    from . import abc as abc
    from . import asgi as asgi
    from . import ndjson as ndjson
    from . import sources as sources
    from . import sse as sse
    from . import transports as transports
    from ._log import InMemoryEventLog as InMemoryEventLog
    from ._memory import MemoryBackend as MemoryBackend
    from ._memory import MemorySessionStore as MemorySessionStore
    from ._registry import RegistryStatistics as RegistryStatistics
    from ._registry import SessionRegistry as SessionRegistry
    from ._registry import SessionStatistics as SessionStatistics
    from ._registry import Subscription as Subscription
    from ._streamer import StreamOutcome as StreamOutcome
    from ._streamer import StreamStats as StreamStats
    from ._streamer import TokenStream as TokenStream
    from ._streamer import stream_tokens as stream_tokens

# The same names, each with the module it loads (tests/test_exports.py holds them equal).
_LAZY: dict[str, str] = {
    # -- streamer (issue 4)
    "sources": ".sources",
    "StreamOutcome": "._streamer",
    "StreamStats": "._streamer",
    "TokenStream": "._streamer",
    "stream_tokens": "._streamer",
    # -- log and registry (issue 5)
    "abc": ".abc",
    "InMemoryEventLog": "._log",
    "MemoryBackend": "._memory",
    "MemorySessionStore": "._memory",
    "RegistryStatistics": "._registry",
    "SessionRegistry": "._registry",
    "SessionStatistics": "._registry",
    "Subscription": "._registry",
    # -- wire formats, transports, ASGI (issues 6, 7)
    "ndjson": ".ndjson",
    "sse": ".sse",
    "transports": ".transports",
    "asgi": ".asgi",
}

__all__ = [
    "TRANSITIONS",
    "BackendError",
    "ChunkBy",
    "ClosedError",
    "Disconnected",
    "EventType",
    "HistoryGap",
    "InMemoryEventLog",
    "InvalidTransition",
    "MemoryBackend",
    "MemorySessionStore",
    "PayloadTooLarge",
    "PermissionDenied",
    "RegistryConfig",
    "RegistryStatistics",
    "RemoteProtocolError",
    "SessionLimitExceeded",
    "SessionNotFound",
    "SessionRegistry",
    "SessionState",
    "SessionStatistics",
    "SlowConsumerPolicy",
    "StreamConfig",
    "StreamEvent",
    "StreamOutcome",
    "StreamSession",
    "StreamStats",
    "StreamkitError",
    "SubscriberLagged",
    "Subscription",
    "TokenStream",
    "ValidationError",
    "__version__",
    "abc",
    "asgi",
    "check_transition",
    "ndjson",
    "new_session_id",
    "sources",
    "sse",
    "stream_tokens",
    "transports",
]

# Show public objects as streamkit.X in reprs, tracebacks and docs; load the rest on use.
_rehome(__name__, [globals()[_name] for _name in __all__ if _name not in _LAZY])
# Type checkers read the imports above instead, so that a misspelt name is an error.
if not TYPE_CHECKING:  # pragma: no branch
    __getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY)
del TYPE_CHECKING  # not a public name
