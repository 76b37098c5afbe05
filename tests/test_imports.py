"""Importing streamkit pulls in no web framework, server, HTTP client or Redis client."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import streamkit

FORBIDDEN = {
    "starlette",
    "fastapi",
    "uvicorn",
    "hypercorn",
    "httpx",
    "httpcore",
    "websockets",
    "redis",
    "aiohttp",
    "requests",
    "trio",
}
# Modules that exist to use an optional dependency; importing them may load it.
OPTIONAL = {"streamkit.backends", "streamkit.demo"}


def light_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(streamkit.__path__, "streamkit.")
        if not any(info.name.startswith(prefix) for prefix in OPTIONAL)
    ]


def test_importing_the_library_is_light() -> None:
    modules = light_modules()
    assert "streamkit._events" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(json.loads(out))
    assert not loaded & FORBIDDEN, f"importing streamkit loaded {sorted(loaded & FORBIDDEN)}"
