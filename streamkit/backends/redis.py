"""Redis Streams storage: session logs and records that several worker processes share.

Rules of this module:

* **Keys.** One Redis Stream per session, its keys hash-tagged on the session id
  (``{prefix}:{<sid>}:log`` and ``{prefix}:{<sid>}:meta``) so that a session's keys
  share one Redis Cluster slot. The store's keys (records, per-user sets, leases, the
  removal schedule) share the slot of ``{<prefix>}``.
* **Appends** are one Lua script: closed check, seq assignment, ``XADD`` with the
  explicit id ``<seq>-0``, trimming to ``history_max_events`` *and*
  ``history_max_bytes``. Each log instance is a writer with an id and a counter; the
  script remembers the last counter of each writer, so a retry after a lost reply
  returns the seq already stored instead of appending twice.
* **Retries.** A lost connection (or a server still loading its data) is retried with
  exponential backoff (20 ms doubling to 1 s) for at most ``retry_for`` seconds, then
  becomes :class:`~streamkit.BackendError`. Every other redis-py failure becomes
  :class:`~streamkit.BackendError` at once, chained.
* **One blocking reader per backend.** An entered :class:`RedisBackend` runs one
  follower task doing ``XREAD BLOCK`` over every stream that has waiting cursors, and
  hands each batch (decoded once) to all of them. Cursors of logs made without an
  entered backend follow with their own ``XREAD BLOCK``.
* **Leases.** Each live session is owned by the backend (worker) that created it: the
  record is added together with a lease key (``SET PX``) holding the worker's token,
  renewed for all its sessions by one script call; a session whose lease expired is
  claimed by exactly one worker (``ZREM`` in the same script as the expiry check).
* redis-py's client is asyncio-only: under Trio every call raises
  :class:`~streamkit.BackendError`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import anyio

try:
    import redis.asyncio as aredis
    import sniffio
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, ResponseError, WatchError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"streamkit.backends.redis needs {exc.name or 'redis'}, which is not installed: "
        "install 'streamkit[redis]' (pip install 'streamkit[redis]')"
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
from .._events import StreamEvent, make_event, with_seq
from .._session import SessionState, StreamSession
from .._validate import check_choice, check_id, check_int, check_number, type_name
from ..abc import Backend, EventCursor, EventLog, LogStatistics, SessionStore

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from .._config import RegistryConfig, SlowConsumerPolicy

__all__ = ["RedisBackend", "RedisEventLog", "RedisSessionStore"]

logger = logging.getLogger("streamkit.redis")

_T = TypeVar("_T")

# KEYS: stream, meta. ARGV: event JSON, final flag, max events, max bytes, writer, counter.
_APPEND: Final = """
local w = 'w:' .. ARGV[5]
local prev = redis.call('HGET', KEYS[2], w)
if prev then
  local c, s = string.match(prev, '^(%d+):(%d+)$')
  if c == ARGV[6] then return tonumber(s) end
end
if redis.call('HGET', KEYS[2], 'closed') then return redis.error_reply('STREAMKIT_CLOSED') end
local seq = redis.call('HINCRBY', KEYS[2], 'last', 1)
redis.call('XADD', KEYS[1], seq .. '-0', 'e', ARGV[1])
local bytes = redis.call('HINCRBY', KEYS[2], 'bytes', #ARGV[1])
local n = redis.call('XLEN', KEYS[1])
local maxn, maxb = tonumber(ARGV[3]), tonumber(ARGV[4])
local trimmed = false
while n > 1 and (n > maxn or bytes > maxb) do
  trimmed = true
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  local size = 0
  if first[2][1] == 'e' then size = #first[2][2] end
  redis.call('XDEL', KEYS[1], first[1])
  bytes = redis.call('HINCRBY', KEYS[2], 'bytes', -size)
  n = n - 1
end
redis.call('HSET', KEYS[2], w, ARGV[6] .. ':' .. seq)
if ARGV[2] == '1' then redis.call('HSET', KEYS[2], 'closed', '1') end
if not trimmed then return seq end
return {seq, redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]}
"""

# Closes the log and wakes followers with a marker entry <last>-1 (never an event).
_CLOSE: Final = """
if redis.call('HGET', KEYS[2], 'closed') then return 0 end
redis.call('HSET', KEYS[2], 'closed', '1')
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
redis.call('XADD', KEYS[1], last .. '-1', 'c', '1')
return 1
"""

_BATCH: Final = 256
_BLOCK_MS: Final = 1000
_FIRST_DELAY: Final = 0.02
_MAX_DELAY: Final = 1.0
_RETRYABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError)


@contextlib.contextmanager
def _translate(session_id: str | None = None) -> Iterator[None]:
    """Turn redis-py failures into :class:`~streamkit.BackendError`."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise BackendError(f"redis failed: {exc}", session_id=session_id) from exc


async def _call(
    fn: Callable[[], Awaitable[_T]], retry_for: float, session_id: str | None = None
) -> _T:
    """Run ``fn``, retrying lost connections with backoff for at most ``retry_for`` s.

    Raises:
        BackendError: Redis failed, or stayed unreachable for ``retry_for`` seconds.
    """
    delay = _FIRST_DELAY
    deadline = anyio.current_time() + retry_for
    while True:
        try:
            return await fn()
        except _RETRYABLE as exc:
            logger.debug("streamkit: redis call failed (%s); retrying in %.2f s", exc, delay)
            if anyio.current_time() + delay > deadline:
                raise BackendError(
                    f"redis unreachable (gave up after {retry_for:g} s): {exc}",
                    session_id=session_id,
                ) from exc
        except RedisError as exc:
            raise BackendError(f"redis failed: {exc}", session_id=session_id) from exc
        await anyio.sleep(delay)
        delay = min(delay * 2, _MAX_DELAY)


def _is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def _require_asyncio() -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    if library != "asyncio":
        raise BackendError(f"the Redis backend runs on asyncio only (redis-py), not on {library}")


def _key_of(entry_id: bytes | str) -> int:
    """Return the order key of a stream entry.

    ``2 * seq`` for an event, ``2 * last + 1`` for the close marker ``<last>-1``.
    """
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, sub = text.partition("-")
    return 2 * int(ms) + (sub != "0")


def _decode(fields: dict[bytes, bytes], seq: int, session_id: str) -> StreamEvent:
    return with_seq(StreamEvent.from_json(fields[b"e"]), seq, session_id)


#: One entry as cursors see it: its order key and the event (``None`` for the marker).
_Item = tuple[int, StreamEvent | None]


def _items(entries: Sequence[Any], session_id: str) -> list[_Item]:
    out: list[_Item] = []
    for entry_id, fields in entries:
        key = _key_of(entry_id)
        out.append((key, None if key & 1 else _decode(fields, key >> 1, session_id)))
    return out


class _Watch:
    """The follower's state for one stream: waiting cursors and the latest entries."""

    __slots__ = ("active", "changed", "idle", "items", "last", "session_id", "waiters")

    def __init__(self, session_id: str, last: int) -> None:
        self.session_id = session_id
        self.last = last  # the order key (see _key_of) of the newest entry known
        self.items: deque[_Item] = deque(maxlen=4 * _BATCH)
        self.changed = anyio.Event()
        self.waiters = 0
        self.active = False  # whether the XREAD in flight includes this stream
        self.idle = 0


class _Follower:
    """One ``XREAD BLOCK`` loop for every cursor of one backend.

    A cursor that has caught up calls :meth:`wait`; the loop reads all streams that
    have waiting cursors at once (plus a private wake-up stream, so that a new stream
    joins without waiting for the block to time out), decodes each entry once and
    keeps the newest ones, from which every waiting cursor takes what it lacks.
    """

    def __init__(self, client: aredis.Redis, wake_key: str, retry_for: float) -> None:
        self._client = client
        self._wake_key = wake_key
        self._wake_id = "0-0"
        self._retry_for = retry_for
        self._watches: dict[str, _Watch] = {}
        self._need = anyio.Event()
        self.closed = False

    @staticmethod
    def _after(watch: _Watch, pos: int) -> list[_Item] | None:
        """Return the cached entries after ``pos``.

        ``[]`` if none is known yet, ``None`` if the cache does not reach back to
        ``pos`` (the cursor then reads Redis itself).
        """
        key = 2 * pos
        if key >= watch.last:
            return []
        items = watch.items
        out: list[_Item] = []
        for item in reversed(items):
            if item[0] <= key:
                break
            out.append(item)
        else:
            if not items or items[0][0] > key + 2:
                return None
        out.reverse()
        return out

    def cached(self, log: RedisEventLog, pos: int) -> list[_Item] | None:
        """Return the cached entries after ``pos`` without waiting (``None``: unknown)."""
        watch = self._watches.get(log._stream)
        return None if watch is None or self.closed else self._after(watch, pos)

    def following(self, log: RedisEventLog) -> bool:
        """Whether the XREAD in flight includes this log's stream."""
        watch = self._watches.get(log._stream)
        return watch is not None and watch.active and not self.closed

    async def wait(self, log: RedisEventLog, pos: int) -> list[_Item] | None:
        """Return the entries after ``pos``, waiting for some; ``None``: read Redis."""
        if self.closed:
            return None
        stream = log._stream
        watch = self._watches.get(stream)
        if watch is None:
            watch = self._watches[stream] = _Watch(log.session_id, 2 * pos)
        elif not watch.waiters and not watch.active and 2 * pos > watch.last:
            watch.last = 2 * pos
            watch.items.clear()
        got = self._after(watch, pos)
        if got != []:
            return got
        watch.waiters += 1
        watch.idle = 0
        try:
            changed = watch.changed
            if not watch.active:
                self._need.set()
                await _call(self._poke, self._retry_for, log.session_id)
            await changed.wait()
        finally:
            watch.waiters -= 1
        return self._after(watch, pos) or None

    async def _poke(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1)
        pipe.pexpire(self._wake_key, 86_400_000)
        await pipe.execute()

    def _wake_all(self) -> None:
        for watch in self._watches.values():
            watch.changed.set()
            watch.changed = anyio.Event()

    def close(self) -> None:
        self.closed = True
        self._wake_all()

    async def run(self) -> None:
        delay = _FIRST_DELAY
        while True:
            streams: dict[Any, Any] = {}
            for key, watch in list(self._watches.items()):
                # A stream stays in the XREAD for two rounds after its last waiter:
                # cursors that just took a batch come back to wait on the read in
                # flight instead of each poking the follower again.
                watch.idle = 0 if watch.waiters else watch.idle + 1
                if watch.idle > 2:
                    watch.active = False
                    del self._watches[key]
                    continue
                watch.active = True
                streams[key] = f"{watch.last >> 1}-{watch.last & 1}"
            if not streams:
                self._need = anyio.Event()
                await self._need.wait()
                continue
            streams[self._wake_key] = self._wake_id
            try:
                reply = await self._client.xread(streams, count=_BATCH, block=_BLOCK_MS)
                self._deliver(reply)
            except Exception:  # Redis down, or garbage in a stream: cursors check themselves
                for watch in self._watches.values():
                    watch.active = False
                self._wake_all()
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)
            else:
                delay = _FIRST_DELAY

    def _deliver(self, reply: Any) -> None:
        pairs = reply.items() if isinstance(reply, dict) else (reply or ())
        for raw_key, entries in pairs:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if key == self._wake_key:
                last = entries[-1][0]
                self._wake_id = last.decode() if isinstance(last, bytes) else last
                continue
            watch = self._watches.get(key)
            if watch is None or not entries:
                continue
            for item in _items(entries, watch.session_id):
                if item[0] > watch.last:
                    watch.items.append(item)
                    watch.last = item[0]
            watch.changed.set()
            watch.changed = anyio.Event()


class _RedisCursor(EventCursor):
    __slots__ = ("_allow", "_buf", "_done", "_live", "_log", "_pos", "_started")

    def __init__(self, log: RedisEventLog, after: int) -> None:
        self._log = log
        self._pos = after
        self._buf: deque[StreamEvent] = deque()
        self._done = False
        self._started = False
        self._live = False  # caught up: wait through the backend's follower
        # As in the in-memory log: the backlog a reader may have, at least max_lag and
        # never less than the backlog it started with or last caught up to.
        self._allow = log._max_lag

    @property
    def position(self) -> int:
        return self._pos

    async def __anext__(self) -> StreamEvent:
        if not self._buf and not self._done:
            await self._fill()
        if not self._buf:
            self._finish()
            raise StopAsyncIteration
        event = self._buf.popleft()
        self._pos = event.seq or self._pos
        self._log._delivered += 1
        if event.is_final:
            self._finish()
        return event

    async def _query(self) -> tuple[Any, Any, Any]:
        log = self._log
        pipe = log._client.pipeline(transaction=False)
        pipe.xrange(log._stream, f"{self._pos + 1}-0", "+", count=_BATCH)
        pipe.hmget(log._meta, "last", "closed")
        pipe.xrange(log._stream, "-", "+", count=1)
        entries, meta, first = await pipe.execute()
        return entries, meta, first

    def _take(self, items: list[_Item]) -> None:
        for _, event in items:
            if event is None:
                self._finish()
                return
            self._buf.append(event)

    def _check_lag(self, backlog: int, oldest: int) -> None:
        if self._log._policy == "disconnect":
            if backlog > self._allow:
                raise self._lagged(
                    f"the reader fell {backlog} events behind (allowed {self._allow})", oldest
                )
            self._allow = max(self._log._max_lag, backlog)

    async def _fill(self) -> None:
        log = self._log
        sid = log.session_id
        while not self._buf and not self._done:
            follower = log._follower
            if follower is not None and self._started:
                # What the follower already read for another cursor costs no round trip.
                items = follower.cached(log, self._pos)
                if not items and (self._live or follower.following(log)):
                    items = await follower.wait(log, self._pos)
                if items:
                    self._check_lag((items[-1][0] >> 1) - self._pos, self._pos + 1)
                    self._take(items)
                    continue
                self._live = False
            entries, (last_raw, closed_raw), first = await _call(self._query, log._retry_for, sid)
            last = int(last_raw or 0)
            closed = closed_raw is not None
            oldest = last + 1
            if first:
                key = _key_of(first[0][0])
                oldest = last + 1 if key & 1 else key >> 1
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
                        session_id=sid,
                    )
                self._allow = max(log._max_lag, last - self._pos)
            if not closed:
                self._check_lag(last - self._pos, oldest)
            if self._pos < oldest - 1:
                raise self._lagged("unread events left the retention window", oldest)
            self._take(_items(entries, sid))
            if self._buf or self._done:
                return
            if closed:
                self._finish()
                return
            if follower is not None and not follower.closed:
                self._live = True
                continue
            stream, pos = log._stream, self._pos

            async def block(stream: str = stream, pos: int = pos) -> Any:
                return await log._client.xread({stream: f"{pos}-0"}, count=1, block=_BLOCK_MS)

            await _call(block, log._retry_for, sid)

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
    last saw in Redis (:meth:`sync` reloads them). :meth:`retained` returns this
    process's copy of the retained events: those appended through this instance, or
    all of them after :meth:`sync`. ``history_max_bytes`` counts the stored JSON of each
    event (without its ``seq`` and session id). The ``block`` slow-consumer policy does
    not make producers wait across processes; readers are never disconnected under it
    except when events they have not read leave the retention window.

    Args:
        client: A ``redis.asyncio.Redis`` client.
        session_id: The session the log belongs to.
        prefix: The key prefix.
        history_max_events: Events kept in the stream (exact trimming).
        history_max_bytes: Bytes of event JSON kept in the stream (exact trimming; the
            newest event is always kept).
        max_event_bytes: The largest event JSON accepted, in bytes.
        slow_consumer_policy: ``"disconnect"`` or ``"block"``.
        max_lag: How far a reader may fall behind the head (``disconnect`` policy).
        retry_for: Seconds a lost connection is retried before :class:`BackendError`.

    Raises:
        ValidationError: a bad argument.
    """

    __slots__ = (
        "_append_script",
        "_busy",
        "_client",
        "_closed",
        "_counter",
        "_delivered",
        "_follower",
        "_lagged_count",
        "_last",
        "_local",
        "_max_bytes",
        "_max_event_bytes",
        "_max_events",
        "_max_lag",
        "_meta",
        "_oldest",
        "_policy",
        "_readers",
        "_retry_for",
        "_session_id",
        "_stream",
        "_writer",
    )

    def __init__(
        self,
        client: aredis.Redis,
        session_id: str,
        *,
        prefix: str = "streamkit",
        history_max_events: int = 10_000,
        history_max_bytes: int = 16 * 1024 * 1024,
        max_event_bytes: int = 1024 * 1024,
        slow_consumer_policy: SlowConsumerPolicy = "disconnect",
        max_lag: int = 1000,
        retry_for: float = 10.0,
    ) -> None:
        self._session_id = check_id("session_id", session_id)
        self._max_events = check_int("history_max_events", history_max_events, minimum=1)
        self._max_bytes = check_int("history_max_bytes", history_max_bytes, minimum=1)
        self._max_event_bytes = check_int("max_event_bytes", max_event_bytes, minimum=1)
        self._max_lag = check_int("max_lag", max_lag, minimum=1)
        self._retry_for = float(check_number("retry_for", retry_for, minimum=0))
        check_choice("slow_consumer_policy", slow_consumer_policy, ("disconnect", "block"))
        self._policy: SlowConsumerPolicy = slow_consumer_policy
        self._client = client
        self._append_script = client.register_script(_APPEND)
        self._stream = f"{prefix}:{{{self._session_id}}}:log"
        self._meta = f"{prefix}:{{{self._session_id}}}:meta"
        self._last = 0
        self._oldest = 1
        self._closed = False
        self._local: deque[StreamEvent] = deque(maxlen=self._max_events)
        self._readers = 0
        self._delivered = 0
        self._lagged_count = 0
        self._follower: _Follower | None = None
        self._writer = secrets.token_hex(6)
        self._counter = 0
        self._busy: anyio.Event | None = None

    async def refresh(self) -> None:
        """Load ``last_seq``, ``oldest_seq`` and ``is_closed`` from Redis.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        _require_asyncio()

        async def query() -> tuple[Any, Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(self._meta, "last", "closed")
            pipe.xrange(self._stream, "-", "+", count=1)
            meta, first = await pipe.execute()
            return meta, first

        (last_raw, closed_raw), first = await _call(query, self._retry_for, self._session_id)
        last = int(last_raw or 0)
        oldest = last + 1
        if first:
            key = _key_of(first[0][0])
            oldest = last + 1 if key & 1 else key >> 1
        self._observe(last, oldest, closed_raw is not None)

    async def sync(self) -> None:
        """Reload this process's view, the retained events included, from Redis.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        await self.refresh()

        async def query() -> Any:
            return await self._client.xrange(self._stream, "-", "+", count=self._max_events + 1)

        entries = await _call(query, self._retry_for, self._session_id)
        self._local.clear()
        self._local.extend(e for _, e in _items(entries, self._session_id) if e is not None)

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

        A lost connection is retried (see the module's rules) without ever storing the
        event twice.

        Raises:
            BackendError: Redis failed or stayed unreachable, or the loop is not asyncio.
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
        bare = event
        if event.seq is not None or event.session_id:
            bare = make_event(
                event.event_type,
                event.content,
                event.metadata,
                None,
                None,
                event.event_id,
                event.timestamp,
            )
        text = bare.to_json()
        # The stored copy's JSON, with its seq and session id filled in.
        size = len(text.encode()) + len(self._session_id) + len(str(self._last + 1)) + 1
        if size > self._max_event_bytes:
            raise PayloadTooLarge(
                f"the event is {size} bytes, over the limit of {self._max_event_bytes}",
                field="event",
                session_id=self._session_id,
            )
        # One append in flight per writer, so that a retry is recognised. Not an
        # anyio.Lock: that costs two checkpoints per append even when nobody waits.
        while self._busy is not None:
            await self._busy.wait()
        self._busy = busy = anyio.Event()
        try:
            self._counter += 1
            args = (
                text,
                "1" if event.is_final else "0",
                self._max_events,
                self._max_bytes,
                self._writer,
                self._counter,
            )

            async def run() -> Any:
                return await self._append_script(keys=(self._stream, self._meta), args=args)

            try:
                reply = await _call(run, self._retry_for, self._session_id)
            except BackendError as exc:
                cause = exc.__cause__
                if isinstance(cause, ResponseError) and "STREAMKIT_CLOSED" in str(cause):
                    self._closed = True
                    raise ClosedError("the log is closed", session_id=self._session_id) from None
                raise
        finally:
            self._busy = None
            busy.set()
        # The seq, or [seq, id of the oldest entry] when the append trimmed the stream.
        seq = int(reply[0] if isinstance(reply, list) else reply)
        stored = with_seq(event, seq, self._session_id)
        self._local.append(stored)
        if seq >= self._last:
            self._last = seq
            if isinstance(reply, list):
                self._oldest = _key_of(reply[1]) >> 1
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
        """Return this process's copy of the retained events (see the class docs)."""
        oldest = self._oldest
        return tuple(e for e in self._local if (e.seq or 0) >= oldest)

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

        async def run() -> Any:
            return await self._client.eval(_CLOSE, 2, self._stream, self._meta)

        await _call(run, self._retry_for, self._session_id)
        self._closed = True

    async def delete(self) -> None:
        """Delete the log's keys from Redis.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        _require_asyncio()

        async def run() -> Any:
            return await self._client.delete(self._stream, self._meta)

        await _call(run, self._retry_for, self._session_id)


def _now_ms_lua(name: str) -> str:
    return (
        f"local _t = redis.call('TIME')\nlocal {name} = _t[1] * 1000 + math.floor(_t[2] / 1000)\n"
    )


# KEYS: sessions hash, the user's set (any same-slot key when anonymous), lease, leases,
# the user's set of live sessions (what the per-user bound counts).
# ARGV: sid, record JSON, max_sessions, max per user ('' for none), '1' if the user
# counts, owner token ('' for no lease), lease ttl ms.
_ADD: Final = (
    """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return redis.error_reply('STREAMKIT_DUP') end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.error_reply('STREAMKIT_MAX')
end
if ARGV[5] == '1' then
  if ARGV[4] ~= '' and redis.call('SCARD', KEYS[5]) >= tonumber(ARGV[4]) then
    return redis.error_reply('STREAMKIT_USER')
  end
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[6] ~= '' then
"""
    + _now_ms_lua("now")
    + """
  redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7])
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[7]), ARGV[1])
end
return 1
"""
)

# KEYS: leases zset, then one lease key per session. ARGV: token, ttl ms, session ids.
_RENEW: Final = (
    _now_ms_lua("now")
    + """
local out = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i + 1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
)

# KEYS: a zset scored in server milliseconds. ARGV: limit. The members now due.
_DUE: Final = (
    _now_ms_lua("now")
    + "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])\n"
)

# KEYS: leases zset, the lease key. ARGV: sid. 1 for the one caller that claims it.
_CLAIM_ORPHAN: Final = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# KEYS: removal zset. ARGV: limit. Claims (removes and returns) the members now due.
_CLAIM_DUE: Final = (
    _DUE.replace("return redis.call", "local due = redis.call")
    + """
for _, sid in ipairs(due) do redis.call('ZREM', KEYS[1], sid) end
return due
"""
)

# KEYS: removal zset. ARGV: delay ms, sid.
_SCHEDULE: Final = (
    _now_ms_lua("now") + "return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])\n"
)

_WATCH_TRIES: Final = 100


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSessionStore(SessionStore):
    """Session records in Redis, shared by every process using the same prefix.

    Records are JSON values in one hash (``{prefix}:sessions``) with a set of session
    ids per user (``{prefix}:user:<user_id>``); all store keys share the hash tag
    ``{prefix}`` so the scripts work on Redis Cluster (the store lives on one slot).
    :meth:`add` is one Lua script, so the count bounds are exact across processes;
    :meth:`set_state` and :meth:`remove` are optimistic ``WATCH``/``MULTI``
    transactions on the records hash (retried on conflict). A store made by a
    :class:`RedisBackend` adds each record together with the backend's lease on it, and
    drops the lease when the session ends.

    Args:
        client: A ``redis.asyncio.Redis`` client.
        prefix: The key prefix.
        retry_for: Seconds a lost connection is retried before :class:`BackendError`.
    """

    __slots__ = ("_client", "_lease_ms", "_owner", "_prefix", "_retry_for", "_sessions")

    def __init__(
        self, client: aredis.Redis, *, prefix: str = "streamkit", retry_for: float = 10.0
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._sessions = f"{{{prefix}}}:sessions"
        self._retry_for = float(check_number("retry_for", retry_for, minimum=0))
        self._owner = ""  # set by RedisBackend: the token its leases hold
        self._lease_ms = 0

    def _user_key(self, user_id: str | None) -> str:
        return f"{{{self._prefix}}}:user:{user_id or ''}"

    def _live_key(self, user_id: str | None) -> str:
        # The user's sessions that have not ended: what max_sessions_per_user counts.
        return f"{{{self._prefix}}}:live:{user_id or ''}"

    def _lease_key(self, session_id: str) -> str:
        return f"{{{self._prefix}}}:lease:{session_id}"

    @property
    def _leases(self) -> str:
        return f"{{{self._prefix}}}:leases"

    @property
    def _removals(self) -> str:
        return f"{{{self._prefix}}}:ended"

    async def _run(self, fn: Callable[[], Awaitable[_T]], session_id: str | None = None) -> _T:
        _require_asyncio()
        return await _call(fn, self._retry_for, session_id)

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
        sid = session.session_id
        record = session.to_json(include_events=False)

        async def run() -> Any:
            return await self._client.eval(
                _ADD,
                5,
                self._sessions,
                self._user_key(session.user_id),
                self._lease_key(sid),
                self._leases,
                self._live_key(session.user_id),
                sid,
                record,
                str(max_sessions),
                "" if max_sessions_per_user is None else str(max_sessions_per_user),
                "0" if session.user_id is None else "1",
                self._owner,
                str(self._lease_ms),
            )

        try:
            await self._run(run, sid)
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

        async def run() -> Any:
            return await self._client.hget(self._sessions, session_id)

        raw = await self._run(run, session_id)
        return None if raw is None else StreamSession.from_json(raw)

    async def get_many(self, session_ids: Sequence[str]) -> builtins.list[StreamSession | None]:
        """Return the records of ``session_ids`` in one round trip (``None`` for missing).

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        if not session_ids:
            return []
        ids = list(session_ids)

        async def run() -> Any:
            return await self._client.hmget(self._sessions, ids)

        raws = await self._run(run)
        return [None if raw is None else StreamSession.from_json(raw) for raw in raws]

    async def _watched(
        self,
        session_id: str,
        change: Callable[[Any, StreamSession | None], Awaitable[Any]],
    ) -> Any:
        async def attempt() -> tuple[bool, Any]:
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
                    return False, None
                return True, result

        for _ in range(_WATCH_TRIES):
            done, result = await self._run(attempt, session_id)
            if done:
                return result
        raise BackendError("too many conflicting updates", session_id=session_id)

    async def set_state(
        self, session_id: str, state: SessionState, *, now: float
    ) -> tuple[StreamSession, StreamSession]:
        """Move a session to ``state`` if the table allows it; return (before, after).

        Moving to an ending state also drops the session's lease.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
            SessionNotFound: there is no such record.
            InvalidTransition: the move is not allowed.
        """

        async def change(pipe: Any, current: StreamSession | None) -> Any:
            if current is None:
                raise SessionNotFound("no such session", session_id=session_id)
            # Strictly increasing per record whatever the workers' clocks: a reader can
            # tell a newer record from a stale one.
            after = current.transition(state, now=max(now, current.updated_at + 1e-6))
            pipe.hset(self._sessions, session_id, after.to_json(include_events=False))
            if after.is_terminal:
                pipe.delete(self._lease_key(session_id))
                pipe.zrem(self._leases, session_id)
                if after.user_id is not None:
                    pipe.srem(self._live_key(after.user_id), session_id)
            return current, after

        before, after = await self._watched(session_id, change)
        return before, after

    async def remove(self, session_id: str) -> StreamSession | None:
        """Delete a record (and its lease) and return it (``None`` if there was none).

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """

        async def change(pipe: Any, current: StreamSession | None) -> Any:
            if current is not None:
                pipe.hdel(self._sessions, session_id)
                if current.user_id is not None:
                    pipe.srem(self._user_key(current.user_id), session_id)
                    pipe.srem(self._live_key(current.user_id), session_id)
            pipe.delete(self._lease_key(session_id))
            pipe.zrem(self._leases, session_id)
            pipe.zrem(self._removals, session_id)
            return current

        removed: StreamSession | None = await self._watched(session_id, change)
        return removed

    async def list(self, user_id: str | None = None) -> Sequence[StreamSession]:
        """Return the records of ``user_id``, or all of them.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """

        async def run() -> builtins.list[Any]:
            if user_id is None:
                return list((await self._client.hgetall(self._sessions)).values())
            ids = sorted(await self._client.smembers(self._user_key(user_id)))
            return list(await self._client.hmget(self._sessions, ids)) if ids else []

        raws = await self._run(run)
        return [StreamSession.from_json(raw) for raw in raws if raw is not None]

    async def count(self) -> int:
        """Return how many records the store holds.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """

        async def run() -> Any:
            return await self._client.hlen(self._sessions)

        return int(await self._run(run))

    # -- leases and the removal schedule (used through RedisBackend) -------------------

    async def _renew(self, session_ids: Collection[str]) -> set[str]:
        ids = list(session_ids)
        if not ids or not self._owner:
            return set()

        async def run() -> Any:
            keys = [self._leases, *(self._lease_key(sid) for sid in ids)]
            return await self._client.eval(
                _RENEW, len(keys), *keys, self._owner, str(self._lease_ms), *ids
            )

        held = await self._run(run)
        return {sid for sid, ok in zip(ids, held, strict=True) if not int(ok)}

    async def _claim_orphans(self, limit: int) -> builtins.list[str]:
        async def due() -> Any:
            return await self._client.eval(_DUE, 1, self._leases, str(limit))

        candidates = [_text(sid) for sid in await self._run(due)]
        if not candidates:
            return []

        async def claim() -> Any:
            pipe = self._client.pipeline(transaction=False)
            for sid in candidates:
                pipe.eval(_CLAIM_ORPHAN, 2, self._leases, self._lease_key(sid), sid)
            return await pipe.execute()

        won = await self._run(claim)
        return [sid for sid, ok in zip(candidates, won, strict=True) if int(ok)]

    async def _schedule(self, session_id: str, delay: float) -> None:
        async def run() -> Any:
            return await self._client.eval(
                _SCHEDULE, 1, self._removals, str(int(delay * 1000)), session_id
            )

        await self._run(run, session_id)

    async def _claim_due(self, limit: int) -> builtins.list[str]:
        async def run() -> Any:
            return await self._client.eval(_CLAIM_DUE, 1, self._removals, str(limit))

        return [_text(sid) for sid in await self._run(run)]


class RedisBackend(Backend):
    """Sessions and logs in Redis, so that several worker processes share them.

    Use it as an async context manager (the registry enters it): entering connects,
    PINGs (once, without retrying) and starts the one task that follows live streams
    for every cursor of this backend; leaving stops it and closes the connection pool
    (only if this backend made it).

    Args:
        url: The Redis URL.
        prefix: The key prefix; processes sharing sessions use the same one.
        client: A ``redis.asyncio.Redis`` client to use instead of one made from ``url``.
        lease_ttl: Seconds a worker's lease on its sessions lasts without renewal: the
            bound on how long a dead worker's sessions stay live.
        retry_for: Seconds a lost connection is retried before :class:`BackendError`.
        max_connections: Connections the pool made from ``url`` opens at most; callers
            beyond it wait for a free one (however many subscribers there are).

    Raises:
        ValidationError: a bad argument.
    """

    __slots__ = (
        "_client",
        "_follower",
        "_lease_ttl",
        "_owned",
        "_prefix",
        "_retry_for",
        "_store",
        "_tg",
        "_token",
    )

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "streamkit",
        client: aredis.Redis | None = None,
        lease_ttl: float = 10.0,
        retry_for: float = 10.0,
        max_connections: int = 32,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValidationError(
                "prefix must be a non-empty string without braces", field="prefix"
            )
        self._lease_ttl = float(check_number("lease_ttl", lease_ttl, minimum=0, positive=True))
        self._retry_for = float(check_number("retry_for", retry_for, minimum=0))
        check_int("max_connections", max_connections, minimum=2)
        if client is None:
            if not isinstance(url, str):
                raise ValidationError(f"url must be a str, got {type_name(url)}", field="url")
            try:
                pool = aredis.BlockingConnectionPool.from_url(
                    url, max_connections=max_connections, timeout=None
                )
                client = aredis.Redis.from_pool(pool)
            except ValueError as exc:
                raise ValidationError(f"bad Redis URL: {exc}", field="url") from exc
            self._owned = True
        else:
            self._owned = False
        self._client = client
        self._prefix = prefix
        self._token = secrets.token_hex(12)
        self._store = RedisSessionStore(client, prefix=prefix, retry_for=self._retry_for)
        self._store._owner = self._token
        self._store._lease_ms = max(1, int(self._lease_ttl * 1000))
        self._follower: _Follower | None = None
        self._tg: TaskGroup | None = None

    @property
    def store(self) -> RedisSessionStore:
        """The store of session records."""
        return self._store

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease lasts without renewal (see :class:`~streamkit.abc.Backend`)."""
        return self._lease_ttl

    @property
    def token(self) -> str:
        """This backend's (worker's) lease token, as stored in its lease keys."""
        return self._token

    async def __aenter__(self) -> Self:
        """Connect, PING and start the follower task.

        Raises:
            BackendError: Redis is unreachable, or the event loop is not asyncio.
        """
        _require_asyncio()
        with _translate():
            await self._client.ping()
        if self._tg is None and not _is_cluster(self._client):
            # One XREAD over many streams needs them on one node: not on a Cluster.
            tg = anyio.create_task_group()
            await tg.__aenter__()
            self._tg = tg
            wake = f"{self._prefix}:wake:{self._token}"
            self._follower = _Follower(self._client, wake, self._retry_for)
            tg.start_soon(self._follower.run, name="streamkit redis follower")
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
            history_max_bytes=config.history_max_bytes,
            max_event_bytes=config.max_event_bytes,
            slow_consumer_policy=config.slow_consumer_policy,
            max_lag=config.max_lag,
            retry_for=self._retry_for,
        )
        log._follower = self._follower
        await log.refresh()
        return log

    async def delete_log(self, session_id: str) -> None:
        """Delete the log's keys.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        stream = f"{self._prefix}:{{{session_id}}}"
        _require_asyncio()

        async def run() -> Any:
            return await self._client.delete(f"{stream}:log", f"{stream}:meta")

        await _call(run, self._retry_for, session_id)

    async def renew_leases(self, session_ids: Collection[str]) -> set[str]:
        """Renew this worker's leases on ``session_ids`` (one script call).

        Returns:
            The sessions whose lease this worker no longer holds.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        return await self._store._renew(session_ids)

    async def claim_orphans(self, limit: int) -> list[str]:
        """Claim up to ``limit`` live sessions whose owner's lease expired.

        Each orphan is claimed by exactly one worker, which must end it.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        return await self._store._claim_orphans(limit)

    async def schedule_removal(self, session_id: str, delay: float) -> None:
        """Let any worker remove the ended session ``session_id`` after ``delay`` s.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        await self._store._schedule(session_id, delay)

    async def claim_removals(self, limit: int) -> list[str]:
        """Claim up to ``limit`` ended sessions now due for removal.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        return await self._store._claim_due(limit)

    async def aclose(self) -> None:
        """Stop the follower and close the connection pool if this backend made it.

        Idempotent.
        """
        tg, self._tg = self._tg, None
        if tg is not None:
            if self._follower is not None:
                self._follower.close()
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True):
            if tg is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._client.delete(f"{self._prefix}:wake:{self._token}")
            if self._owned:
                with _translate():
                    await self._client.aclose()
