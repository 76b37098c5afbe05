"""A count that tests wait on: ``reached(n)`` returns once ``add`` has brought it to ``n``."""

from __future__ import annotations

import anyio


class Tally:
    """What readers took in all; ``reached(n)`` waits until it is ``n`` (no sleeps)."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.event = anyio.Event()

    def add(self, n: int) -> None:
        """Count ``n`` more; wake a ``reached`` whose target is met."""
        self.count += n
        if self.count >= self.target:
            self.event.set()

    async def reached(self, target: int) -> None:
        """Wait until the count is at least ``target``."""
        self.target = target
        self.event = anyio.Event()
        if self.count < target:
            await self.event.wait()
