"""A pure ASGI 3 application over a :class:`~streamkit.SessionRegistry`.

:class:`StreamApp` serves sessions over REST (JSON), Server-Sent Events, NDJSON and
WebSocket, with no web framework: run it under any ASGI server (uvicorn, hypercorn) or
mount it inside Starlette or FastAPI. The endpoints, relative to where it is mounted::

    POST   /sessions                  create a session (and start the agent on a prompt)
    GET    /sessions                  the caller's sessions
    GET    /sessions/{id}             one session's status and statistics
    DELETE /sessions/{id}             close and remove a session
    POST   /sessions/{id}/pause       pause, resume or cancel it
    POST   /sessions/{id}/resume
    POST   /sessions/{id}/cancel
    GET    /sessions/{id}/events      SSE (or NDJSON with Accept: application/x-ndjson)
    GET    /stats                     registry and app statistics
    GET    /openapi.json              the OpenAPI 3.1 document of these endpoints
    POST   /chat                      an agent answer for the AI SDK's useChat (UI message
    GET    /chat/{chat id}/stream     stream), its resume and its stop (with an agent;
    POST   /chat/{chat id}/stop       the path is the chat_path option)
    POST   /v1/chat/completions       OpenAI chat.completion.chunk SSE (with an agent)
    WS     /sessions/{id}/ws          WebSocket, subscribed to one session
    WS     /ws                        WebSocket, multiplexed over sessions

Rules of this module:

* **Default deny.** Every request goes through ``authenticate``; without one, or when it
  returns ``None``, the answer is 401 unless the application passed
  ``allow_anonymous=True``; so is a user id that is not 1 to 128 characters of
  ``A-Z a-z 0-9 _ -``. Ownership is the registry's: a session of another user is
  answered exactly like a missing one (404, the same body), so ids cannot be probed.
* **Bounded per user.** Open event streams and WebSockets are counted per user
  (``max_connections_per_user``); past the bound, 429 (a WebSocket handshake too).
* **Errors are JSON** ``{"error": {"code": ..., "message": ..., ...}}`` with the status
  of the streamkit error's ``status_hint`` (400, 403, 404, 409, 410, 413, 429), plus the
  HTTP-level ones: 401, 404 for an unknown path, 405 with ``Allow``, 503 while the
  registry is not running or the app shuts down.
* Importing this module imports no web framework, server or client.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypedDict, Unpack
from urllib.parse import quote

import anyio
import attrs

from ._asgi_agent import AgentRoute, AgentRoutes, match_agent_route
from ._asgi_config import StreamAppConfig
from ._asgi_http import (
    ASGIApp,
    HTTPError,
    Message,
    Receive,
    Scope,
    Send,
    accepts_gzip,
    check_resume_point,
    dump_json,
    error_status,
    on_exit_signals,
    parse_query,
    read_json_object,
    resume_point,
    route_path,
    send_error,
    send_json,
    send_response,
    wants_ndjson,
)
from ._asgi_stream import Outcome, StopSignal, run_event_stream, stream_headers
from ._asgi_ws import WebSocketOptions, serve_websocket
from ._config import RegistryConfig, StreamConfig
from ._errors import (
    ClosedError,
    Disconnected,
    PermissionDenied,
    SessionLimitExceeded,
    SessionNotFound,
    StreamkitError,
    ValidationError,
)
from ._validate import check_id, check_int, check_number, check_str, type_name

if TYPE_CHECKING:
    from ._events import StreamEvent
    from ._parts import Part
    from ._registry import SessionRegistry
    from ._session import StreamSession

__all__ = [
    "ASGIApp",
    "Agent",
    "Authenticate",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StreamApp",
    "StreamAppConfig",
    "StreamAppOptions",
    "serve_events",
]

#: Turns a request's scope into a user id; ``None`` means "not authenticated".
#: It may also raise :class:`~streamkit.PermissionDenied` (answered 403).
Authenticate: TypeAlias = Callable[[Scope], "str | Awaitable[str | None] | None"]
#: Turns a prompt into a token source: an async or sync iterable of text (and of
#: :mod:`streamkit.parts` parts: reasoning, tool calls, usage, ...).
Agent: TypeAlias = Callable[[str], "AsyncIterable[str | Part] | Iterable[str | Part]"]


# Shown as streamkit.asgi.StreamAppConfig in reprs and docs (it lives in a private module).
StreamAppConfig.__module__ = __name__


class StreamAppOptions(TypedDict, total=False):
    """The keyword options of :class:`StreamApp`: the fields of :class:`StreamAppConfig`."""

    registry_config: RegistryConfig | None
    allow_anonymous: bool
    stream_config: StreamConfig | None
    client_config_fields: Iterable[str]
    compression: bool | None
    heartbeat_interval: float | None
    write_timeout: float | None
    retry_ms: int | None
    max_body_bytes: int
    body_timeout: float | None
    max_ws_message_bytes: int
    max_ws_subscriptions: int
    max_connections_per_user: int | None
    ws_send_queue: int | None
    expose_stats: bool
    chat_path: str | None
    openai_compatible: bool


logger = logging.getLogger("streamkit.asgi")

_NOT_RUNNING: Final = (
    "the session registry is not running (enter StreamApp.lifespan, or run the app "
    "with lifespan events)"
)
_NOT_FOUND: Final = "no such session"
_USER_ID_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,128}")
#: The WebSocket close code of a refusal by a limit ("try again later").
_TRY_AGAIN_LATER: Final = 1013
_CREATE_FIELDS: Final = frozenset({"prompt", "input", "context", "config"})
_ACTIONS: Final = ("pause", "resume", "cancel")


async def serve_events(
    scope: Scope,
    receive: Receive,
    send: Send,
    events: AsyncIterable[StreamEvent],
    *,
    heartbeat_interval: float | None = 15.0,
    write_timeout: float | None = 30.0,
    retry_ms: int | None = 3000,
    compression: bool = False,
) -> None:
    """Answer an HTTP request with ``events`` as SSE (or NDJSON if the client asks).

    The building block :class:`StreamApp` uses for ``/sessions/{id}/events``, for any
    async iterable of events, such as ``stream_tokens(agent(prompt))`` in a route of
    your own. Ready events are sent together, heartbeat comments fill silences, a client
    that disconnects ends the iteration at once, and a client that stops reading is
    dropped after ``write_timeout`` seconds. The iterable is not closed here.

    Args:
        scope: The HTTP scope.
        receive: The ASGI receive callable.
        send: The ASGI send callable.
        events: The events to send; the response ends when they do.
        heartbeat_interval: Seconds of silence before a heartbeat (``None``: never).
        write_timeout: Seconds one write may take before the client is dropped.
        retry_ms: The SSE ``retry:`` hint sent first (``None``: none).
        compression: gzip the stream (flushed per batch) if the client accepts it.

    Raises:
        ValidationError: ``scope`` is not an HTTP scope, or an option is invalid.
    """
    if scope.get("type") != "http":
        raise ValidationError("serve_events needs an HTTP scope", field="scope")
    _check_optional_positive("heartbeat_interval", heartbeat_interval)
    _check_optional_positive("write_timeout", write_timeout)
    if retry_ms is not None:
        check_int("retry_ms", retry_ms, minimum=0)
    await run_event_stream(
        scope,
        receive,
        send,
        events,
        ndjson_format=wants_ndjson(scope),
        gzip=compression and accepts_gzip(scope),
        heartbeat_interval=heartbeat_interval,
        write_timeout=write_timeout,
        retry_ms=retry_ms,
    )


def _check_optional_positive(field: str, value: object) -> None:
    if value is not None:
        check_number(field, value, positive=True)


class _Route:
    """A matched route: what to do, on which session, and which methods exist there."""

    __slots__ = ("action", "allowed", "session_id")

    def __init__(
        self, action: str, allowed: tuple[str, ...], session_id: str | None = None
    ) -> None:
        self.action = action
        self.allowed = allowed
        self.session_id = session_id


def _match_http(path: str) -> _Route | None:
    parts = path.strip("/").split("/")
    if parts == ["sessions"]:
        return _Route("sessions", ("GET", "HEAD", "POST"))
    if parts == ["stats"]:
        return _Route("stats", ("GET", "HEAD"))
    if parts == ["openapi.json"]:
        return _Route("openapi", ("GET", "HEAD"))
    if len(parts) == 2 and parts[0] == "sessions":
        return _Route("session", ("GET", "HEAD", "DELETE"), parts[1])
    if len(parts) == 3 and parts[0] == "sessions":
        if parts[2] == "events":
            return _Route("events", ("GET", "HEAD"), parts[1])
        if parts[2] in _ACTIONS:
            return _Route(parts[2], ("POST",), parts[1])
    return None


def _match_ws(path: str) -> tuple[bool, str | None]:
    parts = path.strip("/").split("/")
    if parts == ["ws"]:
        return True, None
    if len(parts) == 3 and parts[0] == "sessions" and parts[2] == "ws":
        return True, parts[1]
    return False, None


class StreamApp:
    """A pure ASGI 3 app serving a registry's sessions over REST, SSE, NDJSON and WebSocket.

    Give it a registry that your application enters (``async with registry:``), or no
    registry and a ``registry_config``: the app then makes its own registry and enters
    it in the ASGI ``lifespan`` (run by uvicorn and hypercorn for a top-level app) or in
    :meth:`lifespan` (pass it to a parent framework, whose sub-app lifespans are not
    run).

    Args:
        registry: A registry the application enters and closes itself; ``None`` to let
            the app own one (made from ``registry_config``).
        config: The app's options, a :class:`StreamAppConfig` (or a mapping for its
            ``from_dict``); see there for each option.
        agent: Called with the prompt of ``POST /sessions`` (and of the chat routes:
            the text of the last user message); what it returns (an async or sync
            iterable of text and parts) becomes the session's source. ``None``: sessions
            are created empty, for the application to publish into.
        authenticate: Called with each request's scope; returns the user id, or
            ``None`` when the request is not authenticated. May be async; may raise
            :class:`~streamkit.PermissionDenied` (403).
        **options: Any field of :class:`StreamAppConfig` (``allow_anonymous``,
            ``stream_config``, ``write_timeout``, ...), overriding ``config``'s.

    Attributes:
        config: The options in force, a :class:`StreamAppConfig`.

    Raises:
        ValidationError: an option is invalid (the error names it), or both
            ``registry`` and ``registry_config`` were given.
    """

    def __init__(
        self,
        registry: SessionRegistry | None = None,
        *,
        config: StreamAppConfig | Mapping[str, Any] | None = None,
        agent: Agent | None = None,
        authenticate: Authenticate | None = None,
        **options: Unpack[StreamAppOptions],
    ) -> None:
        if config is None:
            config = StreamAppConfig(**options)
        else:
            if isinstance(config, Mapping):
                config = StreamAppConfig.from_dict(config)
            elif not isinstance(config, StreamAppConfig):
                raise ValidationError(
                    f"config must be a StreamAppConfig or a mapping, got {type_name(config)}",
                    field="config",
                )
            config = config.replace(**options)
        if registry is not None and config.registry_config is not None:
            raise ValidationError(
                "pass either registry or registry_config, not both", field="registry_config"
            )
        if agent is not None and not callable(agent):
            raise ValidationError(f"agent must be callable, got {type_name(agent)}", field="agent")
        if authenticate is not None and not callable(authenticate):
            raise ValidationError(
                f"authenticate must be callable, got {type_name(authenticate)}",
                field="authenticate",
            )
        self.config = config
        self._stream_config = config.stream_config
        self._registry = registry
        self._registry_config = config.registry_config
        self._owns_registry = registry is None
        self._running = registry is not None
        self._agent = agent
        self._authenticate = authenticate
        self._allow_anonymous = config.allow_anonymous
        self._client_config_fields = config.client_config_fields
        self._compression = config.compression
        # Sessions whose client asked for another compression_enabled than the default;
        # entries leave with their session (a "removed" hook on the registry).
        self._session_gzip: dict[str, bool] = {}
        self._hooked: object = None
        self._heartbeat_interval = config.heartbeat_interval
        self._write_timeout = config.write_timeout
        self._retry_ms = config.retry_ms
        self._max_body_bytes = config.max_body_bytes
        self._body_timeout = config.body_timeout
        self._expose_stats = config.expose_stats
        self._max_connections_per_user = config.max_connections_per_user
        # Open event streams and WebSockets per authenticated user (entries leave at 0).
        self._connections: dict[str, int] = {}
        self._ws = WebSocketOptions(
            max_message_bytes=config.max_ws_message_bytes,
            max_subscriptions=config.max_ws_subscriptions,
            write_timeout=config.write_timeout,
        )
        self._stopping = False
        self._stop: StopSignal | None = None
        self._counters: dict[str, int] = {
            "http_requests": 0,
            "streams_open": 0,
            "streams_total": 0,
            "websockets_open": 0,
            "websockets_total": 0,
            "connections_refused": 0,
        }
        self._outcomes: dict[str, int] = {}
        self._agent_routes = AgentRoutes(self)

    # -- registry and lifecycle -----------------------------------------------------------

    @property
    def registry(self) -> SessionRegistry:
        """The registry the app serves.

        Raises:
            ClosedError: the app owns its registry and it is not running (the
                lifespan has not started, or has ended).
        """
        registry = self._registry
        if registry is None or not self._running:
            raise ClosedError(_NOT_RUNNING)
        return registry

    def _registry_or_503(self) -> SessionRegistry:
        registry = self._registry
        if registry is None or not self._running:
            raise HTTPError(503, "unavailable", _NOT_RUNNING)
        return registry

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the app's own registry for the duration of the block.

        Pass it to a parent framework when the app is mounted, for example
        ``Starlette(lifespan=stream_app.lifespan)``, or enter it from the parent's own
        lifespan: ``async with stream_app.lifespan(): yield``. Leaving the block ends
        every open stream cleanly (see :meth:`shutdown`) and closes the registry. With a
        registry passed to the constructor it only ends the streams at exit.

        Args:
            app: Ignored; accepted so the method fits Starlette's ``lifespan`` signature.

        Raises:
            ClosedError: the lifespan is already running.
        """
        del app
        if self._owns_registry:
            if self._running:
                raise ClosedError("StreamApp.lifespan is already running")
            from ._registry import SessionRegistry

            registry = SessionRegistry(
                self._registry_config if self._registry_config is not None else RegistryConfig()
            )
            async with registry:
                self._registry = registry
                self._running = True
                self._stopping = False
                self._stop = None
                try:
                    with on_exit_signals(self.shutdown):
                        yield
                finally:
                    self.shutdown()
                    self._running = False
                    self._session_gzip.clear()
                    self._agent_routes.clear()
        else:
            try:
                with on_exit_signals(self.shutdown):
                    yield
            finally:
                self.shutdown()

    def shutdown(self) -> None:
        """End every open stream cleanly and refuse new ones with 503.

        SSE and NDJSON responses finish (the client may resume later from its last
        event id); WebSocket connections close with code 1001 (going away). Sessions
        are not touched. Servers do not tell an app that they are shutting down until
        its open responses end, so call this first (from the server's event loop
        thread) when you stop a server that may have open streams; leaving
        :meth:`lifespan` calls it too.
        """
        self._stopping = True
        stop = self._stop
        if stop is not None:
            stop.set()

    def _stop_event(self) -> StopSignal:
        stop = self._stop
        if stop is None:
            stop = self._stop = StopSignal()
            if self._stopping:
                stop.set()
        return stop

    def statistics(self) -> dict[str, Any]:
        """Return the app's counters: requests, open and total streams and WebSockets.

        ``connections_refused`` counts streams and WebSockets refused by
        ``max_connections_per_user``; ``stream_outcomes`` counts how streams and
        WebSocket connections ended (``ended``, ``disconnected``, ``write_timeout`` for
        a client dropped because one write to it outlasted ``write_timeout``,
        ``shutdown``, ``failed``; a WebSocket connection ends ``disconnected``,
        ``write_timeout`` or ``shutdown``).
        """
        return {**self._counters, "stream_outcomes": dict(self._outcomes)}

    # -- ASGI entry point -----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection (``http``, ``websocket`` or ``lifespan``)."""
        kind = scope["type"]
        if kind != "http":
            await self._not_http(kind, scope, receive, send)
            return
        # HTTP is served here, not in a method of its own: every event of a stream passes
        # through one coroutine level fewer, and an open stream keeps one coroutine less
        # for the garbage collector to scan.
        self._counters["http_requests"] += 1
        method: str = scope.get("method", "GET").upper()
        head = method == "HEAD"
        try:
            route: _Route | AgentRoute | None = _match_http(route_path(scope))
            if route is None and self._agent is not None:
                route = match_agent_route(
                    scope,
                    chat_path=self.config.chat_path,
                    openai_compatible=self.config.openai_compatible,
                )
            if route is None:
                raise HTTPError(404, "not_found", "no such endpoint")
            if method not in route.allowed:
                raise HTTPError(
                    405,
                    "method_not_allowed",
                    f"{method} is not allowed here (allowed: {', '.join(route.allowed)})",
                    headers=[(b"allow", ", ".join(route.allowed).encode())],
                )
            if route.action == "openapi":  # public, as 404 and 405 are
                await send_json(send, 200, self._served_openapi(scope), head=head)
                return
            user = await self._user(scope)
            session_id = route.session_id
            if session_id is not None:
                check_id("session_id", session_id)
            if session_id is not None and isinstance(route, _Route) and route.action == "events":
                # A stream: called from here, one coroutine level fewer to pass through on
                # every event it sends.
                del route
                await self._events(session_id, user, scope, receive, send, head=head)
                return
            await self._dispatch(route, method, user, scope=scope, receive=receive, send=send)
        except Disconnected:
            return
        except StreamkitError as exc:
            await send_error(send, self._public_error(exc), head=head)

    async def _not_http(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # pragma: no cover - no other scope type exists in ASGI 3
            raise ValidationError(f"unsupported ASGI scope type {kind!r}", field="scope")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":  # pragma: no cover - protocol order
            return
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.lifespan())
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            while (await receive())["type"] != "lifespan.shutdown":  # pragma: no cover
                pass
        await send({"type": "lifespan.shutdown.complete"})

    async def _user(self, scope: Scope) -> str | None:
        authenticate = self._authenticate
        user: object = None
        if authenticate is not None:
            user = authenticate(scope)
            if inspect.isawaitable(user):
                user = await user
        if user is None:
            if self._allow_anonymous:
                return None
            raise HTTPError(
                401,
                "unauthenticated",
                "authentication required",
                headers=[(b"www-authenticate", b'Bearer realm="streamkit"')],
            )
        if not isinstance(user, str):
            raise TypeError(f"authenticate must return a str or None, got {type_name(user)}")
        if not _USER_ID_RE.fullmatch(user):
            # The value may carry a client's token or CR/LF: it is neither logged nor
            # echoed, and the request is not served under a name nobody can own.
            logger.warning(
                "streamkit: authenticate returned a user id that is not 1 to 128 "
                "characters of A-Z, a-z, 0-9, '_' or '-'; the request is refused with 401"
            )
            raise HTTPError(
                401,
                "unauthenticated",
                "the credentials do not name a valid user",
                headers=[(b"www-authenticate", b'Bearer realm="streamkit"')],
            )
        return user

    def _claim_connection(self, user: str | None) -> None:
        """Count an event stream or WebSocket of ``user``, refusing one past the bound.

        Raises:
            SessionLimitExceeded: ``user`` holds ``max_connections_per_user`` already.
        """
        limit = self._max_connections_per_user
        if user is None or limit is None:
            return
        held = self._connections.get(user, 0)
        if held >= limit:
            self._counters["connections_refused"] += 1
            raise SessionLimitExceeded(
                f"a user may hold at most {limit} open event streams and WebSockets",
                limit=limit,
            )
        self._connections[user] = held + 1

    def _release_connection(self, user: str | None) -> None:
        if user is None or self._max_connections_per_user is None:
            return
        held = self._connections.get(user, 0) - 1
        if held > 0:
            self._connections[user] = held
        else:
            self._connections.pop(user, None)

    def openapi(self, *, prefix: str = "") -> dict[str, Any]:
        """Return the OpenAPI 3.1 document of the app's HTTP endpoints (``GET /openapi.json``).

        To merge it into a parent application's document (FastAPI's ``app.openapi()``),
        pass the path the app is mounted at and copy ``paths`` and each of
        ``components``' sections; every component name starts with ``Streamkit``.

        Args:
            prefix: The mount path put before every path, such as ``"/streams"``.

        Returns:
            A new JSON-ready dict.

        Raises:
            ValidationError: ``prefix`` is not empty and does not start with ``/``.
        """
        from ._openapi import openapi_document

        check_str("prefix", prefix)
        if prefix and not prefix.startswith("/"):
            raise ValidationError(f"prefix must start with '/', got {prefix!r}", field="prefix")
        agent = self._agent is not None
        return openapi_document(
            expose_stats=self._expose_stats,
            prefix=prefix,
            chat_path=self.config.chat_path if agent else None,
            openai_compatible=self.config.openai_compatible and agent,
        )

    def _served_openapi(self, scope: Scope) -> dict[str, Any]:
        document = self.openapi()
        root = (scope.get("root_path") or "").rstrip("/")
        if root:
            document["servers"] = [{"url": quote(root, safe="/-._~%")}]
        return document

    # -- HTTP -----------------------------------------------------------------------------

    def _public_error(self, error: StreamkitError) -> StreamkitError:
        # Another user's session looks exactly like a missing one: same status, code,
        # message and fields, whatever the registry or backend said.
        if isinstance(error, PermissionDenied | SessionNotFound) and error.session_id is not None:
            return SessionNotFound(_NOT_FOUND, session_id=error.session_id)
        return error

    async def _dispatch(
        self,
        route: _Route | AgentRoute,
        method: str,
        user: str | None,
        *,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if isinstance(route, AgentRoute):
            await self._agent_routes.serve(route, user, scope, receive, send)
            return
        head = method == "HEAD"
        action = route.action
        session_id = route.session_id
        if action == "sessions":
            if method == "POST":
                await self._create(user, scope, receive, send)
            else:
                # An anonymous caller has no sessions of its own to list: anonymous
                # sessions are reachable by their (unguessable) id alone, and listing
                # them would hand those ids out. (The registry lists every session
                # for user_id=None.)
                mine = []
                if user is not None:
                    sessions = await self._registry_or_503().list(user_id=user)
                    mine = [_session_dict(s) for s in sessions if s.user_id == user]
                await send_json(send, 200, {"sessions": mine}, head=head)
        elif action == "stats":
            if not self._expose_stats:
                raise HTTPError(404, "not_found", "no such endpoint")
            await send_json(send, 200, self._stats(), head=head)
        elif action == "events":
            assert session_id is not None
            await self._events(session_id, user, scope, receive, send, head=head)
        elif action == "session":
            assert session_id is not None
            if method == "DELETE":
                await self._registry_or_503().close(session_id, user_id=user)
                await send_response(send, 204)
            else:
                registry = self._registry_or_503()
                session = await registry.get(session_id, user_id=user)
                body = await self._session_body(registry, session, user)
                await send_json(send, 200, body, head=head)
        else:
            assert session_id is not None
            registry = self._registry_or_503()
            operation = {
                "pause": registry.pause,
                "resume": registry.resume,
                "cancel": registry.cancel,
            }[action]
            session = await operation(session_id, user_id=user)
            await send_json(send, 200, await self._session_body(registry, session, user))

    def _stats(self) -> dict[str, Any]:
        stats = self._registry_or_503().statistics()
        return {"registry": _plain(stats), "app": self.statistics()}

    async def _session_body(
        self, registry: SessionRegistry, session: StreamSession, user: str | None
    ) -> dict[str, Any]:
        statistics = await registry.session_statistics(session.session_id, user_id=user)
        return {"session": _session_dict(session), "statistics": _plain(statistics)}

    async def _create(self, user: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._read_body(scope, receive)
        for key in body:
            if key not in _CREATE_FIELDS:
                raise ValidationError(
                    f"unknown field {key!r} (allowed: {', '.join(sorted(_CREATE_FIELDS))})",
                    field=key,
                )
        if "prompt" in body and "input" in body:
            raise ValidationError("give prompt or input, not both", field="input")
        prompt_field = "input" if "input" in body else "prompt"
        prompt = body.get(prompt_field)
        if prompt is not None:
            check_str(prompt_field, prompt, allow_empty=False)
            if self._agent is None:
                raise ValidationError(
                    f"this server has no agent to answer a {prompt_field}", field=prompt_field
                )
        context = body.get("context", {})
        config = self._client_config(body.get("config"))
        registry = self._registry_or_503()
        session = await registry.create(user_id=user, context=context)
        if config.compression_enabled != self._stream_config.compression_enabled:
            self._remember_gzip(registry, session.session_id, config.compression_enabled)
        if prompt is not None:
            await self._start(registry, session, user, prompt, config)
        # root_path comes from the server or a parent router: quoted, so that nothing
        # it holds (CR, LF, spaces) can reach the Location header raw.
        root = quote((scope.get("root_path") or "").rstrip("/"), safe="/-._~%")
        location = f"{root}/sessions/{session.session_id}"
        await send_json(
            send,
            201,
            {
                "session": _session_dict(session),
                "urls": {
                    "self": location,
                    "events": f"{location}/events",
                    "ws": f"{location}/ws",
                },
            },
            headers=[(b"location", location.encode())],
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """Read a JSON object body within ``body_timeout`` (408 past it)."""
        # A body trickled byte by byte would hold this request (and its task) forever.
        with anyio.move_on_after(self._body_timeout) as reading:
            body = await read_json_object(scope, receive, self._max_body_bytes)
        if reading.cancelled_caught:
            raise HTTPError(
                408,
                "request_timeout",
                f"the request body did not arrive within {self._body_timeout} seconds",
                headers=[(b"connection", b"close")],
            )
        return body

    def _check_open(self) -> None:
        if self._stopping:
            raise HTTPError(503, "unavailable", "the server is shutting down")

    async def _start(
        self,
        registry: SessionRegistry,
        session: StreamSession,
        user: str | None,
        prompt: str,
        config: StreamConfig,
    ) -> None:
        assert self._agent is not None
        try:
            source = self._agent(prompt)
            registry.start(session.session_id, source, config=config)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await registry.cancel(session.session_id, user_id=user)
            raise

    async def _start_agent(
        self,
        registry: SessionRegistry,
        user: str | None,
        prompt: str,
        context: dict[str, Any],
    ) -> StreamSession:
        """Create a session of ``user`` and start the agent on ``prompt`` in it."""
        session = await registry.create(user_id=user, context=context)
        await self._start(registry, session, user, prompt, self._stream_config)
        return session

    def _wants_gzip(self, session_id: str) -> bool:
        if self._compression is not None:
            return self._compression
        default = self._stream_config.compression_enabled
        return self._session_gzip.get(session_id, default)

    def _remember_gzip(self, registry: SessionRegistry, session_id: str, enabled: bool) -> None:
        if self._hooked is not registry:
            forget = self._session_gzip.pop
            registry.on("removed", lambda session: forget(session.session_id, None))
            self._hooked = registry
        self._session_gzip[session_id] = enabled

    def _client_config(self, overrides: object) -> StreamConfig:
        base = self._stream_config
        if overrides is None:
            return base
        if not isinstance(overrides, dict):
            raise ValidationError(
                f"config must be an object, got {type_name(overrides)}", field="config"
            )
        for key in overrides:
            if key not in self._client_config_fields:
                allowed = ", ".join(sorted(self._client_config_fields)) or "none"
                raise ValidationError(
                    f"config field {key!r} may not be set by clients (allowed: {allowed})",
                    field=f"config.{key}",
                )
        return base.replace(**overrides)

    async def _events(
        self,
        session_id: str,
        user: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        head: bool,
    ) -> None:
        query = parse_query(scope)
        after = resume_point(scope, query)
        ndjson_format = wants_ndjson(scope)
        gzip = self._wants_gzip(session_id) and accepts_gzip(scope)
        registry = self._registry_or_503()
        session = await registry.get(session_id, user_id=user)
        last = check_resume_point(session, after)
        if self._stopping:
            raise HTTPError(503, "unavailable", "the server is shutting down")
        terminal = session.is_terminal
        del session  # a snapshot: not kept (nor scanned by the collector) for the stream's life
        if terminal and after >= last:
            # Nothing left to send, ever: 204 also stops a browser's EventSource from
            # reconnecting.
            await send_response(send, 204, head=head)
            return
        stop = self._stop_event()
        counters = self._counters
        self._claim_connection(user)
        try:
            async with registry.subscribe(session_id, user_id=user, after=after) as subscription:
                if head:
                    # The same checks as GET (the per-user and per-session bounds
                    # included), then the same status and headers, without the body.
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": stream_headers(ndjson_format=ndjson_format, gzip=gzip),
                        }
                    )
                    await send({"type": "http.response.body", "body": b""})
                    return
                counters["streams_open"] += 1
                counters["streams_total"] += 1
                outcome: Outcome = "failed"
                try:
                    outcome = await run_event_stream(
                        scope,
                        receive,
                        send,
                        subscription,
                        ndjson_format=ndjson_format,
                        gzip=gzip,
                        heartbeat_interval=self._heartbeat_interval,
                        write_timeout=self._write_timeout,
                        retry_ms=self._retry_ms,
                        stop=stop,
                    )
                finally:
                    counters["streams_open"] -= 1
                    self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
        finally:
            self._release_connection(user)

    # -- WebSocket ------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched, session_id = _match_ws(route_path(scope))
        try:
            if not matched:
                raise HTTPError(404, "not_found", "no such endpoint")
            user = await self._user(scope)
            if session_id is not None:
                check_id("session_id", session_id)
            registry = self._registry_or_503()
            if self._stopping:
                raise HTTPError(503, "unavailable", "the server is shutting down")
            after = resume_point(scope, parse_query(scope)) if session_id is not None else 0
            if session_id is not None:
                check_resume_point(await registry.get(session_id, user_id=user), after)
            self._claim_connection(user)
        except StreamkitError as exc:
            await _deny_websocket(scope, receive, send, self._public_error(exc))
            return
        counters = self._counters
        counters["websockets_open"] += 1
        counters["websockets_total"] += 1
        outcome: Outcome = "failed"
        try:
            outcome = await serve_websocket(
                registry,
                receive,
                send,
                user=user,
                session_id=session_id,
                after=after,
                options=self._ws,
                stop=self._stop_event(),
                public_error=self._public_error,
            )
        finally:
            counters["websockets_open"] -= 1
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
            self._release_connection(user)


async def _deny_websocket(
    scope: Scope, receive: Receive, send: Send, error: StreamkitError
) -> None:
    """Refuse a WebSocket handshake, with a JSON HTTP response where the server allows it."""
    message = await receive()
    if message["type"] != "websocket.connect":  # pragma: no cover - protocol order
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        body = dump_json({"error": error.to_dict()})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if isinstance(error, HTTPError):
            headers.extend(error.headers)
        await send(
            {
                "type": "websocket.http.response.start",
                "status": error_status(error),
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # The server answers the handshake with 403; the code tells a limit (1013, try
        # again later) from a refusal (1008, policy violation) where it gets through.
        code = _TRY_AGAIN_LATER if isinstance(error, SessionLimitExceeded) else 1008
        await send({"type": "websocket.close", "code": code, "reason": error.code})


def _session_dict(session: StreamSession) -> dict[str, Any]:
    return session.to_dict(include_events=False)


def _plain(value: object) -> Any:
    """Turn a statistics record (attrs classes, read-only mappings, enums) into JSON data."""
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, Enum) else value
    if attrs.has(type(value)):
        fields = attrs.fields(type(value))  # type: ignore[arg-type]
        return {field.name: _plain(getattr(value, field.name)) for field in fields}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    raise TypeError(f"cannot describe {type_name(value)} as JSON")
