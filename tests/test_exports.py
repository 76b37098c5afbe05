"""The public surface: one sorted __all__, and nothing public left out of it."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import types
from pathlib import Path

import pytest

import streamkit as sk

PUBLIC_MODULES = ["streamkit"] + [
    f"streamkit.{info.name}"
    for info in pkgutil.iter_modules(sk.__path__)
    if not info.name.startswith("_") and info.name not in {"demo"}
]


def test_all_is_unique() -> None:
    # Its order is ruff's to check (RUF022).
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{name} has no __all__"
        assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"


def test_all_names_exist() -> None:
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            assert hasattr(module, attr), f"{name}.{attr} is in __all__ but missing"


def test_every_public_name_is_exported() -> None:
    exported = set(sk.__all__)
    for attr, value in vars(sk).items():
        if attr.startswith("_") or attr == "annotations":
            continue
        # Submodules appear as attributes once imported; public ones have their own audit
        # (PUBLIC_MODULES), and `streamkit.testing`/`streamkit.abc` are opt-in imports.
        if isinstance(value, types.ModuleType):
            continue
        assert attr in exported, f"streamkit.{attr} is public but not in __all__"


def test_public_classes_and_functions_live_in_streamkit() -> None:
    for attr in sk.__all__:
        value = getattr(sk, attr)
        if isinstance(value, type) or (callable(value) and hasattr(value, "__module__")):
            if isinstance(value, types.ModuleType):
                continue
            module = getattr(value, "__module__", "streamkit")
            assert module == "streamkit" or not module.startswith("streamkit._"), (
                f"streamkit.{attr}.__module__ is {module}"
            )


def test_everything_public_has_a_docstring() -> None:
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        assert module.__doc__, f"{name} has no docstring"
        for attr in module.__all__:
            value = getattr(module, attr)
            if isinstance(value, type | types.FunctionType | types.ModuleType):
                assert value.__doc__, f"{name}.{attr} has no docstring"


# The faces that load their names on first use (streamkit/_lazy.py).
LAZY_FACES = ["streamkit", "streamkit.transports", "streamkit.testing", "streamkit.sse"]


def type_checking_imports(module: types.ModuleType) -> dict[str, str]:
    """The names a module imports under ``if TYPE_CHECKING``, mapped to their modules."""
    assert module.__file__ is not None
    package = module.__name__ if module.__file__.endswith("__init__.py") else module.__package__
    assert package is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                if isinstance(child, ast.ImportFrom) and child.level:
                    where = importlib.util.resolve_name(
                        "." * child.level + (child.module or ""), package
                    )
                    for alias in child.names:
                        found[alias.asname or alias.name] = where
    return found


@pytest.mark.parametrize("name", LAZY_FACES)
def test_lazy_names_are_the_ones_type_checkers_see(name: str) -> None:
    module = importlib.import_module(name)
    anchor = name if hasattr(module, "__path__") else name.rpartition(".")[0]
    table = {key: importlib.util.resolve_name(where, anchor) for key, where in module._LAZY.items()}
    seen = type_checking_imports(module)
    # `from . import sse as sse` names the package; the table names the submodule.
    seen = {
        key: f"{where}.{key}" if f"{where}.{key}" == table.get(key) else where
        for key, where in seen.items()
    }
    assert seen == table


@pytest.mark.parametrize("name", LAZY_FACES)
def test_lazy_faces_list_every_name(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) <= set(dir(module))
    assert set(module._LAZY) <= set(module.__all__)
