"""The pure chunker of :func:`~streamkit.stream_tokens`: text in, chunks out, no I/O.

It only ever cuts between characters: the chunks, concatenated, are exactly the text
fed in (the stream holds back a trailing high surrogate and incomplete UTF-8 before
feeding it). It neither waits nor reads a clock: the stream decides when to flush.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable, Iterator

__all__ = ["Chunker"]

_WORD_END: Final = re.compile(r"(?<=\S)\s")
#: The parts of every one-token chunker: always empty.
_NO_PARTS: Final[list[str]] = []


class Chunker:
    r"""Cuts text into chunks of at most ``size`` units, appending them to ``out``.

    Units: source pieces (``token``), words with their leading whitespace (``word``)
    or lines with their ``\\n`` (``line``); ``whole`` keeps everything for one final
    chunk. A chunk is cut as soon as it holds ``size`` complete units; ``flush``
    sends the partial rest. Cuts fall between characters only: lossless.
    """

    __slots__ = ("_by", "_in_word", "_parts", "_size", "_units", "feed", "out")

    def __init__(self, out: deque[str], size: int, by: str) -> None:
        self.out = out
        self._size = size
        self._by = by
        # Never appended to by one-token chunks: those share one empty list.
        self._parts: list[str] = _NO_PARTS if by == "token" and size == 1 else []
        self._units = 0
        self._in_word = False
        self.feed: Callable[[str], None]
        if by == "whole":
            self.feed = self._parts.append
        elif by == "token":
            self.feed = self.out.append if size == 1 else self._feed_token
        else:
            self.feed = self._feed_cuts

    @property
    def has_partial(self) -> bool:
        return bool(self._parts)

    def flush(self) -> None:
        parts = self._parts
        if parts:
            self.out.append(parts[0] if len(parts) == 1 else "".join(parts))
            parts.clear()
        self._units = 0

    def _feed_token(self, text: str) -> None:
        parts = self._parts
        parts.append(text)
        if len(parts) >= self._size:
            self.out.append("".join(parts))
            parts.clear()

    def _cuts(self, text: str) -> Iterator[int]:
        """Yield the positions in ``text`` where a unit ends (exclusive), in order."""
        if self._by == "word":
            if self._in_word and text[0].isspace():
                yield 0
            for match in _WORD_END.finditer(text):
                yield match.start()
            self._in_word = not text[-1].isspace()
        else:
            pos = text.find("\n")
            while pos >= 0:
                yield pos + 1
                pos = text.find("\n", pos + 1)

    def _feed_cuts(self, text: str) -> None:
        size = self._size
        parts = self._parts
        units = self._units
        start = 0
        for cut in self._cuts(text):
            units += 1
            if units == size:
                piece = text[start:cut]
                if parts:
                    parts.append(piece)
                    piece = "".join(parts)
                    parts.clear()
                if piece:
                    self.out.append(piece)
                start = cut
                units = 0
        if start < len(text):
            parts.append(text[start:] if start else text)
        self._units = units
