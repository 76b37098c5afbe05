"""Stream a simulated model's answer to the terminal, then print the statistics.

    python examples/stream_to_terminal.py [prompt] [--trio]

Set STREAMKIT_EXAMPLE_FAST=1 to run the model with no delay.
"""

from __future__ import annotations

import os
import sys

import anyio

import streamkit as sk
from streamkit.testing import SimulatedAgent


async def main(prompt: str) -> None:
    fast = os.environ.get("STREAMKIT_EXAMPLE_FAST") == "1"
    # About 60 tokens at 40 tokens/s: a couple of seconds, like a real model.
    agent = SimulatedAgent(seed=4, tokens_per_second=40, first_token_latency=0.4, realtime=not fast)
    config = sk.StreamConfig(chunk_size=3, chunk_by="token", stream_delay=0, heartbeat_interval=1)
    print(f"> {prompt}\n")
    async with sk.stream_tokens(agent(prompt), config) as stream:
        async for event in stream:
            if event.event_type == sk.EventType.TOKEN:
                print(event.content, end="", flush=True)
            elif event.event_type == sk.EventType.ERROR:
                print(f"\n[error: {event.metadata['message']}]")
    stats = stream.stats
    print(
        f"\n\n[{stream.outcome}: {stats.tokens} tokens in {stats.chunks} events, "
        f"first after {stats.time_to_first_token or 0:.3f} s, "
        f"{stats.tokens_per_second:.0f} tokens/s over {stats.duration:.2f} s]"
    )


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--trio"]
    backend = "trio" if "--trio" in sys.argv[1:] else "asyncio"
    anyio.run(main, " ".join(args) or "How does streaming work?", backend=backend)
