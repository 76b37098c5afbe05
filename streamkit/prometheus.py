"""A Prometheus ``/metrics`` endpoint for a :class:`~streamkit.SessionRegistry`.

::

    import streamkit.prometheus

    metrics = streamkit.prometheus.instrument(registry, stream_apps=[stream_app])
    metrics_app = metrics.app(authenticate=authenticate)   # serve it at /metrics

It needs ``prometheus-client`` (``pip install 'streamkit[prometheus]'``). The figures are
those of :mod:`streamkit.otel`, named as OpenTelemetry's Prometheus exporter would name
them (dots become underscores, seconds get ``_seconds``, counters ``_total``), so
dashboards work with either. docs/observability.md lists them.

Rules of this module:

* The same hooks and statistics as :mod:`streamkit.otel` (see :mod:`streamkit._observe`):
  no code on the hot path of a registry that is not instrumented, one type check per
  token of one that is (and a delivery-lag record for one event in 16 read); gauges
  are read from ``statistics()`` at scrape time.
* The endpoint is a separate pure ASGI app, off until the application mounts it, and
  it may sit behind the same ``authenticate`` callable as the StreamApp.
* Nothing about a user (ids, text, error messages) is ever exported: label values are
  states, reasons, error types and status codes.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeAlias

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
    from prometheus_client import generate_latest as _generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - the test environment has the extra
    raise ImportError(
        "streamkit.prometheus needs prometheus-client: install 'streamkit[prometheus]' "
        "(pip install 'streamkit[prometheus]')"
    ) from exc

from . import SessionRegistry  # the public name: it stays wherever the class moves
from ._errors import PermissionDenied, ValidationError
from ._observe import (
    DURATION_BUCKETS,
    LAG_BUCKETS,
    METRICS,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
    RequestWatcher,
    SessionEnd,
    StreamEnd,
    Watcher,
    app_figures,
    read_statistics,
    time_per_output_token,
)
from ._validate import check_bool, type_name

if TYPE_CHECKING:
    from ._observe import ASGIApp, Receive, Scope, Send
    from ._session import StreamSession

__all__ = ["Authenticate", "MetricsApp", "PrometheusMetrics", "instrument"]

#: ``authenticate(scope)`` returns a user id, or ``None`` for "not authenticated"
#: (answered 401); it may be async and may raise
#: :class:`~streamkit.PermissionDenied` (403). StreamApp's own callable fits.
Authenticate: TypeAlias = Callable[["Scope"], "str | Awaitable[str | None] | None"]

_SPEC: Final = {metric.name: metric for metric in METRICS}
_OUTCOME: Final = "streamkit_stream_outcome"


def _name(otel_name: str) -> str:
    return _SPEC[otel_name].prometheus_name


def _doc(otel_name: str) -> str:
    return _SPEC[otel_name].description


class _Statistics(Collector):
    """Reads the registry's (and the apps') counts at scrape time."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        if metrics.stopped:
            return
        stats = read_statistics(metrics.registry)
        if stats is None:
            return
        counts = {
            "streamkit.sessions.created": stats.sessions_created,
            "streamkit.sessions.expired": stats.sessions_expired,
            "streamkit.events.appended": stats.events_appended,
            "streamkit.events.delivered": stats.events_delivered,
            "streamkit.heartbeats": stats.heartbeats,
        }
        for otel_name, value in counts.items():
            yield CounterMetricFamily(_name(otel_name), _doc(otel_name), value=value)
        dropped = CounterMetricFamily(
            _name("streamkit.subscribers.dropped"),
            _doc("streamkit.subscribers.dropped"),
            labels=["streamkit_subscriber_drop_reason"],
        )
        dropped.add_metric(["lagged"], stats.subscribers_lagged)
        dropped.add_metric(["history_gap"], stats.history_gaps)
        yield dropped
        sessions = GaugeMetricFamily(
            _name("streamkit.sessions"),
            _doc("streamkit.sessions"),
            labels=["streamkit_session_state"],
        )
        for state, count in stats.by_state.items():
            sessions.add_metric([state], count)
        yield sessions
        gauges = {
            "streamkit.subscribers": stats.subscribers,
            "streamkit.producers": stats.producers,
            "streamkit.log.retained": stats.bytes_retained,
        }
        for otel_name, value in gauges.items():
            yield GaugeMetricFamily(_name(otel_name), _doc(otel_name), value=value)
        if metrics.stream_apps:
            open_streams = GaugeMetricFamily(
                "streamkit_http_open_streams",
                "Event streams (SSE, NDJSON) and WebSockets open now.",
                labels=["streamkit_connection_kind"],
            )
            open_now, outcomes = app_figures(metrics.stream_apps)
            for kind, count in open_now.items():
                open_streams.add_metric([kind], count)
            yield open_streams
            ended = CounterMetricFamily(
                "streamkit_http_streams_ended",
                "Event streams (SSE, NDJSON) that ended, by outcome.",
                labels=["streamkit_connection_outcome"],
            )
            for outcome, count in outcomes.items():
                ended.add_metric([outcome], count)
            yield ended


class PrometheusMetrics:
    """A registry's figures in a prometheus-client registry, made by :func:`instrument`.

    Attributes:
        registry: The instrumented session registry.
        collector_registry: The prometheus-client registry holding the metrics.
        stream_apps: The StreamApps whose open connections are counted.
    """

    def __init__(
        self,
        registry: SessionRegistry,
        *,
        collector_registry: CollectorRegistry,
        stream_apps: Iterable[Any],
    ) -> None:
        self.registry = registry
        self.collector_registry = collector_registry
        self.stream_apps = list(stream_apps)
        self.stopped = False
        self._collector = _Statistics(self)
        collector_registry.register(self._collector)
        self._sink = _Sink(collector_registry)
        self._watcher = Watcher(registry, self._sink)

    def uninstrument(self) -> None:
        """Stop: unregister the hooks and the scrape-time collector. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        self._watcher.close()
        self.collector_registry.unregister(self._collector)

    def exposition(self) -> bytes:
        """Return the metrics in the Prometheus text format (what the endpoint serves)."""
        return _generate_latest(self.collector_registry)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """Return ``app`` wrapped to count requests answered with an error, by cause.

        Raises:
            ValidationError: ``app`` is not callable.
        """
        if not callable(app):
            raise ValidationError(f"app must be an ASGI app, got {type_name(app)}", field="app")
        return RequestWatcher(app, self._sink.on_rejected)

    def app(
        self, *, authenticate: Authenticate | None = None, allow_anonymous: bool = False
    ) -> MetricsApp:
        """Return the ASGI app that serves these metrics (see :class:`MetricsApp`).

        Raises:
            ValidationError: ``authenticate`` is not callable, or neither it nor
                ``allow_anonymous=True`` was given.
        """
        return MetricsApp(self, authenticate=authenticate, allow_anonymous=allow_anonymous)


class _Sink:
    """What the watcher calls (see :class:`._observe.Sink`): it feeds the instruments."""

    def __init__(self, target: CollectorRegistry) -> None:
        def histogram(otel_name: str, buckets: tuple[float, ...], *labels: str) -> Histogram:
            return Histogram(
                _name(otel_name), _doc(otel_name), labels, buckets=buckets, registry=target
            )

        def counter(otel_name: str, *labels: str) -> Counter:
            return Counter(_name(otel_name), _doc(otel_name), labels, registry=target)

        self._ttft = histogram("gen_ai.server.time_to_first_token", TTFT_BUCKETS, _OUTCOME)
        self._tpot = histogram("gen_ai.server.time_per_output_token", TPOT_BUCKETS, _OUTCOME)
        self._duration = histogram(
            "gen_ai.server.request.duration", DURATION_BUCKETS, _OUTCOME, "error_type"
        )
        self._tokens = counter("streamkit.stream.tokens", _OUTCOME)
        self._chunks = counter("streamkit.stream.chunks", _OUTCOME)
        self._streams = counter("streamkit.streams", _OUTCOME, "error_type")
        self._ended = counter(
            "streamkit.sessions.ended",
            "streamkit_session_state",
            "streamkit_session_end_reason",
            "error_type",
        )
        self._rejected = counter(
            "streamkit.requests.rejected",
            "error_type",
            "http_response_status_code",
            "streamkit_request_kind",
        )
        self._lag = histogram("streamkit.delivery.lag", LAG_BUCKETS)
        self._round_trip = histogram("streamkit.redis.round_trip.duration", LAG_BUCKETS)
        self._retries = counter("streamkit.redis.retries", "error_type")

    def session_created(self, session: StreamSession) -> object:
        del session
        return None

    def session_paused(self, handle: object) -> None:
        del handle

    def session_resumed(self, handle: object) -> None:
        del handle

    def stream_started(self, handle: object) -> None:
        del handle

    def stream_ended(self, handle: object | None, end: StreamEnd) -> None:
        del handle
        outcome = end.outcome
        error_type = end.error_type or ""
        stats = end.stats
        if stats is not None:
            ttft = _number(stats.get("time_to_first_token"))
            tpot = time_per_output_token(end)
            duration = _number(stats.get("duration"))
            tokens = _number(stats.get("tokens"))
            chunks = _number(stats.get("chunks"))
            if ttft is not None:
                self._ttft.labels(outcome).observe(ttft)
            if tpot is not None:
                self._tpot.labels(outcome).observe(tpot)
            if duration is not None:
                self._duration.labels(outcome, error_type).observe(duration)
            if tokens:
                self._tokens.labels(outcome).inc(tokens)
            if chunks:
                self._chunks.labels(outcome).inc(chunks)
        self._streams.labels(outcome, error_type).inc()

    def session_ended(self, handle: object | None, end: SessionEnd) -> None:
        del handle
        self._ended.labels(end.state, end.reason, end.error_type or "").inc()

    def delivered(self, lag: float) -> None:
        self._lag.observe(lag)

    def redis_round_trip(self, seconds: float) -> None:
        self._round_trip.observe(seconds)

    def redis_retry(self, error_type: str) -> None:
        self._retries.labels(error_type).inc()

    def on_rejected(self, cause: str, status: int | None, kind: str) -> None:
        self._rejected.labels(cause, "" if status is None else str(status), kind).inc()


class MetricsApp:
    """A pure ASGI 3 app serving a :class:`PrometheusMetrics` in the text format.

    It answers ``GET`` and ``HEAD`` on any path it is given (mount it at ``/metrics``)
    with the exposition, ``405`` to other methods, and ``401``/``403`` as
    ``authenticate`` decides. ``lifespan`` events are acknowledged. Default deny, as
    StreamApp: without ``authenticate``, pass ``allow_anonymous=True`` to serve anyone
    (a port only the scraper reaches).

    Args:
        metrics: What to serve.
        authenticate: Turns a request's scope into a user id, ``None`` (401), or raises
            :class:`~streamkit.PermissionDenied` (403); may be async.
        allow_anonymous: Serve every request without asking anybody.

    Raises:
        ValidationError: a bad argument, or neither ``authenticate`` nor
            ``allow_anonymous=True``.
    """

    def __init__(
        self,
        metrics: PrometheusMetrics,
        *,
        authenticate: Authenticate | None = None,
        allow_anonymous: bool = False,
    ) -> None:
        if not isinstance(metrics, PrometheusMetrics):
            raise ValidationError(
                f"metrics must be a PrometheusMetrics, got {type_name(metrics)}", field="metrics"
            )
        if authenticate is not None and not callable(authenticate):
            raise ValidationError(
                f"authenticate must be callable, got {type_name(authenticate)}",
                field="authenticate",
            )
        check_bool("allow_anonymous", allow_anonymous)
        if authenticate is None and not allow_anonymous:
            raise ValidationError(
                "pass authenticate, or allow_anonymous=True to serve the metrics to anyone",
                field="authenticate",
            )
        self.metrics = metrics
        self._authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        kind = scope.get("type")
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if kind != "http":
            raise ValidationError(f"unsupported ASGI scope type {kind!r}", field="scope")
        method = scope.get("method", "GET")
        head = method == "HEAD"
        if method not in {"GET", "HEAD"}:
            await _answer(
                send, 405, _error("method_not_allowed", "use GET"), [(b"allow", b"GET, HEAD")]
            )
            return
        if self._authenticate is not None:
            try:
                user = self._authenticate(scope)
                if inspect.isawaitable(user):
                    user = await user
            except PermissionDenied:
                await _answer(send, 403, _error("forbidden", "not allowed"), head=head)
                return
            if user is None:
                await _answer(
                    send,
                    401,
                    _error("unauthenticated", "authentication required"),
                    [(b"www-authenticate", b'Bearer realm="streamkit"')],
                    head=head,
                )
                return
        body = self.metrics.exposition()
        await _answer(send, 200, body, content_type=CONTENT_TYPE_LATEST.encode(), head=head)


def instrument(
    registry: SessionRegistry,
    *,
    stream_apps: Iterable[Any] = (),
    collector_registry: CollectorRegistry | None = None,
) -> PrometheusMetrics:
    """Measure ``registry`` for Prometheus.

    Args:
        registry: The session registry to measure.
        stream_apps: StreamApps whose open event streams and WebSockets to count.
        collector_registry: The prometheus-client registry to put the metrics in; a new
            one by default (pass ``prometheus_client.REGISTRY`` to serve them with the
            process's other metrics; instrument one registry per collector registry).

    Returns:
        The metrics, with :meth:`PrometheusMetrics.app` to serve them.

    Raises:
        ValidationError: ``registry`` is not a SessionRegistry, ``collector_registry``
            not a prometheus-client CollectorRegistry, or a stream app has no
            ``statistics()``.
    """
    if not isinstance(registry, SessionRegistry):
        raise ValidationError(
            f"registry must be a SessionRegistry, got {type_name(registry)}", field="registry"
        )
    if collector_registry is not None and not isinstance(collector_registry, CollectorRegistry):
        raise ValidationError(
            "collector_registry must be a prometheus_client.CollectorRegistry, "
            f"got {type_name(collector_registry)}",
            field="collector_registry",
        )
    apps = list(stream_apps)
    for app in apps:
        if not callable(getattr(app, "statistics", None)):
            raise ValidationError(
                f"stream_apps must hold StreamApp objects, got {type_name(app)}",
                field="stream_apps",
            )
    return PrometheusMetrics(
        registry,
        collector_registry=collector_registry
        if collector_registry is not None
        else CollectorRegistry(),
        stream_apps=apps,
    )


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    content_type: bytes = b"application/json",
    head: bool = False,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
