"""StreamApp's agent routes: the AI SDK's ``useChat`` protocol and OpenAI chat completions.

Three chat routes under ``chat_path`` (``/chat`` by default), as ``useChat`` with the
AI SDK's ``DefaultChatTransport({api: ".../chat"})`` calls them::

    POST {chat_path}                        run the agent, answer a UI message stream
    GET  {chat_path}/{chat id}/stream       resume the chat's running answer (204: none)
    POST {chat_path}/{chat id}/stop         cancel the chat's running answer (204)

and, with ``openai_compatible``::

    POST /v1/chat/completions               run the agent, answer chat.completion.chunk SSE

Rules of this module:

* **Each answer is a session.** A POST creates a session owned by the caller, starts
  the agent on the text of the last user message, and streams the session through the
  format's sans-I/O encoder. The session id is in the ``x-streamkit-session-id``
  response header, so any reader can also follow it at ``/sessions/{id}/events``.
* **A chat has at most one running answer.** The app remembers, per user and chat id,
  the session of the chat's last answer (sessions carry the chat id in their context,
  so an app that did not see the POST finds it too). A new POST to the same chat
  closes the previous session first.
* **A dropped connection is not a stop.** Disconnecting ends the response only; the
  session goes on and its resume (``GET .../stream``) replays the answer from its
  first chunk (the AI SDK's transport expects a full replay), then follows it live.
  Stopping is the stop route, or ``POST /sessions/{id}/cancel``.
* The routes use the app's authentication, per-user connection bound, body limits,
  write timeout, heartbeat and shutdown, as ``/sessions/{id}/events`` does. Heartbeats
  are SSE comment lines; no ``id:`` line is ever sent (the ``openai`` SDK's decoder
  turns a comment after an id into an empty event).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from ._asgi_http import route_path, send_response
from ._asgi_stream import run_event_stream
from ._errors import SessionNotFound, StreamkitError, ValidationError
from ._validate import type_name
from .openai_chunks import ChatCompletionChunkEncoder
from .ui_message_stream import HEADERS as UI_HEADERS
from .ui_message_stream import UIMessageStreamEncoder

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._asgi_http import Receive, Scope, Send
    from ._events import StreamEvent
    from ._registry import SessionRegistry
    from ._session import StreamSession
    from .asgi import StreamApp

__all__ = ["AgentRoute", "AgentRoutes", "match_agent_route"]

#: The response header that names the session of an answer.
SESSION_HEADER: Final = b"x-streamkit-session-id"
#: The OpenAI-compatible route.
COMPLETIONS_PATH: Final = "/v1/chat/completions"
#: The session context key holding a chat's id.
CHAT_ID_KEY: Final = "chat_id"
_MAX_CHAT_ID: Final = 256
_OPENAI_HEADERS: Final = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
)


class AgentRoute:
    """A matched agent route: ``chat``, ``chat-stream``, ``chat-stop`` or ``completions``."""

    __slots__ = ("action", "allowed", "chat_id", "session_id")

    def __init__(self, action: str, allowed: tuple[str, ...], chat_id: str | None = None) -> None:
        self.action = action
        self.allowed = allowed
        self.chat_id = chat_id
        self.session_id: str | None = None


def match_agent_route(
    scope: Scope, *, chat_path: str | None, openai_compatible: bool
) -> AgentRoute | None:
    """Match the agent routes of a StreamApp (``None``: not one of them).

    The chat id is read from the raw path, so an id holding ``/`` (sent as ``%2F`` by
    ``encodeURIComponent``) is one segment.
    """
    path = route_path(scope).rstrip("/") or "/"
    if openai_compatible and path == COMPLETIONS_PATH:
        return AgentRoute("completions", ("POST",))
    if chat_path is None:
        return None
    if path == chat_path:
        return AgentRoute("chat", ("POST",))
    if not path.startswith(chat_path + "/"):
        return None
    action = path.rsplit("/", 1)[-1]
    if action not in ("stream", "stop"):
        return None
    raw: bytes | None = scope.get("raw_path")
    if raw:
        segments = raw.split(b"?", 1)[0].decode("latin-1").rstrip("/").split("/")
        if len(segments) < 2 or segments[-1] != action:
            return None
        try:
            chat_id = unquote(segments[-2], errors="strict")
        except UnicodeDecodeError:
            return None
        if not path.endswith(f"/{chat_id}/{action}"):
            return None
        prefix = path[: -len(f"/{chat_id}/{action}")]
    else:  # no raw path from this server: the decoded one (ids without '/')
        prefix, chat_id, _ = path.rsplit("/", 2)
    if prefix != chat_path:
        return None
    if action == "stream":
        return AgentRoute("chat-stream", ("GET",), chat_id)
    return AgentRoute("chat-stop", ("POST",), chat_id)


def _check_chat_id(value: object, field: str = "id") -> str:
    if not isinstance(value, str):
        raise ValidationError(
            f"{field} must be a string (the chat id), got {type_name(value)}", field=field
        )
    if not 0 < len(value) <= _MAX_CHAT_ID or not value.isprintable():
        raise ValidationError(
            f"{field} must be 1 to {_MAX_CHAT_ID} printable characters (the chat id)",
            field=field,
        )
    if value in (".", ".."):
        raise ValidationError(f"{field} must not be '.' or '..'", field=field)
    return value


def _text_of(content: object, field: str) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for index, item in enumerate(content):
            if not isinstance(item, dict):
                raise ValidationError(
                    f"{field}[{index}] must be an object, got {type_name(item)}",
                    field=f"{field}[{index}]",
                )
            if item.get("type") == "text":
                text = item.get("text")
                if not isinstance(text, str):
                    raise ValidationError(
                        f"{field}[{index}].text must be a string, got {type_name(text)}",
                        field=f"{field}[{index}].text",
                    )
                texts.append(text)
        return "".join(texts)
    raise ValidationError(
        f"{field} must be a string or a list of parts, got {type_name(content)}", field=field
    )


def last_user_text(messages: object, *, ui: bool) -> str:
    """Return the text of the last ``user`` message: the prompt given to the agent.

    ``ui`` messages (``useChat``) hold their text in ``parts``; OpenAI messages in
    ``content`` (a string or a list of content parts).

    Raises:
        ValidationError: ``messages`` is not a non-empty list of message objects, or
            holds no user message with text.
    """
    if not isinstance(messages, list) or not messages:
        raise ValidationError(
            f"messages must be a non-empty list of messages, got {type_name(messages)}",
            field="messages",
        )
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, dict):
            raise ValidationError(
                f"messages[{index}] must be an object, got {type_name(message)}",
                field=f"messages[{index}]",
            )
        if message.get("role") != "user":
            continue
        key = "parts" if ui else "content"
        content = message.get(key)
        if ui and not isinstance(content, list):
            raise ValidationError(
                f"messages[{index}].parts must be a list of parts, got {type_name(content)}",
                field=f"messages[{index}].parts",
            )
        text = _text_of(content, f"messages[{index}].{key}")
        if not text.strip():
            raise ValidationError(
                f"messages[{index}] (the last user message) has no text",
                field=f"messages[{index}].{key}",
            )
        return text
    raise ValidationError("messages holds no user message", field="messages")


class AgentRoutes:
    """The agent routes of one StreamApp, and the index of each chat's running answer."""

    __slots__ = ("_app", "_chats", "_hooked", "_sessions")

    def __init__(self, app: StreamApp) -> None:
        self._app = app
        # (user, chat id) -> the session of the chat's last answer; and back, so that
        # entries leave with their session (a "removed" hook on the registry).
        self._chats: dict[tuple[str | None, str], str] = {}
        self._sessions: dict[str, tuple[str | None, str]] = {}
        self._hooked: object = None

    def clear(self) -> None:
        """Forget every chat (the app's registry ended)."""
        self._chats.clear()
        self._sessions.clear()

    async def serve(
        self, route: AgentRoute, user: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Answer one request on an agent route.

        Raises:
            StreamkitError: the request is refused (the app answers it as JSON).
        """
        action = route.action
        if action == "chat-stream":
            assert route.chat_id is not None
            await self._resume(_check_chat_id(route.chat_id, "chat_id"), user, scope, receive, send)
        elif action == "chat-stop":
            assert route.chat_id is not None
            await self._stop(_check_chat_id(route.chat_id, "chat_id"), user, send)
        elif action == "chat":
            await self._chat(user, scope, receive, send)
        else:
            await self._completions(user, scope, receive, send)

    # -- useChat --------------------------------------------------------------------------

    async def _chat(self, user: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        body = await app._read_body(scope, receive)
        chat_id = _check_chat_id(body.get("id"))
        prompt = last_user_text(body.get("messages"), ui=True)
        registry = app._registry_or_503()
        app._check_open()
        previous = await self._active(registry, user, chat_id, running=False)
        if previous is not None:
            await _close_quietly(registry, previous.session_id, user)
        session = await app._start_agent(registry, user, prompt, {CHAT_ID_KEY: chat_id})
        self._remember(registry, user, chat_id, session.session_id)
        await self._stream(
            registry,
            session.session_id,
            user=user,
            receive=receive,
            send=send,
            encode=UIMessageStreamEncoder().encode,
            headers=UI_HEADERS,
        )

    async def _resume(
        self, chat_id: str, user: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        app = self._app
        registry = app._registry_or_503()
        session = await self._active(registry, user, chat_id, running=True)
        if session is None:
            await send_response(send, 204)
            return
        app._check_open()
        await self._stream(
            registry,
            session.session_id,
            user=user,
            receive=receive,
            send=send,
            encode=UIMessageStreamEncoder().encode,
            headers=UI_HEADERS,
        )

    async def _stop(self, chat_id: str, user: str | None, send: Send) -> None:
        registry = self._app._registry_or_503()
        session = await self._active(registry, user, chat_id, running=True)
        if session is not None:
            with contextlib.suppress(SessionNotFound):  # removed meanwhile: nothing runs
                await registry.cancel(session.session_id, user_id=user)
        await send_response(send, 204)

    def _remember(
        self, registry: SessionRegistry, user: str | None, chat_id: str, session_id: str
    ) -> None:
        if self._hooked is not registry:
            self.clear()
            registry.on("removed", self._forget)
            self._hooked = registry
        key = (user, chat_id)
        old = self._chats.get(key)
        if old is not None:
            self._sessions.pop(old, None)
        self._chats[key] = session_id
        self._sessions[session_id] = key

    def _forget(self, session: StreamSession) -> None:
        key = self._sessions.pop(session.session_id, None)
        if key is not None and self._chats.get(key) == session.session_id:
            del self._chats[key]

    async def _active(
        self, registry: SessionRegistry, user: str | None, chat_id: str, *, running: bool
    ) -> StreamSession | None:
        """The session of the chat's last answer (``running``: only if not ended)."""
        session: StreamSession | None = None
        session_id = self._chats.get((user, chat_id))
        if session_id is not None:
            try:
                session = await registry.get(session_id, user_id=user)
            except SessionNotFound:  # pragma: no cover - removed: the hook forgets it
                session = None
        elif user is not None:
            # Started by another app over the same store: its context names the chat.
            found = [
                s
                for s in await registry.list(user_id=user)
                if s.user_id == user and s.context.get(CHAT_ID_KEY) == chat_id
            ]
            if found:
                session = max(found, key=lambda s: s.created_at)
        if session is None or (running and session.is_terminal):
            return None
        return session

    # -- OpenAI chat completions ----------------------------------------------------------

    async def _completions(
        self, user: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        app = self._app
        body = await app._read_body(scope, receive)
        stream = body.get("stream", False)
        if stream is not True:
            raise ValidationError(
                "this server only streams: set stream to true (chat.completions.create("
                "..., stream=True)); answers come as chat.completion.chunk events",
                field="stream",
            )
        model = body.get("model", "streamkit")
        if not isinstance(model, str) or not model:
            raise ValidationError(
                f"model must be a non-empty string, got {type_name(model)}", field="model"
            )
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ValidationError(
                f"stream_options must be an object, got {type_name(options)}",
                field="stream_options",
            )
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise ValidationError(
                f"stream_options.include_usage must be a boolean, got {type_name(include_usage)}",
                field="stream_options.include_usage",
            )
        prompt = last_user_text(body.get("messages"), ui=False)
        registry = app._registry_or_503()
        app._check_open()
        session = await app._start_agent(registry, user, prompt, {"model": model})
        encoder = ChatCompletionChunkEncoder(model=model, include_usage=include_usage)
        await self._stream(
            registry,
            session.session_id,
            user=user,
            receive=receive,
            send=send,
            encode=encoder.encode,
            headers=_OPENAI_HEADERS,
        )

    # -- the response loop ----------------------------------------------------------------

    async def _stream(
        self,
        registry: SessionRegistry,
        session_id: str,
        *,
        user: str | None,
        receive: Receive,
        send: Send,
        encode: Callable[[StreamEvent], bytes],
        headers: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        app = self._app
        app._claim_connection(user)
        counters = app._counters
        try:
            async with registry.subscribe(session_id, user_id=user) as subscription:
                counters["streams_open"] += 1
                counters["streams_total"] += 1
                outcome = "failed"
                try:
                    outcome = await run_event_stream(
                        {},  # the request was read: nothing more to negotiate
                        receive,
                        send,
                        subscription,
                        heartbeat_interval=app._heartbeat_interval,
                        write_timeout=app._write_timeout,
                        stop=app._stop_event(),
                        headers=[(SESSION_HEADER, session_id.encode())],
                        encoder=_Format(encode, headers),
                    )
                finally:
                    counters["streams_open"] -= 1
                    app._outcomes[outcome] = app._outcomes.get(outcome, 0) + 1
        finally:
            app._release_connection(user)


async def _close_quietly(registry: SessionRegistry, session_id: str, user: str | None) -> None:
    with contextlib.suppress(SessionNotFound):
        await registry.close(session_id, user_id=user)


def _error_event(error: StreamkitError) -> StreamEvent:
    from ._events import StreamEvent

    return StreamEvent(event_type="error", metadata={"message": str(error)})


class _Format:
    """One response's encoder in the shape :func:`run_event_stream` takes."""

    __slots__ = ("encode", "headers")

    def __init__(
        self, encode: Callable[[StreamEvent], bytes], headers: tuple[tuple[bytes, bytes], ...]
    ) -> None:
        self.encode = encode
        self.headers = headers

    def fail(self, error: StreamkitError) -> bytes:
        """The format's own error (the UI stream's ``error`` chunk, an SSE ``error``)."""
        return self.encode(_error_event(error))
