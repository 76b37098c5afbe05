"""Every file in examples/ runs as it is.

A script runs to completion with ``STREAMKIT_EXAMPLE_FAST=1`` (simulated agents at
zero delay). A file that declares ``# streamkit-example: app`` is an ASGI application
for a server: it is imported and must expose a callable ``app`` (tests/test_asgi.py
serves it for real).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def is_app(path: Path) -> bool:
    return "# streamkit-example: app" in path.read_text(encoding="utf-8")


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(path: Path) -> None:
    if is_app(path):
        spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert callable(module.app)
        return
    env = {**os.environ, "STREAMKIT_EXAMPLE_FAST": "1", "PYTHONWARNINGS": "error"}
    result = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{path.name} printed nothing"
