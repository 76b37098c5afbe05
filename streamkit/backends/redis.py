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
* **One connection, pipelined.** An entered backend on a single node sends its append
  rounds and its store's commands through one connection (:class:`_Pipe`): what its
  tasks send in one loop iteration goes out in one write. The append rounds' script
  calls are written as RESP by hand, each event's JSON encoded once.
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

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, cast

import anyio
import anyio.lowlevel

try:
    import redis.asyncio as aredis
    import sniffio
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import (
        ClusterDownError,
        NoScriptError,
        RedisClusterException,
        RedisError,
        ResponseError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
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
    InvalidTransition,
    PayloadTooLarge,
    SessionLimitExceeded,
    SessionNotFound,
    SubscriberLagged,
    ValidationError,
)
from .._events import _FINAL_TYPES, EventType, StreamEvent, make_event, stamp, with_seq
from .._log import transient_standin
from .._session import SessionState, StreamSession
from .._validate import EMPTY_OBJECT, check_choice, check_id, check_int, check_number, type_name
from ..abc import Backend, EventCursor, EventLog, LogStatistics, SessionStore

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from .._config import RegistryConfig, SlowConsumerPolicy

__all__ = ["RedisBackend", "RedisEventLog", "RedisSessionStore"]

logger = logging.getLogger("streamkit.redis")

_T = TypeVar("_T")

# One call appends a batch of events to each of several session logs (one log per
# call on Redis Cluster, where the logs' keys live in different slots).
# KEYS: stream and meta of each log. ARGV, per log: max events, max bytes, writer,
# batch counter, the final flags ('0'/'1', one per event), the last seq this writer
# has seen ('0' if none), then the event JSONs. Returns one string (one bulk reply to
# parse, however many logs), per log three words: the first seq, the events accepted,
# the id of the oldest entry ('-' if none): the accepted events are a prefix of the
# batch (none after the log is closed). A retry of a batch already stored (its reply
# was lost) returns the same words without storing anything. A log whose counter is
# behind the seq its writer saw lost events (Redis restarted without its data, or
# failed over to a replica that missed writes): its batch is refused with '-1 <held>
# <seen>', except a final event, which is stored after the seq the writer saw, so
# that readers get it and a resume from before sees the gap.
_APPEND: Final = """
local out = {}
local a = 1
for l = 1, #KEYS, 2 do
  local stream, meta = KEYS[l], KEYS[l + 1]
  local maxn, maxb = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local w, counter, flags = 'w:' .. ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local seen = tonumber(ARGV[a + 5])
  local n = #flags
  local base = a + 5
  a = a + 6 + n
  local prev = redis.call('HGET', meta, w)
  local c, s, k
  if prev then c, s, k = string.match(prev, '^(%d+):(%d+):(%d+)$') end
  if c == counter then
    local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    out[#out + 1] = s
    out[#out + 1] = k
    out[#out + 1] = head and head[1] or '-'
  else
    local last = tonumber(redis.call('HGET', meta, 'last') or '0')
    local lost = false
    if last < seen then
      if string.sub(flags, 1, 1) == '1' then
        redis.call('HSET', meta, 'last', seen)
        last = seen
      else
        lost = true
      end
    end
    if lost then
      out[#out + 1] = -1
      out[#out + 1] = last
      out[#out + 1] = seen
    else
      if redis.call('HGET', meta, 'closed') then n = 0 end
      local added, accepted = 0, 0
      for i = 1, n do
        local text = ARGV[base + i]
        redis.call('XADD', stream, (last + i) .. '-0', 'e', text)
        added = added + #text
        accepted = i
        if string.sub(flags, i, i) == '1' then
          redis.call('HSET', meta, 'closed', '1')
          break
        end
      end
      if accepted > 0 then
        redis.call('HSET', meta, 'last', last + accepted)
        local bytes = redis.call('HINCRBY', meta, 'bytes', added)
        local count = redis.call('XLEN', stream)
        while count > 1 and (count > maxn or bytes > maxb) do
          local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
          local size = 0
          if oldest[2][1] == 'e' then size = #oldest[2][2] end
          redis.call('XDEL', stream, oldest[1])
          bytes = redis.call('HINCRBY', meta, 'bytes', -size)
          count = count - 1
        end
      end
      redis.call('HSET', meta, w, counter .. ':' .. (last + 1) .. ':' .. accepted)
      local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
      out[#out + 1] = last + 1
      out[#out + 1] = accepted
      out[#out + 1] = head and head[1] or '-'
    end
  end
end
return table.concat(out, ' ')
"""

# The follower's read of many streams: what follows each given id, as one string (one
# bulk reply to parse however many entries): a line per entry, "<stream's index>
# <entry id> <event JSON>" (no JSON for the close marker). The JSON has no raw newline.
# KEYS: the streams. ARGV: the id after which to read each, then the count per stream.
_READ: Final = """
local out = {}
local count = ARGV[#KEYS + 1]
for i = 1, #KEYS do
  local entries = redis.call('XRANGE', KEYS[i], '(' .. ARGV[i], '+', 'COUNT', count)
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    out[#out + 1] = i .. ' ' .. entry[1] .. ' ' .. (fields[1] == 'e' and fields[2] or '')
  end
end
return table.concat(out, '\\n')
"""

# A cursor's read: the log's state and the entries after an id, as one string: a first
# line "<last seq> <closed: 0/1> <oldest entry's id, '-' if none>", then a line per
# entry, "<entry id> <event JSON>" (no JSON for the close marker).
# KEYS: stream, meta. ARGV: the first id to read (inclusive), the count.
_QUERY: Final = """
local meta = redis.call('HMGET', KEYS[2], 'last', 'closed')
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local closed = meta[2] and '1' or '0'
local out = {(meta[1] or '0') .. ' ' .. closed .. ' ' .. (first and first[1] or '-')}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])) do
  local fields = entry[2]
  out[#out + 1] = entry[1] .. ' ' .. (fields[1] == 'e' and fields[2] or '')
end
return table.concat(out, '\\n')
"""

# Closes the log and wakes followers with a marker entry <last>-1 (never an event).
_CLOSE: Final = """
if redis.call('HGET', KEYS[2], 'closed') then return 0 end
redis.call('HSET', KEYS[2], 'closed', '1')
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
redis.call('XADD', KEYS[1], last .. '-1', 'c', '1')
return 1
"""

# Ends a log whose keys Redis lost (or whose counter went back) while readers waited
# on it: an error event numbered after the newest seq they saw, so that no reader waits
# for ever. The keys it makes expire after ARGV[3] ms (nothing else removes them).
# KEYS: stream, meta. ARGV: the newest seq seen, the event JSON, expiry ms.
_END_LOST: Final = """
local seen = tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[2], 'last') or '0') >= seen then return 0 end
redis.call('XADD', KEYS[1], (seen + 1) .. '-0', 'e', ARGV[2])
redis.call('HSET', KEYS[2], 'last', seen + 1, 'closed', '1', 'bytes', #ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

_BATCH: Final = 256
_BATCH_ARG: Final = str(_BATCH)
_BLOCK_MS: Final = 1000
# A stream this worker appends to is fed from its appends and left out of the shared
# XREAD until its appends pause for this long (then other writers' entries are read;
# before that, at this worker's next append). A stream in the XREAD wakes it at each
# append, and every wake sends the XREAD again with all its streams: streams paced at 2
# events/s or faster (reasoning, tool calls) stay out of it.
_LOCAL_QUIET: Final = 0.5
# Entries of a stream that the follower keeps for its cursors, beyond those of the
# newest read or append round: live cursors take them at once, a cursor further behind
# reads Redis (one round trip per 256 entries). Each entry kept is three objects the
# garbage collector walks at every collection (the event, its metadata and the tuple).
_FED_KEEP: Final = 4
# What a stream this worker feeds keeps while it has one reader here or none: the newest
# entry (beyond the newest round's). That reader waits for the next one or asks for it
# right after; further behind, it reads Redis. Each entry kept lives for as many periods
# of a paced stream, long enough to be promoted to an older generation of the garbage
# collector, whose young collections then walk it again and again.
_FED_ALONE: Final = 1
# Logs per append script call on a single node (one call per log on a Cluster).
_LOGS_PER_CALL: Final = 256
# Append rounds a backend has in flight at once (each log in at most one).
_ROUNDS_IN_FLIGHT: Final = 4
_IDLE_RECHECK: Final = 1.0
# Group commit: a round that no append awaits, carrying fewer than _LINGER_EVENTS
# events, starts _ROUND_GAP s after the previous one, so that paced streams' tokens
# (appended without waiting) share rounds: fewer writes, each one a costly syscall.
_ROUND_GAP: Final = 0.004
_LINGER_EVENTS: Final = 64
# Events append_nowait queues on one log before it asks the caller to await append.
_NOWAIT_MAX: Final = 1024
# How often the follower checks that the logs its readers wait on still hold what
# they saw (a Redis restarted without its data, a failover that lost writes).
_LOSS_CHECK: Final = 1.0
_LOST_KEYS_TTL_MS: Final = 3_600_000
# The cluster follower's pause between rounds that found nothing: from, up to (s).
_CLUSTER_FIRST_IDLE: Final = 0.002
_CLUSTER_IDLE: Final = 0.05
_FIRST_DELAY: Final = 0.02
_MAX_DELAY: Final = 1.0
# Lost connections, a server still loading its data, and a cluster between a master's
# failure and its replica's promotion.
_RETRYABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)


@contextlib.contextmanager
def _translate(session_id: str | None = None) -> Iterator[None]:
    """Turn redis-py failures into :class:`~streamkit.BackendError`."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise BackendError(f"redis failed: {exc}", session_id=session_id) from exc


#: Observers of this process's Redis traffic (streamkit.otel and streamkit.prometheus
#: add theirs, see streamkit._observe): called with ``("round_trip", seconds)`` after
#: each answered call of :func:`_call` and ``("retry", exception)`` before each retry.
#: Empty unless instrumented: then nothing is timed.
_observers: list[Callable[[str, object], None]] = []


async def _call(
    fn: Callable[[], Awaitable[_T]],
    retry_for: float,
    session_id: str | None = None,
    *,
    blocking: bool = False,
) -> _T:
    """Run ``fn``, retrying lost connections with backoff for at most ``retry_for`` s.

    ``blocking``: ``fn`` waits for data (``XREAD BLOCK``); its time is no round trip.

    Raises:
        BackendError: Redis failed, or stayed unreachable for ``retry_for`` seconds.
    """
    delay = _FIRST_DELAY
    deadline = time.monotonic() + retry_for
    while True:
        try:
            if not _observers or blocking:
                return await fn()
            began = time.perf_counter()
            result = await fn()
            _observe("round_trip", time.perf_counter() - began)
            return result
        except _RETRYABLE as exc:
            logger.debug("streamkit: redis call failed (%s); retrying in %.2f s", exc, delay)
            if time.monotonic() + delay > deadline:
                raise BackendError(
                    f"redis unreachable (gave up after {retry_for:g} s): {exc}",
                    session_id=session_id,
                ) from exc
            if _observers:
                _observe("retry", exc)
        except RedisError as exc:
            raise _append_error(exc, session_id) from exc
        await anyio.sleep(delay)
        delay = min(delay * 2, _MAX_DELAY)


def _observe(kind: str, value: object) -> None:
    for observer in tuple(_observers):
        try:
            observer(kind, value)
        except Exception:
            logger.exception("streamkit: a redis observer raised; it was ignored")


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


async def _end_lost(client: Any, stream: str, seen: int, session_id: str) -> int:
    """End a log whose counter is behind ``seen``, the newest seq a reader had.

    Appends an error event numbered ``seen + 1`` (unless the counter caught up), so
    that readers get a final event instead of waiting for ever. Returns 1 if it did.
    """
    message = (
        f"Redis lost events of this log: it no longer holds seq {seen}, which readers "
        "had (restarted without its data, failed over to a replica that missed the "
        "newest writes, or the session was removed)"
    )
    logger.warning("streamkit: session %s: %s", session_id, message)
    final = make_event(
        EventType.ERROR,
        "",
        MappingProxyType({"error_type": "BackendError", "message": message}),
    )
    ended = await client.eval(
        _END_LOST, 2, stream, _meta_of(stream), seen, final.to_json(), _LOST_KEYS_TTL_MS
    )
    return int(ended)


def _meta_of(stream: str) -> str:
    """The meta hash's key of a log's stream key (``...:log`` -> ``...:meta``)."""
    return stream.removesuffix(":log") + ":meta"


def _decode(fields: dict[bytes, bytes], seq: int, session_id: str) -> StreamEvent:
    return _event_of(fields[b"e"], seq, session_id)


def _event_of(text: bytes | str, seq: int, session_id: str) -> StreamEvent:
    """The event stored as ``text`` (its JSON, without seq), numbered ``seq``."""
    event = _plain_event(text, seq, session_id)
    if event is not None:
        return event
    event = StreamEvent.from_json(text)
    stamp(event, seq, session_id)  # a fresh object that nobody else holds yet
    return event


def _no_constant(name: str) -> Any:
    raise ValueError(name)


_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant)
_EVENT_TYPES: Final[dict[str, EventType]] = {t.value: t for t in EventType}
_SCALARS: Final = (str, int, float, bool, type(None))
_NOT_IN_IDS: Final = re.compile("[\r\n\x00]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _plain_str(value: object) -> bool:
    return type(value) is str and (value.isascii() or not _SURROGATE.search(value))


def _plain_event(text: bytes | str, seq: int, session_id: str) -> StreamEvent | None:
    """Decode the JSON of an event of a built-in type with flat metadata, or ``None``.

    What the public constructor would check, for the shape every streamkit writer
    stores (a token: about a third of ``StreamEvent.from_json``'s time); anything
    else (custom types, nested metadata, bad input) is left to ``from_json``.
    """
    data: Any
    try:
        data = _DECODER.decode(text.decode() if isinstance(text, bytes) else text)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    if type(data) is not dict or len(data) != 7:
        return None
    kind: Any = data.get("event_type")
    event_type = _EVENT_TYPES.get(kind) if type(kind) is str else None
    event_id: Any = data.get("event_id")
    content: Any = data.get("content")
    timestamp: Any = data.get("timestamp")
    metadata: Any = data.get("metadata")
    # ASCII JSON (escapes included: a surrogate is written as one) holds no surrogate:
    # its strings need no character check (one test of the text for them all).
    ascii_ = text.isascii() and b"\\u" not in text if isinstance(text, bytes) else False
    if (
        event_type is None
        or type(event_id) is not str
        or not 0 < len(event_id) <= 256
        or _NOT_IN_IDS.search(event_id)
        or not (ascii_ or _plain_str(event_id))
        or not (ascii_ or _plain_str(content))
        or type(content) is not str
        or type(timestamp) not in (float, int)
        or not 0 <= timestamp < math.inf
        or type(metadata) is not dict
        or data.get("seq", 0) is not None
        or data.get("session_id", 0) is not None
    ):
        return None
    for key, value in metadata.items():
        if not isinstance(value, _SCALARS):
            return None
        if ascii_:
            if type(value) is float and not math.isfinite(value):  # 1e999 parses as inf
                return None
            continue
        if not _plain_str(key) or (type(value) is str and not _plain_str(value)):
            return None
        if type(value) is float and not math.isfinite(value):
            return None
    return make_event(
        event_type,
        content,
        MappingProxyType(metadata) if metadata else _NO_METADATA,
        session_id,
        seq,
        event_id,
        timestamp,
    )


_NO_METADATA: Final = EMPTY_OBJECT

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

    __slots__ = (
        "active",
        "fed_at",
        "futures",
        "idle",
        "items",
        "last",
        "local",
        "session_id",
        "waiters",
    )

    def __init__(self, session_id: str, last: int) -> None:
        self.session_id = session_id
        self.last = last  # the order key (see _key_of) of the newest entry known
        self.items: deque[_Item] = deque(maxlen=4 * _BATCH)
        # One future per waiting cursor, resolved when entries come (cheaper than an
        # asyncio.Event: no lock-like machinery, nothing made when nobody waits).
        self.futures: list[asyncio.Future[None]] = []
        self.waiters = 0
        self.active = False  # whether the XREAD in flight includes this stream
        self.idle = 0
        self.fed_at = -_LOCAL_QUIET  # when this worker's own appends last fed it
        self.local = False  # whether they ever did

    def fed(self, now: float) -> bool:
        """Whether this worker's appends fed it lately (it is then left out of XREAD)."""
        return now - self.fed_at < _LOCAL_QUIET

    def add(self, fresh: list[_Item]) -> None:
        """Add entries read from Redis, keep the newest few, wake the waiting cursors."""
        items = self.items
        items.extend(fresh)
        self.last = fresh[-1][0]
        keep = max(_FED_KEEP, len(fresh))
        while len(items) > keep:
            items.popleft()
        self.wake()

    def wake(self) -> None:
        """Wake the cursors waiting on this stream."""
        futures = self.futures
        if futures:
            self.futures = []
            for future in futures:
                if not future.done():
                    future.set_result(None)


class _Follower:
    """One ``XREAD BLOCK`` loop for every cursor of one backend.

    A cursor that has caught up calls :meth:`wait`; the loop reads all streams that
    have waiting cursors at once (plus a private wake-up stream, so that a new stream
    joins without waiting for the block to time out), decodes each entry once and
    keeps the newest ones, from which every waiting cursor takes what it lacks.

    The backend's own appends feed the same cache as soon as Redis has stored them
    (:meth:`feed`): a stream this worker writes to is left out of the ``XREAD`` while
    its appends keep coming, and read again once they pause for ``_LOCAL_QUIET`` s or
    show that another worker wrote in between.
    """

    def __init__(self, client: Any, wake_key: str, retry_for: float) -> None:
        self._client = client
        self._wake_key = wake_key
        self._wake_id = "0-0"
        self._retry_for = retry_for
        self._watches: dict[str, _Watch] = {}
        self._need = asyncio.Event()
        self.stale = False  # a fed stream showed another writer's entries: read it
        self.closed = False
        self._checked_at = 0.0  # when the followed logs were last checked for a loss
        self.lost_logs = 0  # logs this follower found lost and ended
        # Reads of entries from Redis (script calls or XREAD replies that brought
        # some), and the entries they brought that it did not have yet.
        self.reads = 0
        self.fetched = 0
        # The backend's pipeline: entries are then read with _READ, not XREAD's replies.
        self.pipe: _Pipe | None = None
        self._flowing = False  # the last read found entries: read again without blocking
        # A poke was sent since the loop last chose the streams of its XREAD: the
        # next XREAD returns at once and takes in every stream waited on meanwhile.
        self._poked = False

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
        newest = items[-1][0] if items else 0
        if key < newest <= key + 2:
            return [items[-1]]  # the common case, a live cursor one entry behind
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
        """Whether the XREAD in flight or this worker's appends cover the log's stream."""
        watch = self._watches.get(log._stream)
        return (
            watch is not None and (watch.active or watch.fed(time.monotonic())) and not self.closed
        )

    def feed(self, log: RedisEventLog, first: int, events: Sequence[StreamEvent]) -> None:
        """Add events this worker just stored (seqs ``first``...) to the cache.

        ``events`` may be empty: the append was refused because the log is closed,
        which another worker did; the stream is then read from Redis.
        """
        watch = self._watches.get(log._stream)
        if watch is None or self.closed:
            return
        if not events or watch.last < 2 * (first - 1):
            # Another writer's entries came first: read them from Redis, in order.
            watch.fed_at = -_LOCAL_QUIET
            self.stale = True
            return
        items = watch.items
        # Keep only the newest few (see _FED_KEEP and _FED_ALONE).
        keep = _FED_KEEP if log._readers > 1 else _FED_ALONE
        if len(events) == 1:  # a paced stream's round: one event
            key = 2 * (events[0].seq or 0)
            if key > watch.last:
                items.append((key, events[0]))
                watch.last = key
                while len(items) > keep:
                    items.popleft()
        else:
            last = watch.last
            for event in events:
                key = 2 * (event.seq or 0)
                if key > last:
                    items.append((key, event))
                    last = key
            watch.last = last
            if len(items) > keep:  # this round's are all kept
                keep = max(keep, len(events))
                while len(items) > keep:
                    items.popleft()
        watch.fed_at = time.monotonic()
        watch.local = True
        futures = watch.futures  # wake the cursors waiting (see _Watch.wake)
        if futures:
            watch.futures = []
            for future in futures:
                if not future.done():
                    future.set_result(None)

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
        if 2 * pos < watch.last:  # something newer is known (else _after gives [])
            got = self._after(watch, pos)
            if got is None or got:
                return got
        watch.waiters += 1
        watch.idle = 0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        watch.futures.append(future)
        try:
            if not watch.active and time.monotonic() - watch.fed_at >= _LOCAL_QUIET:
                self._need.set()
                if not self._poked:  # one poke wakes the XREAD for every new stream
                    self._poked = True
                    await _call(self._poke, self._retry_for, log.session_id)
            await future
        finally:
            watch.waiters -= 1
            if not future.done() or future.cancelled():  # cancelled, or the poke failed
                future.cancel()
                with contextlib.suppress(ValueError):
                    watch.futures.remove(future)
        return self._after(watch, pos) or None

    async def _poke(self) -> None:
        wire = self.pipe
        if wire is not None:
            key = self._wake_key
            results = await wire.call(
                [
                    _pack(("XADD", key, "MAXLEN", "1", "*", "w", "1")),
                    _pack(("PEXPIRE", key, "86400000")),
                ],
                2,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1)
        pipe.pexpire(self._wake_key, 86_400_000)
        await pipe.execute()

    async def restale(self) -> None:
        """Make the loop read the streams :meth:`feed` found stale, at once."""
        if self.stale and not self.closed:
            self.stale = False
            self._need.set()
            if not self._poked:
                self._poked = True
                with contextlib.suppress(BackendError):
                    await _call(self._poke, self._retry_for)

    def _wake_all(self) -> None:
        for watch in self._watches.values():
            watch.wake()

    def close(self) -> None:
        self.closed = True
        self._wake_all()

    async def check_lost(self) -> None:
        """End the followed logs whose newest events Redis no longer holds.

        A quiet log (its producer appends nothing) would otherwise never show the
        loss: its readers would wait for ever. One pipeline reads the counter of every
        log that has waiting readers; a log whose counter is behind what they saw (its
        keys are gone) gets an error event after that seq, which the next read delivers.
        """
        self._checked_at = time.monotonic()
        # What the readers saw, taken before the counters are read: appends that
        # come in meanwhile raise both.
        # A stream this worker's appends feed is left out: its append script would
        # have found the loss (its counter behind the writer's) and ended the log.
        now = self._checked_at
        watched = [
            (key, watch.last >> 1, watch.session_id)
            for key, watch in self._watches.items()
            if watch.waiters and watch.last > 0 and not watch.last & 1 and not watch.fed(now)
        ]
        if not watched:
            return
        pipe = self._client.pipeline(transaction=False)
        for key, _, _ in watched:
            pipe.hget(_meta_of(key), "last")
        counters = await pipe.execute()
        for (key, seen, session_id), raw in zip(watched, counters, strict=True):
            if int(raw or 0) < seen:
                self.lost_logs += await _end_lost(self._client, key, seen, session_id)

    async def run(self) -> None:
        delay = _FIRST_DELAY
        while True:
            now = time.monotonic()
            if now - self._checked_at >= _LOSS_CHECK:
                with contextlib.suppress(Exception):  # Redis down: the next round retries
                    await self.check_lost()
            recheck = _IDLE_RECHECK  # seconds until a fed stream may go back into XREAD
            streams: dict[Any, Any] = {}
            self._poked = False
            for key, watch in list(self._watches.items()):
                # A stream stays in the XREAD for two rounds after its last waiter:
                # cursors that just took a batch come back to wait on the read in
                # flight instead of each poking the follower again.
                watch.idle = 0 if watch.waiters else watch.idle + 1
                fed = watch.fed(now)
                if watch.idle > 2 and not fed:
                    watch.active = False
                    del self._watches[key]
                    continue
                if fed:
                    watch.active = False
                    if watch.waiters:
                        recheck = min(recheck, watch.fed_at + _LOCAL_QUIET - now)
                    continue
                watch.active = True
                streams[key] = f"{watch.last >> 1}-{watch.last & 1}"
            if not streams:
                self._need = asyncio.Event()
                with anyio.move_on_after(max(recheck, 0.001)):
                    await self._need.wait()
                continue
            try:
                await self._read(streams, recheck)
            except Exception:  # Redis down, or garbage in a stream: cursors check themselves
                for watch in self._watches.values():
                    watch.active = False
                self._wake_all()
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)
            else:
                delay = _FIRST_DELAY

    async def _read(self, streams: dict[Any, Any], recheck: float) -> None:
        """Read ``streams`` (key -> last id) once, blocking while nothing comes.

        With the backend's pipeline, the blocking ``XREAD`` only says which streams
        have news (one entry each at most); their entries then come with one
        :data:`_READ` call, as one string, and so does every next read until one
        finds nothing.
        """
        pipe = self.pipe
        if pipe is not None and self._flowing:
            self._flowing = await self._read_all(pipe, streams)
            return
        keys = list(streams)
        streams[self._wake_key] = self._wake_id
        block = max(1, min(_BLOCK_MS, int(recheck * 1000) + 1))
        reply = await self._client.xread(
            streams, count=1 if pipe is not None else _BATCH, block=block
        )
        if pipe is None:
            self._deliver(reply)
            return
        news = self._deliver(reply, keep=False)
        if not news:
            return
        if any(watch.local for watch, _ in news):
            # This worker's own append may be what woke the XREAD (a stream left in it
            # because its appends paused, a slow stream): once the replies of the
            # pipeline's calls in flight are in, feed has the entry, and it is not
            # read back (the script that stored it was sent before the XREAD woke).
            with contextlib.suppress(Exception):  # a failed pipeline: _READ finds out
                await pipe.settle()
            if all(key <= watch.last for watch, key in news):
                return
        watches = self._watches
        self._flowing = await self._read_all(
            pipe,
            {
                key: f"{watch.last >> 1}-{watch.last & 1}"
                for key in keys
                if (watch := watches.get(key)) is not None
            },
        )

    async def _read_all(self, pipe: _Pipe, streams: dict[Any, Any]) -> bool:
        """Read what follows in ``streams`` with one script call; whether any came."""
        keys = list(streams)
        if not keys:
            return False
        result = await _script(
            pipe, _READ, (str(len(keys)), *keys, *streams.values(), _BATCH_ARG), text=True
        )
        self.reads += 1
        data = result.encode() if isinstance(result, str) else result
        if not data:
            return False
        grouped: dict[int, list[tuple[bytes, bytes]]] = {}
        for line in data.split(b"\n"):
            index, entry_id, text = line.split(b" ", 2)
            grouped.setdefault(int(index), []).append((entry_id, text))
        for index, entries in grouped.items():
            watch = self._watches.get(keys[index - 1])
            if watch is None:
                continue
            known = watch.last
            sid = watch.session_id
            fresh: list[_Item] = []
            for entry_id, text in entries:
                key = _key_of(entry_id)
                if key > known:
                    fresh.append((key, None if key & 1 else _event_of(text, key >> 1, sid)))
            if fresh:
                self.fetched += len(fresh)
                watch.add(fresh)
        return True

    def _deliver(self, reply: Any, *, keep: bool = True) -> list[tuple[_Watch, int]]:
        """Take in an ``XREAD`` (or ``XRANGE``) reply.

        Returns the streams that had news: each one's watch and the order key of its
        first entry in the reply. ``keep=False``: only note the wake-up stream's newest
        id (the entries are read again with :data:`_READ`).
        """
        pairs = reply.items() if isinstance(reply, dict) else (reply or ())
        news: list[tuple[_Watch, int]] = []
        for raw_key, entries in pairs:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if key == self._wake_key:
                last = entries[-1][0]
                self._wake_id = last.decode() if isinstance(last, bytes) else last
                continue
            watch = self._watches.get(key)
            if watch is None or not entries:
                continue
            news.append((watch, _key_of(entries[0][0])))
            if not keep:
                continue
            self.reads += 1
            known = watch.last
            fresh = _items(
                [entry for entry in entries if _key_of(entry[0]) > known], watch.session_id
            )
            if fresh:
                self.fetched += len(fresh)
                watch.add(fresh)
        return news


class _ClusterFollower(_Follower):
    """The follower on Redis Cluster, where one command cannot read streams of two slots.

    Each round sends one ``XRANGE`` per followed stream in one cluster pipeline (one
    round trip per node, in parallel), then, when nothing came, waits before the next
    round: 2 ms, doubling to ``_CLUSTER_IDLE`` while the streams stay quiet. A new
    cursor starts a round at once. Streams this worker appends to are fed by its own
    appends and left out, as on a single node.
    """

    def __init__(self, client: Any, retry_for: float) -> None:
        super().__init__(client, "", retry_for)
        self._idle = _CLUSTER_FIRST_IDLE

    async def _poke(self) -> None:
        self._need.set()

    async def _read(self, streams: dict[Any, Any], recheck: float) -> None:
        pipe = self._client.pipeline(transaction=False)
        keys = list(streams)
        for key in keys:
            pipe.xrange(key, f"({streams[key]}", "+", count=_BATCH)
        replies = await pipe.execute()
        pairs = [(key, entries) for key, entries in zip(keys, replies, strict=True) if entries]
        self._deliver(pairs)
        need = self._need
        if pairs:
            self._idle = _CLUSTER_FIRST_IDLE
        elif not need.is_set():
            with anyio.move_on_after(min(self._idle, max(recheck, 0.001))):
                await need.wait()
            self._idle = min(self._idle * 2, _CLUSTER_IDLE)
        if need.is_set():
            self._need = asyncio.Event()


class _Batch:
    """One log's events in one append round, and what became of them."""

    __slots__ = (
        "_waiter",
        "counter",
        "detached",
        "done",
        "error",
        "events",
        "flags",
        "stored",
        "texts",
    )

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []
        self.texts: list[bytes] = []
        # The final flags, one "0" or "1" per event: a str, which the garbage
        # collector does not track (one list less per log per round).
        self.flags = ""
        # The stored copies; the events list itself when each event already carries
        # its stored seq (append_nowait's, unless another writer came in between).
        self.stored: list[StreamEvent] = []
        self.error: BaseException | None = None
        self.done = False
        # Made only when a caller waits (most batches are paced tokens nobody awaits).
        self._waiter: asyncio.Event | None = None
        self.counter = 0
        self.detached = 0  # events appended without waiting (enqueue)

    def finish(self) -> None:
        """Mark the batch stored (or failed); wake who waits for it."""
        self.done = True
        if self._waiter is not None:
            self._waiter.set()

    async def wait(self) -> None:
        """Wait until :meth:`finish`."""
        if not self.done:
            if self._waiter is None:
                self._waiter = asyncio.Event()
            await self._waiter.wait()

    def result(self, index: int, session_id: str) -> StreamEvent:
        """The stored copy of event ``index``, or the error that kept it out."""
        if index < len(self.stored):
            return self.stored[index]
        error = self.error
        if isinstance(error, BackendError):
            raise BackendError(str(error), session_id=session_id) from error.__cause__
        raise ClosedError("the log is closed", session_id=session_id)


#: What the append script says of one log's batch: first seq, events accepted, the
#: oldest entry's id (``"-"``: none); or ``(-1, held, "<seen>")`` if Redis lost events.
_Reply = tuple[int, int, str]


def _replies(result: bytes | str) -> list[_Reply]:
    """Split the append script's reply into one :data:`_Reply` per log."""
    words = _text(result).split()
    return [(int(words[j]), int(words[j + 1]), words[j + 2]) for j in range(0, len(words), 3)]


def _lost_error(have: int, seen: str, session_id: str) -> BackendError:
    return BackendError(
        f"Redis lost events of this log: it holds seq {have}, this writer had "
        f"seen seq {seen} (restarted without its data, or failed over to a "
        "replica that missed the newest writes)",
        session_id=session_id,
    )


def _append_error(exc: BaseException, session_id: str | None) -> BackendError:
    """The error for a failed Redis command, saying what a full Redis means."""
    text = str(exc)
    if isinstance(exc, ResponseError) and (text.startswith("OOM") or "'maxmemory'" in text):
        return BackendError(
            "Redis is full (used memory is over maxmemory and the policy evicts "
            f"nothing): nothing was written; reads still work ({exc})",
            session_id=session_id,
        )
    return BackendError(f"redis failed: {exc}", session_id=session_id)


class _Appender:
    """Group commit: the appends of every log of one backend travel together.

    Appends queue per log; one task sends everything queued as one pipeline (one
    script call per log with all its queued events, one round trip on a single node)
    while the next appends queue up behind it. Each log is a writer with a counter per
    batch, so a pipeline resent after a lost connection stores nothing twice. An event
    is handed to readers (and its ``append`` returns) only once Redis has stored it.
    """

    def __init__(
        self,
        client: Any,
        retry_for: float,
        follower: _Follower | None,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        self._client = client
        self._retry_for = retry_for
        self._follower = follower
        self._replicas = replicas
        self._replica_ms = max(1, round(replica_timeout * 1000))
        self._queue: dict[RedisEventLog, _Batch] = {}
        self._kick = asyncio.Event()
        self._sha = hashlib.sha1(_APPEND.encode()).hexdigest()  # noqa: S324 - Redis's id
        self._sha_wire = _bulk(b"EVALSHA") + _bulk(self._sha.encode())
        # Where the rounds' script calls go, written as RESP by hand (single node, no
        # replicas): the backend's automatic pipeline.
        self.pipe: _Pipe | None = None
        self.closed = False
        self.rounds = 0
        self._in_flight = 0
        self._queued = 0  # events queued, not yet in a round
        # Set when the next round should not wait: an append awaits it, or enough
        # events queued; else at the end of the gap after the previous round.
        self._hurry = asyncio.Event()
        self._began = -_ROUND_GAP  # when the newest round began
        self._crash: BaseException | None = None  # a round's unexpected error

    def submit(
        self, log: RedisEventLog, event: StreamEvent, text: bytes, *, kick: bool = True
    ) -> tuple[_Batch, int]:
        """Queue ``event`` (its stored JSON ``text``) for ``log``'s next batch."""
        batch = self._queue.get(log)
        if batch is None:
            batch = self._queue[log] = _Batch()
            log._pending = batch
            if kick and not log._sending:
                self._kick.set()
        batch.events.append(event)
        batch.texts.append(text)
        batch.flags += "1" if event.event_type in _FINAL_TYPES else "0"
        queued = self._queued = self._queued + 1
        if queued >= _LINGER_EVENTS:
            self._hurry.set()
        predicted = log._predicted
        log._predicted = (predicted if predicted > log._last else log._last) + 1
        return batch, len(batch.events) - 1

    async def run(self) -> None:
        # Each round is a plain asyncio task (the backend runs on asyncio only), not a
        # task group's: no cancel scope and task state per round. They are cancelled
        # and awaited when this task ends; one that fails ends it with its error.
        loop = asyncio.get_running_loop()
        rounds: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            rounds.discard(task)
            if not task.cancelled() and task.exception() is not None and self._crash is None:
                self._crash = task.exception()
                self._kick.set()
                self._hurry.set()

        try:
            while True:
                if self._crash is not None:
                    raise self._crash
                # Up to _ROUNDS_IN_FLIGHT rounds at once, each log in at most one
                # (its batches reach Redis in order; a retry is recognised).
                ready = [log for log in self._queue if not log._sending]
                if not ready or self._in_flight >= _ROUNDS_IN_FLIGHT:
                    self._kick = asyncio.Event()
                    await self._kick.wait()
                    continue
                # A few events trickling in (paced streams) wait for the next
                # round's turn, at most _ROUND_GAP after the previous round
                # began: one round then carries many sessions' events.
                wait = self._began + _ROUND_GAP - time.monotonic()
                hurry = self._hurry
                if wait > 0 and not hurry.is_set():
                    timer = loop.call_later(wait, hurry.set)
                    try:
                        await hurry.wait()
                    finally:
                        timer.cancel()
                    continue
                hurry.clear()
                batches = [(log, self._queue.pop(log)) for log in ready]
                self._queued = sum(len(batch.events) for batch in self._queue.values())
                for log, _ in batches:
                    log._sending = True
                self._in_flight += 1
                self._began = time.monotonic()
                task = loop.create_task(self._round(batches))
                rounds.add(task)
                task.add_done_callback(done)
                await anyio.lowlevel.checkpoint()
        finally:
            for task in rounds:
                task.cancel()
            if rounds:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(set(rounds))
            self.closed = True
            self._fail(list(self._queue.items()), BackendError("the Redis backend closed"))
            self._queue = {}

    def hurry(self) -> None:
        """An append waits for the next round: send it without the gap."""
        self._hurry.set()

    def idle(self, log: RedisEventLog) -> bool:
        """Whether nothing is queued or in flight, so ``log``'s append may go at once."""
        return not self._in_flight and not self._queue and not log._sending

    async def lead(self, log: RedisEventLog) -> None:
        """Send ``log``'s batch in the calling task (nothing else was waiting)."""
        batch = self._queue.pop(log)
        self._queued -= len(batch.events)
        log._sending = True
        self._in_flight += 1
        await self._round([(log, batch)])

    async def _round(self, batches: list[tuple[RedisEventLog, _Batch]]) -> None:
        try:
            await self._flush(batches)
        finally:
            self._in_flight -= 1
            for log, _ in batches:
                log._sending = False
            if self._queue:
                self._kick.set()

    @staticmethod
    def _fail(batches: Sequence[tuple[RedisEventLog, _Batch]], error: BaseException) -> None:
        for log, batch in batches:
            if not batch.done:
                batch.error = error
                if batch.detached:
                    log._failure = error
                batch.finish()

    def _unconfirmed(self, log: RedisEventLog, got: str) -> BackendError:
        return BackendError(
            f"Redis stored these events on its master, but {self._replicas} replica(s) did "
            f"not confirm them within {self._replica_ms / 1000:g} s (WAIT answered {got}): "
            "a failover now could lose them; the append is not confirmed",
            session_id=log.session_id,
        )

    async def _flush(self, batches: list[tuple[RedisEventLog, _Batch]]) -> None:
        self.rounds += 1
        for log, batch in batches:
            log._counter += 1
            batch.counter = log._counter
        # A plain object, not a closure that names itself: a round leaves no reference
        # cycle behind (the garbage collector would have to find every round's).
        send = _Send(self, batches)
        replies = send.replies
        unconfirmed = send.unconfirmed
        try:
            try:
                await _call(send.run, self._retry_for)
            except BackendError as exc:
                self._fail(batches, exc)
                return
            stale = False
            for i, ((log, batch), reply) in enumerate(zip(batches, replies, strict=True)):
                try:
                    if isinstance(reply, BaseException):
                        raise _append_error(reply, log.session_id) from reply
                    if i in unconfirmed and reply[0] > 0:
                        # Stored on the master only: not for this worker's readers (a
                        # later confirmed round covers it; they then read it).
                        self._fail([(log, batch)], self._unconfirmed(log, unconfirmed[i]))
                        stale = True
                        if self._follower is not None:
                            self._follower.feed(log, 0, ())  # read it from Redis later
                        continue
                    log._committed(batch, reply)
                except BackendError as exc:
                    batch.error = exc
                    if batch.detached:
                        log._failure = exc
                    stale = True
                    if not isinstance(reply, BaseException) and not log._closed:
                        # Redis lost events readers may have had: end the log with an
                        # error event after the newest seq this writer saw, so that no
                        # reader waits for ever and a resume from before sees the gap.
                        log._closed = True
                        final = make_event(
                            EventType.ERROR,
                            "",
                            MappingProxyType(
                                {"error_type": "BackendError", "message": str(exc)[:1000]}
                            ),
                        )
                        self.submit(log, final, final.to_json().encode())[0].detached += 1
                batch.finish()
            follower = self._follower
            if follower is not None and (stale or follower.stale):
                await follower.restale()
        finally:
            self._fail(batches, BackendError("the Redis backend closed"))


def _bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _bulks(args: Sequence[str | bytes | int]) -> bytes:
    """Arguments as RESP bulk strings, one after the other."""
    out = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _text_bulks(args: Sequence[str | bytes | int]) -> bytes:
    """Arguments as RESP bulk strings: one encoding for all when they are ASCII str.

    Anything else (bytes, numbers, other characters) goes through :func:`_bulks`.
    """
    try:
        whole = "".join(args)  # type: ignore[arg-type]  # TypeError: not all str
    except TypeError:
        return _bulks(args)
    if not whole.isascii():  # a str's length is then not its bytes'
        return _bulks(args)
    strs = cast("Sequence[str]", args)
    return "".join([f"${len(arg)}\r\n{arg}\r\n" for arg in strs]).encode()


def _pack(args: Sequence[str | bytes | int]) -> bytes:
    """One command as RESP."""
    return b"*%d\r\n%b" % (len(args), _bulks(args))


#: Each script's "EVALSHA <sha1>" as RESP bulks (filled as scripts are first called).
_EVALSHA: dict[str, bytes] = {}


async def _script(
    pipe: _Pipe, script: str, args: Sequence[str | bytes | int], *, text: bool = False
) -> Any:
    """Call ``script`` with ``args`` (its key count, keys and arguments) through ``pipe``.

    ``text``: the arguments are mostly ASCII str (see :func:`_text_bulks`).

    By SHA1, so that Redis neither reads nor hashes the script's text at every call; a
    ``NOSCRIPT`` reply (a Redis that has not seen it, or restarted) sends it once as
    ``EVAL``, which loads it.

    Raises:
        RedisError: the script failed (an error reply).
        Exception: the connection failed (see :meth:`_Pipe.call`).
    """
    name = _EVALSHA.get(script)
    if name is None:
        sha = hashlib.sha1(script.encode()).hexdigest().encode()  # noqa: S324
        name = _EVALSHA[script] = _bulk(b"EVALSHA") + _bulk(sha)
    # The command's length is the call's own: a script's arguments may vary in number.
    body = _text_bulks(args) if text else _bulks(args)
    (result,) = await pipe.call([b"*%d\r\n%b%b" % (len(args) + 2, name, body)])
    if isinstance(result, NoScriptError):
        (result,) = await pipe.call([_pack(("EVAL", script, *args))])
    if isinstance(result, BaseException):
        raise result
    return result


async def _send(conn: Any, chunks: list[bytes]) -> None:
    """Write ``chunks`` on ``conn`` (a redis-py connection).

    Connected, they go straight to its stream: redis-py's ``send_packed_command`` wraps
    every write in ``asyncio.wait_for`` when the connection has a socket timeout (the
    default), a task and a timer per write. A write that the transport's buffer takes
    whole needs no wait; one that does not (a Redis that reads slowly) waits through
    ``send_packed_command``, with its timeout and its errors; so does a connection that
    is closed (it reconnects).
    """
    writer = getattr(conn, "_writer", None)
    if writer is None or writer.transport.is_closing():
        await conn.send_packed_command(chunks, check_health=False)
        return
    writer.writelines(chunks)
    if writer.transport.get_write_buffer_size():
        await conn.send_packed_command([], check_health=False)  # drain, with the timeout


class _Pipe:
    """Automatic pipelining on one connection.

    What the worker's tasks send in one loop iteration goes out in one write, and the
    replies are read back in order. One batch is in flight at a time; calls made
    meanwhile form the next batch. A caller that is cancelled leaves its reply to be
    read and dropped, so the connection stays in step. A failed connection fails every
    call of its batch (``_call`` retries them); the next batch reconnects.
    """

    __slots__ = ("_busy", "_conn", "_flight", "_kick", "_queue")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._queue: list[tuple[list[bytes], int, asyncio.Future[list[Any]]]] = []
        self._flight: list[tuple[list[bytes], int, asyncio.Future[list[Any]]]] = []
        self._kick = asyncio.Event()
        self._busy = False  # a batch is in flight

    async def call(self, chunks: list[bytes], replies: int = 1) -> list[Any]:
        """Send ``chunks`` (``replies`` commands); return their replies.

        A reply that is an error comes back as its :class:`ResponseError`.

        Raises:
            Exception: the connection failed (a redis-py ``ConnectionError``, retryable).
        """
        if not self._busy and not self._queue:
            return await self._direct(chunks, replies)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((chunks, replies, future))
        self._kick.set()
        return await future

    async def settle(self) -> None:
        """Wait until the replies of every call sent or queued so far have been read.

        Sends nothing: an empty call queued behind the others.
        """
        if self._busy or self._queue:
            await self.call([], 0)

    async def _direct(self, chunks: list[bytes], replies: int) -> list[Any]:
        """Nothing in flight or queued: send and read in the calling task."""
        conn = self._conn
        self._busy = True
        try:
            await _send(conn, chunks)
            return await self._read(replies)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.disconnect()
            raise
        finally:
            self._busy = False
            if self._queue:
                self._kick.set()

    async def _read(self, count: int) -> list[Any]:
        results: list[Any] = []
        for _ in range(count):
            try:
                results.append(await self._conn.read_response())
            except ResponseError as exc:  # read whole: still in step
                results.append(exc)
        return results

    async def run(self) -> None:
        conn = self._conn
        try:
            while True:
                if not self._queue or self._busy:
                    self._kick.clear()
                    await self._kick.wait()
                    continue
                batch = self._flight = self._queue
                self._queue = []
                self._busy = True
                try:
                    packed = [chunk for chunks, _, _ in batch for chunk in chunks]
                    if packed:  # else only settle's empty calls
                        await _send(conn, packed)
                    for _, count, future in batch:
                        results = await self._read(count)
                        if not future.done():
                            future.set_result(results)
                except Exception as exc:
                    with anyio.CancelScope(shield=True):
                        await conn.disconnect()
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                finally:
                    self._busy = False
        finally:
            closed = BackendError("the Redis backend closed")
            for _, _, future in (*self._flight, *self._queue):
                if not future.done():
                    future.set_exception(closed)
            self._flight = self._queue = []


class _Send:
    """The script calls of one append round; after a lost connection, resent in part.

    On a single node without replicas, the calls are written as RESP by hand (each
    event's JSON is encoded once, when it is appended; a log's keys and limits once
    per log) through the backend's automatic pipeline (:class:`_Pipe`). Elsewhere (a Cluster,
    ``WAIT`` for replicas, a log without an entered backend) they go through redis-py.
    """

    __slots__ = ("_appender", "_batches", "_todo", "replies", "unconfirmed")

    def __init__(self, appender: _Appender, batches: list[tuple[RedisEventLog, _Batch]]) -> None:
        self._appender = appender
        self._batches = batches
        self._todo = list(range(len(batches)))
        self.replies: list[Any] = [None] * len(batches)
        # With replicas: the batches (by index) whose WAIT fell short, and why.
        self.unconfirmed: dict[int, str] = {}

    async def run(self) -> None:
        """Send what is left to send; load the script first where Redis lacks it.

        Raises:
            Exception: a retryable failure (see ``_call``) after the other calls'
                replies were taken in.
        """
        while self._todo:
            if not await self._once():
                return

    async def _once(self) -> bool:
        """Send the calls left once; return whether Redis lacked the script."""
        appender = self._appender
        client = appender._client
        cluster = _is_cluster(client)
        per_call = 1 if cluster else _LOGS_PER_CALL
        todo = self._todo
        groups = [todo[j : j + per_call] for j in range(0, len(todo), per_call)]
        pipe = appender.pipe
        if pipe is not None and not appender._replicas:
            results = await self._wire(appender, pipe, groups)
        else:
            results = await self._pipeline(appender, groups, cluster)
        missing = False
        retry: list[int] = []
        failure: BaseException | None = None
        replies = self.replies
        for group, result in zip(groups, results, strict=True):
            if isinstance(result, NoScriptError):
                missing = True
                retry += group
            elif isinstance(result, _RETRYABLE):
                failure = result
                retry += group
            elif isinstance(result, BaseException):
                for i in group:
                    replies[i] = result
            else:
                for i, reply in zip(group, _replies(result), strict=True):
                    replies[i] = reply
        self._todo = retry
        if missing:  # a restarted (or new) server: load the script, send again
            await client.script_load(_APPEND)
        if failure is not None:
            raise failure
        return missing

    async def _wire(self, appender: _Appender, pipe: _Pipe, groups: list[list[int]]) -> list[Any]:
        batches = self._batches
        sha = appender._sha_wire
        chunks: list[bytes] = []
        for group in groups:
            count = 3
            keys: list[bytes] = []
            args: list[bytes] = []
            for i in group:
                log, batch = batches[i]
                wire = log._wire
                if wire is None:
                    wire = log._wire = (
                        _bulk(log._stream.encode()) + _bulk(log._meta.encode()),
                        _bulk(str(log._max_events).encode())
                        + _bulk(str(log._max_bytes).encode())
                        + _bulk(log._writer.encode()),
                    )
                keys.append(wire[0])
                counter = b"%d" % batch.counter
                flags = batch.flags.encode()
                seen = b"%d" % log._last
                args.append(
                    b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                    % (wire[1], len(counter), counter, len(flags), flags, len(seen), seen)
                )
                texts = batch.texts
                args += [b"$%d\r\n%b\r\n" % (len(data), data) for data in texts]
                count += 8 + len(texts)
            chunks.append(b"*%d\r\n%b%b" % (count, sha, _bulk(b"%d" % (2 * len(group)))))
            chunks += keys
            chunks += args
        return await pipe.call(chunks, len(groups))

    async def _pipeline(
        self, appender: _Appender, groups: list[list[int]], cluster: bool
    ) -> list[Any]:
        batches = self._batches
        client = appender._client
        calls: list[list[Any]] = []
        for group in groups:
            keys: list[str] = []
            args: list[Any] = []
            for i in group:
                log, batch = batches[i]
                keys += (log._stream, log._meta)
                args += (
                    log._max_events,
                    log._max_bytes,
                    log._writer,
                    batch.counter,
                    batch.flags,
                    log._last,
                    *batch.texts,
                )
            calls.append([appender._sha, len(keys), *keys, *args])
        results: list[Any]
        waits: dict[str, tuple[Any, list[int]]] = {}
        if len(calls) == 1 and not appender._replicas:  # no pipeline object to build
            try:
                return [await client.evalsha(*calls[0])]
            except ResponseError as exc:
                return [exc]
        pipe = client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(*call)
        replicas = appender._replicas
        if replicas:
            # WAIT on the connection (per master, on a cluster) that carried the
            # writes: it returns once that many replicas have them.
            for i in self._todo:
                node = client.get_node_from_key(batches[i][0]._stream) if cluster else None
                name = "" if node is None else node.name
                waits.setdefault(name, (node, []))[1].append(i)
            for node, _ in waits.values():
                target = {} if node is None else {"target_nodes": node}
                pipe.execute_command("WAIT", replicas, appender._replica_ms, **target)
        results = await pipe.execute(raise_on_error=False)
        acks = results[len(calls) :]
        unconfirmed = self.unconfirmed
        for (_, indices), ack in zip(waits.values(), acks, strict=True):
            for i in indices:
                if isinstance(ack, int) and ack >= replicas:
                    unconfirmed.pop(i, None)
                else:
                    unconfirmed[i] = str(ack)
        return results[: len(calls)]


class _RedisCursor(EventCursor):
    __slots__ = (
        "_allow",
        "_buf",
        "_done",
        "_live",
        "_log",
        "_owed",
        "_owner",
        "_pos",
        "_started",
    )

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
        # Transient events appended by this process while it read, by seq: handed out in
        # place of their stand-ins.
        self._owed: dict[int, StreamEvent] | None = None
        # Told when __anext__ raises (see owned_by).
        self._owner: Any = None

    @property
    def position(self) -> int:
        return self._pos

    def owned_by(self, owner: Any) -> Callable[[], Coroutine[Any, Any, StreamEvent]]:
        """Report to ``owner`` whatever ``__anext__`` raises; return ``__anext__`` itself.

        For a wrapper that closes itself when the cursor ends or fails (a subscription):
        it hands out this cursor's own coroutine instead of one of its own around it, as
        the in-memory log's cursor does. ``owner.cursor_ended(exc)`` is awaited before
        ``exc`` propagates; the cursor has released itself before a
        ``StopAsyncIteration``. ``None`` stops the reports.
        """
        self._owner = owner
        return self._next

    async def _next(self) -> StreamEvent:
        try:
            if not self._buf and not self._done:
                follower = self._log._follower
                if self._live and follower is not None:
                    # A live cursor waits on the follower here (one coroutine less per
                    # event than through _fill); nothing there: _fill reads Redis.
                    items = await follower.wait(self._log, self._pos)
                    if items:
                        if len(items) == 1:
                            key, event = items[0]
                            if key == 2 * self._pos + 2 and event is not None:
                                # The next event alone (a live reader's common case):
                                # one behind is within any max_lag, which resets.
                                self._allow = self._log._max_lag
                                return self._deliver(event)
                        self._took(items)
                    else:
                        self._live = False
                if not self._buf and not self._done:
                    await self._fill()
            if not self._buf:
                self._finish()
                raise StopAsyncIteration
        except BaseException as exc:
            owner = self._owner
            if owner is not None:
                await owner.cursor_ended(exc)
            raise
        return self._deliver(self._buf.popleft())

    def _deliver(self, event: StreamEvent) -> StreamEvent:
        self._pos = event.seq or self._pos
        owed = self._owed
        if owed:
            event = owed.pop(self._pos, event)
        self._log._delivered += 1
        if event.event_type in _FINAL_TYPES:
            self._finish()
        return event

    # The coroutine function itself: no frame of its own around it per event.
    __anext__ = _next

    async def _query(self) -> tuple[list[_Item], int, bool, str]:
        """Read the log's state and the entries after this cursor: one script call.

        Returns the entries, the newest seq, whether the log is closed, and the oldest
        entry's id (``"-"`` if none).
        """
        log = self._log
        args = (log._stream, log._meta, f"{self._pos + 1}-0", _BATCH_ARG)
        appender = log._appender
        pipe = None if appender is None else appender.pipe
        if pipe is None:
            result = await log._client.eval(_QUERY, 2, *args)
        else:
            result = await _script(pipe, _QUERY, ("2", *args), text=True)
        data = result.encode() if isinstance(result, str) else result
        head, _, rest = data.partition(b"\n")
        last, closed, first = head.split(b" ")
        sid = log.session_id
        items: list[_Item] = []
        for line in rest.split(b"\n") if rest else ():
            entry_id, _, text = line.partition(b" ")
            key = _key_of(entry_id)
            items.append((key, None if key & 1 else _event_of(text, key >> 1, sid)))
        return items, int(last), closed == b"1", first.decode()

    def _take(self, items: list[_Item]) -> None:
        buf = self._buf
        expected = (buf[-1].seq or 0) + 1 if buf else self._pos + 1
        for key, event in items:
            if event is None:
                self._finish()
                return
            seq = key >> 1
            if seq != expected:
                if seq < expected:
                    continue
                if buf:  # hand out what came before the gap first
                    return
                self._finish()
                raise HistoryGap(
                    f"events {expected} to {seq - 1} are missing from Redis (it lost "
                    "them: restarted without its data, or failed over to a replica "
                    "that missed them)",
                    after=self._pos,
                    oldest_seq=seq,
                    session_id=self._log.session_id,
                )
            buf.append(event)
            expected += 1

    def _took(self, items: list[_Item]) -> None:
        """Take entries the follower had, checking this reader's lag first."""
        backlog = (items[-1][0] >> 1) - self._pos
        max_lag = self._log._max_lag
        if backlog <= max_lag:  # within any allowance, which then resets
            self._allow = max_lag
        else:
            self._check_lag(backlog, self._pos + 1)
        self._take(items)

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
        ending_lost = False
        while not self._buf and not self._done:
            follower = log._follower
            if follower is not None and self._started:
                # What the follower already read for another cursor costs no round trip
                # (wait takes it first, without waiting).
                if self._live:
                    items = await follower.wait(log, self._pos)
                else:
                    items = follower.cached(log, self._pos)
                    if not items and follower.following(log):
                        items = await follower.wait(log, self._pos)
                if items:
                    self._took(items)
                    continue
                self._live = False
            entries, last, closed, first = await _call(self._query, log._retry_for, sid)
            oldest = last + 1
            if first != "-":
                key = _key_of(first)
                oldest = last + 1 if key & 1 else key >> 1
            log._observe(last, oldest, closed)
            if last < self._pos and self._started:
                if not ending_lost:
                    # Redis lost what this reader had: end the log with an error event
                    # after it (every reader gets a final event), then read it.
                    ending_lost = True
                    with contextlib.suppress(RedisError, OSError):
                        await _end_lost(log._client, log._stream, self._pos, sid)
                        continue
                self._finish()
                raise BackendError(
                    f"Redis lost this session's events after seq {last}; this reader had "
                    f"seq {self._pos} (restarted without its data, or failed over to a "
                    "replica that missed them)",
                    session_id=sid,
                )
            if not self._started:
                self._started = True
                log._readers += 1
                log._cursors.add(self)
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
            self._take(entries)
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

            await _call(block, log._retry_for, sid, blocking=True)

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
            self._log._cursors.discard(self)
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
        client: A ``redis.asyncio.Redis`` or ``RedisCluster`` client.
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
        "_appender",
        "_busy",
        "_client",
        "_closed",
        "_counter",
        "_cursors",
        "_delivered",
        "_failure",
        "_follower",
        "_head",
        "_lagged_count",
        "_last",
        "_local",
        "_max_bytes",
        "_max_event_bytes",
        "_max_events",
        "_max_lag",
        "_meta",
        "_oldest",
        "_owed",
        "_pending",
        "_policy",
        "_predicted",
        "_readers",
        "_retry_for",
        "_sending",
        "_session_id",
        "_stream",
        "_tail",
        "_wire",
        "_writer",
    )

    def __init__(
        self,
        client: aredis.Redis | RedisCluster,
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
        self._client: Any = client
        self._append_script = client.register_script(_APPEND)
        self._stream = f"{prefix}:{{{self._session_id}}}:log"
        self._meta = f"{prefix}:{{{self._session_id}}}:meta"
        self._last = 0
        self._oldest = 1
        self._closed = False
        # The retained events this process knows, each as b"<seq> <stored JSON>":
        # bytes, which the garbage collector never tracks (a deque of events would
        # bring every collection closer by three objects per token, and make every
        # full collection walk each of them).
        self._local: deque[bytes] = deque(maxlen=self._max_events)
        self._readers = 0
        # This process's started cursors, and the transient events whose stand-ins are
        # on their way to Redis (by the stand-in's id): see _transient.
        self._cursors: set[_RedisCursor] = set()
        self._owed: dict[int, StreamEvent] | None = None
        self._delivered = 0
        self._lagged_count = 0
        self._follower: _Follower | None = None
        self._writer = secrets.token_hex(6)
        self._counter = 0
        self._busy: anyio.Event | None = None
        self._appender: _Appender | None = None  # set by RedisBackend.make_log
        self._pending: _Batch | None = None  # the newest batch queued in the appender
        self._predicted = 0  # the seq the newest event queued is expected to get
        self._sending = False  # whether a batch of this log is in flight
        self._failure: BaseException | None = None  # of an enqueue, not yet raised
        # The RESP of its keys and of its limits and writer id (see _Send).
        self._wire: tuple[bytes, bytes] | None = None
        self._tail: str | None = None  # the end of its events' JSON, before the seq
        self._head = ""  # the id of the oldest entry the newest append reported

    async def refresh(self) -> None:
        """Load ``last_seq``, ``oldest_seq`` and ``is_closed`` from Redis.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        _require_asyncio()

        appender = self._appender
        wire = None if appender is None else appender.pipe

        async def query() -> tuple[Any, Any]:
            if wire is not None:  # the backend's pipeline: no pool checkout
                replies = await wire.call(
                    [
                        _pack(("HMGET", self._meta, "last", "closed")),
                        _pack(("XRANGE", self._stream, "-", "+", "COUNT", "1")),
                    ],
                    2,
                )
                for reply in replies:
                    if isinstance(reply, BaseException):
                        raise reply
                return replies[0], replies[1]
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
        local = self._local
        for entry_id, fields in entries:
            key = _key_of(entry_id)
            if not key & 1:
                text = fields[b"e"]
                data = text if isinstance(text, bytes) else text.encode()
                local.append(b"%d %b" % (key >> 1, data))

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

    def _prepare(self, event: StreamEvent) -> bytes:
        """Check ``event`` for an append; return the JSON to store, encoded."""
        if not isinstance(event, StreamEvent):
            raise ValidationError(
                f"event must be a StreamEvent, got {type_name(event)}", field="event"
            )
        if self._appender is None:  # an entered backend runs on asyncio only
            _require_asyncio()
        failure = self._failure
        if failure is not None:
            self._failure = None
            if isinstance(failure, BackendError):
                raise BackendError(str(failure), session_id=self._session_id) from failure
            raise failure
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
        text = bare.to_json().encode()
        # The stored copy's JSON, with its seq and session id filled in.
        size = len(text) + len(self._session_id) + len(str(self._last + 1)) + 1
        if size > self._max_event_bytes:
            raise PayloadTooLarge(
                f"the event is {size} bytes, over the limit of {self._max_event_bytes}",
                field="event",
                session_id=self._session_id,
            )
        return text

    def _stamped(self, event: StreamEvent, seq: int) -> bytes:
        """Stamp a fresh ``event`` with ``seq`` in place; return the JSON to store.

        The event's own JSON (with its seq) is made once and cached on it, for the
        transports; the stored JSON is that text with a null seq and session id, as
        :meth:`_prepare` makes it, without a second event or a second encoding.

        Raises:
            The errors of :meth:`_prepare` (the event is then left as it was).
        """
        if self._failure is not None or self._closed:
            return self._prepare(event)  # raises
        # No loop check: only append_nowait and append call this, with an entered
        # backend's appender, and a backend is entered on asyncio only.
        sid = self._session_id
        before = event.session_id
        stamp(event, seq, sid)
        full = event.to_json()
        tail = self._tail
        if tail is None:
            tail = self._tail = f',"session_id":{json.encoder.encode_basestring(sid)},"seq":'
        end = f"{tail}{seq}}}"
        if not full.endswith(end):  # pragma: no cover - every encoder writes seq last
            stamp(event, None, before)  # type: ignore[arg-type]
            return self._prepare(event)
        text = (full[: -len(end)] + ',"session_id":null,"seq":null}').encode()
        size = len(text) + len(sid) + len(str(self._last + 1)) + 1
        if size > self._max_event_bytes:
            stamp(event, None, before)  # type: ignore[arg-type]
            raise PayloadTooLarge(
                f"the event is {size} bytes, over the limit of {self._max_event_bytes}",
                field="event",
                session_id=sid,
            )
        return text

    def _transient(self, event: StreamEvent) -> StreamEvent:
        """Return what to store for ``event``: a transient part's stand-in, else itself.

        The part goes to this process's readers that are reading when it is stored;
        Redis, other workers and any later reader get the stand-in (a heartbeat).
        """
        if not isinstance(event, StreamEvent) or event.event_type != "part":
            return event
        standin = transient_standin(event)
        if standin is None:
            return event
        self._prepare(event)  # the part itself must be a valid, small enough event
        owed = self._owed
        if owed is None:
            owed = self._owed = {}
        owed[id(standin)] = event
        return standin

    def _batched(self) -> _Appender | None:
        appender = self._appender
        return None if appender is None or appender.closed else appender

    async def append(self, event: StreamEvent) -> StreamEvent:
        """Store ``event`` as the next one in Redis and return the stored copy.

        Through an entered :class:`RedisBackend`, the appends of all its logs travel
        together (one pipeline per round trip); the call returns once Redis has stored
        the event. A lost connection is retried (see the module's rules) without ever
        storing the event twice.

        Raises:
            BackendError: Redis failed or stayed unreachable, lost this log's newest
                events, or the loop is not asyncio; also a failure of an earlier
                :meth:`enqueue`.
            ClosedError: the log is closed.
            PayloadTooLarge: the event's JSON is larger than ``max_event_bytes``.
            ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`.
        """
        failure = self._failure
        if failure is not None and event.is_final and not self._closed:
            # Events queued without waiting were not stored: end the log with an error
            # event saying so rather than with this one (its readers would otherwise
            # get a final event after a silent hole), then raise.
            self._failure = None
            error = make_event(
                EventType.ERROR,
                "",
                MappingProxyType(
                    {"error_type": type(failure).__name__, "message": str(failure)[:1000]}
                ),
            )
            with contextlib.suppress(BackendError, ClosedError):
                await self.append(error)
            raise failure
        appender = self._batched()
        if appender is not None and type(event) is StreamEvent and event.event_type != "part":
            # The stored copy made now, with the seq this writer expects (the common
            # case: a session's final event), its JSON cut from the copy's own: one
            # event and one encoding, not a bare copy, its JSON, then the stored copy.
            predicted = self._predicted
            seq = (predicted if predicted > self._last else self._last) + 1
            event = with_seq(event, seq, self._session_id)
            text = self._stamped(event, seq)
        else:
            event = self._transient(event)
            text = self._prepare(event)
        if appender is not None:
            # Alone: send at once from this task. Otherwise queue behind the rounds in
            # flight; the appender's task sends what queued meanwhile, together.
            lead = appender.idle(self)
            batch, index = appender.submit(self, event, text, kick=not lead)
            if lead:
                await appender.lead(self)
            else:
                # A final event joins the next round in its turn (at most _ROUND_GAP
                # later): sessions that end together then share rounds, not one each.
                if not event.is_final:
                    appender.hurry()
                await batch.wait()
            return batch.result(index, self._session_id)
        # No backend task: one script call per append, one in flight per writer so
        # that a retry is recognised. Not an anyio.Lock: that costs two checkpoints per
        # append even when nobody waits.
        while self._busy is not None:
            await self._busy.wait()
        self._busy = busy = anyio.Event()
        batch = _Batch()
        batch.events.append(event)
        batch.texts.append(text)
        try:
            self._counter += 1
            args = (
                self._max_events,
                self._max_bytes,
                self._writer,
                self._counter,
                "1" if event.is_final else "0",
                self._last,
                text,
            )

            async def run() -> Any:
                return await self._append_script(keys=(self._stream, self._meta), args=args)

            reply = await _call(run, self._retry_for, self._session_id)
        finally:
            self._busy = None
            busy.set()
        self._committed(batch, _replies(reply)[0])
        return batch.result(0, self._session_id)

    def append_nowait(self, event: StreamEvent, *, owned: bool = False) -> StreamEvent | None:
        """Queue ``event`` for the next append round and return it with its ``seq``.

        Never yields. Through an entered :class:`RedisBackend` the event joins the next
        group commit; readers get it only once Redis has stored it (as with
        :meth:`append`), and a failure to store it is raised by this log's next call.
        The ``seq`` returned is the one this writer expects: the newest it knows plus
        the events it has queued. It differs from the stored one only if another
        worker appended to the same log in between (a remote ``publish``): readers
        then get the stored seqs, in order. Returns ``None`` (nothing queued) for a log
        without an entered backend, or with 1024 events already waiting.

        Raises:
            BackendError: an earlier queued append failed, or the loop is not asyncio.
            ClosedError: the log is closed.
            PayloadTooLarge: the event's JSON is larger than ``max_event_bytes``.
            ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`.
        """
        appender = self._appender
        pending = self._pending
        if (
            appender is None
            or appender.closed
            or (pending is not None and len(pending.events) >= _NOWAIT_MAX and not pending.done)
        ):
            return super().append_nowait(event, owned=owned)
        predicted = self._predicted
        seq = (predicted if predicted > self._last else self._last) + 1
        if owned and type(event) is StreamEvent and event.seq is None:
            kind = event.event_type
            if kind != "part":
                text = self._stamped(event, seq)
                batch, _ = appender.submit(self, event, text)
                batch.detached += 1
                if kind in _FINAL_TYPES:
                    self._closed = True
                return event
        standin = self._transient(event)
        if standin is not event:
            event, owned = standin, True  # the stand-in is this log's own object
        text = self._prepare(event)
        if owned and event.seq is None:
            stamp(event, seq, self._session_id)
            stored = event
        else:
            stored = with_seq(event, seq, self._session_id)
        batch, _ = appender.submit(self, stored, text)
        batch.detached += 1
        if stored.is_final:
            self._closed = True
        return stored

    def enqueue(self, event: StreamEvent) -> None:
        """Queue ``event`` for the next batch without waiting for Redis.

        Readers get it once Redis has stored it, in order with the other appends of
        this log. A failure to store it is raised by the next :meth:`append`,
        :meth:`enqueue` or :meth:`flush` of this log.

        Raises:
            BackendError: the log was not made by an entered :class:`RedisBackend`,
                or an earlier queued append failed.
            ClosedError: the log is closed.
            PayloadTooLarge: the event's JSON is larger than ``max_event_bytes``.
            ValidationError: ``event`` is not a :class:`~streamkit.StreamEvent`.
        """
        event = self._transient(event)
        text = self._prepare(event)
        appender = self._batched()
        if appender is None:
            raise BackendError(
                "enqueue needs a log made by an entered RedisBackend",
                session_id=self._session_id,
            )
        batch, _ = appender.submit(self, event, text)
        batch.detached += 1
        if event.is_final:
            self._closed = True

    async def flush(self) -> None:
        """Wait until every event queued by this log is stored (or failed).

        Raises:
            BackendError: a queued append failed.
            ClosedError: a queued append found the log closed by another writer.
        """
        batch = self._pending
        if batch is not None:
            await batch.wait()
            if self._pending is batch:
                self._pending = None
        failure = self._failure
        if failure is not None:
            self._failure = None
            raise failure

    def _committed(self, batch: _Batch, reply: _Reply) -> None:
        """Take in the reply of the append script for ``batch``.

        Raises:
            BackendError: Redis lost this log's newest events.
        """
        sid = self._session_id
        first, accepted, head = reply
        if first < 0:
            raise _lost_error(accepted, head, sid)
        # An event queued by append_nowait already carries the seq it was stored
        # with (unless another writer came in between): readers get that object, and
        # the batch's own list when every one does (the common case: no new list).
        events = batch.events
        stored = events
        seq = first
        local = self._local
        follower = self._follower
        if (
            batch.detached == len(events)
            and not self._owed
            and (follower is None or self._stream not in follower._watches)
        ):
            # Nobody gets these events from here: no caller awaits them and no reader
            # of this worker follows the log (enqueue's events for other workers'
            # readers). No stored copies; the retained texts only.
            if accepted < len(events):
                stored = events[:accepted]
            for text in batch.texts[:accepted] if accepted < len(events) else batch.texts:
                local.append(b"%d %b" % (seq, text))
                seq += 1
            follower = None
        elif (
            accepted == 1
            and len(events) == 1
            and events[0].seq == seq
            and events[0].session_id == sid
        ):
            local.append(b"%d %b" % (seq, batch.texts[0]))  # one event, stamped as stored
            batch.stored = stored
        else:
            for i, (event, text) in enumerate(zip(events, batch.texts, strict=True)):
                if i == accepted:
                    stored = events[:accepted] if stored is events else stored
                    break
                if stored is not events:
                    stored.append(with_seq(event, seq, sid))
                elif event.seq != seq or event.session_id != sid:
                    stored = events[:i]
                    stored.append(with_seq(event, seq, sid))
                local.append(b"%d %b" % (seq, text))
                seq += 1
            batch.stored = stored
        if self._owed:
            self._owe(events, stored)
        last = first + accepted - 1
        if accepted and last >= self._last:
            self._last = last
            if head not in ("-", self._head):
                key = _key_of(head)
                if key & 1:
                    self._oldest = last + 1
                else:  # the same oldest entry until the log is trimmed: parsed once
                    self._oldest = key >> 1
                    self._head = head
        if accepted < len(events) or (stored and stored[-1].event_type in _FINAL_TYPES):
            self._closed = True
            if accepted < len(events) and batch.detached:
                self._failure = ClosedError("the log is closed", session_id=sid)
        if follower is not None:
            follower.feed(self, first, stored)

    def _owe(self, events: Sequence[StreamEvent], stored: Sequence[StreamEvent]) -> None:
        """Hand the transient parts behind stored stand-ins to the reading cursors."""
        owed = self._owed
        assert owed is not None
        for index, event in enumerate(events):
            full = owed.pop(id(event), None)
            if full is None or index >= len(stored):
                continue
            seq = stored[index].seq or 0
            copy = with_seq(full, seq, self._session_id)
            for cursor in self._cursors:
                if cursor._owed is None:
                    cursor._owed = {}
                cursor._owed[seq] = copy

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
        sid = self._session_id
        out = []
        for data in self._local:
            head, _, text = data.partition(b" ")
            seq = int(head)
            if seq >= oldest:
                out.append(_event_of(text, seq, sid))
        return tuple(out)

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
# Returns one string, a '1' (held, renewed) or '0' per session.
_RENEW: Final = (
    _now_ms_lua("now")
    + """
local out = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i + 1])
    out[#out + 1] = '1'
  else
    out[#out + 1] = '0'
  end
end
return table.concat(out)
"""
)

# KEYS: the sessions hash. ARGV: session ids. Their records, one a line ('' for none):
# one string to parse, not one reply per session (a record's JSON has no raw newline).
_GET_MANY: Final = """
local out = {}
for i = 1, #ARGV do
  out[i] = redis.call('HGET', KEYS[1], ARGV[i]) or ''
end
return table.concat(out, '\\n')
"""

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

_SWAP_TRIES: Final = 100
# Records a store remembers for its compare-and-set without a read (see set_state).
_KNOWN_MAX: Final = 100_000

# An ending compare-and-set also schedules the removal (see set_state) only when
# ended_session_ttl exceeds the longest a final append can take after it (retried for
# retry_for) by this margin, seconds: a sweep never removes a session before its final
# event is stored. A shorter ttl is scheduled after the append, as before.
_FOLD_MARGIN: Final = 30.0

# Compare-and-set of one record. KEYS: sessions hash, lease, leases zset, the user's
# live set, removals zset. ARGV: sid, the record JSON read, the new JSON, '1' if the
# session ends (its lease goes, and it leaves the live set), '1' if it has a user, the
# removal delay ms of an ending session ('' to schedule none).
_SET_IF: Final = (
    """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[1])
  if ARGV[5] == '1' then redis.call('SREM', KEYS[4], ARGV[1]) end
  if ARGV[6] ~= '' then
"""
    + _now_ms_lua("now")
    + """
    redis.call('ZADD', KEYS[5], now + tonumber(ARGV[6]), ARGV[1])
  end
end
return 1
"""
)

# _SET_IF for several sessions in one call (sessions ending together): per session 5
# KEYS and 6 ARGV as _SET_IF's. Returns one string, a '1' (set) or '0' per session. The
# store's keys share one slot, so this holds on a Cluster too.
_SET_MANY: Final = """
local out = {}
local _t = nil
for i = 0, #KEYS / 5 - 1 do
  local k, a = i * 5, i * 6
  local sid = ARGV[a + 1]
  if redis.call('HGET', KEYS[k + 1], sid) ~= ARGV[a + 2] then
    out[#out + 1] = '0'
  else
    redis.call('HSET', KEYS[k + 1], sid, ARGV[a + 3])
    if ARGV[a + 4] == '1' then
      redis.call('DEL', KEYS[k + 2])
      redis.call('ZREM', KEYS[k + 3], sid)
      if ARGV[a + 5] == '1' then redis.call('SREM', KEYS[k + 4], sid) end
      if ARGV[a + 6] ~= '' then
        if not _t then _t = redis.call('TIME') end
        local now = _t[1] * 1000 + math.floor(_t[2] / 1000)
        redis.call('ZADD', KEYS[k + 5], now + tonumber(ARGV[a + 6]), sid)
      end
    end
    out[#out + 1] = '1'
  end
end
return table.concat(out)
"""


class _Swaps:
    """The compare-and-sets of sessions changing state in one turn, as one script call.

    Sessions that end together (a burst of streams finishing in the same period) then
    cost one call and one reply to parse, not one each. The first caller of a turn
    waits one loop iteration for the others, sends them all, and hands each its result;
    a failure of the call is each caller's (``_call`` retries it).
    """

    __slots__ = ("_pipe", "_queue")

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._queue: list[tuple[list[str], list[str], asyncio.Future[int]]] = []

    async def swap(self, keys: list[str], args: list[str]) -> int:
        """Run one session's _SET_IF (``keys``, ``args``) with the others of this turn."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        queue = self._queue
        queue.append((keys, args, future))
        if len(queue) > 1:
            return await future
        batch: list[tuple[list[str], list[str], asyncio.Future[int]]] = []
        try:
            await asyncio.sleep(0)  # one loop iteration: the others of this turn join
            batch, self._queue = self._queue, []
            flat_keys = [key for keys_, _, _ in batch for key in keys_]
            flat_args = [arg for _, args_, _ in batch for arg in args_]
            result = await _script(
                self._pipe, _SET_MANY, (str(len(flat_keys)), *flat_keys, *flat_args), text=True
            )
            for (_, _, other), flag in zip(batch, _text(result), strict=True):
                if not other.done():
                    other.set_result(int(flag))
        except BaseException as exc:
            if not batch:
                batch, self._queue = self._queue, []
            error = (
                exc
                if isinstance(exc, Exception)
                else RedisConnectionError("a batched state change was interrupted")
            )
            for _, _, other in batch:
                if other is not future and not other.done():
                    other.set_exception(error)
            raise
        return future.result()


# Remove one record if unchanged. KEYS: sessions, the user's set, lease, leases,
# removals, the user's live set. ARGV: sid, the record JSON read ('' for none), '1' if
# it has a user.
_REMOVE_IF: Final = """
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[6], ARGV[1])
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSessionStore(SessionStore):
    """Session records in Redis, shared by every process using the same prefix.

    Records are JSON values in one hash (``{prefix}:sessions``) with a set of session
    ids per user (``{prefix}:user:<user_id>``); all store keys share the hash tag
    ``{prefix}`` so the scripts work on Redis Cluster (the store lives on one slot).
    :meth:`add` is one Lua script, so the count bounds are exact across processes;
    :meth:`set_state` and :meth:`remove` read the record, then write it in a script
    only if it is unchanged (retried on conflict; updates of different sessions never
    conflict). A store made by a
    :class:`RedisBackend` adds each record together with the backend's lease on it, and
    drops the lease when the session ends.

    Args:
        client: A ``redis.asyncio.Redis`` or ``RedisCluster`` client.
        prefix: The key prefix.
        retry_for: Seconds a lost connection is retried before :class:`BackendError`.
    """

    __slots__ = (
        "_client",
        "_known",
        "_lease_ms",
        "_owner",
        "_pipe",
        "_prefix",
        "_removal_ms",
        "_retry_for",
        "_scheduled",
        "_sessions",
        "_swaps",
    )

    def __init__(
        self,
        client: aredis.Redis | RedisCluster,
        *,
        prefix: str = "streamkit",
        retry_for: float = 10.0,
    ) -> None:
        self._client: Any = client
        self._pipe: _Pipe | None = None  # set by an entered RedisBackend
        self._swaps: _Swaps | None = None  # likewise (with the pipeline)
        self._prefix = prefix
        self._sessions = f"{{{prefix}}}:sessions"
        self._retry_for = float(check_number("retry_for", retry_for, minimum=0))
        self._owner = ""  # set by RedisBackend: the token its leases hold
        self._lease_ms = 0
        # The record this store last wrote for a live session (its JSON and its
        # object): set_state's compare-and-set tries it without reading the record
        # first, and reads only when another worker changed it. Bounded by _KNOWN_MAX.
        self._known: dict[str, tuple[str, StreamSession]] = {}
        # Set by RedisBackend.make_log (see _FOLD_MARGIN): the removal delay, ms, that
        # set_state schedules with an ending state ('' for none), and the sessions it
        # scheduled, by delay, for schedule_removal to skip. Bounded by _KNOWN_MAX.
        self._removal_ms = ""
        self._scheduled: dict[str, str] = {}

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

    async def _exec(self, *args: str | bytes | int, text: bool = False) -> Any:
        """One command: through the backend's automatic pipeline if there is one.

        ``text``: a script's arguments are str, mostly ASCII (see :func:`_text_bulks`).

        Raises:
            RedisError: the command failed (``_call`` retries a lost connection).
        """
        pipe = self._pipe
        if pipe is None:
            return await self._client.execute_command(*args)
        if args[0] == "EVAL":
            return await _script(pipe, str(args[1]), args[2:], text=text)
        result = (await pipe.call([_pack(args)]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

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
        self._known.pop(sid, None)

        async def run() -> Any:
            return await self._exec(
                "EVAL",
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
            if not session.is_terminal:
                self._remember(sid, record, session)
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
            return await self._exec("HGET", self._sessions, session_id)

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
            return await self._exec("EVAL", _GET_MANY, "1", self._sessions, *ids, text=True)

        raws = _text(await self._run(run)).split("\n")
        # A record unchanged since this store wrote or read it is not parsed again (the
        # lease keeper reads every live session's record every lease_ttl / 3).
        known = self._known
        out: builtins.list[StreamSession | None] = []
        for sid, raw in zip(ids, raws, strict=True):
            if not raw:
                out.append(None)
                continue
            hit = known.get(sid)
            if hit is not None and hit[0] == raw:
                out.append(hit[1])
                continue
            session = StreamSession.from_json(raw)
            if not session.is_terminal:
                self._remember(sid, raw, session)
            out.append(session)
        return out

    async def set_state(
        self, session_id: str, state: SessionState, *, now: float
    ) -> tuple[StreamSession, StreamSession]:
        """Move a session to ``state`` if the table allows it; return (before, after).

        Moving to an ending state also drops the session's lease and, in the store of
        a :class:`RedisBackend` whose registry keeps ended sessions long enough,
        schedules their removal in the same script. A compare-and-set of the one
        record (one script), so updates of different sessions never conflict.

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
            SessionNotFound: there is no such record.
            InvalidTransition: the move is not allowed.
        """
        known = self._known.pop(session_id, None)
        for _ in range(_SWAP_TRIES):
            raw: Any
            if known is not None:
                # What this store wrote last: tried without a read (a round trip less
                # per change); if another worker changed it since, the swap fails.
                raw, current = known
                known = None
                try:
                    after = current.transition(state, now=max(now, current.updated_at + 1e-6))
                except InvalidTransition:
                    continue  # perhaps not from the record Redis holds now: read it
            else:

                async def read() -> Any:
                    return await self._exec("HGET", self._sessions, session_id)

                raw = await self._run(read, session_id)
                if raw is None:
                    raise SessionNotFound("no such session", session_id=session_id)
                current = StreamSession.from_json(raw)
                # Strictly increasing per record whatever the workers' clocks: a reader
                # can tell a newer record from a stale one.
                after = current.transition(state, now=max(now, current.updated_at + 1e-6))
            new = after.to_json(include_events=False)
            ends = "1" if after.is_terminal else "0"
            removal = self._removal_ms if after.is_terminal else ""

            user = after.user_id

            async def swap(
                raw: Any = raw,
                new: str = new,
                ends: str = ends,
                user: str | None = user,
                removal: str = removal,
            ) -> Any:
                swaps = self._swaps
                if swaps is not None:
                    return await swaps.swap(
                        [
                            self._sessions,
                            self._lease_key(session_id),
                            self._leases,
                            self._live_key(user),
                            self._removals,
                        ],
                        [session_id, raw, new, ends, "1" if user is not None else "0", removal],
                    )
                return await self._exec(
                    "EVAL",
                    _SET_IF,
                    5,
                    self._sessions,
                    self._lease_key(session_id),
                    self._leases,
                    self._live_key(user),
                    self._removals,
                    session_id,
                    raw,
                    new,
                    ends,
                    "1" if user is not None else "0",
                    removal,
                )

            if int(await self._run(swap, session_id)):
                if not after.is_terminal:
                    self._remember(session_id, new, after)
                elif removal:
                    scheduled = self._scheduled
                    if len(scheduled) >= _KNOWN_MAX:
                        scheduled.clear()  # left by ends whose final append failed
                    scheduled[session_id] = removal
                return current, after
        raise BackendError("too many conflicting updates", session_id=session_id)

    def _remember(self, session_id: str, raw: str, session: StreamSession) -> None:
        known = self._known
        if len(known) >= _KNOWN_MAX:
            known.clear()  # sessions ended on other workers leave theirs behind
        known[session_id] = (raw, session)

    async def remove(self, session_id: str) -> StreamSession | None:
        """Delete a record (and its lease) and return it (``None`` if there was none).

        Raises:
            BackendError: Redis failed, or the event loop is not asyncio.
        """
        self._known.pop(session_id, None)
        for _ in range(_SWAP_TRIES):

            async def read() -> Any:
                return await self._exec("HGET", self._sessions, session_id)

            raw = await self._run(read, session_id)
            current = None if raw is None else StreamSession.from_json(raw)
            user = None if current is None else current.user_id

            async def swap(raw: Any = raw, user: str | None = user) -> Any:
                return await self._exec(
                    "EVAL",
                    _REMOVE_IF,
                    6,
                    self._sessions,
                    self._user_key(user),
                    self._lease_key(session_id),
                    self._leases,
                    self._removals,
                    self._live_key(user),
                    session_id,
                    "" if raw is None else raw,
                    "1" if user is not None else "0",
                )

            if int(await self._run(swap, session_id)):
                return current
        raise BackendError("too many conflicting updates", session_id=session_id)

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
            return await self._exec("HLEN", self._sessions)

        return int(await self._run(run))

    # -- leases and the removal schedule (used through RedisBackend) -------------------

    async def _renew(self, session_ids: Collection[str]) -> set[str]:
        ids = list(session_ids)
        if not ids or not self._owner:
            return set()

        async def run() -> Any:
            keys = [self._leases, *(self._lease_key(sid) for sid in ids)]
            return await self._exec(
                "EVAL",
                _RENEW,
                str(len(keys)),
                *keys,
                self._owner,
                str(self._lease_ms),
                *ids,
                text=True,
            )

        held = _text(await self._run(run))
        return {sid for sid, ok in zip(ids, held, strict=True) if ok != "1"}

    async def _claim_orphans(self, limit: int) -> builtins.list[str]:
        async def due() -> Any:
            return await self._exec("EVAL", _DUE, 1, self._leases, str(limit))

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
            return await self._exec(
                "EVAL", _SCHEDULE, 1, self._removals, str(int(delay * 1000)), session_id
            )

        await self._run(run, session_id)

    async def _claim_due(self, limit: int) -> builtins.list[str]:
        async def run() -> Any:
            return await self._exec("EVAL", _CLAIM_DUE, 1, self._removals, str(limit))

        return [_text(sid) for sid in await self._run(run)]


#: The scripts called by SHA1 through the pipeline (see _load_scripts).
_BY_SHA: Final = (
    _APPEND,
    _ADD,
    _SET_IF,
    _SET_MANY,
    _REMOVE_IF,
    _RENEW,
    _GET_MANY,
    _DUE,
    _SCHEDULE,
    _CLAIM_DUE,
    _READ,
    _QUERY,
)


async def _load_scripts(pipe: _Pipe) -> None:
    """Load the scripts called by SHA1 into Redis's script cache, in one round trip.

    Otherwise the first calls of a burst (many sessions starting or ending at once on
    a Redis that has not seen the scripts yet) all answer ``NOSCRIPT`` and are sent
    again with the script's text: a second round trip each. A Redis that refuses
    ``SCRIPT LOAD`` (an ACL) or later forgets the scripts (a restart, ``SCRIPT FLUSH``)
    still works: a ``NOSCRIPT`` reply sends the script again. Only a saving, so a
    failure here is not raised (the pipeline's next call reconnects and retries).
    """
    with contextlib.suppress(RedisError, OSError):
        await pipe.call([_pack(("SCRIPT", "LOAD", script)) for script in _BY_SHA], len(_BY_SHA))


class RedisBackend(Backend):
    """Sessions and logs in Redis, so that several worker processes share them.

    Use it as an async context manager (the registry enters it): entering connects,
    PINGs (once, without retrying) and starts the one task that follows live streams
    for every cursor of this backend; leaving stops it and closes the connection pool
    (only if this backend made it).

    Args:
        url: The Redis URL (with ``cluster=True``, of any node of the cluster).
        prefix: The key prefix; processes sharing sessions use the same one.
        client: A ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` client to
            use instead of one made from ``url``.
        lease_ttl: Seconds a worker's lease on its sessions lasts without renewal: the
            bound on how long a dead worker's sessions stay live.
        retry_for: Seconds a lost connection is retried before :class:`BackendError`.
        max_connections: Connections the pool made from ``url`` opens at most; callers
            beyond it wait for a free one (however many subscribers there are). On a
            cluster, per node.
        cluster: Whether ``url`` is a node of a Redis Cluster: the backend then makes a
            ``RedisCluster`` client, which finds the other nodes itself.
        replicas: With ``replicas > 0``, every append round ends with ``WAIT replicas
            replica_timeout`` (on each master it wrote to): an append returns, and
            this worker's readers get its events, only once that many replicas have
            them. A round they do not confirm in time fails with
            :class:`~streamkit.BackendError` (the events are on the master; see
            docs/scaling.md). ``0`` (the default): no ``WAIT``.
        replica_timeout: Seconds a ``WAIT`` waits for the replicas.

    Raises:
        ValidationError: a bad argument.
    """

    __slots__ = (
        "_appender",
        "_client",
        "_conn",
        "_follower",
        "_lease_ttl",
        "_owned",
        "_prefix",
        "_replica_timeout",
        "_replicas",
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
        client: aredis.Redis | RedisCluster | None = None,
        lease_ttl: float = 10.0,
        retry_for: float = 10.0,
        max_connections: int = 32,
        cluster: bool = False,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValidationError(
                "prefix must be a non-empty string without braces", field="prefix"
            )
        self._lease_ttl = float(check_number("lease_ttl", lease_ttl, minimum=0, positive=True))
        self._retry_for = float(check_number("retry_for", retry_for, minimum=0))
        check_int("max_connections", max_connections, minimum=2)
        self._replicas = check_int("replicas", replicas, minimum=0)
        self._replica_timeout = float(
            check_number("replica_timeout", replica_timeout, minimum=0, positive=True)
        )
        if client is None:
            if not isinstance(url, str):
                raise ValidationError(f"url must be a str, got {type_name(url)}", field="url")
            try:
                if cluster:
                    client = RedisCluster.from_url(url, max_connections=max_connections)
                else:
                    pool = aredis.BlockingConnectionPool.from_url(
                        url, max_connections=max_connections, timeout=None
                    )
                    client = aredis.Redis.from_pool(pool)
            except (ValueError, RedisError) as exc:
                raise ValidationError(f"bad Redis URL: {exc}", field="url") from exc
            self._owned = True
        else:
            self._owned = False
        self._client: Any = client
        self._prefix = prefix
        self._token = secrets.token_hex(12)
        self._store = RedisSessionStore(client, prefix=prefix, retry_for=self._retry_for)
        self._store._owner = self._token
        self._store._lease_ms = max(1, int(self._lease_ttl * 1000))
        self._follower: _Follower | None = None
        self._appender: _Appender | None = None
        self._conn: Any = None  # the automatic pipeline's connection
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
        if self._tg is None:
            tg = anyio.create_task_group()
            await tg.__aenter__()
            self._tg = tg
            if _is_cluster(self._client):
                # One XREAD over many streams needs them in one slot: not on a Cluster.
                self._follower = _ClusterFollower(self._client, self._retry_for)
            else:
                wake = f"{self._prefix}:wake:{self._token}"
                self._follower = _Follower(self._client, wake, self._retry_for)
            tg.start_soon(self._follower.run, name="streamkit redis follower")
            self._appender = _Appender(
                self._client,
                self._retry_for,
                self._follower,
                self._replicas,
                self._replica_timeout,
            )
            tg.start_soon(self._appender.run, name="streamkit redis appender")
            client = self._client
            if isinstance(client, aredis.Redis):
                # One connection for the calls of every task (appends, the store's).
                pool: Any = client.connection_pool
                with _translate():
                    self._conn = await pool.get_connection()
                pipe = _Pipe(self._conn)
                self._appender.pipe = pipe
                self._store._pipe = pipe
                self._store._swaps = _Swaps(pipe)
                self._follower.pipe = pipe
                await _load_scripts(pipe)
                tg.start_soon(pipe.run, name="streamkit redis pipeline")
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
        log._appender = self._appender
        ttl = config.ended_session_ttl
        self._store._removal_ms = (
            str(int(ttl * 1000)) if ttl >= self._retry_for + _FOLD_MARGIN else ""
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
        store = self._store
        if store._scheduled.pop(session_id, None) == str(int(delay * 1000)):
            return  # the ending compare-and-set scheduled it (see _FOLD_MARGIN)
        await store._schedule(session_id, delay)

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
            if self._appender is not None:
                self._appender.closed = True
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True):
            conn, self._conn = self._conn, None
            self._store._pipe = None
            self._store._swaps = None
            if conn is not None:
                with contextlib.suppress(RedisError, OSError):
                    # A reply of a cancelled call may still be on its way: the pool
                    # gets the connection back closed (it reconnects when next used).
                    await conn.disconnect()
                    await self._client.connection_pool.release(conn)
            if tg is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._client.delete(f"{self._prefix}:wake:{self._token}")
            if self._owned:
                with _translate():
                    await self._client.aclose()
