"""Helpers for demos, notebooks, docs and tests built on streamkit.

A simulated model with realistic timing (:class:`SimulatedAgent`) to stand in for a
real LLM, and conformance suites that any implementation of streamkit's interfaces
(event logs, transports) can run against itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    # -- simulated sources (issue 4) -----------------------------------------------
    from ._agent import SimulatedAgent as SimulatedAgent
    from ._agent import SimulatedToolAgent as SimulatedToolAgent

    # -- conformance suites (issue 5) ----------------------------------------------
    from ._conformance import EventLogFactory as EventLogFactory
    from ._conformance import check_event_log as check_event_log

# The same names, each with the module it loads when first read (see streamkit/_lazy.py;
# tests/test_exports.py holds the two lists equal).
_LAZY: dict[str, str] = {
    "SimulatedAgent": "._agent",
    "SimulatedToolAgent": "._agent",
    "EventLogFactory": "._conformance",
    "check_event_log": "._conformance",
}

__all__ = [
    "EventLogFactory",
    "SimulatedAgent",
    "SimulatedToolAgent",
    "check_event_log",
]

# Type checkers read the imports above instead, so that a misspelt name is an error.
if not TYPE_CHECKING:  # pragma: no branch
    __getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY)
del TYPE_CHECKING  # not a public name
