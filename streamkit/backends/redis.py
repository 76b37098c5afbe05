"""Redis Streams storage: session logs that several worker processes share.

Rules: one Redis Stream per session, keys hash-tagged on the session id
(``{prefix}:{<sid>}:log`` and ``{prefix}:{<sid>}:meta``) so that a session's keys share
one Redis Cluster slot. Appends are one Lua script (seq assignment, closed check,
``XADD`` with the explicit id ``<seq>-0``, exact ``MAXLEN`` trimming). Each cursor
replays with ``XRANGE`` and follows with its own ``XREAD BLOCK`` loop on a pooled
connection. redis-py errors become :class:`~streamkit.BackendError` in
:func:`_translate`. redis-py's client is asyncio-only: under Trio this raises
:class:`~streamkit.BackendError`.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, Self

import sniffio

try:
    import redis.asyncio as aredis
    from redis.exceptions import RedisError, ResponseError, WatchError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "streamkit.backends.redis needs the redis package: pip install 'streamkit[redis]'"
    ) from exc

from .._errors import (
    BackendError,
    ClosedError,
    HistoryGap,
    PayloadTooLarge,
    SessionLimitExceeded,
    SessionNotFound,
    SubscriberLagged,
    ValidationError,
)
from .._events import StreamEvent, with_seq
from .._session import SessionState, StreamSession
from .._validate import check_id, check_int, type_name
from ..abc import Backend, EventCursor, EventLog, LogStatistics, SessionStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence
    from types import TracebackType

    from .._config import RegistryConfig, SlowConsumerPolicy

__all__ = ["RedisBackend", "RedisEventLog", "RedisSessionStore"]

# KEYS: stream, meta. ARGV: event JSON, final flag, maxlen.
_APPEND = """
if redis.call('HGET', KEYS[2], 'closed') then return redis.error_reply('STREAMKIT_CLOSED') end
local seq = redis.call('HINCRBY', KEYS[2], 'last', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], seq .. '-0', 'e', ARGV[1])
if ARGV[2] == '1' then redis.call('HSET', KEYS[2], 'closed', '1') end
return seq
"""

# Closes the log and wakes followers with a marker entry <last>-1 (never an event).
_CLOSE = """
if redis.call('HGET', KEYS[2], 'closed') then return 0 end
redis.call('HSET', KEYS[2], 'closed', '1')
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
redis.call('XADD', KEYS[1], last .. '-1', 'c', '1')
return 1
"""

_BATCH = 256
_BLOCK_MS = 1000


@contextlib.contextmanager
def _translate(session_id: str | None = None) -> Iterator[None]:
    """Turn redis-py failures into :class:`~streamkit.BackendError`."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise BackendError(f"redis failed: {exc}", session_id=session_id) from exc


def _require_asyncio() -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    if library != "asyncio":
        raise BackendError(f"the Redis backend runs on asyncio only (redis-py), not on {library}")


def _seq_of(entry_id: bytes | str) -> tuple[int, bool]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, sub = text.partition("-")
    return int(ms), sub != "0"


def _decode(fields: dict[bytes, bytes], seq: int, session_id: str) -> StreamEvent:
    return with_seq(StreamEvent.from_json(fields[b"e"]), seq, session_id)


class _RedisCursor(EventCursor):
    __slots__ = ("_allow", "_buf", "_done", "_log", "_pos", "_started")

    def __init__(self, log: RedisEventLog, after: int) -> None:
        self._log = log
        self._pos = after
        self._buf: deque[StreamEvent] = deque()
        self._done = False
        self._started = False
        # As in the in-memory log: the backlog a reader may have, at least max_lag and
        # never less than the backlog it started with or last caught up to.
        self._allow = log._max_lag

    @property
    def position(self) -> int:
        return self._pos

    async def __anext__(self) -> StreamEvent:
        if not self._buf and not self._done:
            with _translate(self._log.session_id):
                await self._fill()
        if not self._buf:
            self._done = True
            raise StopAsyncIteration
        event = self._buf.popleft()
        self._pos = event.seq or self._pos
        self._log._delivered += 1
        if event.is_final:
            self._done = True
        return event

    async def _fill(self) -> None:
        log = self._log
        while not self._buf and not self._done:
            pipe = log._client.pipeline(transaction=False)
            pipe.xrange(log._stream, f"{self._pos + 1}-0", "+", count=_BATCH)
            pipe.hmget(log._meta, "last", "closed")
            pipe.xrange(log._stream, "-", "+", count=1)
            entries, (last_raw, closed_raw), first_entries = await pipe.execute()
            last = int(last_raw or 0)
            closed = closed_raw is not None
            oldest = last + 1
            if first_entries:
                seq, marker = _seq_of(first_entries[0][0])
                oldest = last + 1 if marker else seq
            log._observe(last, oldest, closed)
            if not self._started:
                self._started = True
                log._readers += 1
                if self._pos < oldest - 1:
                    self._finish()
                    raise HistoryGap(
                        f"events after {self._pos} are gone; the oldest retained is {oldest}",
                        after=self._pos,
                        oldest_seq=oldest,
                        session_id=log.session_id,
                    )
                self._allow = max(log._max_lag, last - self._pos)
            if not closed and log._policy == "disconnect":
                backlog = last - self._pos
                if backlog > self._allow:
                    raise self._lagged(
                        f"the reader fell {backlog} events behind (allowed {self._allow})",
                        oldest,
                    )
                self._allow = max(log._max_lag, backlog)
            if self._pos < oldest - 1:
                raise self._lagged("unread events left the retention window", oldest)
            for entry_id, fields in entries:
                seq, marker = _seq_of(entry_id)
                if marker:
                    self._finish()
                    break
                self._buf.append(_decode(fields, seq, log.session_id))
            if self._buf:
                return
            if closed:
                self._finish()
                return
            await log._client.xread({log._stream: f"{self._pos}-0"}, count=1, block=_BLOCK_MS)

    def _lagged(self, why: str, oldest: int) -> SubscriberLagged:
        self._log._lagged_count += 1
        self._finish()
        return SubscriberLagged(
            f"reader disconnected: {why}; resume after {self._pos}",
            after=self._pos,
            oldest_seq=oldest,
            session_id=self._log.session_id,
        )

    def _finish(self) -> None:
        if not self._done and self._started:
            self._log._readers -= 1
        self._done = True

    async def aclose(self) -> None:
        self._buf.clear()
        self._finish()


class RedisEventLog(EventLog):
    """One session's log in a Redis Stream, shared by every process using the same keys.

    Properties (``last_seq``, ``oldest_seq``, ``is_closed``) reflect what this process
    last saw in Redis. :meth:`retained` returns a local copy of the events appended
    through this instance (bounded to ``history_max_events``), not the Redis contents;
    read the log with :meth:`read` for the shared history. ``history_max_bytes`` is not
    enforced (Redis trims by count only). The ``block`` slow-consumer policy does not
    make producers wait across processes; readers are never disconnected under it.

    Args:
        client: A ``redis.asyncio.Redis`` client.
        session_id: The session the log belongs to.
        prefix: The key prefix.
        history_max_events: Events kept in the stream (exact ``MAXLEN`` trimming).
        max_event_bytes: The largest event JSON accepted, in bytes.
        slow_consumer_policy: ``"disconnect"`` or ``"block"``.
        max_lag: How far a reader may fall behind the head (``disconnect`` policy).

    Raises:
        ValidationError: a bad argument.
    """

    __slots__ = (
        "_client",
        "_closed",
        "_delivered",
        "_lagged_count",
        "_last",
        "_local",
        "_max_event_bytes",
        "_max_events",
        "_max_lag",
        "_meta",
        "_oldest",
        "_policy",
        "_readers",
        "_session_id",
        "_stream",
    )

    def __init__(
        self,
        client: aredis.Redis,
        session_id: str,
        *,
        prefix: str = "streamkit",
        history_max_events: int = 10_000,
        max_event_bytes: int = 1024 * 1024,
        slow_consumer_policy: SlowConsumerPolicy = "disconnect",
        max_lag: int = 1000,
    ) -> None:
        self._session_id = check_id("session_id", session_id)
        self._max_events = check_int("history_max_events", history_max_events, minimum=1)
        self._max_event_bytes = check_int("max_event_bytes", max_event_bytes, minimum=1)
        self._max_lag = check_int("max_lag", max_lag, minimum=1)
        if slow_consumer_policy not in ("disconnect", "block"):
            raise ValidationError(
                "slow_consumer_policy must be 'disconnect' or 'block', "
                f"got {slow_consumer_policy!r}",
                field="slow_consumer_policy",
            )
        self._policy: SlowConsumerPolicy = slow_consumer_policy
        self._client = client
        self._stream = f"{prefix}:{{{self._session_id}}}:log"
        self._meta = f"{prefix}:{{{self._session_id}}}:meta"
        self._last = 0
        self._oldest = 1
        self._closed = False
        self._local: deque[StreamEvent] = deque(maxlen=self._max_events)
        self._readers = 0
        self._delivered = 0
        self._lagged_count = 0

    async def refresh(self) -> None:
        """Load ``last_seq``, ``oldest_seq`` and ``is_closed`` from Redis.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        _require_asyncio()
        with _translate(self._session_id):
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(self._meta, "last", "closed")
            pipe.xrange(self._stream, "-", "+", count=1)
            (last_raw, closed_raw), first = await pipe.execute()
        last = int(last_raw or 0)
        oldest = last + 1
        if first:
            seq, marker = _seq_of(first[0][0])
            oldest = last + 1 if marker else seq
        self._observe(last, oldest, closed_raw is not None)

    def _observe(self, last: int, oldest: int, closed: bool) -> None:
        if last >= self._last:
            self._last = last
            self._oldest = oldest
        self._closed = self._closed or closed

    @property
    def session_id(self) -> str:
        """The session this log belongs to."""
        return self._session_id

    @property
    def last_seq(self) -> int:
        """The newest ``seq`` this process has seen."""
        return self._last

    @property
    def oldest_seq(self) -> int:
        """The oldest retained ``seq`` as this process last saw it."""
        return self._oldest

    @property
    def is_closed(self) -> bool:
        """Whether this process has seen the log closed."""
        return self._closed

    async def append(self, event: StreamEvent) -> StreamEvent:
        """Store ``event`` as the next one in Redis and return the stored copy.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
            ClosedError: the log is closed.
            PayloadTooLarge: the event's JSON is larger than ``max_event_bytes``.
            ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`.
        """
        if not isinstance(event, StreamEvent):
            raise ValidationError(
                f"event must be a StreamEvent, got {type_name(event)}", field="event"
            )
        _require_asyncio()
        if self._closed:
            raise ClosedError("the log is closed", session_id=self._session_id)
        bare = with_seq(event, 0, None) if event.seq is not None or event.session_id else event
        text = bare.to_json()
        # The stored copy's JSON, with its seq and session id filled in.
        size = len(text.encode()) + len(self._session_id) + len(str(self._last + 1)) + 1
        if size > self._max_event_bytes:
            raise PayloadTooLarge(
                f"the event is {size} bytes, over the limit of {self._max_event_bytes}",
                field="event",
                session_id=self._session_id,
            )
        try:
            with _translate(self._session_id):
                seq = await self._client.eval(
                    _APPEND,
                    2,
                    self._stream,
                    self._meta,
                    text,
                    "1" if event.is_final else "0",
                    str(self._max_events),
                )
        except BackendError as exc:
            cause = exc.__cause__
            if isinstance(cause, ResponseError) and "STREAMKIT_CLOSED" in str(cause):
                self._closed = True
                raise ClosedError("the log is closed", session_id=self._session_id) from None
            raise
        seq = int(seq)
        stored = with_seq(event, seq, self._session_id)
        self._local.append(stored)
        self._last = max(self._last, seq)
        self._oldest = max(1, self._last - self._max_events + 1)
        if event.is_final:
            self._closed = True
        return stored

    def read(self, after: int = 0) -> EventCursor:
        """Return a cursor over the events with ``seq > after``, replayed then live.

        Raises:
            ValidationError: ``after`` is not an ``int >= 0``.
        """
        if type(after) is not int or after < 0:
            raise ValidationError(f"after must be an int >= 0, got {after!r}", field="after")
        return _RedisCursor(self, after)

    def retained(self) -> Sequence[StreamEvent]:
        """Return the events appended through this instance that Redis still retains."""
        return tuple(e for e in self._local if (e.seq or 0) >= self._oldest)

    def statistics(self) -> LogStatistics:
        """Return a snapshot of this process's view of the log."""
        retained = self.retained()
        return LogStatistics(
            session_id=self._session_id,
            last_seq=self._last,
            oldest_seq=self._oldest,
            retained_events=len(retained),
            retained_bytes=sum(len(e.to_json()) for e in retained),
            readers=self._readers,
            events_delivered=self._delivered,
            readers_lagged=self._lagged_count,
            producer_waits=0,
            closed=self._closed,
        )

    async def aclose(self) -> None:
        """Close the log for writers in every process; wake followers. Idempotent.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        if self._closed:
            return
        _require_asyncio()
        with _translate(self._session_id):
            await self._client.eval(_CLOSE, 2, self._stream, self._meta)
        self._closed = True

    async def delete(self) -> None:
        """Delete the log's keys from Redis.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        _require_asyncio()
        with _translate(self._session_id):
            await self._client.delete(self._stream, self._meta)


# KEYS: sessions hash, the user's set (any same-slot key when anonymous).
# ARGV: sid, record JSON, max_sessions, max per user ('' for none), '1' if the user counts.
_ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return redis.error_reply('STREAMKIT_DUP') end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.error_reply('STREAMKIT_MAX')
end
if ARGV[5] == '1' then
  if ARGV[4] ~= '' and redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then
    return redis.error_reply('STREAMKIT_USER')
  end
  redis.call('SADD', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_WATCH_TRIES = 100


class RedisSessionStore(SessionStore):
    """Session records in Redis, shared by every process using the same prefix.

    Records are JSON values in one hash (``{prefix}:sessions``) with a set of session
    ids per user (``{prefix}:user:<user_id>``); all store keys share the hash tag
    ``{prefix}`` so the scripts work on Redis Cluster (the store lives on one slot).
    :meth:`add` is one Lua script, so the count bounds are exact across processes;
    :meth:`set_state` and :meth:`remove` are optimistic ``WATCH``/``MULTI``
    transactions on the records hash (retried on conflict).

    Args:
        client: A ``redis.asyncio.Redis`` client.
        prefix: The key prefix.
    """

    __slots__ = ("_client", "_prefix", "_sessions")

    def __init__(self, client: aredis.Redis, *, prefix: str = "streamkit") -> None:
        self._client = client
        self._prefix = prefix
        self._sessions = f"{{{prefix}}}:sessions"

    def _user_key(self, user_id: str | None) -> str:
        return f"{{{self._prefix}}}:user:{user_id or ''}"

    async def add(
        self,
        session: StreamSession,
        *,
        max_sessions: int,
        max_sessions_per_user: int | None,
    ) -> None:
        """Store a new record unless a bound is reached, atomically across processes.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
            SessionLimitExceeded: a count bound is reached.
            ValidationError: the id is already in use.
        """
        _require_asyncio()
        record = session.to_json(include_events=False)
        try:
            with _translate(session.session_id):
                await self._client.eval(
                    _ADD,
                    2,
                    self._sessions,
                    self._user_key(session.user_id),
                    session.session_id,
                    record,
                    str(max_sessions),
                    "" if max_sessions_per_user is None else str(max_sessions_per_user),
                    "0" if session.user_id is None else "1",
                )
        except BackendError as exc:
            reason = str(exc.__cause__) if isinstance(exc.__cause__, ResponseError) else ""
            if "STREAMKIT_DUP" in reason:
                raise ValidationError("session id already in use", field="session_id") from None
            if "STREAMKIT_MAX" in reason:
                raise SessionLimitExceeded(
                    f"the registry holds its maximum of {max_sessions} sessions",
                    limit=max_sessions,
                ) from None
            if "STREAMKIT_USER" in reason:
                limit = max_sessions_per_user or 0
                raise SessionLimitExceeded(
                    f"this user holds the maximum of {limit} sessions", limit=limit
                ) from None
            raise

    async def get(self, session_id: str) -> StreamSession | None:
        """Return the record of ``session_id``, or ``None``.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        _require_asyncio()
        with _translate(session_id):
            raw = await self._client.hget(self._sessions, session_id)
        return None if raw is None else StreamSession.from_json(raw)

    async def _watched(
        self, session_id: str, change: Callable[[Any, StreamSession | None], Awaitable[Any]]
    ) -> Any:
        _require_asyncio()
        with _translate(session_id):
            for _ in range(_WATCH_TRIES):
                pipe: Any
                async with self._client.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(self._sessions)
                        raw = await pipe.hget(self._sessions, session_id)
                        current = None if raw is None else StreamSession.from_json(raw)
                        pipe.multi()
                        result = await change(pipe, current)
                        await pipe.execute()
                    except WatchError:
                        continue
                    return result
        raise BackendError("too many conflicting updates", session_id=session_id)

    async def set_state(
        self, session_id: str, state: SessionState, *, now: float
    ) -> tuple[StreamSession, StreamSession]:
        """Move a session to ``state`` if the table allows it; return (before, after).

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
            SessionNotFound: there is no such record.
            InvalidTransition: the move is not allowed.
        """

        async def change(pipe: Any, current: StreamSession | None) -> Any:
            if current is None:
                raise SessionNotFound("no such session", session_id=session_id)
            after = current.transition(state, now=now)
            pipe.hset(self._sessions, session_id, after.to_json(include_events=False))
            return current, after

        before, after = await self._watched(session_id, change)
        return before, after

    async def remove(self, session_id: str) -> StreamSession | None:
        """Delete a record and return it (``None`` if there was none).

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """

        async def change(pipe: Any, current: StreamSession | None) -> Any:
            if current is not None:
                pipe.hdel(self._sessions, session_id)
                if current.user_id is not None:
                    pipe.srem(self._user_key(current.user_id), session_id)
            return current

        removed: StreamSession | None = await self._watched(session_id, change)
        return removed

    async def list(self, user_id: str | None = None) -> Sequence[StreamSession]:
        """Return the records of ``user_id``, or all of them.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        _require_asyncio()
        raws: list[Any]
        with _translate():
            if user_id is None:
                raws = list((await self._client.hgetall(self._sessions)).values())
            else:
                ids = sorted(await self._client.smembers(self._user_key(user_id)))
                raws = await self._client.hmget(self._sessions, ids) if ids else []
        return [StreamSession.from_json(raw) for raw in raws if raw is not None]

    async def count(self) -> int:
        """Return how many records the store holds.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        _require_asyncio()
        with _translate():
            return int(await self._client.hlen(self._sessions))


class RedisBackend(Backend):
    """Sessions and logs in Redis, so that several worker processes share them.

    Use it as an async context manager (the registry enters it): entering connects and
    PINGs; :meth:`aclose` closes the connection pool (only if this backend made it).

    Args:
        url: The Redis URL.
        prefix: The key prefix; processes sharing sessions use the same one.
        client: A ``redis.asyncio.Redis`` client to use instead of one made from ``url``.
    """

    __slots__ = ("_client", "_owned", "_prefix", "_store")

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "streamkit",
        client: aredis.Redis | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValidationError(
                "prefix must be a non-empty string without braces", field="prefix"
            )
        if client is None:
            if not isinstance(url, str):
                raise ValidationError(f"url must be a str, got {type_name(url)}", field="url")
            try:
                client = aredis.Redis.from_url(url)
            except ValueError as exc:
                raise ValidationError(f"bad Redis URL: {exc}", field="url") from exc
            self._owned = True
        else:
            self._owned = False
        self._client = client
        self._prefix = prefix
        self._store = RedisSessionStore(client, prefix=prefix)

    @property
    def store(self) -> RedisSessionStore:
        """The store of session records."""
        return self._store

    async def __aenter__(self) -> Self:
        """Connect and PING.

        Raises:
            BackendError: Redis is unreachable, or the event loop is not asyncio.
        """
        _require_asyncio()
        with _translate():
            await self._client.ping()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def make_log(self, session_id: str, config: RegistryConfig) -> RedisEventLog:
        """Return the log of ``session_id`` (new or made by another process), synced.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        log = RedisEventLog(
            self._client,
            session_id,
            prefix=self._prefix,
            history_max_events=config.history_max_events,
            max_event_bytes=config.max_event_bytes,
            slow_consumer_policy=config.slow_consumer_policy,
            max_lag=config.max_lag,
        )
        await log.refresh()
        return log

    async def delete_log(self, session_id: str) -> None:
        """Delete the log's keys.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        stream = f"{self._prefix}:{{{session_id}}}"
        _require_asyncio()
        with _translate(session_id):
            await self._client.delete(f"{stream}:log", f"{stream}:meta")

    async def aclose(self) -> None:
        """Close the connection pool if this backend made it. Idempotent."""
        if self._owned:
            with _translate():
                await self._client.aclose()
