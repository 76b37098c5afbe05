"""The statistics value types: of a stream, of a session, of a registry."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._parts import Usage
    from ._session import SessionState
    from ._validate import JSONValue
    from .abc import LogStatistics

__all__ = ["RegistryStatistics", "SessionStatistics", "StreamStats"]


def _round(value: float) -> float:
    return round(value, 6)


def figures_data(  # noqa: PLR0917 - the nine figures, in order, as _figures gives them
    tokens: int,
    chunks: int,
    characters: int,
    heartbeats: int,
    time_to_first_token: float | None,
    mean_inter_token_latency: float | None,
    max_inter_token_latency: float | None,
    tokens_per_second: float,
    duration: float,
) -> dict[str, JSONValue]:
    """The JSON form of a stream's text figures: :meth:`StreamStats.to_dict` without parts.

    A function of its own so that a stream's final event can carry its figures without
    making a :class:`StreamStats` first.
    """
    return {
        "tokens": tokens,
        "chunks": chunks,
        "characters": characters,
        "heartbeats": heartbeats,
        # _maybe_round and _round, inline: this runs at the end of every stream.
        "time_to_first_token": None
        if time_to_first_token is None
        else round(time_to_first_token, 6),
        "mean_inter_token_latency": None
        if mean_inter_token_latency is None
        else round(mean_inter_token_latency, 6),
        "max_inter_token_latency": None
        if max_inter_token_latency is None
        else round(max_inter_token_latency, 6),
        "tokens_per_second": round(tokens_per_second, 6),
        "duration": round(duration, 6),
    }


@attrs.frozen(kw_only=True)
class StreamStats:
    """Figures about one stream, live while it runs and final once it has ended.

    Times are in seconds on anyio's clock, measured from the ``start`` event.

    Attributes:
        tokens: Pieces of text received from the source (empty pieces not counted).
        chunks: ``token`` events emitted.
        characters: Characters emitted in ``token`` events.
        heartbeats: ``heartbeat`` events emitted.
        time_to_first_token: From the start to the first ``token`` event, or ``None``
            before there is one.
        mean_inter_token_latency: Mean time between consecutive ``token`` events, or
            ``None`` before there are two.
        max_inter_token_latency: Longest time between consecutive ``token`` events, or
            ``None`` before there are two.
        tokens_per_second: ``tokens`` divided by ``duration`` (``0.0`` at first).
        duration: From the start to now, or to the final event once the stream ended.
        reasoning_tokens: Reasoning pieces received (``tokens`` counts text only).
        tool_calls: Tool calls started.
        usage: The sum of the usage parts the model reported, or ``None``.
    """

    tokens: int = 0
    chunks: int = 0
    characters: int = 0
    heartbeats: int = 0
    time_to_first_token: float | None = None
    mean_inter_token_latency: float | None = None
    max_inter_token_latency: float | None = None
    tokens_per_second: float = 0.0
    duration: float = 0.0
    reasoning_tokens: int = 0
    tool_calls: int = 0
    usage: Usage | None = None

    def to_dict(self) -> dict[str, JSONValue]:
        """Return the figures as JSON-ready data (floats rounded to microseconds).

        ``reasoning_tokens``, ``tool_calls`` and ``usage`` are only present when a
        stream carried any, so that a text stream's figures keep their shape.
        """
        data = figures_data(
            self.tokens,
            self.chunks,
            self.characters,
            self.heartbeats,
            self.time_to_first_token,
            self.mean_inter_token_latency,
            self.max_inter_token_latency,
            self.tokens_per_second,
            self.duration,
        )
        if self.reasoning_tokens or self.tool_calls or self.usage is not None:
            data["reasoning_tokens"] = self.reasoning_tokens
            data["tool_calls"] = self.tool_calls
            usage = self.usage
            data["usage"] = None if usage is None else MappingProxyType(usage.to_dict())
        return data


def _maybe_round(value: float | None) -> float | None:
    return None if value is None else _round(value)


@attrs.frozen(kw_only=True)
class SessionStatistics:
    """A snapshot of one session's figures, from :meth:`SessionRegistry.session_statistics`.

    Attributes:
        session_id: The session.
        status: Its state.
        subscribers: Subscriptions reading it now.
        log: The counters of its event log.
        stream: The statistics of its producer's stream, if it has had one.
    """

    session_id: str
    status: SessionState
    subscribers: int
    log: LogStatistics
    stream: StreamStats | None

    @property
    def usage(self) -> Usage | None:
        """The usage its producer's model reported (summed), or ``None``."""
        return None if self.stream is None else self.stream.usage


@attrs.frozen(kw_only=True)
class RegistryStatistics:
    """A snapshot of a registry's figures, from :meth:`SessionRegistry.statistics`.

    Attributes:
        sessions: Sessions held now (live and ended-but-retained).
        by_state: How many of them are in each state.
        subscribers: Subscriptions reading now, over all sessions.
        producers: Producers running now.
        sessions_created: Sessions created since the registry started.
        sessions_removed: Sessions removed (closed, or swept after they ended).
        sessions_expired: Sessions the sweeper expired for idleness.
        events_appended: Events appended to logs through this registry.
        events_delivered: Events handed to subscribers.
        bytes_retained: Bytes retained by the logs of sessions held now.
        sweeps: Sweeper passes.
        heartbeats: Heartbeat events sent by the registry.
        mean_time_to_first_token: Mean time to first token of finished streams, seconds.
        max_time_to_first_token: The largest such time, seconds.
        subscribers_lagged: Subscriptions ended with :class:`~streamkit.SubscriberLagged`:
            they fell more than ``max_lag`` events behind, or their next event left the
            retention window, while they read.
        history_gaps: Subscriptions refused with :class:`~streamkit.HistoryGap`: the
            resume point they asked for had already left the retention window.
    """

    sessions: int
    by_state: MappingProxyType[str, int]
    subscribers: int
    producers: int
    sessions_created: int
    sessions_removed: int
    sessions_expired: int
    events_appended: int
    events_delivered: int
    bytes_retained: int
    sweeps: int
    heartbeats: int
    mean_time_to_first_token: float | None
    max_time_to_first_token: float | None
    subscribers_lagged: int = 0
    history_gaps: int = 0
