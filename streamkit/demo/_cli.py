"""The command line of ``python -m streamkit.demo``."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import webbrowser
from typing import TYPE_CHECKING

import anyio

from ._app import DEFAULT_PROMPT, make_agent, make_app
from ._check import run_check
from ._server import bind_socket, make_server, url_for
from ._terminal import run_terminal

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import TextIO

__all__ = ["main"]

_NO_UVICORN = (
    "the demo server needs uvicorn: run `bash scripts/demo` from a clone of streamkit, "
    "or `pip install 'streamkit[demo]'`"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streamkit.demo",
        description=(
            "streamkit's live demo: a simulated model streams its answer to a web page "
            "(or to the terminal) through a StreamApp, with pause, resume, cancel and a "
            "dropped connection that resumes with nothing lost."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to serve on (8000; a free one if taken)"
    )
    parser.add_argument(
        "--no-browser", action="store_true", help="do not open the page in a browser"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--terminal",
        action="store_true",
        help="no server: stream an answer to two subscribers side by side in the terminal",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="run the demo end to end headless on a free port; exit 0 if all is well, else 1",
    )
    parser.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help="the prompt of --terminal (%(default)r)"
    )
    parser.add_argument(
        "--fast", action="store_true", help="the simulated model streams with no delay"
    )
    return parser


def _has_display() -> bool:
    # A console browser (lynx, w3m) would take over this terminal: open one only where a
    # graphical session exists.
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def _serve(args: argparse.Namespace, out: TextIO) -> int:
    try:
        app = make_app(fast=args.fast)
        server, _ = make_server(app)
    except ModuleNotFoundError:
        print(_NO_UVICORN, file=sys.stderr)
        return 2
    try:
        sock, moved = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    url = url_for(sock)
    if moved:
        print(f"port {args.port} is taken; using {sock.getsockname()[1]} instead", file=out)
    print(f"streamkit demo: open {url}  (Ctrl-C to stop)", file=out)
    print(
        "No login: this demo serves everyone as the anonymous user (allow_anonymous=True).",
        file=out,
    )
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"note: listening on {args.host}, reachable from other machines", file=out)
    out.flush()
    if not args.no_browser and _has_display():
        # In a thread: the server starts at once, whatever the browser does.
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print("streamkit demo: stopped", file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the demo as the command line asks; return the exit status.

    Args:
        argv: The arguments (``sys.argv[1:]`` by default).
        out: Where to report (``sys.stdout`` by default).

    Returns:
        ``0`` on success; ``1`` when ``--check`` or ``--terminal`` found a fault; ``2``
        when the demo cannot run (uvicorn missing, the address unusable).
    """
    args = _parser().parse_args(argv)
    stream = sys.stdout if out is None else out
    if args.check:
        return 0 if run_check(stream, host=args.host) else 1
    if args.terminal:
        agent = make_agent(realtime=not args.fast)
        try:
            good = anyio.run(run_terminal, args.prompt, agent, stream)
        except KeyboardInterrupt:
            return 130
        return 0 if good else 1
    return _serve(args, stream)
