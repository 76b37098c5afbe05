"""What the SSE and NDJSON decoders share: their error state, and their async iterator.

Sans-I/O like the codecs themselves: no anyio, no clock.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, Self, TypeVar

from ._errors import ClosedError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Iterable

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)

__all__ = ["DecodedChunks", "DecoderState"]


class DecoderState:
    """The end and error state of an incremental decoder, and the rules that go with it.

    When bad bytes come in a chunk that also completes values, ``feed`` returns those
    values and defers the error to the next call, so the values and the error are the
    same however the bytes were split. After an error the decoder is unusable: the
    first call after it raises the error itself (if it was deferred), later calls a copy
    chained to it. After ``feed_eof`` every call raises :class:`~streamkit.ClosedError`.
    """

    __slots__ = ("_closed", "_error", "_raised")

    #: The format's name, for messages ("SSE", "NDJSON").
    _format: ClassVar[str]

    def __init__(self) -> None:
        self._closed = False
        self._error: RemoteProtocolError | None = None
        self._raised = False  # whether _error was raised yet

    def _check_usable(self) -> None:
        error = self._error
        if error is not None:
            if not self._raised:
                # A deferred error: raise it as it was made, with its cause.
                self._raised = True
                raise error
            raise RemoteProtocolError(error.message, line=error.line) from error
        if self._closed:
            raise ClosedError(f"the {self._format} decoder was given bytes after feed_eof()")

    def _fail(self, error: RemoteProtocolError, done: list[_T]) -> list[_T]:
        """Keep ``error``; return ``done`` and defer the error if there is any, else raise."""
        self._error = error
        self._raised = not done
        if done:
            return done
        raise error


class _Decoder(Protocol[_T_co]):
    def feed(self, data: bytes) -> Iterable[_T_co]: ...

    def feed_eof(self) -> Iterable[_T_co]: ...


class DecodedChunks(Generic[_T_co]):
    """Decode an async iterable of byte chunks as they come, yielding what each completes."""

    __slots__ = ("_chunks", "_decoder", "_done", "_pending")

    def __init__(self, chunks: AsyncIterable[bytes], decoder: _Decoder[_T_co]) -> None:
        self._chunks = aiter(chunks)
        self._decoder = decoder
        self._pending: deque[_T_co] = deque()
        self._done = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> _T_co:
        pending = self._pending
        while not pending:
            if self._done:
                raise StopAsyncIteration
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._done = True
                pending.extend(self._decoder.feed_eof())
            else:
                pending.extend(self._decoder.feed(chunk))
        return pending.popleft()
