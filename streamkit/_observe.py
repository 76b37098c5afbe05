"""What :mod:`streamkit.otel` and :mod:`streamkit.prometheus` share: hooks in, figures out.

Rules of this module:

* **Public surfaces only.** A :class:`Watcher` sees a registry through
  :meth:`SessionRegistry.on` hooks and its ``statistics()``; an ASGI app through the
  messages it sends (:class:`RequestWatcher`). Nothing here reaches into a private
  attribute, so the registry and the ASGI layer can change inside freely. The one
  exception is the Redis backend's list of observers (``_observers`` in
  :mod:`streamkit.backends.redis`), which times its round trips only while it is not
  empty: the backend's layer cannot import this one.
* **Nothing per token but one type check.** The ``event`` hook runs for every event the
  registry appends: a ``token`` or ``heartbeat`` event returns after one identity test.
  Per-stream figures (time to first token, inter-token latency, tokens) come from the
  ``stats`` of the stream's final event, and counts the registry keeps already
  (events, subscribers, producers, lagged subscribers) are read when a metric reader
  asks for them. Delivery lag comes from the registry's ``delivered`` hook, a sample
  of one live event in 16 per subscription.
* **No user data by default.** The figures a sink receives carry states, reasons,
  error *types* and numbers; the session's ids and the error's message travel only in
  fields a sink records when the application opted in.
* The registry calls hooks synchronously, on its event loop: the hooks here never await
  and never raise (a sink that raises is the registry's to log).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

import attrs

from ._events import EventType
from ._session import SessionState

if TYPE_CHECKING:
    from . import RegistryStatistics, SessionRegistry
    from ._events import StreamEvent
    from ._session import StreamSession

__all__ = [
    "METRICS",
    "Metric",
    "RequestWatcher",
    "SessionEnd",
    "Sink",
    "StreamEnd",
    "Watcher",
    "app_figures",
    "read_statistics",
    "time_per_output_token",
    "watch_redis",
]

# The same shapes as streamkit.asgi's aliases (kept here so this module needs no ASGI code).
Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

_TOKEN: Final = EventType.TOKEN
_HEARTBEAT: Final = EventType.HEARTBEAT
#: The largest error body read to find its ``code``: the ASGI layer's are far smaller.
_MAX_ERROR_BODY: Final = 4096


@attrs.frozen(kw_only=True)
class Metric:
    """One figure, named once for both exporters (OpenTelemetry and Prometheus).

    Attributes:
        name: The OpenTelemetry instrument name.
        kind: ``histogram``, ``counter`` (pushed), ``observed_counter`` or ``gauge``
            (read from ``statistics()`` when a reader asks).
        unit: The UCUM unit (``s``, ``By``, ``{token}``...).
        description: What it measures.
        attributes: The attribute keys it may carry.
    """

    name: str
    kind: str
    unit: str
    description: str
    attributes: tuple[str, ...] = ()

    @property
    def prometheus_name(self) -> str:
        """The name in the Prometheus exposition, by the OpenTelemetry conversion rules.

        Dots become underscores, the unit ``s`` adds ``_seconds`` and ``By`` adds
        ``_bytes``; counters get ``_total`` from prometheus-client itself.
        """
        base = self.name.replace(".", "_")
        suffix = {"s": "_seconds", "By": "_bytes"}.get(self.unit, "")
        return base + suffix


#: Every metric both exporters publish, in the order the docs list them.
METRICS: Final = (
    Metric(
        name="gen_ai.server.time_to_first_token",
        kind="histogram",
        unit="s",
        description="Time from a stream's start to its first token event.",
        attributes=("streamkit.stream.outcome",),
    ),
    Metric(
        name="gen_ai.server.time_per_output_token",
        kind="histogram",
        unit="s",
        description="Time per token after the first, for streams that did not fail.",
        attributes=("streamkit.stream.outcome",),
    ),
    Metric(
        name="gen_ai.server.request.duration",
        kind="histogram",
        unit="s",
        description="Time from a stream's start to its final event.",
        attributes=("streamkit.stream.outcome", "error.type"),
    ),
    Metric(
        name="streamkit.stream.tokens",
        kind="counter",
        unit="{token}",
        description="Pieces of text received from sources (finished streams).",
        attributes=("streamkit.stream.outcome",),
    ),
    Metric(
        name="streamkit.stream.chunks",
        kind="counter",
        unit="{event}",
        description="Token events emitted by finished streams.",
        attributes=("streamkit.stream.outcome",),
    ),
    Metric(
        name="streamkit.streams",
        kind="counter",
        unit="{stream}",
        description="Streams that ended, by outcome.",
        attributes=("streamkit.stream.outcome", "error.type"),
    ),
    Metric(
        name="streamkit.sessions.ended",
        kind="counter",
        unit="{session}",
        description="Sessions that ended, by final state and reason.",
        attributes=("streamkit.session.state", "streamkit.session.end_reason", "error.type"),
    ),
    Metric(
        name="streamkit.requests.rejected",
        kind="counter",
        unit="{request}",
        description="HTTP requests and WebSocket handshakes answered with an error, by cause.",
        attributes=("error.type", "http.response.status_code", "streamkit.request.kind"),
    ),
    Metric(
        name="streamkit.delivery.lag",
        kind="histogram",
        unit="s",
        description=(
            "Time from an event's making (just before its append) to its delivery to a "
            "subscriber, for the first live event of each subscription and one in 16 after."
        ),
    ),
    Metric(
        name="streamkit.redis.round_trip.duration",
        kind="histogram",
        unit="s",
        description="Redis round trips of this process's Redis backends (answered calls).",
    ),
    Metric(
        name="streamkit.redis.retries",
        kind="counter",
        unit="{retry}",
        description="Redis calls retried after a lost connection or a busy server, by cause.",
        attributes=("error.type",),
    ),
    Metric(
        name="streamkit.sessions.created",
        kind="observed_counter",
        unit="{session}",
        description="Sessions created since the registry started.",
    ),
    Metric(
        name="streamkit.sessions.expired",
        kind="observed_counter",
        unit="{session}",
        description="Sessions the sweeper expired for idleness.",
    ),
    Metric(
        name="streamkit.events.appended",
        kind="observed_counter",
        unit="{event}",
        description="Events appended to session logs.",
    ),
    Metric(
        name="streamkit.events.delivered",
        kind="observed_counter",
        unit="{event}",
        description="Events handed to subscribers.",
    ),
    Metric(
        name="streamkit.heartbeats",
        kind="observed_counter",
        unit="{event}",
        description="Heartbeat events the registry sent to silent watched sessions.",
    ),
    Metric(
        name="streamkit.subscribers.dropped",
        kind="observed_counter",
        unit="{subscriber}",
        description=(
            "Subscriptions ended for lagging (lagged) or refused because their resume "
            "point had left the history (history_gap)."
        ),
        attributes=("streamkit.subscriber.drop_reason",),
    ),
    Metric(
        name="streamkit.sessions",
        kind="gauge",
        unit="{session}",
        description="Sessions held now, by state.",
        attributes=("streamkit.session.state",),
    ),
    Metric(
        name="streamkit.subscribers",
        kind="gauge",
        unit="{subscriber}",
        description="Subscriptions reading now.",
    ),
    Metric(
        name="streamkit.producers",
        kind="gauge",
        unit="{stream}",
        description="Streams (producers) running now.",
    ),
    Metric(
        name="streamkit.log.retained",
        kind="gauge",
        unit="By",
        description="Bytes the logs of held sessions retain for replay.",
    ),
)

#: Bucket boundaries (seconds) the GenAI semantic conventions advise.
TTFT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TPOT_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
#: Delivery lag and Redis round trips: from a tenth of a millisecond up.
LAG_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip


@attrs.frozen(kw_only=True)
class StreamEnd:
    """How one stream ended, with its final statistics when it sent a final event.

    ``outcome``: ``completed``, ``deadline`` or ``error`` from the final event;
    ``cancelled`` or ``expired`` (or another terminal state) when the session ended
    before its stream sent one, and then the figures are ``None``.
    """

    outcome: str
    error_type: str | None = None
    error_message: str | None = None
    stats: Mapping[str, Any] | None = None


@attrs.frozen(kw_only=True)
class SessionEnd:
    """How one session ended: its final state, the reason, and its error if any."""

    state: str
    reason: str
    error_type: str | None = None
    error_message: str | None = None


class Sink(Protocol):
    """What a :class:`Watcher` tells; a sink returns a handle per session it follows."""

    def session_created(self, session: StreamSession) -> object:
        """A session was created here; return the handle later calls pass back."""

    def session_paused(self, handle: object) -> None:
        """The session was paused."""

    def session_resumed(self, handle: object) -> None:
        """The session was resumed."""

    def stream_started(self, handle: object) -> None:
        """The session's producer sent its ``start`` event."""

    def stream_ended(self, handle: object | None, end: StreamEnd) -> None:
        """The session's stream ended (``handle`` is ``None`` for an unfollowed session)."""

    def session_ended(self, handle: object | None, end: SessionEnd) -> None:
        """The session reached a terminal state (``handle`` ``None``: not followed)."""

    def delivered(self, lag: float) -> None:
        """A sampled live event reached a subscriber ``lag`` seconds after it was made."""

    def redis_round_trip(self, seconds: float) -> None:
        """A Redis call of this process was answered after ``seconds``."""

    def redis_retry(self, error_type: str) -> None:
        """A Redis call of this process is retried after an error of that type."""


class _Followed:
    __slots__ = ("final", "handle", "streaming")

    def __init__(self, handle: object) -> None:
        self.handle = handle
        self.streaming = False
        self.final: StreamEvent | None = None


class Watcher:
    """Follows one registry through its hooks and tells a :class:`Sink` what happens.

    Sessions created before the watcher was made are not followed one by one (no span),
    but their ends still count in the metrics.
    """

    def __init__(self, registry: SessionRegistry, sink: Sink) -> None:
        self._sink = sink
        self._followed: dict[str, _Followed] = {}
        # A final event with no session id (appended to a closed log): the
        # state_changed hook that follows it at once picks it up.
        self._loose_final: StreamEvent | None = None
        self._unhook = [
            registry.on("created", self._created),
            registry.on("state_changed", self._changed),
            registry.on("event", self._event),
            registry.on("removed", self._removed),
            registry.on("delivered", self._delivered),
        ]
        unwatch = watch_redis(registry.backend, self._redis)
        if unwatch is not None:
            self._unhook.append(unwatch)

    @property
    def followed(self) -> int:
        """How many live sessions the watcher follows now."""
        return len(self._followed)

    def close(self) -> list[object]:
        """Unregister the hooks; return the handles of the sessions still followed."""
        for unhook in self._unhook:
            unhook()
        self._unhook.clear()
        handles = [followed.handle for followed in self._followed.values()]
        self._followed.clear()
        return handles

    def _delivered(self, event: StreamEvent, lag: float) -> None:
        del event
        self._sink.delivered(lag)

    def _redis(self, kind: str, value: object) -> None:
        if kind == "round_trip" and isinstance(value, float):
            self._sink.redis_round_trip(value)
        elif kind == "retry":
            self._sink.redis_retry(type(value).__name__)

    def _created(self, session: StreamSession) -> None:
        self._followed[session.session_id] = _Followed(self._sink.session_created(session))

    def _event(self, event: StreamEvent) -> None:
        kind = event.event_type
        if kind is _TOKEN or kind is _HEARTBEAT:  # the hot path: nothing to do
            return
        session_id = event.session_id
        followed = self._followed.get(session_id) if session_id is not None else None
        if kind == EventType.START:
            if followed is not None and not followed.streaming:
                followed.streaming = True
                self._sink.stream_started(followed.handle)
        elif kind in (EventType.COMPLETE, EventType.ERROR):
            if session_id is None:
                self._loose_final = event
                return
            if followed is None:
                if isinstance(event.metadata.get("stats"), Mapping):
                    self._sink.stream_ended(None, _stream_end(event))
                return
            followed.final = event
            if followed.streaming and isinstance(event.metadata.get("stats"), Mapping):
                followed.streaming = False
                self._sink.stream_ended(followed.handle, _stream_end(event))

    def _changed(self, before: StreamSession, after: StreamSession) -> None:
        loose, self._loose_final = self._loose_final, None
        status = after.status
        followed = self._followed.get(after.session_id)
        if status.is_terminal:
            handle = None
            final = loose
            if followed is not None:
                del self._followed[after.session_id]
                handle = followed.handle
                final = followed.final or loose
                if followed.streaming:  # ended before its stream sent a final event
                    self._sink.stream_ended(handle, StreamEnd(outcome=status.value))
            self._sink.session_ended(handle, _session_end(status, final))
        elif followed is None:
            return
        elif status is SessionState.PAUSED:
            self._sink.session_paused(followed.handle)
        elif before.status is SessionState.PAUSED:
            self._sink.session_resumed(followed.handle)

    def _removed(self, session: StreamSession) -> None:
        # A session removed without a terminal state seen here (another worker ended it).
        followed = self._followed.pop(session.session_id, None)
        if followed is not None:
            if followed.streaming:
                self._sink.stream_ended(followed.handle, StreamEnd(outcome="removed"))
            self._sink.session_ended(
                followed.handle, SessionEnd(state=session.status.value, reason="removed")
            )


def watch_redis(
    backend: object, observer: Callable[[str, object], None]
) -> Callable[[], None] | None:
    """Observe the Redis traffic of this process if ``backend`` is a Redis backend.

    The backend's observers are the module's, not the instance's: every Redis backend
    of the process is timed (see docs/observability.md). Returns the function that
    stops observing, or ``None`` for another backend.
    """
    module = sys.modules.get("streamkit.backends.redis")
    if module is None or not isinstance(backend, module.RedisBackend):
        return None
    observers: list[Callable[[str, object], None]] = module._observers
    observers.append(observer)

    def unwatch() -> None:
        if observer in observers:
            observers.remove(observer)

    return unwatch


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _stream_end(event: StreamEvent) -> StreamEnd:
    meta = event.metadata
    stats = meta.get("stats")
    if event.event_type == EventType.ERROR:
        return StreamEnd(
            outcome="error",
            error_type=_text(meta.get("error_type")) or "error",
            error_message=_text(meta.get("message")),
            stats=stats if isinstance(stats, Mapping) else None,
        )
    return StreamEnd(
        outcome=_text(meta.get("reason")) or "completed",
        stats=stats if isinstance(stats, Mapping) else None,
    )


def _session_end(state: SessionState, final: StreamEvent | None) -> SessionEnd:
    if final is None:
        return SessionEnd(state=state.value, reason=state.value)
    meta = final.metadata
    if final.event_type == EventType.ERROR:
        return SessionEnd(
            state=state.value,
            reason="error",
            error_type=_text(meta.get("error_type")) or "error",
            error_message=_text(meta.get("message")),
        )
    return SessionEnd(state=state.value, reason=_text(meta.get("reason")) or state.value)


def time_per_output_token(end: StreamEnd) -> float | None:
    """Seconds per token after the first, as the GenAI conventions define it.

    ``(duration - time_to_first_token) / (tokens - 1)`` for a stream that did not fail
    and received at least two tokens; ``None`` otherwise. Tokens are the source's pieces
    of text (see docs/observability.md).
    """
    stats = end.stats
    if stats is None or end.outcome == "error":
        return None
    tokens = stats.get("tokens")
    ttft = stats.get("time_to_first_token")
    duration = stats.get("duration")
    if not isinstance(tokens, int) or tokens < 2:
        return None
    if not isinstance(ttft, (int, float)) or not isinstance(duration, (int, float)):
        return None
    return max(0.0, float(duration) - float(ttft)) / (tokens - 1)


def app_figures(apps: Iterable[Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Sum the StreamApps' counters: connections open now, and event streams by outcome.

    Returns ``({"stream": n, "websocket": n}, {outcome: n})``; the outcomes are those of
    ``StreamApp.statistics()["stream_outcomes"]`` (``ended``, ``disconnected``,
    ``write_timeout`` for a client dropped because it stopped reading, ``shutdown``,
    ``failed``).
    """
    open_now = {"stream": 0, "websocket": 0}
    outcomes: dict[str, int] = {}
    for app in apps:
        counters = app.statistics()
        open_now["stream"] += int(counters.get("streams_open", 0))
        open_now["websocket"] += int(counters.get("websockets_open", 0))
        for outcome, count in dict(counters.get("stream_outcomes", {})).items():
            outcomes[str(outcome)] = outcomes.get(str(outcome), 0) + int(count)
    return open_now, outcomes


def read_statistics(registry: SessionRegistry) -> RegistryStatistics | None:
    """Return ``registry.statistics()``, or ``None`` if it could not be read now.

    A metric reader may call from its own thread (the periodic exporting reader does)
    while the registry's loop changes its maps; the read is then retried, and skipped
    (one missing data point, not an error) if it keeps colliding.
    """
    for _ in range(5):
        try:
            return registry.statistics()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return None


Rejected: TypeAlias = Callable[[str, int | None, str], None]


class RequestWatcher:
    """ASGI middleware: counts the requests an app answers with an error, by cause.

    The cause is the ``code`` of the JSON error body (``{"error": {"code": ...}}``,
    as :class:`~streamkit.asgi.StreamApp` answers), else ``http_<status>``; a WebSocket
    handshake refused with a close frame is ``websocket_close_<code>``. Bodies are read
    only for error answers, and only their first few kilobytes.

    Args:
        app: The ASGI app to wrap.
        rejected: Called with ``(cause, status or None, "http" | "websocket")``.
        enter: Called with each request's scope before the app runs; what it returns
            is called with no argument after the app returns (the OpenTelemetry
            middleware attaches the request's trace context this way).
    """

    def __init__(
        self,
        app: ASGIApp,
        rejected: Rejected,
        enter: Callable[[Scope], Callable[[], None] | None] | None = None,
    ) -> None:
        self.app = app
        self._rejected = rejected
        self._enter = enter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, watching what it sends."""
        kind = scope.get("type")
        if kind not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        leave = self._enter(scope) if self._enter is not None else None
        try:
            await self.app(scope, receive, _Watch(send, kind, self._rejected).send)
        finally:
            if leave is not None:
                leave()


class _Watch:
    __slots__ = ("_body", "_done", "_kind", "_rejected", "_send", "_status")

    def __init__(self, send: Send, kind: str, rejected: Rejected) -> None:
        self._send = send
        self._kind = kind
        self._rejected = rejected
        self._status = 0
        self._body = bytearray()
        self._done = False

    async def send(self, message: Message) -> None:
        if not self._done:
            self._look(message)
        await self._send(message)

    def _look(self, message: Message) -> None:
        kind = message.get("type")
        if kind in {"http.response.start", "websocket.http.response.start"}:
            self._status = int(message.get("status", 0))
            if self._status < 400:
                self._done = True
        elif kind in {"http.response.body", "websocket.http.response.body"}:
            if len(self._body) < _MAX_ERROR_BODY:
                self._body += bytes(message.get("body", b""))[:_MAX_ERROR_BODY]
            if not message.get("more_body", False):
                self._done = True
                self._rejected(
                    _error_code(bytes(self._body)) or f"http_{self._status}",
                    self._status,
                    self._kind,
                )
        elif kind == "websocket.accept":
            self._done = True
        elif kind == "websocket.close":
            self._done = True
            self._rejected(f"websocket_close_{int(message.get('code', 1000))}", None, self._kind)


def _error_code(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str) and 0 < len(code) <= 64 and code.replace("_", "").isalnum():
        return code
    return None
