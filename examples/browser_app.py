# streamkit-example: app
"""A StreamApp that a browser can use as it is: a signed cookie, and CORS for a frontend.

``EventSource`` cannot send an ``Authorization`` header, so this app signs users in with
a cookie: ``POST /login`` sets an HttpOnly cookie holding ``user.expiry.signature``
(HMAC-SHA256, checked with ``hmac.compare_digest``), and ``authenticate`` reads it on
every request, ``EventSource`` streams included. A frontend served from another origin
(a dev server on ``localhost:5173``, say) uses the same API through Starlette's
``CORSMiddleware``, with ``credentials: "include"`` on ``fetch`` and
``withCredentials: true`` on ``EventSource``. Run it with::

    uvicorn examples.browser_app:app --port 8000

and open http://127.0.0.1:8000/ (the page is served by the app itself), or serve
``PAGE`` from another origin, list that origin in ``STREAMKIT_FRONTEND_ORIGINS``
(comma-separated), and open it with ``?api=http://127.0.0.1:8000``.

Cookies go with every request to the API, including requests another page on the same
site starts (CSRF): ``authenticate`` refuses a request whose ``Origin`` is neither the
API's own nor a listed frontend. ``STREAMKIT_SECRET`` keeps sign-ins valid across
restarts (a random secret otherwise). ``STREAMKIT_EXAMPLE_FAST=1`` makes the simulated
agent answer with no delay.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route

import streamkit as sk
from streamkit.asgi import Scope, StreamApp
from streamkit.testing import SimulatedAgent

if TYPE_CHECKING:
    from starlette.requests import Request

FAST = os.environ.get("STREAMKIT_EXAMPLE_FAST") == "1"
SECRET = os.environ.get("STREAMKIT_SECRET", "").encode() or secrets.token_bytes(32)
FRONTEND_ORIGINS = [
    origin.strip()
    for origin in os.environ.get("STREAMKIT_FRONTEND_ORIGINS", "http://localhost:5173").split(",")
    if origin.strip()
]
COOKIE = "streamkit_auth"
COOKIE_SECONDS = 3600
USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

agent = SimulatedAgent(seed=3, realtime=not FAST)


def _signature(payload: str) -> str:
    return hmac.new(SECRET, payload.encode(), hashlib.sha256).hexdigest()


def make_token(user: str, *, seconds: int = COOKIE_SECONDS) -> str:
    """Return ``user.expiry.signature``: what the cookie holds."""
    payload = f"{user}.{int(time.time()) + seconds}"
    return f"{payload}.{_signature(payload)}"


def check_token(token: str) -> str | None:
    """Return the user a token names, or ``None`` if it is forged, malformed or expired."""
    user, _, rest = token.partition(".")
    expiry, _, signature = rest.partition(".")
    if not (USER_ID.fullmatch(user) and expiry.isdigit()):
        return None
    # Constant time: the comparison does not tell an attacker how much of it was right.
    if not hmac.compare_digest(signature, _signature(f"{user}.{expiry}")):
        return None
    return user if int(expiry) > time.time() else None


def _headers(scope: Scope) -> dict[bytes, str]:
    return {name: value.decode("latin-1") for name, value in scope["headers"]}


def _origin_allowed(scope: Scope) -> bool:
    headers = _headers(scope)
    origin = headers.get(b"origin")
    if origin is None:  # same-origin GETs and non-browser clients send none
        return True
    own = f"{scope.get('scheme', 'http')}://{headers.get(b'host', '')}"
    return origin == own or origin in FRONTEND_ORIGINS


def authenticate(scope: Scope) -> str | None:
    """The user of the request's cookie; ``None`` (401) without one, or from a foreign page."""
    if not _origin_allowed(scope):
        return None
    for part in _headers(scope).get(b"cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return check_token(value)
    return None


stream_app = StreamApp(
    registry_config=sk.RegistryConfig(max_sessions=100, max_sessions_per_user=5),
    agent=agent,
    authenticate=authenticate,
    stream_config=sk.StreamConfig(stream_delay=0 if FAST else 0.03, chunk_size=2),
)


async def login(request: Request) -> Response:
    """Sign a user in: a real application checks a password or asks its identity provider."""
    if not _origin_allowed(request.scope):
        return JSONResponse({"error": "origin not allowed"}, status_code=403)
    body = await request.json()
    user = body.get("user") if isinstance(body, dict) else None
    if not isinstance(user, str) or not USER_ID.fullmatch(user):
        return JSONResponse({"error": "user must be 1 to 64 of A-Z a-z 0-9 _ -"}, 400)
    response = JSONResponse({"user": user})
    response.set_cookie(
        COOKIE,
        make_token(user),
        max_age=COOKIE_SECONDS,
        httponly=True,  # page scripts cannot read it
        samesite="lax",  # sent to this site only (a frontend on another port is same-site)
        secure=request.url.scheme == "https",
    )
    return response


async def page(request: Request) -> Response:
    """The page; any origin may serve the same HTML (see ``?api=``)."""
    return HTMLResponse(PAGE)


PAGE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>streamkit in a browser</title>
<style>body{font:16px system-ui;margin:2em;max-width:50em}#output{white-space:pre-wrap}</style>
<p><input id="user" value="alice"> <button id="login">Sign in</button>
<p><input id="prompt" value="Why stream?" size="40"> <button id="start">Ask</button>
<button id="pause" disabled>Pause</button> <button id="resume" disabled>Resume</button>
<button id="cancel" disabled>Cancel</button>
<p>Status: <span id="status">signed out</span>
<div id="output"></div>
<script>
// The API's origin: this page's own, or another one given as ?api=http://host:port
const api = new URLSearchParams(location.search).get("api") || "";
const $ = (id) => document.getElementById(id);
const output = $("output");
let sessionId = null;
let source = null;

async function call(method, path, body) {
  const response = await fetch(api + path, {
    method,
    credentials: "include",  // send the cookie, also to another origin
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(`${response.status} ${(data.error && data.error.code) || data.error}`);
  }
  return data;
}

function controls(live) {
  for (const id of ["pause", "resume", "cancel"]) $(id).disabled = !live;
}

function follow() {
  source = new EventSource(`${api}/stream/sessions/${sessionId}/events`,
                           { withCredentials: true });
  source.addEventListener("token", (e) => {
    output.textContent += JSON.parse(e.data).content;
  });
  source.addEventListener("complete", (e) => {
    source.close();  // the stream is over
    $("status").textContent = JSON.parse(e.data).metadata.reason || "completed";
    controls(false);
  });
  source.addEventListener("error", (e) => {
    if (e.data === undefined) {
      // The browser's own: the connection dropped and it reconnects by itself, or it
      // gave up (readyState CLOSED: the answer was 401, 404 or 204).
      if (source.readyState === EventSource.CLOSED) $("status").textContent = "stream refused";
      return;
    }
    source.close();  // streamkit's final error event: the producer failed
    $("status").textContent = "failed: " + JSON.parse(e.data).metadata.message;
    controls(false);
  });
}

$("login").onclick = async () => {
  try {
    const data = await call("POST", "/login", { user: $("user").value });
    $("status").textContent = "signed in as " + data.user;
  } catch (error) { $("status").textContent = "sign-in failed: " + error.message; }
};

$("start").onclick = async () => {
  if (source) source.close();
  output.textContent = "";
  try {
    const data = await call("POST", "/stream/sessions", { prompt: $("prompt").value });
    sessionId = data.session.session_id;
    $("status").textContent = data.session.status;
    controls(true);
    follow();
  } catch (error) { $("status").textContent = "refused: " + error.message; }
};

for (const action of ["pause", "resume", "cancel"]) {
  $(action).onclick = async () => {
    try {
      const data = await call("POST", `/stream/sessions/${sessionId}/${action}`);
      $("status").textContent = data.session.status;
    } catch (error) { $("status").textContent = action + " refused: " + error.message; }
  };
}
</script>
</html>
"""

app = Starlette(
    routes=[
        Route("/", page),
        Route("/login", login, methods=["POST"]),
        Mount("/stream", app=stream_app),
    ],
    middleware=[
        Middleware(
            CORSMiddleware,
            allow_origins=FRONTEND_ORIGINS,
            allow_credentials=True,  # cookies; then the origins must be listed, not "*"
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["content-type", "last-event-id"],
            expose_headers=["location"],
        )
    ],
    lifespan=stream_app.lifespan,
)
