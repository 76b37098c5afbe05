"""Every ```python block in README.md and docs/ runs as written.

A block fenced as ```python runs in a fresh interpreter; one fenced as
```python notest is shown but not run (it needs a server or a browser, and the same
code is exercised by tests/test_asgi.py or an example).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python[ \t]*(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)


def blocks() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if "notest" in match["info"].split():
                continue
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match["code"]))
    return found


BLOCKS = blocks()


def test_docs_have_runnable_blocks() -> None:
    assert BLOCKS, "no ```python block found in README.md or docs/"


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_block_runs(where: str, code: str, tmp_path: Path) -> None:
    env = {**os.environ, "STREAMKIT_EXAMPLE_FAST": "1", "PYTHONWARNINGS": "error"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
