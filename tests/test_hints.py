"""Errors that say what to do next, and logs that name no session and no user."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import streamkit as sk
from streamkit.blocking import BlockingRegistry

FAST = sk.StreamConfig(stream_delay=0, heartbeat_interval=None)


@pytest.mark.anyio
async def test_forgotten_user_id_says_the_session_has_an_owner() -> None:
    async with sk.SessionRegistry() as registry:
        session = await registry.create(user_id="alice")
        with pytest.raises(sk.PermissionDenied, match=r"has an owner.*pass the owner's user_id="):
            await registry.get(session.session_id)
        with pytest.raises(sk.PermissionDenied, match="another owner") as denied:
            await registry.pause(session.session_id, user_id="mallory")
        # The owner is not named to someone else.
        assert "alice" not in str(denied.value)


@pytest.mark.anyio
async def test_close_twice_is_a_documented_session_not_found() -> None:
    async with sk.SessionRegistry() as registry:
        session = await registry.create(user_id="alice")
        await registry.close(session.session_id, user_id="alice")
        with pytest.raises(sk.SessionNotFound, match="closed already"):
            await registry.close(session.session_id, user_id="alice")
    assert "SessionNotFound" in (sk.SessionRegistry.close.__doc__ or "")


def test_blocking_subscription_after_the_registry_was_left_raises_closed_error() -> None:
    with BlockingRegistry() as registry:
        session = registry.create(user_id="alice")
        events = registry.subscribe(session.session_id, user_id="alice")
        later = registry.subscribe(session.session_id, user_id="alice")
        registry.start(session.session_id, ["one"], FAST)
        assert next(events).event_type == sk.EventType.START
    with pytest.raises(sk.ClosedError, match="not running"):
        next(events)
    with pytest.raises(sk.ClosedError, match="not running"):
        next(later)
    events.close()  # nothing to do, and no error
    later.close()


def test_redis_backend_without_the_extra_says_what_to_install() -> None:
    for missing in ["sniffio", "redis"]:
        code = textwrap.dedent(
            f"""
            import sys
            sys.modules[{missing!r}] = None  # as if the package were not installed
            try:
                import streamkit.backends.redis
            except ImportError as exc:
                print(exc)
            else:
                print("imported")
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert "install 'streamkit[redis]'" in done.stdout, done.stdout + done.stderr


class _Boom(Exception):
    pass


def test_logs_at_info_or_above_name_no_session_and_no_user(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    users = ["user-q7Zx3", "user-Mw41k"]
    ids: list[str] = []

    def failing() -> Iterator[str]:
        yield "partial "
        raise RuntimeError("the model failed")

    def raising_hook(*args: object) -> None:
        raise _Boom("a hook failed")

    config = sk.RegistryConfig(max_event_bytes=2000, max_sessions_per_user=3)
    with BlockingRegistry(config) as registry:
        registry.on("state_changed", raising_hook)
        # A whole life: create, produce, read, pause, resume, cancel, close.
        ok = registry.create(user_id=users[0])
        ids.append(ok.session_id)
        registry.start(ok.session_id, ["a", "b"], FAST)
        assert list(registry.subscribe(ok.session_id, user_id=users[0]))[-1].is_final
        registry.close(ok.session_id, user_id=users[0])
        live = registry.create(user_id=users[1])
        ids.append(live.session_id)
        registry.pause(live.session_id, user_id=users[1])
        registry.resume(live.session_id, user_id=users[1])
        # Errors: refused calls, a producer that fails, one past max_event_bytes.
        for call in (registry.pause, registry.get, registry.close):
            with pytest.raises(sk.PermissionDenied):
                call(live.session_id, user_id=users[0])
        registry.cancel(live.session_id, user_id=users[1])
        with pytest.raises(sk.InvalidTransition):
            registry.cancel(live.session_id, user_id=users[1])
        registry.close(live.session_id, user_id=users[1])
        with pytest.raises(sk.SessionNotFound):
            registry.close(live.session_id, user_id=users[1])
        for source in (failing(), ["x" * 5000]):
            bad = registry.create(user_id=users[0])
            ids.append(bad.session_id)
            registry.start(bad.session_id, source, FAST)
            final = list(registry.subscribe(bad.session_id, user_id=users[0]))[-1]
            assert final.event_type == sk.EventType.ERROR
        for _ in range(3):
            registry.create(user_id=users[1])
        with pytest.raises(sk.SessionLimitExceeded):
            registry.create(user_id=users[1])
    # The hook's failures were logged: the capture saw the registry's records.
    assert any(r.levelno >= logging.ERROR for r in caplog.records)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        if record.levelno < logging.INFO:
            continue
        text = formatter.format(record) + repr(record.args) + repr(vars(record))
        for secret in [*ids, *users]:
            assert secret not in text, text
