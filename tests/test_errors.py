"""The exception tree: builtin mix-ins, status hints, JSON bodies."""

from __future__ import annotations

import pytest

import streamkit as sk


@pytest.mark.parametrize(
    ("error", "builtin", "status"),
    [
        (sk.ValidationError("bad", field="f"), ValueError, 400),
        (sk.PayloadTooLarge("big", field="body"), ValueError, 413),
        (sk.RemoteProtocolError("garbage", line=3), ValueError, 400),
        (sk.SessionNotFound("nope", session_id="s"), LookupError, 404),
        (sk.PermissionDenied("no", session_id="s"), sk.StreamkitError, 403),
        (sk.SessionLimitExceeded("full", limit=3), sk.StreamkitError, 429),
        (sk.InvalidTransition("completed", "active"), sk.StreamkitError, 409),
        (sk.ClosedError("closed"), sk.StreamkitError, 409),
        (sk.HistoryGap("gone", after=1, oldest_seq=5), sk.StreamkitError, 410),
        (sk.SubscriberLagged("slow", after=7, oldest_seq=None), sk.HistoryGap, 410),
        (sk.BackendError("redis down"), sk.StreamkitError, 503),
        (sk.Disconnected("bye"), sk.StreamkitError, 499),
    ],
)
def test_tree_and_status(error: sk.StreamkitError, builtin: type, status: int) -> None:
    assert isinstance(error, sk.StreamkitError)
    assert isinstance(error, builtin)
    assert error.status_hint == status
    body = error.to_dict()
    assert body["message"] == error.message == str(error)
    assert body["code"] == error.code


def test_bodies_carry_context() -> None:
    assert sk.ValidationError("bad", field="chunk_size").to_dict()["field"] == "chunk_size"
    gap = sk.HistoryGap("gone", after=2, oldest_seq=9, session_id="s1").to_dict()
    assert (gap["after"], gap["oldest_seq"], gap["session_id"]) == (2, 9, "s1")
    assert sk.SessionLimitExceeded("full", limit=4).to_dict()["limit"] == 4
    assert sk.RemoteProtocolError("x", line=7).line == 7


def test_codes_are_distinct() -> None:
    classes = [
        cls
        for cls in vars(sk).values()
        if isinstance(cls, type) and issubclass(cls, sk.StreamkitError)
    ]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)) == len(classes)
