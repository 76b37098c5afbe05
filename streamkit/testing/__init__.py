"""Helpers for demos, notebooks, docs and tests built on streamkit.

A simulated model with realistic timing (:class:`SimulatedAgent`) to stand in for a
real LLM, and conformance suites that any implementation of streamkit's interfaces
(event logs, transports) can run against itself.
"""

from __future__ import annotations

# -- simulated sources (issue 4) -----------------------------------------------
from ._agent import SimulatedAgent as SimulatedAgent
from ._agent import SimulatedToolAgent as SimulatedToolAgent

# -- conformance suites (issue 5) ----------------------------------------------
from ._conformance import EventLogFactory as EventLogFactory
from ._conformance import check_event_log as check_event_log

__all__ = [
    "EventLogFactory",
    "SimulatedAgent",
    "SimulatedToolAgent",
    "check_event_log",
]

# Show public objects as streamkit.testing.X in reprs, tracebacks and docs.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("streamkit.testing._"):
        _obj.__module__ = __name__
del _name, _obj
