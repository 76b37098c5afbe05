"""The async iterator that both codecs' ``aiter_*`` helpers return (no anyio needed)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, Protocol, Self, TypeVar

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Iterable

_T_co = TypeVar("_T_co", covariant=True)

__all__ = ["DecodedChunks"]


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
