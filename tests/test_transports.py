"""streamkit.transports: channels, adapters and the WebSocket manager."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, MutableMapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit as sk
from streamkit import transports as tr

pytestmark = pytest.mark.anyio

NO_HEARTBEAT: dict[str, Any] = {"ping_interval": None, "ping_timeout": None}
PING = '{"type":"ping"}'


def manager(**options: Any) -> tr.WebSocketManager:
    return tr.WebSocketManager(**{**NO_HEARTBEAT, **options})


async def receive_n(channel: tr.MemoryChannel, count: int, *, skip: str = PING) -> list[str]:
    """Read ``count`` messages from a client end, ignoring heartbeat pings."""
    got: list[str] = []
    while len(got) < count:
        text = await channel.receive_text()
        if text != skip:
            got.append(text)
    return got


async def drain(channel: tr.MemoryChannel) -> list[str]:
    """Read until the connection closes."""
    return [text async for text in channel]


# -- memory channels -------------------------------------------------------------------


async def test_memory_pair_carries_text_both_ways() -> None:
    server, client = tr.memory_channel_pair()
    assert isinstance(server, tr.TextChannel)
    await server.send_text("to client")
    await client.send_text("to server")
    assert await client.receive_text() == "to client"
    assert await server.receive_text() == "to server"
    assert not server.closed
    assert server.close_code is None
    await client.close()
    await server.close()


async def test_memory_close_is_seen_by_the_peer_after_buffered_messages() -> None:
    server, client = tr.memory_channel_pair()
    await server.send_text("a")
    await server.send_text("b")
    await server.close(1013, "go away")
    assert await drain(client) == ["a", "b"]
    with pytest.raises(sk.Disconnected, match="server end") as gone:
        await client.receive_text()
    assert gone.value.close_code == 1013
    assert gone.value.to_dict()["close_code"] == 1013
    with pytest.raises(sk.Disconnected):
        await client.send_text("late")
    with pytest.raises(sk.Disconnected, match="this end"):
        await server.send_text("late")
    assert (client.close_code, client.close_reason, client.closed_by) == (1013, "go away", "server")
    # The first closer's code wins; closing again does nothing.
    await client.close(1000)
    await server.close(1001)
    assert client.close_code == server.close_code == 1013
    assert "closed 1013 by server" in repr(client)


async def test_memory_blocked_send_wakes_when_the_peer_closes() -> None:
    server, client = tr.memory_channel_pair(max_buffer=1)
    await server.send_text("fills the buffer")
    outcome: list[str] = []

    async def blocked_send() -> None:
        with pytest.raises(sk.Disconnected):
            await server.send_text("blocked")
        outcome.append("woke")

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked_send)
        await anyio.wait_all_tasks_blocked()
        assert outcome == []
        client.close_nowait(4000, "bye")
    assert outcome == ["woke"]
    with pytest.raises(sk.Disconnected):
        await server.receive_text()


async def test_memory_receive_waits_for_a_message() -> None:
    server, client = tr.memory_channel_pair(max_buffer=1)
    async with anyio.create_task_group() as tg:
        got: list[str] = []

        async def receive() -> None:
            got.append(await client.receive_text())

        tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        await server.send_text("x")
    assert got == ["x"]


async def test_memory_channel_rejects_bad_input() -> None:
    with pytest.raises(sk.ValidationError, match="max_buffer"):
        tr.memory_channel_pair(0)
    server, _client = tr.memory_channel_pair()
    with pytest.raises(sk.ValidationError, match="text must be a str"):
        await server.send_text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(sk.ValidationError, match="code"):
        await server.close(999)
    with pytest.raises(sk.ValidationError, match="code"):
        await server.close(5000)
    with pytest.raises(sk.ValidationError, match="reason"):
        await server.close(1000, "x" * 124)
    assert not server.closed


# -- the manager: connections and messages ---------------------------------------------


async def test_add_runs_the_handler_and_counts_messages() -> None:
    async def echo(connection: tr.Connection, text: str) -> None:
        connection.send(f"echo {text}")

    async with manager(on_message=echo) as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server, user_id="alice")
        assert connection.user_id == "alice"
        assert m.get(connection.id) is connection
        assert m.connections("alice") == [connection]
        assert m.connections("bob") == []
        assert len(m) == 1
        await client.send_text("héllo")  # 6 bytes of UTF-8
        assert await client.receive_text() == "echo héllo"
        stats = connection.statistics()
        assert (stats.messages_in, stats.bytes_in) == (1, 6)
        assert (stats.messages_out, stats.bytes_out) == (1, 11)
        assert (stats.drops, stats.queued, stats.closed) == (0, 0, False)
        await client.close()
        await connection.wait_closed()
        assert connection.peer_closed
        assert connection.close_code is None
        assert connection.closed
        assert m.get(connection.id) is None
        total = m.statistics()
    assert (total.connected, total.total_connections, total.disconnects) == (0, 1, 1)
    assert (total.messages_in, total.messages_out, total.bytes_in, total.bytes_out) == (1, 1, 6, 11)


async def test_connect_block_sends_and_closes_normally_on_exit() -> None:
    async with manager() as m:
        server, client = tr.memory_channel_pair()
        async with m.connect(server, user_id="bob") as connection:
            connection.send("welcome")
            assert await client.receive_text() == "welcome"
            assert m.statistics().connected == 1
        assert connection.closed
        assert connection.close_code == 1000
        assert client.close_code == 1000
        assert client.closed_by == "server"
        assert m.statistics().connected == 0


async def test_connect_block_ends_quietly_when_the_peer_leaves() -> None:
    reached: list[str] = []
    async with manager() as m:
        server, client = tr.memory_channel_pair()
        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                async with m.connect(server) as connection:
                    reached.append("entered")
                    await anyio.sleep_forever()
                reached.append("left")
                assert connection.peer_closed

            tg.start_soon(serve)
            await anyio.wait_all_tasks_blocked()
            assert reached == ["entered"]
            await client.close(1001, "tab closed")
    assert reached == ["entered", "left"]


async def test_connect_block_error_propagates_and_closes_with_1011() -> None:
    async with manager() as m:
        server, client = tr.memory_channel_pair()
        with pytest.raises(KeyError, match="oops"):
            async with m.connect(server) as connection:
                raise KeyError("oops")
        assert isinstance(connection.error, KeyError)
        assert client.close_code == 1011
        assert client.close_reason == "internal error"


async def test_connect_handler_bug_is_raised_from_the_block() -> None:
    async def broken(connection: tr.Connection, text: str) -> None:
        raise ZeroDivisionError(text)

    async with manager() as m:
        server, client = tr.memory_channel_pair()

        async def serve() -> None:
            async with m.connect(server, on_message=broken):
                await client.send_text("boom")
                await anyio.sleep_forever()

        with pytest.raises(ZeroDivisionError, match="boom"):
            await serve()
        # The peer sees an internal error without the exception's text.
        assert (client.close_code, client.close_reason) == (1011, "internal error")
        # The manager carries on.
        other, other_client = tr.memory_channel_pair()
        m.add(other).send("still here")
        assert await other_client.receive_text() == "still here"
        await other_client.close()


async def test_add_handler_bug_propagates_out_of_the_manager() -> None:
    async def broken(connection: tr.Connection, text: str) -> None:
        raise ZeroDivisionError(text)

    server, client = tr.memory_channel_pair()
    with pytest.RaisesGroup(
        pytest.RaisesExc(ZeroDivisionError, match="bug"), flatten_subgroups=True
    ):
        async with manager(on_message=broken) as m:
            m.add(server)
            await client.send_text("bug")
            await anyio.sleep_forever()
    assert client.close_code == 1011


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (sk.ValidationError("bad field", field="x"), 1007),
        (sk.RemoteProtocolError("not JSON"), 1007),
        (sk.PayloadTooLarge("too big"), 1009),
        (sk.PermissionDenied("not yours"), 1008),
    ],
)
async def test_handler_streamkit_errors_close_with_a_matching_code(
    error: sk.StreamkitError, code: int
) -> None:
    async def handler(connection: tr.Connection, text: str) -> None:
        raise error

    async with manager(on_message=handler) as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server)
        await client.send_text("anything")
        await connection.wait_closed()
        assert connection.error is error
        assert (client.close_code, client.close_reason) == (code, error.message)
        assert m.statistics().disconnects == 1


async def test_handler_disconnected_ends_the_connection_as_peer_gone() -> None:
    async def handler(connection: tr.Connection, text: str) -> None:
        raise sk.Disconnected("gone")

    async with manager(on_message=handler) as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server)
        await client.send_text("x")
        await connection.wait_closed()
        assert connection.peer_closed
        assert connection.error is None


async def test_oversize_messages_are_refused_both_ways() -> None:
    async with manager(max_message_size=20) as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server)
        connection.send("x" * 20)
        with pytest.raises(sk.PayloadTooLarge, match="21 bytes"):
            connection.send("x" * 21)
        with pytest.raises(sk.PayloadTooLarge):
            connection.send("é" * 11)  # 22 bytes of UTF-8
        with pytest.raises(sk.PayloadTooLarge):
            m.broadcast("y" * 21)
        assert await client.receive_text() == "x" * 20
        await client.send_text("z" * 21)
        await connection.wait_closed()
        assert isinstance(connection.error, sk.PayloadTooLarge)
        assert client.close_code == 1009


async def test_send_rejects_non_text() -> None:
    async with manager() as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server)
        with pytest.raises(sk.ValidationError, match="message must be a str"):
            connection.send(b"bytes")  # type: ignore[arg-type]
        with pytest.raises(sk.ValidationError, match="surrogate"):
            connection.send("\ud800")
        with pytest.raises(sk.ValidationError, match="message must be a str"):
            m.broadcast(42)  # type: ignore[arg-type]
        with pytest.raises(sk.ValidationError, match="group must be a str"):
            m.broadcast("x", group=1)  # type: ignore[arg-type]
        await client.close()


async def test_pong_counts_but_does_not_reach_the_handler() -> None:
    seen: list[str] = []

    async def handler(connection: tr.Connection, text: str) -> None:
        seen.append(text)

    async with manager(on_message=handler) as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server)
        await client.send_text('{"type":"pong"}')
        await client.send_text("real")
        await client.close()
        await connection.wait_closed()
        assert seen == ["real"]
        assert connection.statistics().messages_in == 2


async def test_close_with_a_code_and_use_after_close() -> None:
    async with manager() as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server, groups=["g"])
        with pytest.raises(sk.ValidationError, match="code"):
            connection.close(42)
        connection.close(4001, "kicked")
        connection.close(1000)  # the first code wins
        await connection.wait_closed()
        assert (client.close_code, client.close_reason) == (4001, "kicked")
        assert (connection.close_code, connection.close_reason) == (4001, "kicked")
        with pytest.raises(sk.Disconnected):
            connection.send("late")
        with pytest.raises(sk.Disconnected):
            connection.join("h")
        with pytest.raises(sk.Disconnected):
            await connection.wait_writable()
        connection.leave("g")  # harmless after the end
        assert m.group_size("g") == 0
        assert connection.statistics().closed


async def test_close_sends_what_was_queued_first() -> None:
    async with manager() as m:
        server, client = tr.memory_channel_pair(max_buffer=1)
        connection = m.add(server, groups=["g"])
        connection.send("one")
        m.broadcast("two", group="g")
        connection.send("three")
        connection.close(4000, "done")
        with pytest.raises(sk.Disconnected):
            connection.send("refused")
        assert await drain(client) == ["one", "two", "three"]
        assert client.close_code == 4000
        await connection.wait_closed()
        # A connect() block that ends normally delivers its last words too.
        server, client = tr.memory_channel_pair(max_buffer=8)
        async with m.connect(server) as connection:
            for i in range(5):
                connection.send(str(i))
        assert await drain(client) == ["0", "1", "2", "3", "4"]
        assert client.close_code == 1000


async def test_a_graceful_close_gives_up_after_close_timeout() -> None:
    async with manager(close_timeout=0.05) as m:
        server, client = tr.memory_channel_pair(max_buffer=1)  # and it never reads
        connection = m.add(server)
        for i in range(5):
            connection.send(str(i))
        connection.close()
        with anyio.fail_after(10):
            await connection.wait_closed()
        assert client.close_code == 1000
        assert connection.statistics().messages_out == 1


async def test_manager_exit_closes_connections_with_going_away() -> None:
    async with manager() as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server)
    assert connection.closed
    assert (client.close_code, client.close_reason) == (1001, "server shutting down")
    with pytest.raises(sk.ClosedError, match="not running"):
        m.add(tr.memory_channel_pair()[0])


async def test_manager_refuses_past_max_connections_and_when_not_running() -> None:
    m = manager(max_connections=1)
    with pytest.raises(sk.ClosedError):
        m.add(tr.memory_channel_pair()[0])
    async with m:
        first, first_client = tr.memory_channel_pair()
        m.add(first)
        with pytest.raises(sk.SessionLimitExceeded) as info:
            m.add(tr.memory_channel_pair()[0])
        assert info.value.limit == 1
        with pytest.raises(sk.SessionLimitExceeded):
            async with m.connect(tr.memory_channel_pair()[0]):
                pass
        await first_client.close()
    with pytest.raises(RuntimeError, match="once"):
        async with m:
            pass


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_queue": 1.5}, "max_queue"),
        ({"slow_client_policy": "drop_newest"}, "slow_client_policy"),
        ({"max_message_size": 0}, "max_message_size"),
        ({"ping_interval": 0}, "ping_interval"),
        ({"ping_timeout": -1}, "ping_timeout"),
        ({"ping_message": ""}, "ping_message"),
        ({"ping_message": "x" * 20, "max_message_size": 10}, "ping_message"),
        ({"pong_message": 3}, "pong_message"),
        ({"send_timeout": float("nan")}, "send_timeout"),
        ({"close_timeout": 0}, "close_timeout"),
        ({"on_message": "not callable"}, "on_message"),
    ],
)
async def test_manager_options_are_checked(options: dict[str, Any], field: str) -> None:
    with pytest.raises(sk.ValidationError) as info:
        tr.WebSocketManager(**options)
    assert info.value.field == field


async def test_connection_arguments_are_checked() -> None:
    async with manager() as m:
        with pytest.raises(sk.ValidationError, match="TextChannel"):
            m.add(object())  # type: ignore[arg-type]
        channel = tr.memory_channel_pair()[0]
        with pytest.raises(sk.ValidationError, match="user_id"):
            m.add(channel, user_id="no spaces")
        with pytest.raises(sk.ValidationError, match="groups"):
            m.add(channel, groups="room")  # type: ignore[arg-type]
        with pytest.raises(sk.ValidationError, match="group"):
            m.connect(channel, groups=["bad\nname"])
        with pytest.raises(sk.ValidationError, match="on_message"):
            m.add(channel, on_message=1)  # type: ignore[arg-type]
        assert m.statistics().total_connections == 0


# -- broadcast and groups --------------------------------------------------------------


async def test_broadcast_to_all_and_to_groups() -> None:
    async with manager() as m:
        a_server, a = tr.memory_channel_pair()
        b_server, b = tr.memory_channel_pair()
        conn_a = m.add(a_server, groups=["red"])
        m.add(b_server, groups=("blue",))
        assert m.broadcast("everyone") == 2
        assert m.broadcast("reds", group="red") == 1
        assert m.broadcast("nobody", group="green") == 0
        assert m.broadcast("blues", group="blue") == 1
        assert await receive_n(a, 2) == ["everyone", "reds"]
        assert await receive_n(b, 2) == ["everyone", "blues"]
        conn_a.join("blue")
        conn_a.join("blue")  # joining twice is one membership
        assert conn_a.groups == frozenset({"red", "blue"})
        assert m.group_size("blue") == 2
        m.broadcast("blues again", group="blue")
        assert await receive_n(a, 1) == ["blues again"]
        conn_a.leave("red")
        conn_a.leave("never joined")
        assert m.group_size("red") == 0
        assert m.broadcast("reds again", group="red") == 0
        stats = m.statistics()
        assert (stats.broadcasts, stats.groups) == (4, 1)
        await a.close()
        await b.close()


async def test_a_member_gets_group_messages_only_from_when_it_joined() -> None:
    async with manager() as m:
        server, client = tr.memory_channel_pair()
        other_server, other = tr.memory_channel_pair()
        m.add(other_server, groups=["room"])
        m.broadcast("before", group="room")
        connection = m.add(server)
        connection.join("room")
        m.broadcast("after", group="room")
        assert await receive_n(client, 1) == ["after"]
        assert await receive_n(other, 2) == ["before", "after"]
        await client.close()
        await other.close()


async def test_order_is_kept_across_direct_sends_and_broadcasts() -> None:
    async with manager() as m:
        server, client = tr.memory_channel_pair(max_buffer=64)
        connection = m.add(server, groups=["g1", "g2"])
        expected = []
        for i in range(30):
            target = i % 4
            if target == 0:
                connection.send(f"direct {i}")
            elif target == 1:
                m.broadcast(f"all {i}")
            else:
                m.broadcast(f"g{target - 1} {i}", group=f"g{target - 1}")
            expected.append(i)
        got = await receive_n(client, 30)
        assert [int(text.split()[1]) for text in got] == expected
        await client.close()


@given(
    st.lists(
        st.tuples(st.sampled_from(["direct", "all", "mine", "other"]), st.integers(0, 3)),
        max_size=40,
    ),
    st.sampled_from(["asyncio", "trio"]),
)
def test_each_connection_gets_exactly_its_messages_in_order(
    plan: list[tuple[str, int]], backend: str
) -> None:
    """Whatever the interleaving, a connection receives its messages in producer order."""

    async def main() -> None:
        async with manager(max_queue=64) as m:
            server, client = tr.memory_channel_pair(max_buffer=64)
            connection = m.add(server, groups=["mine"])
            other_server, other = tr.memory_channel_pair(max_buffer=64)
            m.add(other_server, groups=["other"])
            expected = []
            for n, (target, pause) in enumerate(plan):
                message = f"{target}-{n}"
                if target == "direct":
                    connection.send(message)
                else:
                    m.broadcast(message, group=None if target == "all" else target)
                if target != "other":
                    expected.append(message)
                for _ in range(pause):  # let the writer run at various points
                    await anyio.lowlevel.checkpoint()
            assert await receive_n(client, len(expected)) == expected
            await client.close()
            await other.close()

    anyio.run(main, backend=backend)


async def test_a_slow_client_does_not_stall_the_others() -> None:
    queue = 8
    rounds, per_round = 6, queue // 2
    async with tr.WebSocketManager(max_queue=queue, ping_interval=0.01, ping_timeout=None) as m:
        slow_server, slow = tr.memory_channel_pair(max_buffer=1)  # and it never reads
        fast_server, fast = tr.memory_channel_pair(max_buffer=1)
        slow_connection = m.add(slow_server)
        fast_connection = m.add(fast_server)
        received: list[str] = []
        with anyio.fail_after(10):
            for r in range(rounds):
                batch = [f"{r}.{i}" for i in range(per_round)]
                for message in batch:
                    m.broadcast(message)
                received += await receive_n(fast, per_round)
            # The slow one fell more than max_queue behind: the sweep dropped it.
            await slow_connection.wait_closed()
        assert received == [f"{r}.{i}" for r in range(rounds) for i in range(per_round)]
        assert not fast_connection.closed
        assert slow.close_code == 1013
        assert slow_connection.statistics().drops > 0
        stats = m.statistics()
        assert stats.slow_disconnects == 1
        assert stats.drops == slow_connection.statistics().drops
        assert stats.connected == 1
        await fast.close()


async def test_the_writer_finds_its_own_lag_under_disconnect() -> None:
    async with manager(max_queue=4) as m:
        server, client = tr.memory_channel_pair(max_buffer=1)
        connection = m.add(server)
        for i in range(10):  # all appended before the writer runs
            m.broadcast(str(i))
        await connection.wait_closed()
        assert client.close_code == 1013
        assert connection.statistics().drops == 10
        assert await drain(client) == []


async def test_drop_oldest_keeps_the_newest_broadcasts() -> None:
    async with manager(max_queue=4, slow_client_policy="drop_oldest") as m:
        server, client = tr.memory_channel_pair(max_buffer=1)
        connection = m.add(server)
        for i in range(12):
            m.broadcast(str(i))
        assert await receive_n(client, 4) == ["8", "9", "10", "11"]
        assert connection.statistics().drops == 8
        assert not connection.closed
        await client.close()


async def test_drop_oldest_on_direct_sends() -> None:
    async with manager(max_queue=3, slow_client_policy="drop_oldest") as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server)
        for i in range(7):
            connection.send(str(i))
        assert connection.statistics().queued == 3
        assert await receive_n(client, 3) == ["4", "5", "6"]
        assert connection.statistics().drops == 4
        await client.close()


async def test_disconnect_policy_on_direct_sends_raises() -> None:
    async with manager(max_queue=3) as m:
        server, client = tr.memory_channel_pair()
        connection = m.add(server)
        for i in range(3):
            connection.send(str(i))
        with pytest.raises(sk.Disconnected, match="too slowly"):
            connection.send("one too many")
        await connection.wait_closed()
        assert client.close_code == 1013
        assert connection.statistics().drops == 4
        assert m.statistics().slow_disconnects == 1


async def test_wait_writable_waits_for_room() -> None:
    async with manager(max_queue=2) as m:
        server, client = tr.memory_channel_pair(max_buffer=1)
        connection = m.add(server)
        events: list[str] = []

        async def producer() -> None:
            for i in range(6):
                await connection.wait_writable()
                connection.send(str(i))
                events.append(f"sent {i}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            # One in the channel's buffer, two queued (one of them being sent); then it
            # waits, whatever the scheduling.
            assert events == ["sent 0", "sent 1", "sent 2"]
            assert await receive_n(client, 6) == [str(i) for i in range(6)]
        assert connection.statistics().drops == 0
        await client.close()


async def test_send_timeout_drops_a_client_that_stopped_reading() -> None:
    async with manager(send_timeout=0.01) as m:
        server, client = tr.memory_channel_pair(max_buffer=1)
        connection = m.add(server)
        connection.send("fills the buffer")
        connection.send("blocks")
        with anyio.fail_after(10):
            await connection.wait_closed()
        assert client.close_code == 1013
        assert await drain(client) == ["fills the buffer"]


# -- heartbeat ---------------------------------------------------------------------------


async def test_heartbeat_pings_and_closes_silent_connections() -> None:
    seen: list[str] = []

    async def handler(connection: tr.Connection, text: str) -> None:
        seen.append(text)

    async with tr.WebSocketManager(ping_interval=0.02, ping_timeout=0.3, on_message=handler) as m:
        silent_server, silent = tr.memory_channel_pair(max_buffer=1000)
        lively_server, lively = tr.memory_channel_pair()
        silent_connection = m.add(silent_server)
        lively_connection = m.add(lively_server)
        pongs = 0

        async def answer_pings() -> None:
            nonlocal pongs
            async for text in lively:
                assert text == PING
                await lively.send_text('{"type":"pong"}')
                pongs += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_pings)
            with anyio.fail_after(10):
                await silent_connection.wait_closed()
            assert not lively_connection.closed
            tg.cancel_scope.cancel()
        await lively.close()
        assert (silent.close_code, silent.close_reason) == (1011, "ping timeout")
        assert json.loads(await silent.receive_text()) == {"type": "ping"}
        assert pongs >= 1
        assert seen == []  # pongs never reach the handler
        stats = m.statistics()
        assert stats.ping_timeouts == 1
        assert stats.pings >= 1


async def test_a_busy_handler_is_not_a_dead_peer() -> None:
    release = anyio.Event()
    handled: list[str] = []

    async def slow_handler(connection: tr.Connection, text: str) -> None:
        await release.wait()
        handled.append(text)

    async with tr.WebSocketManager(
        ping_interval=0.02, ping_timeout=0.05, on_message=slow_handler
    ) as m:
        server, client = tr.memory_channel_pair(max_buffer=100)
        connection = m.add(server)
        await client.send_text("work")
        with anyio.fail_after(10):
            for _ in range(6):  # six pings: well past ping_interval + ping_timeout
                assert await client.receive_text() == PING
        assert not connection.closed
        release.set()
        await client.send_text('{"type":"pong"}')
        await client.close()
        await connection.wait_closed()
        assert handled == ["work"]
        assert m.statistics().ping_timeouts == 0


# -- adapters ----------------------------------------------------------------------------


class FakeASGI:
    """An ASGI server's side of one WebSocket: messages in, messages recorded out."""

    def __init__(self, *incoming: dict[str, Any]) -> None:
        self.send_in, self.receive_from = anyio.create_memory_object_stream[dict[str, Any]](100)
        for message in incoming:
            self.send_in.send_nowait(message)
        self.sent: list[MutableMapping[str, Any]] = []
        self.fail_send: OSError | None = None

    async def receive(self) -> MutableMapping[str, Any]:
        return await self.receive_from.receive()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if self.fail_send is not None:
            raise self.fail_send
        self.sent.append(message)

    def close(self) -> None:
        self.send_in.close()
        self.receive_from.close()


@pytest.fixture
async def asgi() -> AsyncIterator[FakeASGI]:
    fake = FakeASGI({"type": "websocket.connect"})
    yield fake
    fake.close()


async def test_asgi_channel_handshake_and_messages(asgi: FakeASGI) -> None:
    channel = tr.ASGIChannel(asgi.receive, asgi.send)
    assert isinstance(channel, tr.TextChannel)
    with pytest.raises(RuntimeError, match="accept"):
        await channel.send_text("too early")
    await channel.accept(subprotocol="streamkit", headers=[(b"x-a", b"1")])
    with pytest.raises(RuntimeError, match="once"):
        await channel.accept()
    await channel.send_text("hello")
    asgi.send_in.send_nowait({"type": "websocket.receive", "text": "hi"})
    assert await channel.receive_text() == "hi"
    asgi.send_in.send_nowait({"type": "websocket.receive", "bytes": b"\x00"})
    with pytest.raises(sk.RemoteProtocolError, match="binary"):
        await channel.receive_text()
    asgi.send_in.send_nowait({"type": "websocket.connect"})
    with pytest.raises(sk.RemoteProtocolError, match="unexpected"):
        await channel.receive_text()
    await channel.close(1008, "no")
    await channel.close(1000)  # idempotent
    with pytest.raises(sk.Disconnected):
        await channel.send_text("late")
    assert asgi.sent == [
        {"type": "websocket.accept", "headers": [(b"x-a", b"1")], "subprotocol": "streamkit"},
        {"type": "websocket.send", "text": "hello"},
        {"type": "websocket.close", "code": 1008, "reason": "no"},
    ]


async def test_asgi_channel_disconnect_and_server_errors(asgi: FakeASGI) -> None:
    channel = tr.ASGIChannel(asgi.receive, asgi.send)
    await channel.accept()
    asgi.send_in.send_nowait({"type": "websocket.disconnect", "code": 1001})
    with pytest.raises(sk.Disconnected, match="1001") as gone:
        await channel.receive_text()
    assert channel.disconnect_code == gone.value.close_code == 1001
    with pytest.raises(sk.Disconnected):
        await channel.receive_text()
    await channel.close()  # the client is gone: nothing is sent
    assert asgi.sent == [{"type": "websocket.accept", "headers": []}]

    broken = tr.ASGIChannel(asgi.receive, asgi.send, accepted=True)
    asgi.fail_send = ConnectionResetError("reset")
    with pytest.raises(sk.Disconnected) as info:
        await broken.send_text("x")
    assert isinstance(info.value.__cause__, ConnectionResetError)
    await broken.close()  # quiet: already gone


async def test_asgi_channel_close_before_accept_rejects(asgi: FakeASGI) -> None:
    channel = tr.ASGIChannel(asgi.receive, asgi.send)
    await channel.close(1008, "who are you")
    assert asgi.sent == [{"type": "websocket.close", "code": 1008, "reason": "who are you"}]
    with pytest.raises(sk.Disconnected):
        await channel.receive_text()
    with pytest.raises(RuntimeError):
        await channel.accept()


async def test_asgi_channel_client_leaves_during_handshake() -> None:
    fake = FakeASGI({"type": "websocket.disconnect", "code": 1006})
    with pytest.raises(sk.Disconnected):
        await tr.ASGIChannel(fake.receive, fake.send).accept()
    other = FakeASGI({"type": "http.request"})
    with pytest.raises(sk.RemoteProtocolError):
        await tr.ASGIChannel(other.receive, other.send).accept()
    fake.close()
    other.close()


async def test_manager_over_asgi_channel(asgi: FakeASGI) -> None:
    async def echo(connection: tr.Connection, text: str) -> None:
        connection.send(text.upper())

    channel = tr.ASGIChannel(asgi.receive, asgi.send)
    await channel.accept()
    async with manager(on_message=echo) as m:
        asgi.send_in.send_nowait({"type": "websocket.receive", "text": "abc"})
        asgi.send_in.send_nowait({"type": "websocket.receive", "bytes": b"abc"})
        async with m.connect(channel) as connection:
            await connection.wait_closed()
    assert asgi.sent[1:] == [
        {"type": "websocket.send", "text": "ABC"},
        {
            "type": "websocket.close",
            "code": 1003,
            "reason": "ASGI websocket.receive: expected a text message, got a binary one",
        },
    ]
    assert isinstance(connection.error, sk.RemoteProtocolError)


async def test_starlette_channel_over_a_real_starlette_websocket(asgi: FakeASGI) -> None:
    from starlette.websockets import WebSocket, WebSocketDisconnect

    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    websocket = WebSocket(scope, asgi.receive, asgi.send)
    await websocket.accept()
    channel = tr.StarletteChannel(websocket)
    assert isinstance(channel, tr.TextChannel)
    await channel.send_text("hello")
    asgi.send_in.send_nowait({"type": "websocket.receive", "text": "hi"})
    assert await channel.receive_text() == "hi"
    asgi.send_in.send_nowait({"type": "websocket.receive", "bytes": b"hi"})
    with pytest.raises(sk.RemoteProtocolError):
        await channel.receive_text()
    # Starlette turns the server's OSError into WebSocketDisconnect; we into Disconnected.
    asgi.fail_send = BrokenPipeError("gone")
    with pytest.raises(sk.Disconnected) as info:
        await channel.send_text("x")
    assert isinstance(info.value.__cause__, WebSocketDisconnect | OSError)
    assert channel.disconnect_code is not None
    await channel.close()  # quiet
    with pytest.raises(sk.Disconnected):
        await channel.receive_text()


async def test_starlette_channel_peer_disconnect_and_close(asgi: FakeASGI) -> None:
    from starlette.websockets import WebSocket

    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    websocket = WebSocket(scope, asgi.receive, asgi.send)
    await websocket.accept()
    channel = tr.StarletteChannel(websocket)
    await channel.close(4000, "done")
    await channel.close()  # idempotent
    assert asgi.sent[-1] == {"type": "websocket.close", "code": 4000, "reason": "done"}
    with pytest.raises(sk.Disconnected):
        await channel.send_text("late")

    other = tr.StarletteChannel(WebSocket(scope, asgi.receive, asgi.send))
    asgi.send_in.send_nowait({"type": "websocket.connect"})
    await other.websocket.accept()  # type: ignore[attr-defined]
    asgi.send_in.send_nowait({"type": "websocket.disconnect", "code": 1001})
    with pytest.raises(sk.Disconnected, match="1001") as gone:
        await other.receive_text()
    assert other.disconnect_code == gone.value.close_code == 1001
    await other.close()


class StubWebSocket:
    """Raises a foreign exception that only looks like a framework's by its name."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def receive(self) -> MutableMapping[str, Any]:
        raise self.error

    async def send_text(self, data: str) -> None:
        raise self.error

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        raise self.error


async def test_adapters_let_unrelated_exceptions_through() -> None:
    channel = tr.StarletteChannel(StubWebSocket(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        await channel.receive_text()
    with pytest.raises(ValueError, match="a bug"):
        await channel.close()
    other = tr.WebsocketsChannel(StubWebsocketsConnection(KeyError("bug")))
    with pytest.raises(KeyError):
        await other.receive_text()


class StubWebsocketsConnection:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def send(self, message: str) -> None:
        raise self.error

    async def recv(self) -> str | bytes:
        raise self.error

    async def close(self, code: int = 1000, reason: str = "") -> None:
        raise self.error


# The websockets package runs on asyncio only, so this test overrides the anyio_backend
# fixture (which otherwise runs every test on asyncio and Trio) with asyncio alone.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_with_a_real_websockets_server_and_client() -> None:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def echo(connection: tr.Connection, text: str) -> None:
        connection.send(f"echo {text}")

    async with manager(on_message=echo) as m:
        server_connections: list[tr.Connection] = []

        async def handler(websocket: ServerConnection) -> None:
            async with m.connect(tr.WebsocketsChannel(websocket), groups=["room"]) as conn:
                server_connections.append(conn)
                await conn.wait_closed()

        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}") as websocket:
                client = tr.WebsocketsChannel(websocket)
                await client.send_text("hi")
                assert await client.receive_text() == "echo hi"
                assert m.broadcast("to the room", group="room") == 1
                assert await client.receive_text() == "to the room"
                await websocket.send(b"binary")  # refused: the server closes with 1003
                with pytest.raises(sk.Disconnected) as info:
                    await client.receive_text()
                assert isinstance(info.value.__cause__, ConnectionClosed)
                assert websocket.close_code == 1003
                with pytest.raises(sk.Disconnected):
                    await client.send_text("late")
                await client.close()
            (conn,) = server_connections
            await conn.wait_closed()
            assert isinstance(conn.error, sk.RemoteProtocolError)
            stats = conn.statistics()
            assert (stats.messages_in, stats.messages_out) == (1, 2)

            # A client that leaves: the server side sees the peer go.
            async with connect(f"ws://127.0.0.1:{port}") as websocket:
                await tr.WebsocketsChannel(websocket).close(1000, "bye")
            await server_connections[1].wait_closed()
            assert server_connections[1].peer_closed


async def test_websockets_adapter_reports_the_peers_close_code() -> None:
    from websockets.exceptions import ConnectionClosedOK
    from websockets.frames import Close

    closed = ConnectionClosedOK(Close(1001, "going away"), None)
    channel = tr.WebsocketsChannel(StubWebsocketsConnection(closed))
    with pytest.raises(sk.Disconnected) as gone:
        await channel.receive_text()
    assert gone.value.close_code == 1001
    silent = tr.WebsocketsChannel(StubWebsocketsConnection(ConnectionResetError()))
    with pytest.raises(sk.Disconnected) as reset:
        await silent.receive_text()
    assert reset.value.close_code is None
    assert "close_code" not in reset.value.to_dict()


# -- the adapter API: serve_subscription -------------------------------------------------


def numbered(*contents: str, start: int = 1) -> list[sk.StreamEvent]:
    return [
        sk.StreamEvent(event_type="token", content=text, seq=start + i)
        for i, text in enumerate(contents)
    ]


class from_list:
    """Events from a list, after ``go`` is set: an async iterator with nothing to close."""

    def __init__(self, events: list[sk.StreamEvent], go: anyio.Event | None = None) -> None:
        self.events = list(events)
        self.go = go

    def __aiter__(self) -> from_list:
        return self

    async def __anext__(self) -> sk.StreamEvent:
        if self.go is not None:
            await self.go.wait()
            self.go = None
        await anyio.lowlevel.checkpoint()
        if not self.events:
            raise StopAsyncIteration
        return self.events.pop(0)


class events_then_silence(from_list):
    """The events, then a wait for ``later``."""

    def __init__(self, first: from_list, later: anyio.Event) -> None:
        super().__init__(first.events)
        self.later = later

    async def __anext__(self) -> sk.StreamEvent:
        if not self.events:
            await self.later.wait()
        return await super().__anext__()


def silence_then(events: list[sk.StreamEvent], go: anyio.Event) -> from_list:
    return from_list(events, go)


async def test_serve_sends_each_event_and_closes_normally() -> None:
    server, client = tr.memory_channel_pair()
    events = numbered("a", "b", "c")
    result = await serve_with_reader(server, client, from_list(events))
    outcome, got = result
    assert outcome == tr.ServeResult(outcome="ended", position=3, sent=3)
    assert [sk.StreamEvent.from_json(text) for text in got] == events
    assert (client.close_code, client.closed_by) == (1000, "server")


async def serve_with_reader(
    server: tr.MemoryChannel,
    client: tr.MemoryChannel,
    events: AsyncIterable[sk.StreamEvent],
    **options: Any,
) -> tuple[tr.ServeResult, list[str]]:
    got: list[str] = []

    async def read() -> None:
        got.extend([text async for text in client])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            result = await tr.serve_subscription(server, events, **options)
    return result, got


async def test_serve_uses_the_codec_and_skips_what_the_client_had() -> None:
    server, client = tr.memory_channel_pair()
    result, got = await serve_with_reader(
        server,
        client,
        from_list(numbered("a", "b", "c", "d")),
        encode=lambda event: f"{event.seq}:{event.content}",
        after=2,
    )
    assert got == ["3:c", "4:d"]
    assert (result.position, result.sent) == (4, 2)


async def test_serve_resumes_a_session_after_a_write_deadline() -> None:
    async with sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None)) as registry:
        session = await registry.create(user_id="alice")
        sid = session.session_id
        for i in range(5):
            await registry.publish(
                sid, sk.StreamEvent(event_type="token", content=str(i)), user_id="alice"
            )
        await registry.publish(sid, sk.StreamEvent(event_type="complete"), user_id="alice")
        # A client that reads nothing: its one-message buffer fills, the send stalls.
        server, client = tr.memory_channel_pair(max_buffer=1)
        with anyio.fail_after(10):
            async with registry.subscribe(sid, user_id="alice") as subscription:
                result = await tr.serve_subscription(server, subscription, write_timeout=0.05)
        assert (result.outcome, result.position) == ("slow", 1)
        assert (client.close_code, client.close_reason) == (1013, "slow client: resume after 1")
        # It comes back and resumes after the position it was told: nothing is lost.
        server, client = tr.memory_channel_pair()
        async with registry.subscribe(sid, user_id="alice", after=result.position) as subscription:
            result, got = await serve_with_reader(server, client, subscription)
        assert [json.loads(text)["seq"] for text in got] == [2, 3, 4, 5, 6]
        assert result.outcome == "ended"


async def test_serve_sends_heartbeats_in_silences() -> None:
    server, client = tr.memory_channel_pair()
    go = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                result = await tr.serve_subscription(
                    server,
                    silence_then(numbered("late"), go),
                    heartbeat_interval=0.02,
                    heartbeat_message="hb",
                    write_timeout=5,
                )
                assert result.outcome == "ended"

            tg.start_soon(serve)
            assert await client.receive_text() == "hb"
            assert await client.receive_text() == "hb"
            go.set()
            rest = [text async for text in client]
    assert json.loads(next(text for text in rest if text != "hb"))["content"] == "late"


async def test_serve_heartbeat_finds_a_client_gone_in_silence() -> None:
    server, client = tr.memory_channel_pair()
    go = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def leave() -> None:
                assert await client.receive_text() == "hb"
                await client.close(1001)

            tg.start_soon(leave)
            result = await tr.serve_subscription(
                server, silence_then([], go), heartbeat_interval=0.02, heartbeat_message="hb"
            )
    assert result.outcome == "disconnected"


async def test_serve_ends_when_the_client_goes_or_stop_is_set() -> None:
    server, client = tr.memory_channel_pair()
    await client.close(1001, "tab closed")
    result = await tr.serve_subscription(server, from_list(numbered("a")))
    assert (result.outcome, result.sent) == ("disconnected", 0)

    server, client = tr.memory_channel_pair()
    stop = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def stop_after_first() -> None:
                assert json.loads(await client.receive_text())["seq"] == 1
                stop.set()

            tg.start_soon(stop_after_first)
            events = from_list(numbered("a"))
            result = await tr.serve_subscription(
                server, events_then_silence(events, anyio.Event()), stop=stop
            )
    assert (result.outcome, result.position) == ("stopped", 1)
    assert client.close_code == 1001


class GatedChannel:
    """A channel of one's own: records what is sent; the second send waits for ``gate``."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.waiting = anyio.Event()
        self.gate = anyio.Event()
        self.closed: tuple[int, str] | None = None

    async def send_text(self, text: str) -> None:
        if self.sent:
            self.waiting.set()
            await self.gate.wait()
        self.sent.append(text)

    async def receive_text(self) -> str:
        raise sk.Disconnected("nothing comes back")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        await anyio.lowlevel.checkpoint()


async def test_serve_reports_a_lagged_reader_and_other_errors() -> None:
    config = sk.RegistryConfig(heartbeat_interval=None, history_max_events=3)
    async with sk.SessionRegistry(config) as registry:
        session = await registry.create()
        sid = session.session_id

        async def publish(count: int) -> None:
            for i in range(count):
                await registry.publish(sid, sk.StreamEvent(event_type="token", content=str(i)))

        channel = GatedChannel()
        assert isinstance(channel, tr.TextChannel)
        results: list[tr.ServeResult] = []
        await publish(1)
        with anyio.fail_after(10):
            async with registry.subscribe(sid) as subscription, anyio.create_task_group() as tg:

                async def serve() -> None:
                    results.append(await tr.serve_subscription(channel, subscription))

                tg.start_soon(serve)
                await publish(1)
                await channel.waiting.wait()  # stuck sending event 2
                await publish(5)  # events 3..7: only 5, 6, 7 are retained
                channel.gate.set()
        assert [json.loads(text)["seq"] for text in channel.sent] == [1, 2]
        assert (results[0].outcome, results[0].position) == ("slow", 2)
        assert isinstance(results[0].error, sk.SubscriberLagged)
        assert channel.closed == (1013, "slow client: resume after 2")
        # Resuming there is a gap now: failed, and the close says so.
        channel = GatedChannel()
        async with registry.subscribe(sid, after=2) as subscription:
            result = await tr.serve_subscription(channel, subscription)
        assert (result.outcome, channel.sent) == ("failed", [])
        assert isinstance(result.error, sk.HistoryGap)
        assert channel.closed is not None
        assert channel.closed[0] == 1008
        assert channel.closed[1].startswith("history_gap")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"channel": object()}, "channel"),
        ({"encode": "json"}, "encode"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"heartbeat_message": ""}, "heartbeat_message"),
        ({"write_timeout": -1}, "write_timeout"),
        ({"slow_client_policy": "drop_oldest"}, "slow_client_policy"),
        ({"slow_client_policy": "wait"}, "slow_client_policy"),
        ({"slow_client_policy": "block", "write_timeout": 1}, "write_timeout"),
        ({"after": -1}, "after"),
    ],
)
async def test_serve_checks_its_arguments(options: dict[str, Any], field: str) -> None:
    server, _client = tr.memory_channel_pair()
    arguments: dict[str, Any] = {"channel": server, **options}
    channel = arguments.pop("channel")
    with pytest.raises(sk.ValidationError) as caught:
        await tr.serve_subscription(channel, from_list([]), **arguments)
    assert caught.value.field == field


async def test_serve_blocks_for_a_slow_client_under_block() -> None:
    server, client = tr.memory_channel_pair(max_buffer=1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            results: list[tr.ServeResult] = []

            async def serve() -> None:
                results.append(
                    await tr.serve_subscription(
                        server, from_list(numbered("a", "b", "c")), slow_client_policy="block"
                    )
                )

            tg.start_soon(serve)
            got = [await client.receive_text() for _ in range(3)]
    assert [json.loads(text)["content"] for text in got] == ["a", "b", "c"]
    assert results[0].outcome == "ended"


async def test_manager_connection_serves_a_session() -> None:
    async with (
        sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None)) as registry,
        manager(max_queue=2) as m,
    ):
        session = await registry.create()
        sid = session.session_id
        for i in range(5):
            await registry.publish(sid, sk.StreamEvent(event_type="token", content=str(i)))
        await registry.publish(sid, sk.StreamEvent(event_type="complete"))
        server, client = tr.memory_channel_pair(max_buffer=1)
        results: list[tr.ServeResult] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def handler() -> None:
                    async with (
                        m.connect(server, groups=["news"]) as connection,
                        registry.subscribe(sid, after=1) as subscription,
                    ):
                        m.broadcast("breaking", group="news")
                        results.append(
                            await connection.serve(
                                subscription,
                                encode=lambda event: str(event.seq),
                                close=True,
                            )
                        )

                tg.start_soon(handler)
                got = await drain(client)
        # The queue of 2 held the session back (no drop, no disconnect); the broadcast
        # went out beside it, in order of production.
        assert sorted(got, key=lambda t: t == "breaking") == ["2", "3", "4", "5", "6", "breaking"]
        assert got.index("breaking") <= 2
        assert results[0] == tr.ServeResult(outcome="ended", position=6, sent=5)
        assert client.close_code == 1000
        assert m.statistics().drops == 0


async def test_close_inside_the_block_still_sends_what_was_queued() -> None:
    # close() drains the queue; the block it cancels must not turn that into an
    # abrupt "going away" when it next waits.
    async with manager(max_queue=10) as m:
        server, client = tr.memory_channel_pair(max_buffer=1)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def handler() -> None:
                    async with m.connect(server) as connection:
                        for i in range(5):
                            connection.send(str(i))
                        connection.close(4000, "done")
                        await anyio.lowlevel.checkpoint()
                        pytest.fail("the block goes on after close()")  # pragma: no cover

                tg.start_soon(handler)
                got = await drain(client)
        assert got == ["0", "1", "2", "3", "4"]
        assert (client.close_code, client.close_reason) == (4000, "done")


async def test_manager_refuses_block_with_a_reason() -> None:
    with pytest.raises(sk.ValidationError, match="wait_writable") as caught:
        tr.WebSocketManager(slow_client_policy="block")
    assert caught.value.field == "slow_client_policy"


class HeldChannel(GatedChannel):
    """The first send goes through; every later one waits for ``gate``."""

    async def send_text(self, text: str) -> None:
        if self.sent:
            self.waiting.set()
            await self.gate.wait()
        self.sent.append(text)


@pytest.mark.parametrize("then", ["open", "stop"])
async def test_serve_takes_turns_with_its_heartbeats(then: str) -> None:
    channel = HeldChannel()
    go, stop = anyio.Event(), anyio.Event()
    results: list[tr.ServeResult] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                results.append(
                    await tr.serve_subscription(
                        channel,
                        silence_then(numbered("a"), go),
                        heartbeat_interval=0.01,
                        heartbeat_message="hb",
                        stop=stop,
                    )
                )

            tg.start_soon(serve)
            await channel.waiting.wait()  # the second heartbeat is stuck in its send
            go.set()  # the event comes: its send waits for the heartbeat's turn to end
            await anyio.wait_all_tasks_blocked()
            if then == "open":
                channel.gate.set()
            else:
                stop.set()  # leaving while waiting for the turn
    if then == "open":
        events = [json.loads(text) for text in channel.sent if text != "hb"]
        assert [(e["seq"], e["content"]) for e in events] == [(1, "a")]
        assert results[0].outcome == "ended"
    else:
        assert channel.sent == ["hb"]
        assert results[0].outcome == "stopped"
        assert channel.closed == (1001, "server shutting down")
