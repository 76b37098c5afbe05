"""OpenTelemetry traces and metrics for a :class:`~streamkit.SessionRegistry`.

::

    import streamkit.otel

    instrumentation = streamkit.otel.instrument(registry)
    app = instrumentation.wrap(stream_app)      # optional: request-side figures
    ...
    instrumentation.uninstrument()

It needs only ``opentelemetry-api`` (``pip install 'streamkit[otel]'``); the application
chooses the SDK, exporters and readers. Without an SDK every call is a no-op of the API.

Rules of this module:

* **Public hooks only, nothing on the hot path when absent.** Instrumenting registers
  hooks with :meth:`SessionRegistry.on` (see :mod:`streamkit._observe`); a registry that
  is not instrumented runs no code of this module. With it, a token costs one hook call
  and one type check when appended, and a delivery-lag record for one event in 16 when
  read; everything else happens once per session or stream, or when a metric reader
  collects.
* **No user data unless asked.** Spans and metrics carry states, reasons, error types
  and numbers. Session ids, user ids and error messages are recorded only with
  ``record_content=True``; the text of events never is.
* Names follow the OpenTelemetry semantic conventions for generative AI where one
  exists (``gen_ai.server.time_to_first_token``...), and ``streamkit.*`` otherwise.
  docs/observability.md lists every span, attribute and metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import propagate, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - the test environment has the extra
    raise ImportError(
        "streamkit.otel needs the OpenTelemetry API: install 'streamkit[otel]' "
        "(pip install 'streamkit[otel]')"
    ) from exc

from . import SessionRegistry  # the public name: it stays wherever the class moves
from ._errors import ValidationError
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
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ._observe import ASGIApp, Scope
    from ._session import StreamSession

__all__ = ["Instrumentation", "SessionAttributes", "instrument"]

#: ``attributes(session)`` returns extra attributes for a session's spans and its
#: per-stream metrics (for example ``gen_ai.request.model`` from its context). Keep
#: them low-cardinality: a model name, not a user id.
SessionAttributes: TypeAlias = Callable[["StreamSession"], Mapping[str, Any]]

_SCOPE: Final = "streamkit"
_SESSION_SPAN: Final = "streamkit.session"
_STREAM_SPAN: Final = "streamkit.stream"
_ATTRIBUTE_TYPES: Final = (str, bool, int, float)


class _Session:
    """The spans and attributes of one followed session."""

    __slots__ = ("attributes", "pauses", "span", "stream")

    def __init__(self, span: Span, attributes: Mapping[str, Any]) -> None:
        self.span = span
        self.attributes = attributes
        self.stream: Span | None = None
        self.pauses = 0


class _Recorder:
    """The instruments, and the sink the watcher calls (see :class:`._observe.Sink`)."""

    def __init__(
        self,
        registry: SessionRegistry,
        *,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: otel_metrics.MeterProvider | None,
        record_content: bool,
        attributes: SessionAttributes | None,
        stream_apps: Iterable[Any],
    ) -> None:
        self.registry = registry
        self.record_content = record_content
        self._attributes = attributes
        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
        meter = otel_metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        self._meter = meter
        spec = {metric.name: metric for metric in METRICS}

        def histogram(name: str, buckets: tuple[float, ...]) -> otel_metrics.Histogram:
            return meter.create_histogram(
                name,
                unit=spec[name].unit,
                description=spec[name].description,
                explicit_bucket_boundaries_advisory=list(buckets),
            )

        def counter(name: str) -> otel_metrics.Counter:
            return meter.create_counter(
                name, unit=spec[name].unit, description=spec[name].description
            )

        self._ttft = histogram("gen_ai.server.time_to_first_token", TTFT_BUCKETS)
        self._tpot = histogram("gen_ai.server.time_per_output_token", TPOT_BUCKETS)
        self._duration = histogram("gen_ai.server.request.duration", DURATION_BUCKETS)
        self._tokens = counter("streamkit.stream.tokens")
        self._chunks = counter("streamkit.stream.chunks")
        self._streams = counter("streamkit.streams")
        self._ended = counter("streamkit.sessions.ended")
        self._rejected = counter("streamkit.requests.rejected")
        self._lag = histogram("streamkit.delivery.lag", LAG_BUCKETS)
        self._round_trip = histogram("streamkit.redis.round_trip.duration", LAG_BUCKETS)
        self._retries = counter("streamkit.redis.retries")
        self._stream_apps = list(stream_apps)
        self._observed: list[Any] = []
        for metric in METRICS:
            if metric.kind == "observed_counter":
                make: Callable[..., Any] = meter.create_observable_counter
            elif metric.kind == "gauge":
                make = meter.create_observable_up_down_counter
            else:
                continue
            self._observed.append(
                make(
                    metric.name,
                    callbacks=[self._observer(metric.name)],
                    unit=metric.unit,
                    description=metric.description,
                )
            )
        if self._stream_apps:
            self._observed.append(
                meter.create_observable_up_down_counter(
                    "streamkit.http.open_streams",
                    callbacks=[self._observe_apps],
                    unit="{connection}",
                    description="Event streams (SSE, NDJSON) and WebSockets open now.",
                )
            )
            self._observed.append(
                meter.create_observable_counter(
                    "streamkit.http.streams.ended",
                    callbacks=[self._observe_outcomes],
                    unit="{connection}",
                    description="Event streams (SSE, NDJSON) that ended, by outcome.",
                )
            )
        self.off = False

    # -- the sink the watcher calls ----------------------------------------------------

    def session_created(self, session: StreamSession) -> object:
        extra: Mapping[str, Any] = {}
        if self._attributes is not None:
            extra = _clean(self._attributes(session))
        attributes: dict[str, Any] = dict(extra)
        if self.record_content:
            attributes["streamkit.session.id"] = session.session_id
            if session.user_id is not None:
                attributes["enduser.id"] = session.user_id
        span = self._tracer.start_span(_SESSION_SPAN, kind=SpanKind.INTERNAL, attributes=attributes)
        return _Session(span, extra)

    def session_paused(self, handle: object) -> None:
        assert isinstance(handle, _Session)
        handle.pauses += 1
        handle.span.add_event("streamkit.session.paused")

    def session_resumed(self, handle: object) -> None:
        assert isinstance(handle, _Session)
        handle.span.add_event("streamkit.session.resumed")

    def stream_started(self, handle: object) -> None:
        assert isinstance(handle, _Session)
        handle.span.add_event("streamkit.stream.started")
        handle.stream = self._tracer.start_span(
            _STREAM_SPAN,
            context=trace.set_span_in_context(handle.span),
            kind=SpanKind.INTERNAL,
            attributes=handle.attributes,
        )

    def stream_ended(self, handle: object | None, end: StreamEnd) -> None:
        extra: Mapping[str, Any] = {}
        span: Span | None = None
        if handle is not None:
            assert isinstance(handle, _Session)
            extra = handle.attributes
            span, handle.stream = handle.stream, None
        labels: dict[str, Any] = {**extra, "streamkit.stream.outcome": end.outcome}
        stats = end.stats
        if stats is not None:
            ttft = _number(stats.get("time_to_first_token"))
            tpot = time_per_output_token(end)
            duration = _number(stats.get("duration"))
            if ttft is not None:
                self._ttft.record(ttft, labels)
            if tpot is not None:
                self._tpot.record(tpot, labels)
            tokens = _number(stats.get("tokens"))
            chunks = _number(stats.get("chunks"))
            if tokens:
                self._tokens.add(int(tokens), labels)
            if chunks:
                self._chunks.add(int(chunks), labels)
        else:
            duration = None
        with_error = labels if end.error_type is None else {**labels, "error.type": end.error_type}
        if duration is not None:
            self._duration.record(duration, with_error)
        self._streams.add(1, with_error)
        if span is None:
            return
        attributes: dict[str, Any] = {"streamkit.stream.outcome": end.outcome}
        if stats is not None:
            for key, value in stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    attributes[f"streamkit.stream.{key}"] = value
        span.set_attributes(attributes)
        if end.error_type is not None:
            self._set_error(span, end.error_type, end.error_message)
        span.end()

    def session_ended(self, handle: object | None, end: SessionEnd) -> None:
        labels: dict[str, Any] = {}
        if handle is not None:
            assert isinstance(handle, _Session)
            labels.update(handle.attributes)
        labels["streamkit.session.state"] = end.state
        labels["streamkit.session.end_reason"] = end.reason
        if end.error_type is not None:
            labels["error.type"] = end.error_type
        self._ended.add(1, labels)
        if handle is None:
            return
        assert isinstance(handle, _Session)
        span = handle.span
        span.add_event(
            "streamkit.session.ended",
            {"streamkit.session.state": end.state, "streamkit.session.end_reason": end.reason},
        )
        span.set_attributes(
            {
                "streamkit.session.state": end.state,
                "streamkit.session.end_reason": end.reason,
                "streamkit.session.pauses": handle.pauses,
            }
        )
        if end.error_type is not None:
            self._set_error(span, end.error_type, end.error_message)
        span.end()

    def delivered(self, lag: float) -> None:
        self._lag.record(lag)

    def redis_round_trip(self, seconds: float) -> None:
        self._round_trip.record(seconds)

    def redis_retry(self, error_type: str) -> None:
        self._retries.add(1, {"error.type": error_type})

    def _set_error(self, span: Span, error_type: str, message: str | None) -> None:
        span.set_attribute("error.type", error_type)
        event: dict[str, Any] = {"exception.type": error_type}
        if self.record_content and message is not None:
            event["exception.message"] = message
        span.add_event("exception", event)
        description = f"{error_type}: {message}" if self.record_content and message else error_type
        span.set_status(Status(StatusCode.ERROR, description))

    def on_rejected(self, cause: str, status: int | None, kind: str) -> None:
        if self.off:
            return
        labels: dict[str, Any] = {"error.type": cause, "streamkit.request.kind": kind}
        if status is not None:
            labels["http.response.status_code"] = status
        self._rejected.add(1, labels)

    # -- observable instruments --------------------------------------------------------

    def _observer(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            del options
            if self.off:
                return []
            stats = read_statistics(self.registry)
            if stats is None:
                return []
            if name == "streamkit.sessions":
                return [
                    Observation(count, {"streamkit.session.state": state})
                    for state, count in stats.by_state.items()
                ]
            if name == "streamkit.subscribers.dropped":
                reason = "streamkit.subscriber.drop_reason"
                return [
                    Observation(stats.subscribers_lagged, {reason: "lagged"}),
                    Observation(stats.history_gaps, {reason: "history_gap"}),
                ]
            value = {
                "streamkit.sessions.created": stats.sessions_created,
                "streamkit.sessions.expired": stats.sessions_expired,
                "streamkit.events.appended": stats.events_appended,
                "streamkit.events.delivered": stats.events_delivered,
                "streamkit.heartbeats": stats.heartbeats,
                "streamkit.subscribers": stats.subscribers,
                "streamkit.producers": stats.producers,
                "streamkit.log.retained": stats.bytes_retained,
            }[name]
            return [Observation(value)]

        return observe

    def _observe_apps(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        if self.off:
            return []
        open_now, _ = app_figures(self._stream_apps)
        return [
            Observation(count, {"streamkit.connection.kind": kind})
            for kind, count in open_now.items()
        ]

    def _observe_outcomes(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        if self.off:
            return []
        _, outcomes = app_figures(self._stream_apps)
        return [
            Observation(count, {"streamkit.connection.outcome": outcome})
            for outcome, count in outcomes.items()
        ]


class Instrumentation:
    """A registry's OpenTelemetry instrumentation, made by :func:`instrument`.

    Attributes:
        registry: The instrumented registry.
        record_content: Whether ids and error messages are recorded.
    """

    def __init__(self, recorder: _Recorder) -> None:
        self.registry = recorder.registry
        self.record_content = recorder.record_content
        self._recorder = recorder
        self._watcher = Watcher(recorder.registry, recorder)

    @property
    def live_sessions(self) -> int:
        """Sessions followed now: those with a ``streamkit.session`` span still open."""
        return self._watcher.followed

    # -- control ----------------------------------------------------------------------

    def uninstrument(self) -> None:
        """Stop: unregister the hooks and end the spans still open. Idempotent.

        The spans of sessions still live end now, with ``streamkit.session.state``
        unset; observable instruments report nothing more.
        """
        recorder = self._recorder
        if recorder.off:
            return
        recorder.off = True
        for handle in self._watcher.close():
            assert isinstance(handle, _Session)
            if handle.stream is not None:
                handle.stream.end()
            handle.span.end()

    def wrap(self, app: ASGIApp, *, propagate_context: bool = True) -> ASGIApp:
        """Return ``app`` wrapped in middleware for the request-side figures.

        The middleware counts requests answered with an error
        (``streamkit.requests.rejected``, by cause). With ``propagate_context`` it also
        makes a request carrying a W3C ``traceparent`` header the parent of what the
        request does, so a session created by that request joins the caller's trace;
        a request that already has a current span (an OpenTelemetry ASGI middleware
        outside this one) keeps it.

        Args:
            app: The ASGI app (a :class:`~streamkit.asgi.StreamApp`, or any other).
            propagate_context: Extract the caller's trace context from the headers.

        Returns:
            An ASGI app to serve instead of ``app``.

        Raises:
            ValidationError: ``app`` is not callable.
        """
        if not callable(app):
            raise ValidationError(f"app must be an ASGI app, got {type_name(app)}", field="app")
        check_bool("propagate_context", propagate_context)
        return RequestWatcher(
            app, self._recorder.on_rejected, _enter_context if propagate_context else None
        )


def instrument(
    registry: SessionRegistry,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: otel_metrics.MeterProvider | None = None,
    record_content: bool = False,
    attributes: SessionAttributes | None = None,
    stream_apps: Iterable[Any] = (),
) -> Instrumentation:
    """Trace and measure ``registry``'s sessions with OpenTelemetry.

    From now on each session created by the registry gets a ``streamkit.session`` span
    (a child of the span current where it was created: a traced request's), each of its
    streams a ``streamkit.stream`` span, and the metrics listed in
    docs/observability.md are recorded. Call :meth:`Instrumentation.uninstrument` to
    stop.

    Args:
        registry: The registry to instrument (entered or not).
        tracer_provider: Where spans go; the global provider by default.
        meter_provider: Where metrics go; the global provider by default.
        record_content: Also record session ids (``streamkit.session.id``), owners
            (``enduser.id``) and error messages. Off by default: ids are capabilities
            and personal data, and error messages may quote a user's input.
        attributes: ``attributes(session)`` returns extra attributes for the session's
            spans and its stream and session metrics (low-cardinality values only).
        stream_apps: :class:`~streamkit.asgi.StreamApp` objects whose open event
            streams and WebSockets ``streamkit.http.open_streams`` counts.

    Returns:
        The handle to stop the instrumentation and to wrap ASGI apps.

    Raises:
        ValidationError: ``registry`` is not a SessionRegistry, ``attributes`` is not
            callable, a stream app has no ``statistics()``, or ``record_content`` is not
            a bool.
    """
    if not isinstance(registry, SessionRegistry):
        raise ValidationError(
            f"registry must be a SessionRegistry, got {type_name(registry)}", field="registry"
        )
    check_bool("record_content", record_content)
    if attributes is not None and not callable(attributes):
        raise ValidationError(
            f"attributes must be callable, got {type_name(attributes)}", field="attributes"
        )
    apps = list(stream_apps)
    for app in apps:
        if not callable(getattr(app, "statistics", None)):
            raise ValidationError(
                f"stream_apps must hold StreamApp objects, got {type_name(app)}",
                field="stream_apps",
            )
    return Instrumentation(
        _Recorder(
            registry,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            record_content=record_content,
            attributes=attributes,
            stream_apps=apps,
        )
    )


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the attributes OpenTelemetry can carry (str, bool, int, float values)."""
    if not isinstance(values, Mapping):
        raise ValidationError(
            f"attributes(session) must return a mapping, got {type_name(values)}",
            field="attributes",
        )
    return {str(key): value for key, value in values.items() if isinstance(value, _ATTRIBUTE_TYPES)}


def _enter_context(scope: Scope) -> Callable[[], None] | None:
    """Attach the trace context of a request's ``traceparent`` header, if any."""
    headers = scope.get("headers") or ()
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in {b"traceparent", b"tracestate", b"baggage"}:
            carrier[name.decode("latin-1")] = value.decode("latin-1")
    if "traceparent" not in carrier or trace.get_current_span().get_span_context().is_valid:
        return None
    token = otel_context.attach(propagate.extract(carrier))

    def leave() -> None:
        otel_context.detach(token)

    return leave
