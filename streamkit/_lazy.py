"""The faces of streamkit's packages: public names re-exported, loaded on first use.

Rules of this module, and why:

* A package's ``__init__`` (and ``streamkit.sse`` for its client) names what it
  re-exports in one table, ``name -> module``, and gets its module ``__getattr__`` and
  ``__dir__`` from :func:`lazy_exports`. A name is imported the first time it is read,
  then kept in the package, so ``import streamkit`` or ``import streamkit.sse`` costs
  the model (and the codec), not the registry, the transports or the ASGI app.
* Type checkers read the same names as ``from x import Y as Y`` under ``if
  TYPE_CHECKING``; tests/test_exports.py holds that list equal to the table.
* A public object defined in a private module shows as a member of the package that
  exports it (``streamkit.StreamEvent``, not ``streamkit._events.StreamEvent``) in
  reprs, tracebacks and docs: :func:`rehome` sets its ``__module__`` when it is
  exported.

This module is in the model layer: it imports nothing from streamkit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = ["lazy_exports", "rehome"]


def rehome(package: str, values: Iterable[object]) -> None:
    """Show ``values`` as members of ``package`` when a private module defines them.

    A module is private when the last part of its dotted name starts with ``_``
    (``streamkit._events``, ``streamkit.transports._manager``); objects from public
    modules (``streamkit.abc``) keep their module.

    Args:
        package: The dotted name of the exporting package.
        values: The exported objects; those without a ``__module__`` are left alone.
    """
    for value in values:
        module = getattr(value, "__module__", None)
        if (
            isinstance(module, str)
            and module.startswith("streamkit.")
            and module.rpartition(".")[2].startswith("_")
        ):
            value.__module__ = package


def lazy_exports(
    package: str, namespace: dict[str, Any], table: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Make a module's ``__getattr__`` and ``__dir__`` that import ``table``'s names on use.

    Args:
        package: The module's dotted name (its ``__name__``).
        namespace: The module's ``globals()``; a name read once is stored there, so
            the next read does not come back here.
        table: Maps each lazy name to the module that holds it, relative to
            ``package`` (``"._registry"``). A name mapped to ``".<name>"`` is that
            submodule itself (``"sse": ".sse"``).

    Returns:
        The ``__getattr__`` and ``__dir__`` functions to assign at module level.
    """
    anchor = package if "__path__" in namespace else package.rpartition(".")[0]

    def __getattr__(name: str) -> object:
        try:
            where = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module = importlib.import_module(where, anchor)
        value = module if where == f".{name}" else getattr(module, name)
        rehome(package, (value,))
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__
