"""The public surface: one sorted __all__, and nothing public left out of it."""

from __future__ import annotations

import importlib
import pkgutil
import types

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
