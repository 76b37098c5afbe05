"""The layer map, held: no module imports from a layer above its own, and the package loads lazily.

The map below is the one declaration of streamkit's layers (docs/concepts.md shows it,
and a test here checks that the page agrees). Each module belongs to one layer; a
module may import from its own layer and the layers before it, never after.

How imports are read (with ``ast``, without importing anything):

* module-level imports are edges;
* imports under ``if TYPE_CHECKING:`` are edges too: a type a lower layer names from a
  higher one is a dependency, even if it costs nothing at run time;
* function-level (lazy) imports are edges too: importing late moves the cost, not the
  dependency. (Lazy re-export tables, the ``name -> module`` strings that a package's
  ``__getattr__`` reads, are not ``import`` statements; what they load is checked by
  the subprocess tests at the end, by counting modules in ``sys.modules``.)

The one upward edge allowed is listed in ``ALLOWED`` with its reason.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streamkit"

#: The layers, lowest first, with the modules of each (``fnmatch`` patterns).
LAYERS: dict[str, tuple[str, ...]] = {
    "model": (
        "streamkit._errors",
        "streamkit._validate",
        "streamkit._events",
        "streamkit._session",
        "streamkit._config",
        "streamkit._version",
        "streamkit._lazy",
        "streamkit._parts",
        "streamkit.parts",
    ),
    "codecs": (
        "streamkit._decoded",
        "streamkit.sse",
        "streamkit.ndjson",
        "streamkit.ui_message_stream",
        "streamkit.openai_chunks",
    ),
    "streaming core": (
        "streamkit.abc",
        "streamkit._streamer",
        "streamkit._log",
        "streamkit._memory",
        "streamkit.sources",
        "streamkit._signals",
        "streamkit._chunker",
        "streamkit._feeds",
        "streamkit._stats",
        "streamkit._parts_chunker",
    ),
    "registry": (
        "streamkit._registry",
        "streamkit._coordinator",
        "streamkit._subscription",
        "streamkit._tasks",
    ),
    "transports": (
        "streamkit.transports",
        "streamkit.transports.*",
        "streamkit._sse_client",
        "streamkit._asgi_*",
        "streamkit.asgi",
        "streamkit._openapi",
    ),
    "backends": ("streamkit.backends", "streamkit.backends.*"),
    "facades": (
        "streamkit",
        "streamkit.blocking",
        "streamkit.testing",
        "streamkit.testing.*",
        "streamkit.demo",
        "streamkit.demo.*",
        "streamkit._observe",
        "streamkit.otel",
        "streamkit.prometheus",
        "streamkit.notebook",
    ),
}

#: Upward edges that are allowed, each with its reason.
ALLOWED: dict[tuple[str, str], str] = {
    ("streamkit.sse", "streamkit._sse_client"): (
        "streamkit.sse re-exports the reconnecting client (sse.connect and friends) under "
        "TYPE_CHECKING and through its module __getattr__: it loads when first read"
    ),
}

#: Third-party packages the sans-I/O layers must not import at module level.
ASYNC_OR_IO = {"anyio", "trio", "httpx", "redis", "starlette", "uvicorn", "websockets"}

RANK = {layer: rank for rank, layer in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    for layer, patterns in LAYERS.items():
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return layer
    return None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """The modules ``module`` imports: (name, line, at module level outside functions)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                # `from . import sse` imports the submodule streamkit.sse (and the
                # package only for the package's own names).
                subs = [
                    f"{target}.{a.name}" for a in child.names if f"{target}.{a.name}" in MODULES
                ]
                if child.module or len(subs) < len(child.names):
                    found.append((target, child.lineno, top))
                found.extend((sub, child.lineno, top) for sub in subs)
            inner = top and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


def test_every_module_has_a_layer() -> None:
    missing = sorted(module for module in MODULES if layer_of(module) is None)
    assert not missing, f"add these modules to LAYERS in tests/test_layers.py: {missing}"


def test_no_import_goes_up_a_layer() -> None:
    upward = []
    for module in MODULES:
        layer = layer_of(module)
        if layer is None:
            continue  # test_every_module_has_a_layer names it
        for target, line, _top in imports(module):
            if not target.startswith("streamkit"):
                continue
            other = layer_of(target)
            assert other is not None, f"{module}:{line} imports {target}, which has no layer"
            if RANK[other] > RANK[layer] and (module, target) not in ALLOWED:
                upward.append(f"{module}:{line} ({layer}) imports {target} ({other})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_allowed_upward_edges_are_still_needed() -> None:
    for module, target in ALLOWED:
        assert any(name == target for name, _, _ in imports(module)), (module, target)


def test_sans_io_layers_import_no_async_or_io_library_at_load() -> None:
    for module in MODULES:
        if layer_of(module) not in {"model", "codecs"}:
            continue
        for target, line, top in imports(module):
            if top and target.split(".")[0] in ASYNC_OR_IO:
                pytest.fail(f"{module}:{line} imports {target} when it loads")


def test_the_import_reader_sees_every_kind_of_import() -> None:
    # Relative, submodule, TYPE_CHECKING and function-level imports are all read.
    found = {name for name, _, _ in imports("streamkit.asgi")}
    assert "streamkit._registry" in found  # function-level in asgi.py
    assert "streamkit.sse" in {name for name, _, _ in imports("streamkit._asgi_stream")}
    top = {name: top for name, _, top in imports("streamkit.asgi")}
    assert top["streamkit._asgi_http"] is True
    assert "streamkit._sse_client" in {name for name, _, _ in imports("streamkit.sse")}


def test_docs_show_the_layer_map() -> None:
    text = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+)\. ([a-z ]+) \| [^|]+ \| (.+) \|$", section, re.MULTILINE)
    assert [layer for _, layer, _ in rows] == list(LAYERS)
    for _, layer, cell in rows:
        shown = set(re.findall(r"`([^`]+)`", cell))
        assert shown == set(LAYERS[layer]), f"docs/concepts.md, layer {layer!r}: {shown}"


# --- what importing costs ----------------------------------------------------------------


def loaded_after(code: str) -> list[str]:
    """The streamkit modules (and anyio, if loaded) in a fresh interpreter after ``code``."""
    script = (
        f"import json, sys\n{code}\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('streamkit', 'anyio') and sys.modules[m] is not None)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    ).stdout
    return list(json.loads(out))


def in_layers(modules: list[str], *layers: str) -> list[str]:
    return [m for m in modules if m.startswith("streamkit.") and layer_of(m) not in layers]


@pytest.mark.parametrize("module", ["streamkit.sse", "streamkit.ndjson"])
def test_importing_a_codec_loads_only_the_model_and_the_codecs(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert module in loaded
    assert "anyio" not in loaded
    assert not in_layers(loaded, "model", "codecs"), loaded


def test_importing_streamkit_loads_the_model_only() -> None:
    loaded = loaded_after("import streamkit")
    assert "streamkit._events" in loaded
    assert not in_layers(loaded, "model"), loaded


def test_names_load_their_modules_when_first_used() -> None:
    loaded = loaded_after(
        "import streamkit as sk\n"
        "assert sk.SessionRegistry.__module__ == 'streamkit'\n"
        "assert sk.transports.TextChannel is sk.abc.TextChannel"
    )
    assert "streamkit._registry" in loaded
    assert "streamkit.transports" in loaded
    # Neither the ASGI app nor the WebSocket manager came with them.
    assert not [m for m in loaded if m.startswith(("streamkit.asgi", "streamkit._asgi"))]
    assert "streamkit.transports._manager" not in loaded


def test_the_sse_client_loads_when_first_read() -> None:
    loaded = loaded_after(
        "import streamkit.sse as sse\n"
        "assert 'streamkit._sse_client' not in sys.modules\n"
        "assert sse.connect.__module__ == 'streamkit.sse'\n"
        "assert sse.EventSource.__module__ == 'streamkit.sse'"
    )
    assert "streamkit._sse_client" in loaded
    assert "anyio" in loaded
    assert not in_layers(loaded, "model", "codecs", "transports"), loaded
