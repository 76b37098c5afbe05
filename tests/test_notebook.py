"""A registry kept alive across notebook cells: a real notebook in a real kernel."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import streamkit as sk
from streamkit import notebook

ROOT = Path(__file__).resolve().parent.parent
FAST = sk.StreamConfig(stream_delay=0, heartbeat_interval=None)


def _execute(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("STREAMKIT_EXAMPLE_FAST", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3")
    client.execute(cwd=str(ROOT))
    return [
        "".join(output.get("text", "") for output in cell.get("outputs", []))
        for cell in nb.cells
        if cell.cell_type == "code"
    ]


def test_example_notebook_runs_in_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = _execute(ROOT / "examples" / "notebook.ipynb", monkeypatch)
    # The answer read in a later cell than the one that started the producer ...
    assert any(out.strip() for out in outputs[3:4])
    # ... and stop() ended the live session cleanly.
    assert "'cancelled': 1" in outputs[-1]
    assert "'completed': 1" in outputs[-1]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_start_and_stop_from_different_tasks() -> None:
    registry = sk.SessionRegistry()
    holder: list[sk.SessionRegistry] = []

    async def first_cell() -> None:
        holder.append(await notebook.start(registry))

    async def last_cell() -> None:
        await notebook.stop(holder[0])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_cell)
        session = await registry.create()
        registry.start(session.session_id, ["a", "b"], FAST)
        async with registry.subscribe(session.session_id) as events:
            assert "".join([e.content async for e in events]) == "ab"
        live = await registry.create()
        async with anyio.create_task_group() as tg:
            tg.start_soon(last_cell)
    with pytest.raises(sk.ClosedError):
        await registry.create()
    assert registry.statistics().sessions == 2
    with pytest.raises(sk.ClosedError, match="not running"):
        await notebook.stop(registry)
    del live


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_start_refuses_misuse_and_reports_a_failed_entry() -> None:
    with pytest.raises(sk.ValidationError, match="SessionRegistry"):
        await notebook.start("registry")  # type: ignore[arg-type]
    registry = await notebook.start(sk.SessionRegistry())
    try:
        with pytest.raises(RuntimeError, match="running already"):
            await notebook.start(registry)
    finally:
        await notebook.stop(registry)
    # A registry can be entered once: the second start raises what entering raises.
    with pytest.raises(RuntimeError, match="entered only once"):
        await notebook.start(registry)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_start_needs_asyncio() -> None:
    with pytest.raises(RuntimeError, match="BlockingRegistry"):
        await notebook.start(sk.SessionRegistry())
