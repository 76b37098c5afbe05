# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# %% [markdown]
# # streamkit in a notebook
#
# A notebook runs its own event loop, so there are two ways in: the blocking facade
# (plain `for` loops, no `await`), or `await` in a cell (Jupyter allows top-level
# `await`). This file runs as a script too: `python examples/notebook.py`.

# %%
import os

import anyio

import streamkit as sk
from streamkit.blocking import BlockingRegistry, stream_tokens
from streamkit.testing import SimulatedAgent

fast = os.environ.get("STREAMKIT_EXAMPLE_FAST") == "1"
agent = SimulatedAgent(seed=11, realtime=not fast)
config = sk.StreamConfig(chunk_size=2, stream_delay=0 if fast else 0.01)

# %% [markdown]
# ## A stream in a `for` loop
#
# `streamkit.blocking.stream_tokens` runs the stream in a helper thread's event loop and
# hands the events to a plain `for` loop.

# %%
for event in stream_tokens(agent("What is a notebook?"), config):
    if event.event_type == sk.EventType.TOKEN:
        print(event.content, end="", flush=True)
    elif event.is_final:
        print(f"\n[{event.event_type}] {event.metadata['stats']['tokens']} tokens")

# %% [markdown]
# ## Sessions, fan-out and resume without `await`

# %%
with BlockingRegistry() as registry:
    session = registry.create(user_id="me")
    registry.start(session.session_id, agent("Tell me about fan-out"), config)
    first = list(registry.subscribe(session.session_id, user_id="me"))
    # A second reader, resuming after the fifth event, gets exactly the rest.
    rest = list(registry.subscribe(session.session_id, user_id="me", after=5))
    assert rest == first[5:]
    print(len(first), "events;", len(rest), "after seq 5")
    print(registry.statistics().by_state["completed"], "completed session")


# %% [markdown]
# ## With `await`
#
# In Jupyter you would write the body of `main` straight into a cell with `await`;
# a script needs `anyio.run`.


# %%
async def main() -> None:
    async with sk.SessionRegistry() as registry:
        session = await registry.create()
        registry.start(session.session_id, agent("And async?"), config)
        async with registry.subscribe(session.session_id) as events:
            async for event in events:
                if event.event_type == sk.EventType.TOKEN:
                    print(event.content, end="", flush=True)
        print()


anyio.run(main)
