"""Typed parts of an agent's message: reasoning, tool calls, tool results, usage, ...

A source given to :func:`streamkit.stream_tokens` may yield these between plain
``str`` pieces; every other layer carries them on ``part`` events
(:attr:`streamkit.StreamEvent.part`). See docs/agents.md.
"""

from __future__ import annotations

from ._parts import (
    AnyPart,
    DataPart,
    Part,
    ReasoningDelta,
    SourcePart,
    StepFinish,
    StepStart,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    Usage,
    part_from_dict,
    part_from_json,
)

__all__ = [
    "AnyPart",
    "DataPart",
    "Part",
    "ReasoningDelta",
    "SourcePart",
    "StepFinish",
    "StepStart",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolResult",
    "Usage",
    "part_from_dict",
    "part_from_json",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "") == "streamkit._parts":
        _obj.__module__ = __name__
del _name, _obj
