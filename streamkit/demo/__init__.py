"""streamkit's live demo: ``python -m streamkit.demo`` (``bash scripts/demo`` from a clone).

A simulated model (:class:`~streamkit.testing.SimulatedAgent`, seed :data:`DEMO_SEED`)
answers prompts through a :class:`~streamkit.asgi.StreamApp` served by uvicorn on
``127.0.0.1``, with a self-contained web page at ``/`` that streams the answer through
``EventSource``, shows the live figures, and can pause, resume, cancel and drop the
connection. ``--terminal`` shows one session followed by two subscribers in the terminal
(no server needed); ``--check`` runs it all headless and exits 0 or 1.

uvicorn (the ``demo`` extra) is imported only when a server is made.
"""

from __future__ import annotations

from ._app import DEFAULT_PROMPT as DEFAULT_PROMPT
from ._app import DEMO_SEED as DEMO_SEED
from ._app import DemoApp as DemoApp
from ._app import make_agent as make_agent
from ._app import make_app as make_app
from ._app import page_html as page_html
from ._check import run_check as run_check
from ._cli import main as main
from ._server import bind_socket as bind_socket
from ._server import make_server as make_server
from ._server import running_server as running_server
from ._server import url_for as url_for
from ._terminal import run_terminal as run_terminal

__all__ = [
    "DEFAULT_PROMPT",
    "DEMO_SEED",
    "DemoApp",
    "bind_socket",
    "main",
    "make_agent",
    "make_app",
    "make_server",
    "page_html",
    "run_check",
    "run_terminal",
    "running_server",
    "url_for",
]
