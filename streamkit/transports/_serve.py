"""The transport adapter API: serve a subscription's events over any text channel.

:func:`serve_subscription` is the one delivery loop of every WebSocket-like transport
(StreamApp's ``/ws`` endpoints, :meth:`Connection.follow` of the WebSocket manager, and
adapters users write: a file, a queue, a message bus). Rules of this module, and why:

* **One task per delivery path, nothing made per delivery.** An event goes from the
  subscription's cursor to ``channel.send_text`` in the caller's task: no queue, no
  second task, no cancel scope and no timer per message (each costs a loop wake-up, a
  timer handle and garbage; see issue 21). A client that reads slowly holds back its
  own cursor, so the log's slow-consumer policy decides for it alone.
* **Deadlines and heartbeats are kept by one watchdog per channel**, which wakes a few
  times per ``write_timeout`` (or ``heartbeat_interval``) whatever the traffic. A send
  counts as stuck when the watchdog has seen the same send in progress for
  ``write_timeout`` seconds: the deadline holds to within a quarter of itself, at no
  cost per message.
* **Sends on one channel are serialised** by a hand-off that costs nothing while
  uncontended, so several subscriptions, control replies and heartbeats can share a
  channel (the multiplexed ``/ws``) without two tasks ever sending at once.
* **One slow-client vocabulary** (:data:`SlowClientPolicy`) for the log, the manager
  and this function: ``"disconnect"``, ``"block"``, ``"drop_oldest"``; each says which
  it supports and why.
"""

from __future__ import annotations

from collections import deque
from contextlib import suppress
from typing import TYPE_CHECKING, Final, Literal

import anyio
import attrs

from .._errors import (
    Disconnected,
    HistoryGap,
    StreamkitError,
    SubscriberLagged,
    ValidationError,
)
from .._subscription import Subscription
from .._validate import check_choice, check_int, check_number, check_str, type_name
from ._channel import CloseCode, TextChannel, clip_reason

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable

    from .._events import StreamEvent

__all__ = [
    "ServeOutcome",
    "ServeResult",
    "SlowClientPolicy",
    "serve_subscription",
]

#: What happens to a client that cannot keep up, everywhere in streamkit:
#:
#: * ``"disconnect"``: it is dropped (WebSocket close code 1013, "try again later") and
#:   resumes from the last ``seq`` it got; nothing is skipped silently.
#: * ``"block"``: the sender waits for it, however long; back-pressure reaches the
#:   session log (whose own ``slow_consumer_policy`` then decides for the producer).
#: * ``"drop_oldest"``: it skips the oldest waiting messages, counted as drops. Only
#:   for messages that are not resumable (the WebSocket manager's broadcasts): a
#:   session's events are never skipped.
SlowClientPolicy = Literal["disconnect", "block", "drop_oldest"]
#: Why :func:`serve_subscription` returned.
ServeOutcome = Literal["ended", "disconnected", "slow", "stopped", "failed"]

_POLICIES: Final = ("disconnect", "block")
#: Seconds given to closing a channel once serving is over.
_CLOSE_TIMEOUT: Final = 5.0


@attrs.frozen(kw_only=True)
class ServeResult:
    """What :func:`serve_subscription` did.

    Attributes:
        outcome: Why it returned: ``"ended"`` (the events ended, e.g. after the
            session's final event), ``"disconnected"`` (the channel raised
            :class:`~streamkit.Disconnected`), ``"slow"`` (the client fell too far behind
            or one send outlasted ``write_timeout``), ``"stopped"`` (``stop`` was set)
            or ``"failed"`` (the events raised another streamkit error, in ``error``).
        position: The ``seq`` of the last event sent: a client resumes after it.
        sent: How many events were sent.
        error: The streamkit error that ended the events, if one did.
    """

    outcome: ServeOutcome
    position: int
    sent: int
    error: StreamkitError | None = None


def _encode_event(event: StreamEvent) -> str:
    return event.to_json()


class Link:
    """Serialised, deadline-watched sends on one channel, shared by all its senders.

    ``busy`` is held by the task sending now; others queue in ``waiters`` and get the
    channel handed over in turn (ownership passes with the wake-up, so no newcomer can
    slip in between). ``sent`` counts finished sends: the watchdog's only evidence.
    """

    __slots__ = (
        "busy",
        "channel",
        "gone",
        "heartbeat_interval",
        "heartbeat_message",
        "on_end",
        "sent",
        "timed_out",
        "waiters",
        "write_timeout",
    )

    def __init__(
        self,
        channel: TextChannel,
        *,
        write_timeout: float | None,
        heartbeat_interval: float | None = None,
        heartbeat_message: str = "",
    ) -> None:
        self.channel = channel
        self.write_timeout = write_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_message = heartbeat_message
        self.busy = False
        self.waiters: deque[anyio.Event] = deque()
        self.sent = 0
        self.timed_out = False  # the watchdog found a send past the deadline
        self.gone = False  # a heartbeat found the peer gone
        self.on_end: Callable[[], None] | None = None

    async def send(self, text: str) -> None:
        """Send ``text`` once every earlier sender is done (Disconnected propagates)."""
        if self.busy:
            await self._wait_turn()
        else:
            self.busy = True
        try:
            await self.channel.send_text(text)
        finally:
            self.sent += 1
            self._release()

    async def _wait_turn(self) -> None:
        turn = anyio.Event()
        self.waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # handed the channel, but leaving: pass it on
                self._release()
            else:
                self.waiters.remove(turn)
            raise

    def _release(self) -> None:
        waiters = self.waiters
        if waiters:
            waiters.popleft().set()  # busy stays True: the next sender owns it now
        else:
            self.busy = False

    @property
    def watched(self) -> bool:
        return self.write_timeout is not None or self.heartbeat_interval is not None

    async def watch(self) -> None:
        """Enforce the write deadline and send heartbeats in silences, until cancelled."""
        timeout, interval = self.write_timeout, self.heartbeat_interval
        period = min(
            timeout / 4 if timeout is not None else float("inf"),
            interval / 2 if interval is not None else float("inf"),
        )
        clock = anyio.current_time
        seen = self.sent
        quiet_since = stuck_since = clock()
        stuck = False
        while True:
            await anyio.sleep(period)
            now = clock()
            if self.sent != seen:
                seen = self.sent
                quiet_since = now
                stuck = False
            if not self.busy:
                stuck = False
                if interval is not None and now - quiet_since >= interval:
                    await self._heartbeat()
                    if self.timed_out or self.gone:
                        return
            elif not stuck:  # the send in progress now is first seen at this tick
                stuck, stuck_since = True, now
            elif timeout is not None and now - stuck_since >= timeout:
                self._end(timed_out=True)
                return

    async def _heartbeat(self) -> None:
        with anyio.move_on_after(self.write_timeout):
            try:
                await self.send(self.heartbeat_message)
            except Disconnected:
                self._end(timed_out=False)
            return
        self._end(timed_out=True)  # even a heartbeat could not get through in time

    def _end(self, *, timed_out: bool) -> None:
        if timed_out:
            self.timed_out = True
        else:
            self.gone = True
        if self.on_end is not None:
            self.on_end()

    # -- TextChannel, so that a shared link can be served on like any channel ------------

    send_text = send

    async def receive_text(self) -> str:
        return await self.channel.receive_text()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.channel.close(code, reason)


def _check_options(  # noqa: PLR0917 - the public function's arguments, checked at once
    channel: object,
    encode: object,
    heartbeat_interval: object,
    heartbeat_message: object,
    write_timeout: object,
    slow_client_policy: object,
    after: object,
) -> None:
    if not isinstance(channel, TextChannel):
        raise ValidationError(
            "channel must have async send_text, receive_text and close "
            f"(a TextChannel), got {type_name(channel)}",
            field="channel",
        )
    if not callable(encode):
        raise ValidationError(f"encode must be callable, got {type_name(encode)}", field="encode")
    if heartbeat_interval is not None:
        check_number("heartbeat_interval", heartbeat_interval, positive=True)
    check_str("heartbeat_message", heartbeat_message, allow_empty=False)
    if write_timeout is not None:
        check_number("write_timeout", write_timeout, positive=True)
    if slow_client_policy == "drop_oldest":
        raise ValidationError(
            "slow_client_policy 'drop_oldest' would skip a session's events silently; "
            "use 'disconnect' (the client resumes from its last seq) or 'block'",
            field="slow_client_policy",
        )
    check_choice("slow_client_policy", slow_client_policy, _POLICIES)
    if slow_client_policy == "block" and write_timeout is not None:
        raise ValidationError(
            "write_timeout drops slow clients; it needs slow_client_policy='disconnect'",
            field="write_timeout",
        )
    check_int("after", after, minimum=0)


async def serve_subscription(
    channel: TextChannel,
    events: AsyncIterable[StreamEvent],
    *,
    encode: Callable[[StreamEvent], str] = _encode_event,
    after: int = 0,
    heartbeat_interval: float | None = None,
    heartbeat_message: str = '{"type":"heartbeat"}',
    write_timeout: float | None = None,
    slow_client_policy: SlowClientPolicy = "disconnect",
    stop: anyio.Event | None = None,
    close: bool = True,
) -> ServeResult:
    """Send ``events`` over ``channel`` until they end, the client goes or ``stop`` is set.

    The building block of every transport: a session's subscription
    (``registry.subscribe(session_id, after=n)``) or any async iterable of events goes
    out one text message per event, in the caller's task. A transport of your own is a
    :class:`~streamkit.transports.TextChannel` (a file, a queue, a message bus) handed to
    this function; see ``docs/transports.md``.

    Args:
        channel: Where the messages go: any :class:`~streamkit.transports.TextChannel`
            (only ``send_text`` and, with ``close``, ``close`` are used).
        events: The events, e.g. ``registry.subscribe(session_id, after=n)``. It is not
            closed here: use the subscription in ``async with``.
        encode: The codec: turns an event into the message text (default: the event's
            JSON, computed once per event and shared by every subscriber).
        after: Events whose ``seq`` is at most this are skipped (the client had them):
            resumes an iterable that replays from the start.
        heartbeat_interval: Seconds of silence before ``heartbeat_message`` is sent.
            ``None``: no heartbeats.
        heartbeat_message: The heartbeat text.
        write_timeout: Seconds one send may take before the client counts as slow
            (outcome ``"slow"``). ``None``: no deadline.
        slow_client_policy: ``"disconnect"`` (a client the log drops for lagging, or
            that outlasts ``write_timeout``, ends with outcome ``"slow"`` and, with
            ``close``, close code 1013 and its resume point) or ``"block"`` (wait for
            the client however long; no ``write_timeout``). ``"drop_oldest"`` is refused:
            a session's events are never skipped.
        stop: Set it to end serving (outcome ``"stopped"``, close code 1001).
        close: Close the channel at the end, with a code telling why: 1000 ended, 1001
            stopped, 1013 slow (reason ``"slow client: resume after N"``), 1011 failed.

    Returns:
        A :class:`ServeResult`: the outcome, and the ``position`` to resume after.

    Raises:
        ValidationError: an argument is invalid.
    """
    _check_options(
        channel,
        encode,
        heartbeat_interval,
        heartbeat_message,
        write_timeout,
        slow_client_policy,
        after,
    )
    if isinstance(channel, Link):  # a channel already shared by several senders
        link, own = channel, False
    else:
        link = Link(
            channel,
            write_timeout=write_timeout,
            heartbeat_interval=heartbeat_interval,
            heartbeat_message=heartbeat_message,
        )
        own = True
    if isinstance(events, Subscription):
        # Entered by the caller: its cursor, one coroutine fewer per event.
        events = events._direct()
    position, sent = after, 0
    outcome: ServeOutcome = "ended"
    error: StreamkitError | None = None

    async def deliver() -> None:
        nonlocal position, sent, outcome, error
        send = link.send
        try:
            async for event in events:
                seq = event.seq or 0
                if seq and seq <= after:
                    continue
                await send(encode(event))
                position = seq or position
                sent += 1
        except Disconnected:
            outcome = "disconnected"
        except SubscriberLagged as exc:
            outcome, error = "slow", exc
        except StreamkitError as exc:
            outcome, error = "failed", exc

    helpers = (own and link.watched) or stop is not None
    if not helpers:
        await deliver()
    else:
        async with anyio.create_task_group() as tg:
            if own and link.watched:
                link.on_end = tg.cancel_scope.cancel
                tg.start_soon(link.watch, name="streamkit channel watchdog")
            if stop is not None:

                async def watch_stop(stop: anyio.Event) -> None:
                    nonlocal outcome
                    await stop.wait()
                    outcome = "stopped"
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_stop, stop)
            await deliver()
            tg.cancel_scope.cancel()
    if link.timed_out:
        outcome = "slow"
    elif link.gone:
        outcome = "disconnected"
    if close and own:
        await _close(link, outcome, position, error)
    return ServeResult(outcome=outcome, position=position, sent=sent, error=error)


async def _close(
    link: Link, outcome: ServeOutcome, position: int, error: StreamkitError | None
) -> None:
    code: int
    if outcome == "ended":
        code, reason = CloseCode.NORMAL, ""
    elif outcome == "stopped":
        code, reason = CloseCode.GOING_AWAY, "server shutting down"
    elif outcome == "slow":
        code, reason = CloseCode.TRY_AGAIN_LATER, f"slow client: resume after {position}"
    elif outcome == "failed":
        assert error is not None
        code = CloseCode.POLICY_VIOLATION if isinstance(error, HistoryGap) else 1011
        reason = clip_reason(f"{error.code}: {error}")
    else:  # disconnected: closing is quiet and idempotent, and releases the channel
        code, reason = CloseCode.NORMAL, ""
    # Shielded and bounded: this runs when the caller may be cancelled, and a client
    # that stopped reading cannot take a close frame either.
    with (
        anyio.move_on_after(link.write_timeout or _CLOSE_TIMEOUT, shield=True),
        suppress(Disconnected),
    ):
        await link.channel.close(code, reason)
