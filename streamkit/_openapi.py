"""The OpenAPI 3.1 description of :class:`~streamkit.asgi.StreamApp`'s HTTP endpoints.

Rules of this module:

* **One document, built from the code.** The statistics objects are described from
  their attrs classes and the ``Attributes:`` sections of their docstrings, and the
  error codes from the error classes, so that the description follows the code. The
  routes are listed here once; a test sends every method to every path of the document
  and to paths outside it, and checks that the app answers exactly what it lists.
* **Mergeable.** Component names start with ``Streamkit``; :func:`openapi_document`
  takes a path prefix, so an application that mounts the app under ``/streams`` can
  merge the paths and components into its own document (FastAPI's, for one).
* WebSockets are outside OpenAPI: their endpoints, messages, error codes and close
  codes are described in the ``x-streamkit-websocket`` extension.
* Imports nothing outside streamkit and the standard library.
"""

from __future__ import annotations

import copy
import inspect
import re
from typing import Any, Final

import attrs

from ._errors import (
    BackendError,
    ClosedError,
    HistoryGap,
    InvalidTransition,
    PayloadTooLarge,
    PermissionDenied,
    RemoteProtocolError,
    SessionLimitExceeded,
    SessionNotFound,
    SubscriberLagged,
    ValidationError,
)
from ._parts import Usage
from ._registry import RegistryStatistics, SessionStatistics
from ._session import SessionState
from ._streamer import StreamStats
from ._version import __version__
from .abc import LogStatistics

__all__ = ["openapi_document"]

_REF: Final = "#/components/schemas/"
_NESTED: Final[dict[str, type]] = {
    "LogStatistics": LogStatistics,
    "StreamStats": StreamStats,
    "Usage": Usage,
}
_SCALARS: Final[dict[str, dict[str, Any]]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "str": {"type": "string"},
    "SessionState": {"type": "string", "enum": [state.value for state in SessionState]},
    "MappingProxyType[str, int]": {
        "type": "object",
        "additionalProperties": {"type": "integer"},
    },
}

# code -> (HTTP status, when it is answered)
_ERROR_CODES: Final[dict[str, tuple[int, str]]] = {
    ValidationError.code: (400, "a bad request: a field, a query parameter, a header, a body"),
    RemoteProtocolError.code: (
        400,
        "bytes that break the wire protocol (WebSocket: a binary message)",
    ),
    "unauthenticated": (401, "`authenticate` did not name a user (and anonymous use is off)"),
    PermissionDenied.code: (403, "`authenticate` refused the caller"),
    SessionNotFound.code: (
        404,
        "no such session, or one of another user (answered alike), or no such endpoint",
    ),
    "method_not_allowed": (405, "the path exists, the method does not (see `Allow`)"),
    "request_timeout": (408, "the request body did not arrive within `body_timeout`"),
    InvalidTransition.code: (
        409,
        "the session's state does not allow the action (pause a paused session, cancel "
        "an ended one): ask for its status and act on it",
    ),
    ClosedError.code: (
        409,
        "the session is ending at this very moment (its final event is being written), "
        "or takes no more input: read its final status",
    ),
    HistoryGap.code: (
        410,
        "the events after the resume point were trimmed from the session's history "
        "(`after`, `oldest_seq` tell what is left)",
    ),
    PayloadTooLarge.code: (413, "the body (or a WebSocket message) is larger than allowed"),
    SessionLimitExceeded.code: (
        429,
        "a bound is reached: sessions, sessions per user, readers per session, open "
        "streams per user (`limit` tells which number)",
    ),
    SubscriberLagged.code: (
        409,
        "WebSocket only: the subscription fell more than `max_lag` events behind and "
        "was ended; resubscribe with `after`",
    ),
    BackendError.code: (503, "the shared backend (Redis) failed"),
    "unavailable": (503, "the registry is not running, or the server is shutting down"),
    "internal_error": (500, "a bug"),
}


def _attribute_docs(cls: type) -> dict[str, str]:
    """Read the ``Attributes:`` section of a Google-style class docstring."""
    doc = inspect.getdoc(cls) or ""
    found: dict[str, str] = {}
    inside = False
    name = ""
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            name = match[1]
            found[name] = match[2].strip()
        elif name and line.strip():
            found[name] += " " + line.strip()
    return found


def _type_schema(annotation: object) -> dict[str, Any]:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    text = str(text).replace("types.", "")
    parts = [part.strip() for part in text.split("|")]
    nullable = "None" in parts
    parts = [part for part in parts if part != "None"]
    if len(parts) != 1:
        return {}
    (name,) = parts
    if name in _NESTED:
        schema: dict[str, Any] = {"$ref": _REF + "Streamkit" + name}
    else:
        schema = copy.deepcopy(_SCALARS.get(name, {}))
    if nullable:
        return {"oneOf": [schema, {"type": "null"}]}
    return schema


def _attrs_schema(cls: type, description: str) -> dict[str, Any]:
    docs = _attribute_docs(cls)
    properties: dict[str, Any] = {}
    for field in attrs.fields(cls):
        schema = _type_schema(field.type)
        if field.name in docs:
            schema["description"] = docs[field.name]
        properties[field.name] = schema
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
    }


def _error_ref(status: int) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/StreamkitError{status}"}


def _json(schema_name: str, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF + schema_name}}},
        **extra,
    }


_SESSION_ID: Final = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "description": "The session's id: 24 URL-safe characters (144 random bits).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
}


def _schemas() -> dict[str, Any]:
    codes = sorted(_ERROR_CODES)
    return {
        "StreamkitError": {
            "type": "object",
            "description": 'Every error answer: `{"error": {...}}` with a stable `code`.',
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "enum": codes,
                            "description": "; ".join(
                                f"`{code}` ({_ERROR_CODES[code][0]}): {_ERROR_CODES[code][1]}"
                                for code in codes
                            ),
                        },
                        "message": {"type": "string", "description": "For people, not code."},
                        "session_id": {"type": "string"},
                        "field": {
                            "type": "string",
                            "description": "The offending field, parameter or header.",
                        },
                        "limit": {"type": "integer", "description": "The bound reached (429)."},
                        "after": {"type": "integer", "description": "The resume point (410)."},
                        "oldest_seq": {
                            "type": "integer",
                            "description": "The oldest retained event (410): resume after "
                            "`oldest_seq - 1`, knowing that events were missed.",
                        },
                    },
                }
            },
        },
        "StreamkitSession": {
            "type": "object",
            "description": "A session's record (without its events).",
            "required": ["session_id", "user_id", "status", "context", "created_at"],
            "properties": {
                "session_id": {"type": "string"},
                "user_id": {"type": ["string", "null"], "description": "The owner."},
                "status": _SCALARS["SessionState"]
                | {
                    "description": "`active` and `paused` are live; `completed`, `error`, "
                    "`cancelled` and `expired` are ended (kept readable for "
                    "`ended_session_ttl`)."
                },
                "context": {"type": "object", "description": "The application's data."},
                "created_at": {"type": "number", "description": "Unix seconds."},
                "updated_at": {"type": "number", "description": "Unix seconds."},
            },
        },
        "StreamkitEvent": {
            "type": "object",
            "description": "One event of a session, as the `data:` of an SSE message or "
            "one NDJSON line. The last event of a session is final: `complete` (its "
            "`metadata.reason`: `cancelled` after a cancel or DELETE, `shutdown` when "
            "the registry stopped, `expired`; none on a normal end) or `error`.",
            "required": ["event_id", "event_type", "content", "timestamp", "metadata", "seq"],
            "properties": {
                "event_id": {"type": "string"},
                "event_type": {
                    "type": "string",
                    "description": "`start`, `token`, `heartbeat`, `metadata`, `complete`, "
                    "`error`, or an application's `x-...` type.",
                },
                "content": {"type": "string"},
                "timestamp": {"type": "number"},
                "metadata": {"type": "object"},
                "session_id": {"type": ["string", "null"]},
                "seq": {
                    "type": ["integer", "null"],
                    "description": "Position in the session's log: the SSE `id:`.",
                },
            },
        },
        "StreamkitCreateRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": "An empty body is `{}`: a session without a producer.",
            "properties": {
                "prompt": {
                    "type": "string",
                    "minLength": 1,
                    "description": "Given to the app's agent, whose output the session "
                    "streams (400 `invalid` if the app has no agent).",
                },
                "input": {"type": "string", "minLength": 1, "description": "Same as prompt."},
                "context": {"type": "object", "description": "Kept with the session."},
                "config": {
                    "type": "object",
                    "description": "StreamConfig overrides, among the fields the app lets "
                    "clients set (`client_config_fields`; by default `chunk_size`, "
                    "`chunk_by`, `enable_progressive`, `enable_metadata`, "
                    "`compression_enabled`); any other is 400 with `field: config.<name>`.",
                },
            },
        },
        "StreamkitCreated": {
            "type": "object",
            "required": ["session", "urls"],
            "properties": {
                "session": {"$ref": _REF + "StreamkitSession"},
                "urls": {
                    "type": "object",
                    "description": "Paths (with the app's mount point, no scheme or host).",
                    "required": ["self", "events", "ws"],
                    "properties": {
                        "self": {
                            "type": "string",
                            "description": "The session: GET its status, DELETE it. The "
                            "`Location` header holds the same path.",
                        },
                        "events": {"type": "string", "description": "Its SSE/NDJSON stream."},
                        "ws": {"type": "string", "description": "Its WebSocket."},
                    },
                },
            },
        },
        "StreamkitSessionList": {
            "type": "object",
            "required": ["sessions"],
            "properties": {
                "sessions": {
                    "type": "array",
                    "items": {"$ref": _REF + "StreamkitSession"},
                    "description": "The caller's sessions (none for an anonymous caller).",
                }
            },
        },
        "StreamkitSessionStatus": {
            "type": "object",
            "description": "What GET of a session and its pause/resume/cancel answer.",
            "required": ["session", "statistics"],
            "properties": {
                "session": {"$ref": _REF + "StreamkitSession"},
                "statistics": {"$ref": _REF + "StreamkitSessionStatistics"},
            },
        },
        "StreamkitSessionStatistics": _attrs_schema(
            SessionStatistics, "One session's figures now."
        ),
        "StreamkitLogStatistics": _attrs_schema(LogStatistics, "The counters of a session's log."),
        "StreamkitUsage": _attrs_schema(
            Usage, "Tokens the model reported using, summed over the stream (or session)."
        ),
        "StreamkitStreamStats": _attrs_schema(
            StreamStats, "The producer's stream, live while it runs and final once it ended."
        ),
        "StreamkitRegistryStatistics": _attrs_schema(
            RegistryStatistics, "The registry's figures now."
        ),
        "StreamkitAppStatistics": {
            "type": "object",
            "description": "The HTTP app's counters (this process).",
            "required": [
                "http_requests",
                "streams_open",
                "streams_total",
                "websockets_open",
                "websockets_total",
                "connections_refused",
                "stream_outcomes",
            ],
            "properties": {
                "http_requests": {"type": "integer", "description": "Requests received."},
                "streams_open": {"type": "integer", "description": "SSE/NDJSON streams now."},
                "streams_total": {"type": "integer", "description": "Streams ever served."},
                "websockets_open": {"type": "integer", "description": "WebSockets now."},
                "websockets_total": {"type": "integer", "description": "WebSockets ever."},
                "connections_refused": {
                    "type": "integer",
                    "description": "Streams and WebSockets refused by `max_connections_per_user`.",
                },
                "stream_outcomes": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "How streams ended: `ended`, `disconnected`, "
                    "`write_timeout`, `shutdown`, `failed`.",
                },
            },
        },
        "StreamkitStats": {
            "type": "object",
            "required": ["registry", "app"],
            "properties": {
                "registry": {"$ref": _REF + "StreamkitRegistryStatistics"},
                "app": {"$ref": _REF + "StreamkitAppStatistics"},
            },
        },
    }


def _responses() -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code, (status, _) in _ERROR_CODES.items():
        by_status.setdefault(status, []).append(code)
    return {
        f"StreamkitError{status}": _json(
            "StreamkitError", "Error; `error.code`: " + ", ".join(f"`{c}`" for c in sorted(codes))
        )
        for status, codes in sorted(by_status.items())
    }


def _errors(*statuses: int) -> dict[str, Any]:
    # Every route may answer these: authentication, and a registry that is not running.
    common = {401, 403, 503}
    return {str(status): _error_ref(status) for status in sorted(common | set(statuses))}


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    description: str = "",
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["streamkit"],
        "responses": responses,
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    return operation


def _head(get: dict[str, Any]) -> dict[str, Any]:
    head = copy.deepcopy(get)
    head["operationId"] = get["operationId"] + "Head"
    head["summary"] = "HEAD: " + get["summary"] + " (the same answer, without the body)"
    return head


_EVENTS_DESCRIPTION: Final = (
    "Server-Sent Events by default: a `retry:` hint, then for each event `id: <seq>`, "
    "`event: <event_type>` and `data: <event JSON>`; `: ping` comments fill silences. "
    "With `Accept: application/x-ndjson`, one event JSON per line (empty lines fill "
    "silences). The stream replays the retained events after the resume point, follows "
    "live ones, and ends after the final event. A browser's EventSource resumes by "
    "itself (`Last-Event-ID`); once the session has ended and everything was sent, the "
    "answer is 204, which stops EventSource from reconnecting. A plain GET (no `after`, "
    "no `Last-Event-ID`) of a session whose oldest events were trimmed from its history "
    "answers 410 `history_gap` with `oldest_seq`: read again with `after=oldest_seq - 1`."
)


_SESSION_HEADER: Final = {
    "x-streamkit-session-id": {
        "description": "The id of the session that runs this answer: follow it, resume "
        "it (`/sessions/{session_id}/events`) or cancel it.",
        "schema": {"type": "string"},
    }
}
_CHAT_ID: Final = {
    "name": "chat_id",
    "in": "path",
    "required": True,
    "description": "The chat's id, as `useChat` sends it (`encodeURIComponent`: a `/` in "
    "it arrives as `%2F`).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
}
_UI_STREAM: Final = {
    "text/event-stream": {
        "schema": {
            "type": "string",
            "description": "The AI SDK UI message stream (`x-vercel-ai-ui-message-stream: "
            "v1`): one `data: <chunk JSON>` per event, `data: [DONE]` at the end.",
        }
    }
}


def _agent_paths(chat_path: str | None, openai_compatible: bool) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    if chat_path is not None:
        paths[chat_path] = {
            "post": _operation(
                "streamkitChat",
                "Answer a `useChat` request: run the app's agent as a session",
                {
                    "200": {
                        "description": "The answer as a UI message stream.",
                        "headers": _SESSION_HEADER,
                        "content": _UI_STREAM,
                    },
                    **_errors(400, 408, 413, 429),
                },
                description="The body `useChat`'s transport sends: `id` (the chat id), "
                "`messages` (UI messages; the text parts of the last `user` message are "
                "the agent's prompt), `trigger`, `messageId`; other fields are ignored. A "
                "chat has one answer at a time: a new request closes the chat's previous "
                "session. A dropped connection does not stop the answer.",
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["id", "messages"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "messages": {"type": "array", "items": {"type": "object"}},
                                    "trigger": {"type": "string"},
                                    "messageId": {"type": "string"},
                                },
                            }
                        }
                    },
                },
            )
        }
        paths[chat_path + "/{chat_id}/stream"] = {
            "get": _operation(
                "streamkitChatResume",
                "Resume the chat's running answer (`useChat({resume: true})`)",
                {
                    "200": {
                        "description": "The running answer from its first chunk (a full "
                        "replay, as the AI SDK's transport expects), then live.",
                        "headers": _SESSION_HEADER,
                        "content": _UI_STREAM,
                    },
                    "204": {"description": "The chat has no running answer."},
                    **_errors(400, 429),
                },
                parameters=[_CHAT_ID],
            )
        }
        paths[chat_path + "/{chat_id}/stop"] = {
            "post": _operation(
                "streamkitChatStop",
                "Stop the chat's running answer (cancel its session)",
                {
                    "204": {
                        "description": "Stopped, or nothing was running. Readers get the "
                        "end of the stream (`abort`)."
                    },
                    **_errors(400),
                },
                parameters=[_CHAT_ID],
            )
        }
    if openai_compatible:
        paths["/v1/chat/completions"] = {
            "post": _operation(
                "streamkitChatCompletions",
                "OpenAI-compatible chat completions: run the app's agent as a session",
                {
                    "200": {
                        "description": "`chat.completion.chunk` events (`data:` lines "
                        "only), `data: [DONE]` at the end.",
                        "headers": _SESSION_HEADER,
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 408, 413, 429),
                },
                description="`stream` must be `true` (400 otherwise: answers are streamed "
                "only). The text of the last `user` message is the agent's prompt; "
                "`model` is echoed in every chunk; `stream_options.include_usage` adds "
                "the usage chunk; other fields are ignored.",
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["messages", "stream"],
                                "properties": {
                                    "model": {"type": "string"},
                                    "messages": {"type": "array", "items": {"type": "object"}},
                                    "stream": {"const": True},
                                    "stream_options": {
                                        "type": "object",
                                        "properties": {"include_usage": {"type": "boolean"}},
                                    },
                                },
                            }
                        }
                    },
                },
            )
        }
    return paths


def _paths(expose_stats: bool) -> dict[str, Any]:
    session_status = _json("StreamkitSessionStatus", "The session and its figures.")
    paths: dict[str, Any] = {}
    list_sessions = _operation(
        "streamkitListSessions",
        "The caller's sessions",
        {"200": _json("StreamkitSessionList", "The sessions."), **_errors()},
    )
    paths["/sessions"] = {
        "get": list_sessions,
        "head": _head(list_sessions),
        "post": _operation(
            "streamkitCreateSession",
            "Create a session, and start the app's agent on a prompt",
            {
                "201": _json(
                    "StreamkitCreated",
                    "Created.",
                    headers={
                        "Location": {
                            "description": "The session's path (as `urls.self`).",
                            "schema": {"type": "string"},
                        }
                    },
                ),
                **_errors(400, 408, 413, 429),
            },
            body={
                "required": False,
                "content": {
                    "application/json": {"schema": {"$ref": _REF + "StreamkitCreateRequest"}}
                },
            },
        ),
    }
    get_session = _operation(
        "streamkitGetSession",
        "A session's status and statistics",
        {"200": session_status, **_errors(400, 404)},
        parameters=[_SESSION_ID],
    )
    paths["/sessions/{session_id}"] = {
        "get": get_session,
        "head": _head(get_session),
        "delete": _operation(
            "streamkitDeleteSession",
            "Close a session: cancel it if live, then remove it",
            {
                "204": {
                    "description": "Removed. A live session was cancelled first: its "
                    "readers got a final `complete` event whose `metadata.reason` is "
                    "`cancelled`. A second DELETE answers 404."
                },
                **_errors(400, 404),
            },
            parameters=[_SESSION_ID],
        ),
    }
    events = _operation(
        "streamkitSessionEvents",
        "Follow a session's events (SSE, or NDJSON)",
        {
            "200": {
                "description": "The event stream.",
                "content": {
                    "text/event-stream": {"schema": {"type": "string"}},
                    "application/x-ndjson": {
                        "schema": {
                            "type": "string",
                            "description": "One StreamkitEvent JSON per line.",
                        }
                    },
                },
            },
            "204": {"description": "The session has ended and nothing is left to send."},
            **_errors(400, 404, 410, 429),
        },
        description=_EVENTS_DESCRIPTION,
        parameters=[
            _SESSION_ID,
            {
                "name": "after",
                "in": "query",
                "required": False,
                "description": "The last `seq` the client has (0: from the start). Past "
                "the last event: 400.",
                "schema": {"type": "integer", "minimum": 0},
            },
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "As `after`, and wins over it (EventSource sends it when "
                "it reconnects).",
                "schema": {"type": "string", "pattern": "^[0-9]{0,20}$"},
            },
        ],
    )
    paths["/sessions/{session_id}/events"] = {"get": events, "head": _head(events)}
    for action, summary in [
        ("pause", "Pause a session: its producer is not pulled; readers stay"),
        ("resume", "Resume a paused session"),
        ("cancel", "End a session now: final `complete` event, reason `cancelled`"),
    ]:
        paths[f"/sessions/{{session_id}}/{action}"] = {
            "post": _operation(
                f"streamkit{action.title()}Session",
                summary,
                {"200": session_status, **_errors(400, 404, 409)},
                description="409 `invalid_transition`: the state does not allow it (read "
                "the status and act on it); 409 `closed`: the session is ending right now.",
                parameters=[_SESSION_ID],
            )
        }
    if expose_stats:
        stats = _operation(
            "streamkitStats",
            "The registry's and the app's figures",
            {"200": _json("StreamkitStats", "The figures."), **_errors()},
        )
        paths["/stats"] = {"get": stats, "head": _head(stats)}
    spec = _operation(
        "streamkitOpenAPI",
        "This document",
        {"200": {"description": "The OpenAPI document.", "content": {"application/json": {}}}},
        description="Answered before authentication.",
    )
    spec["security"] = []
    paths["/openapi.json"] = {"get": spec, "head": _head(spec)}
    return paths


_WEBSOCKET: Final[dict[str, Any]] = {
    "paths": {
        "/sessions/{session_id}/ws": "subscribed to one session from the start (query "
        "`after` as for events); messages may leave out `session_id`",
        "/ws": "multiplexed: subscribe to any number of the caller's sessions",
    },
    "client_messages": [
        {"type": "subscribe", "session_id": "...", "after": 0},
        {"type": "unsubscribe", "session_id": "..."},
        {"type": "pause | resume | cancel", "session_id": "..."},
        {"type": "ping"},
    ],
    "server_messages": [
        {"type": "subscribed", "session_id": "...", "after": 0},
        {"type": "event", "session_id": "...", "event": "StreamkitEvent"},
        {"type": "unsubscribed", "session_id": "...", "reason": "requested | ended | error"},
        {"type": "ack", "action": "pause", "session_id": "...", "status": "paused"},
        {"type": "pong"},
        {"type": "error", "code": "...", "message": "..."},
    ],
    "request_id": "any client message may carry `request_id` (a string or an integer); "
    "the reply echoes it",
    "error_codes": {
        code: description
        for code, (_, description) in _ERROR_CODES.items()
        if code not in {"unauthenticated", "method_not_allowed", "request_timeout"}
    },
    "handshake": "refused like the HTTP routes (401, 404, 429, 503 with a JSON body) where "
    "the server can answer a handshake over HTTP; otherwise closed with 1008 (refused) "
    "or 1013 (a limit: try again later)",
    "close_codes": {
        "1001": "the server is shutting down: reconnect and resubscribe with `after`",
        "1008": "the handshake was refused",
        "1009": "a message was larger than the server's frame limit",
        "1013": "a limit was reached (try again later)",
    },
}


def openapi_document(
    *,
    expose_stats: bool = True,
    prefix: str = "",
    chat_path: str | None = None,
    openai_compatible: bool = False,
) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of :class:`~streamkit.asgi.StreamApp`'s endpoints.

    Args:
        expose_stats: Whether ``GET /stats`` is served.
        prefix: Where the app is mounted (``"/streams"``), put before every path.
        chat_path: Where the ``useChat`` routes are served (``None``: they are not).
        openai_compatible: Whether ``POST /v1/chat/completions`` is served.

    Returns:
        A new JSON-ready dict.
    """
    routes = {**_paths(expose_stats), **_agent_paths(chat_path, openai_compatible)}
    paths = {prefix.rstrip("/") + path: item for path, item in routes.items()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamkit StreamApp",
            "version": __version__,
            "description": "Sessions over REST (JSON), Server-Sent Events, NDJSON and "
            "WebSocket. Authentication is the application's (`authenticate`): without a "
            "user, 401 `unauthenticated`. Answered before authentication: an unknown path "
            "(404 `not_found`), a method the path does not have (405 `method_not_allowed`, "
            "with `Allow`), and this document. Another user's session is answered exactly "
            "like a missing one (404).",
        },
        "paths": paths,
        "components": {"schemas": _schemas(), "responses": _responses()},
        "x-streamkit-websocket": copy.deepcopy(_WEBSOCKET),
    }
