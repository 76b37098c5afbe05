"""SessionState, the transition table, and StreamSession snapshots."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamkit as sk

TERMINAL = {
    sk.SessionState.COMPLETED,
    sk.SessionState.ERROR,
    sk.SessionState.CANCELLED,
    sk.SessionState.EXPIRED,
}


def test_table_covers_every_state() -> None:
    assert set(sk.TRANSITIONS) == set(sk.SessionState)


def test_terminal_states_are_final() -> None:
    for state in sk.SessionState:
        assert state.is_terminal == (state in TERMINAL)
        if state in TERMINAL:
            assert not sk.TRANSITIONS[state]


@pytest.mark.parametrize(
    ("current", "requested"), list(itertools.product(sk.SessionState, sk.SessionState))
)
def test_check_transition_follows_the_table(
    current: sk.SessionState, requested: sk.SessionState
) -> None:
    if requested in sk.TRANSITIONS[current]:
        sk.check_transition(current, requested)
    else:
        with pytest.raises(sk.InvalidTransition) as info:
            sk.check_transition(current, requested, session_id="s1")
        assert info.value.current == current.value
        assert info.value.requested == requested.value
        assert current.value in str(info.value)
        assert requested.value in str(info.value)
        assert info.value.status_hint == 409
        assert info.value.session_id == "s1"


def test_active_and_paused_alternate() -> None:
    session = sk.StreamSession(user_id="alice", created_at=10.0)
    paused = session.transition(sk.SessionState.PAUSED, now=11.0)
    assert paused.status is sk.SessionState.PAUSED
    assert paused.updated_at == 11.0
    assert session.status is sk.SessionState.ACTIVE  # snapshots are values
    active = paused.transition(sk.SessionState.ACTIVE, now=12.0)
    done = active.transition(sk.SessionState.COMPLETED, now=13.0)
    assert done.is_terminal
    with pytest.raises(sk.InvalidTransition):
        done.transition(sk.SessionState.ACTIVE)


@pytest.mark.parametrize("now", [math.nan, math.inf, -1.0, -math.inf, "1.0", True])
def test_a_transition_refuses_an_invalid_time(now: object) -> None:
    session = sk.StreamSession(created_at=10.0)
    with pytest.raises(sk.ValidationError):
        session.transition(sk.SessionState.PAUSED, now=now)  # type: ignore[arg-type]


def test_a_transition_takes_an_int_time_and_never_goes_before_creation() -> None:
    session = sk.StreamSession(created_at=10.0)
    later = session.transition(sk.SessionState.PAUSED, now=12)
    assert later.updated_at == 12.0
    assert type(later.updated_at) is float
    assert session.transition(sk.SessionState.PAUSED, now=5.0).updated_at == 10.0


def test_a_transition_is_a_frozen_snapshot_equal_to_an_evolved_copy() -> None:
    session = sk.StreamSession(user_id="alice", context={"a": [1, 2]}, created_at=10.0)
    paused = session.transition(sk.SessionState.PAUSED, now=11.0)
    assert type(paused) is sk.StreamSession
    assert paused == attrs.evolve(session, status=sk.SessionState.PAUSED, updated_at=11.0)
    assert paused.context is session.context
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        paused.status = sk.SessionState.ACTIVE  # type: ignore[misc]
    assert sk.StreamSession.from_dict(paused.to_dict()) == paused


def test_session_ids_are_unguessable_and_url_safe() -> None:
    ids = {sk.new_session_id() for _ in range(100_000)}
    assert len(ids) == 100_000
    for session_id in itertools.islice(ids, 1000):
        assert re.fullmatch(r"[A-Za-z0-9_\-]{24}", session_id)


def test_default_session() -> None:
    session = sk.StreamSession()
    assert session.status is sk.SessionState.ACTIVE
    assert session.user_id is None
    assert session.updated_at == session.created_at
    assert len(session.events) == 0
    assert not session.is_terminal


ids = st.from_regex(r"[A-Za-z0-9_\-]{1,40}", fullmatch=True)
contexts = st.dictionaries(
    st.text(max_size=8),
    st.none() | st.integers() | st.text(max_size=10) | st.lists(st.booleans(), max_size=3),
    max_size=5,
)


@st.composite
def sessions(draw: st.DrawFn) -> sk.StreamSession:
    created = draw(st.floats(min_value=0, max_value=4e9))
    events = draw(
        st.lists(
            st.builds(
                sk.StreamEvent,
                event_type=st.sampled_from([t for t in sk.EventType if t != "part"]),
                content=st.text(max_size=10),
                seq=st.integers(min_value=1, max_value=10_000),
            ),
            max_size=3,
        )
    )
    return sk.StreamSession(
        session_id=draw(ids),
        user_id=draw(st.none() | ids),
        status=draw(st.sampled_from(list(sk.SessionState))),
        context=draw(contexts),
        created_at=created,
        updated_at=created + draw(st.floats(min_value=0, max_value=1e6)),
        events=events,
    )


@given(sessions())
def test_session_round_trips(session: sk.StreamSession) -> None:
    assert sk.StreamSession.from_dict(session.to_dict()) == session
    assert sk.StreamSession.from_json(session.to_json()) == session
    brief = session.to_dict(include_events=False)
    assert "events" not in brief
    assert sk.StreamSession.from_dict(brief).events == ()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"status": "running"}, "status"),
        ({"session_id": "bad id"}, "session_id"),
        ({"session_id": 12}, "session_id"),
        ({"user_id": ""}, "user_id"),
        ({"context": "x"}, "context"),
        ({"context": {"f": float("nan")}}, "context.f"),
        ({"created_at": -5}, "created_at"),
        ({"updated_at": 0.5}, "updated_at"),
        ({"events": "abc"}, "events"),
        ({"events": [{"event_type": "token"}]}, "event_id"),
        ({"colour": 1}, "colour"),
    ],
)
def test_from_dict_rejects_bad_fields(changes: dict[str, Any], field: str) -> None:
    data: dict[str, Any] = {"session_id": "s1", "status": "active", "created_at": 1.0}
    data.update(changes)
    with pytest.raises(sk.ValidationError) as info:
        sk.StreamSession.from_dict(data)
    assert info.value.field == field


def test_events_must_be_stream_events() -> None:
    with pytest.raises(sk.ValidationError, match=r"events\[0\]"):
        sk.StreamSession(events=[{"event_type": "token"}])


def test_from_json_rejects_garbage() -> None:
    with pytest.raises(sk.ValidationError):
        sk.StreamSession.from_json("{not json")


def test_docs_diagram_is_the_table() -> None:
    from pathlib import Path

    from streamkit._session import transition_diagram

    docs = Path(__file__).resolve().parent.parent / "docs" / "concepts.md"
    assert f"```mermaid\n{transition_diagram()}\n```" in docs.read_text(encoding="utf-8")


def test_events_view_is_a_live_read_only_sequence() -> None:
    from streamkit._session import events_view

    backing = [sk.StreamEvent(event_type="token", content="a")]
    view = events_view(backing)
    session = sk.StreamSession(events=view)
    assert session.events is view  # a view is kept, not copied
    backing.append(sk.StreamEvent(event_type="complete"))
    assert len(session.events) == 2
    assert session.events[-1].is_final
    as_tuple: object = tuple(backing)
    as_text: object = "ab"
    assert view == backing
    assert view == as_tuple
    assert view != as_text
    assert "2 events" in repr(view)
    with pytest.raises(TypeError):
        hash(view)
