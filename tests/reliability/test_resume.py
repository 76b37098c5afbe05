"""A subscriber cut at any point of a stream resumes with exactly the events it missed.

Hypothesis picks the stream's length, where the subscriber leaves and how many events
are published while it is away; the resumed subscription (``after=`` the last ``seq``
seen, in-process; ``Last-Event-ID`` over SSE against a real uvicorn) must give exactly
the rest: no gap, no duplicate, ending with the one final event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamkit as sk
from streamkit import sse
from streamkit.asgi import StreamApp

from ..asgi_helpers import RawStream, auth, bearer_authenticate, serve

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..asgi_helpers import ServerThread

pytestmark = pytest.mark.anyio

USER = "alice"


def token(i: int) -> sk.StreamEvent:
    return sk.StreamEvent(event_type="token", content=f"t{i}")


@st.composite
def cuts(draw: st.DrawFn) -> tuple[int, int, int]:
    """(events published before the cut, the cut point, events published while away)."""
    before = draw(st.integers(0, 30))
    cut = draw(st.integers(0, before))
    away = draw(st.integers(0, 30))
    return before, cut, away


# -- in-process --------------------------------------------------------------------------


@given(plan=cuts(), finish_while_away=st.booleans())
async def test_resume_in_process(plan: tuple[int, int, int], finish_while_away: bool) -> None:
    before, cut, away = plan
    async with sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None)) as reg:
        sid = (await reg.create(user_id=USER)).session_id
        for i in range(before):
            await reg.publish(sid, token(i), user_id=USER)
        seen: list[sk.StreamEvent] = []
        with anyio.fail_after(10):
            if cut:
                async with reg.subscribe(sid, user_id=USER) as subscription:
                    async for event in subscription:
                        seen.append(event)
                        if len(seen) == cut:
                            break
            for i in range(before, before + away):
                await reg.publish(sid, token(i), user_id=USER)
            after = seen[-1].seq if seen else 0
            assert after is not None
            if finish_while_away or after == before + away:
                # (Nothing left to read live: the final event must come first.)
                finish_while_away = True
                await reg.publish(sid, sk.StreamEvent(event_type="complete"), user_id=USER)
            rest: list[sk.StreamEvent] = []
            async with reg.subscribe(sid, user_id=USER, after=after) as subscription:
                async for event in subscription:
                    rest.append(event)
                    if not finish_while_away and event.seq == before + away:
                        await reg.publish(sid, sk.StreamEvent(event_type="complete"), user_id=USER)
        total = before + away + 1
        everything = seen + rest
        assert [e.seq for e in everything] == list(range(1, total + 1))
        assert [e.content for e in everything[:-1]] == [f"t{i}" for i in range(before + away)]
        assert everything[-1].event_type == "complete"


# -- over SSE, against uvicorn ------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    app = StreamApp(
        registry_config=sk.RegistryConfig(max_sessions=1000, heartbeat_interval=None),
        authenticate=bearer_authenticate,
        heartbeat_interval=None,
        compression=False,
    )
    with serve(app) as server:
        yield server


async def publish(server: ServerThread, sid: str, *events: sk.StreamEvent) -> None:
    app: StreamApp = server.app

    async def run() -> None:
        for event in events:
            await app.registry.publish(sid, event, user_id=USER)

    await server.call(run)


async def read_messages(
    raw: RawStream, decoder: sse.SSEDecoder[sse.SSEMessage], limit: int | None
) -> list[sk.StreamEvent]:
    """Read events until ``limit`` of them (then stop reading) or the end of the body."""
    events: list[sk.StreamEvent] = []
    while limit is None or len(events) < limit:
        chunk = await raw.chunk()
        if chunk is None:
            break
        for message in decoder.feed(chunk):
            events.append(message.to_event())
            # A cut between two events of one chunk is a cut all the same.
            if limit is not None and len(events) == limit:
                break
    return events


@settings(max_examples=25)
@given(plan=cuts())
async def test_resume_over_sse_with_last_event_id(
    server: ServerThread, plan: tuple[int, int, int]
) -> None:
    before, cut, away = plan
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        response = await client.post("/sessions", json={}, headers=auth(USER))
        assert response.status_code == 201
        sid = response.json()["session"]["session_id"]
    await publish(server, sid, *(token(i) for i in range(before)))
    path = f"/sessions/{sid}/events"
    seen: list[sk.StreamEvent] = []
    with anyio.fail_after(20):
        if cut:
            async with RawStream.open(server.port, path, auth(USER)) as raw:
                assert raw.status == 200
                seen = await read_messages(raw, sse.SSEDecoder(), cut)
            # The connection is closed here, in the middle of the stream.
        await publish(server, sid, *(token(i) for i in range(before, before + away)))
        await publish(server, sid, sk.StreamEvent(event_type="complete"))
        last_id = str(seen[-1].seq) if seen else None
        headers = auth(USER)
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        async with RawStream.open(server.port, path, headers) as raw:
            assert raw.status == 200
            rest = await read_messages(raw, sse.SSEDecoder(last_event_id=last_id or ""), None)
    everything = seen[:cut] + rest
    total = before + away + 1
    assert [e.seq for e in everything] == list(range(1, total + 1))
    assert [e.content for e in everything[:-1]] == [f"t{i}" for i in range(before + away)]
    assert everything[-1].event_type == "complete"
    # Resuming after the final event: nothing is left, and the answer says so.
    headers = {**auth(USER), "Last-Event-ID": str(total)}
    async with RawStream.open(server.port, path, headers) as raw:
        assert raw.status == 204


async def test_resume_point_past_the_end_is_refused() -> None:
    async with sk.SessionRegistry(sk.RegistryConfig(heartbeat_interval=None)) as reg:
        sid = (await reg.create(user_id=USER)).session_id
        await reg.publish(sid, token(0), user_id=USER)
        with pytest.raises(sk.ValidationError) as caught:
            async with reg.subscribe(sid, user_id=USER, after=5):
                pass
        assert caught.value.field == "after"
        assert reg.statistics().subscribers == 0
        # The last seq itself is a valid resume point: the reader waits for what comes.
        async with reg.subscribe(sid, user_id=USER, after=1) as sub:
            await reg.publish(sid, token(1), user_id=USER)
            with anyio.fail_after(5):
                event = await sub.__anext__()
        assert (event.seq, event.content) == (2, "t1")
