"""The API reference builds from the docstrings, and documents every public name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import streamkit as sk

MODULES = [
    "streamkit",
    "streamkit.abc",
    "streamkit.sse",
    "streamkit.ndjson",
    "streamkit.sources",
    "streamkit.transports",
    "streamkit.blocking",
    "streamkit.notebook",
    "streamkit.asgi",
]


def test_api_reference_builds(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pdoc", *MODULES, "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "streamkit.html").read_text(encoding="utf-8")
    for name in sk.__all__:
        if name.startswith("_") or isinstance(getattr(sk, name), type(sk)):
            continue
        assert f'id="{name}"' in page, f"streamkit.{name} is missing from the API reference"
    for module in MODULES[1:]:
        assert (tmp_path / (module.replace(".", "/") + ".html")).exists()
