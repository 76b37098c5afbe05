"""``python -m streamkit.demo --terminal``: one session, two subscribers, in a plain terminal.

No server and no browser: a :class:`~streamkit.SessionRegistry` runs the simulated model
in this process and two subscribers follow the same session (fan-out: the model runs
once). Subscriber A reads from the start. Subscriber B joins late and catches up from the
session's log, then drops its connection on purpose and resumes after the last ``seq``
it saw. Both must end with exactly the model's answer.

On a terminal the two answers stream side by side under a live progress line, redrawn
with plain ANSI cursor movement (no curses). When the output is not a terminal (a pipe,
a CI log) the same run prints one line per moment worth noting and the final columns.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from typing import TYPE_CHECKING, Final

import anyio

from .._config import RegistryConfig, StreamConfig
from .._events import EventType
from .._registry import SessionRegistry

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from .._events import StreamEvent
    from ..testing import SimulatedAgent

__all__ = ["run_terminal"]

_USER: Final = "terminal"
#: Events B stays away for after it drops its connection (unless the stream ends first).
_AWAY_EVENTS: Final = 8
#: Text lines shown per column while streaming on a terminal.
_COLUMN_LINES: Final = 14
_FPS: Final = 15


class _Changes:
    """Lets tasks wait until a condition on shared state holds, woken on each change."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


class _Reader:
    """What one subscriber has received."""

    def __init__(self, name: str, role: str) -> None:
        self.name = name
        self.role = role
        self.status = "waiting"
        self.parts: list[str] = []
        self.seqs: list[int] = []
        self.tokens = 0
        self.final: StreamEvent | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def take(self, event: StreamEvent) -> None:
        if event.seq is not None:
            self.seqs.append(event.seq)
        if event.event_type == EventType.TOKEN:
            self.parts.append(event.content)
            self.tokens += 1
        elif event.is_final:
            self.final = event


class _Glyphs:
    """The characters the output is drawn with: Unicode, or ASCII if it cannot be encoded."""

    __slots__ = ("bar", "cross", "dot", "empty", "fail", "full", "more", "ok", "rule")

    def __init__(self, encoding: str | None) -> None:
        fancy = "\u2588\u2591\u2502\u2500\u253c\u2713\u2717\u00b7\u2026"
        try:
            fancy.encode(encoding or "ascii")
        except (LookupError, UnicodeEncodeError):
            fancy = "#-|-+vx-~"
        names = ("full", "empty", "bar", "rule", "cross", "ok", "fail", "dot", "more")
        for name, glyph in zip(names, fancy, strict=True):
            setattr(self, name, glyph)

    full: str
    empty: str
    bar: str
    rule: str
    cross: str
    ok: str
    fail: str
    dot: str
    more: str


class _Run:
    """The shared state of one terminal run and how it is shown."""

    def __init__(
        self,
        prompt: str,
        agent: SimulatedAgent,
        out: TextIO,
        *,
        tty: bool,
        width: int,
        height: int,
    ) -> None:
        self.prompt = prompt
        self.answer = agent.answer(prompt)
        self.total = len(agent.tokens(prompt))
        self.out = out
        self.tty = tty
        self.width = width
        self.height = height
        self.glyphs = _Glyphs(getattr(out, "encoding", None))
        self.color = tty and "NO_COLOR" not in os.environ
        self.a = _Reader("A", "reads from the start")
        self.b = _Reader("B", "joins late, drops once")
        self.notes: list[str] = []
        self.changes = _Changes()
        self.started = anyio.current_time()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.state = "active"
        self.quartiles_shown = 0
        self.drawn_lines = 0

    # -- figures ------------------------------------------------------------------------

    def elapsed(self) -> float:
        return anyio.current_time() - self.started

    def rate(self) -> float | None:
        first, last, tokens = self.first_token_at, self.last_token_at, self.a.tokens
        if first is None or last is None or tokens < 2 or last <= first:
            return None
        return (tokens - 1) / (last - first)

    def progress(self) -> str:
        g = self.glyphs
        size = 24
        done = min(size, size * self.a.tokens // max(1, self.total))
        parts = [f"{g.full * done}{g.empty * (size - done)} {self.a.tokens}/{self.total} tokens"]
        rate = self.rate()
        parts.append(f"{rate:.1f} tok/s" if rate is not None else "-- tok/s")
        if self.first_token_at is not None:
            parts.append(f"first token {self.first_token_at - self.started:.2f} s")
        parts.append(self.state)
        parts.append(f"{self.elapsed():.1f} s")
        return f" {g.dot} ".join(parts)

    # -- output -------------------------------------------------------------------------

    def style(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def note(self, text: str) -> None:
        self.notes.append(text)
        if not self.tty:
            self.write(f"[{self.elapsed():5.2f} s] {text}\n")

    def header(self) -> list[str]:
        g = self.glyphs
        title = "streamkit demo: one session, two subscribers (fan-out through the registry)"
        return [
            self.style(title, "1"),
            f"prompt {g.dot} {self.prompt}",
            f"model  {g.dot} simulated, {self.total} tokens; the model runs once for both",
            "",
        ]

    def columns(self, *, tail: int | None) -> list[str]:
        g = self.glyphs
        width = min(60, (self.width - 3) // 2)
        blocks = []
        for reader in (self.a, self.b):
            lines: list[str] = []
            for paragraph in reader.text.split("\n"):
                lines.extend(textwrap.wrap(paragraph, width) or [""])
            if tail is not None and len(lines) > tail:
                lines = [g.more, *lines[-(tail - 1) :]]
            blocks.append(lines)
        height = max(len(block) for block in blocks)
        if tail is not None:
            height = max(height, min(tail, 3))
        heads = [f"{r.name} {g.dot} {r.role} {g.dot} {r.status}"[:width] for r in (self.a, self.b)]
        rows = [
            f"{self.style(heads[0].ljust(width), '1')} {g.bar} {self.style(heads[1], '1')}",
            f"{g.rule * width}{g.rule}{g.cross}{g.rule}{g.rule * width}",
        ]
        for index in range(height):
            left, right = (block[index] if index < len(block) else "" for block in blocks)
            rows.append(f"{left.ljust(width)} {g.bar} {right}")
        return rows

    def frame(self, *, tail: int | None, notes: int | None) -> list[str]:
        lines = [*self.header(), *self.columns(tail=tail), ""]
        lines.append(self.progress())
        shown = self.notes if notes is None else self.notes[-notes:]
        lines.extend(self.style(f"  {note}"[: self.width], "2") for note in shown)
        return [line if "\x1b" in line else line[: self.width] for line in lines]

    def draw(self) -> None:
        """Replace the live frame on the terminal (it always fits the screen)."""
        tail = max(3, min(_COLUMN_LINES, self.height - 14))
        lines = self.frame(tail=tail, notes=3)
        self.write(self.erase() + "\n".join(lines) + "\n")
        self.drawn_lines = len(lines)

    def erase(self) -> str:
        """Return the escape codes that erase the live frame."""
        return f"\x1b[{self.drawn_lines}F\x1b[J" if self.drawn_lines else ""

    def on_token(self) -> None:
        now = anyio.current_time()
        if self.first_token_at is None:
            self.first_token_at = now
            self.note(f"A: first token after {now - self.started:.2f} s")
        self.last_token_at = now
        if not self.tty:
            quartile = 4 * self.a.tokens // max(1, self.total)
            if self.quartiles_shown < quartile < 4:  # the end gets its own line
                self.quartiles_shown = quartile
                self.write(f"[{self.elapsed():5.2f} s] {self.progress()}\n")


async def _read_a(run: _Run, registry: SessionRegistry, session_id: str) -> None:
    a = run.a
    a.status = "live"
    async with registry.subscribe(session_id, user_id=_USER) as subscription:
        async for event in subscription:
            a.take(event)
            if event.event_type == EventType.TOKEN:
                run.on_token()
            elif event.is_final:
                run.state = str(event.metadata.get("reason", event.event_type))
            run.changes.notify()
    a.status = "done"
    run.changes.notify()


async def _log_head(registry: SessionRegistry, session_id: str) -> int:
    events = (await registry.get(session_id, user_id=_USER)).events
    return (events[-1].seq or 0) if events else 0


async def _read_b(run: _Run, registry: SessionRegistry, session_id: str) -> None:
    a, b = run.a, run.b
    join_at = max(1, run.total // 4)
    drop_at = max(join_at + 1, run.total * 3 // 5)
    await run.changes.wait_until(lambda: a.tokens >= join_at or a.final is not None)

    head = await _log_head(registry, session_id)
    run.note(f"B subscribes: the log holds {head} events; B reads them, then follows live")
    b.status = "catching up"
    dropped = False
    async with registry.subscribe(session_id, user_id=_USER) as subscription:
        async for event in subscription:
            b.take(event)
            if b.status == "catching up" and b.last_seq >= head:
                b.status = "live"
            run.changes.notify()
            if b.tokens >= drop_at and b.final is None:
                dropped = True
                break
    if dropped:
        after = b.last_seq
        b.status = "offline"
        run.note(f"B drops its connection after seq {after}")
        run.changes.notify()
        await run.changes.wait_until(
            lambda: a.last_seq >= after + _AWAY_EVENTS or a.final is not None
        )
        missed = await _log_head(registry, session_id) - after
        run.note(f"B resumes after seq {after}: {missed} events it missed come from the log")
        b.status = "catching up"
        async with registry.subscribe(session_id, user_id=_USER, after=after) as subscription:
            async for event in subscription:
                b.take(event)
                if b.status == "catching up" and b.last_seq >= after + missed:
                    b.status = "live"
                run.changes.notify()
    b.status = "done"
    run.changes.notify()


async def _redraw(run: _Run) -> None:
    while True:
        run.draw()
        await anyio.sleep(1 / _FPS)


def _verdict(run: _Run, reader: _Reader) -> tuple[bool, str]:
    g = run.glyphs
    in_order = reader.seqs == list(range(1, len(reader.seqs) + 1))
    exact = reader.text == run.answer
    good = exact and in_order and reader.final is not None
    if good:
        detail = (
            f"the exact answer, {len(reader.text)} characters; "
            f"seq 1 to {reader.last_seq}, each once and in order"
        )
    elif not exact:
        detail = f"text differs from the answer ({len(reader.text)} of {len(run.answer)} chars)"
    elif not in_order:
        detail = "events missing, repeated or out of order"
    else:
        detail = "the stream did not end"
    mark = run.style(g.ok, "32") if good else run.style(g.fail, "31")
    return good, f"{mark} {reader.name}: {detail}"


async def run_terminal(
    prompt: str,
    agent: SimulatedAgent,
    out: TextIO,
    *,
    tty: bool | None = None,
    width: int | None = None,
    height: int | None = None,
) -> bool:
    """Stream ``agent``'s answer to ``prompt`` to two subscribers and show it in ``out``.

    Args:
        prompt: The prompt.
        agent: The simulated model.
        out: Where the run is shown.
        tty: Redraw a live frame (``True``) or print one line per moment (``False``);
            by default, whether ``out`` is a terminal.
        width: Columns to fit in; by default the terminal's width (60 to 140).
        height: Lines the live frame may take; by default the terminal's height.

    Returns:
        Whether both subscribers got exactly the model's answer, every event once.
    """
    if tty is None:
        isatty = getattr(out, "isatty", None)
        tty = bool(isatty is not None and isatty())
    size = shutil.get_terminal_size((100, 24))
    width = max(60, min(140, size.columns if width is None else width))
    height = max(10, size.lines if height is None else height)
    run = _Run(prompt, agent, out, tty=tty, width=width, height=height)
    # Registry heartbeats would only add noise to a run of a few seconds.
    config = RegistryConfig(heartbeat_interval=None)
    stream_config = StreamConfig(chunk_size=1, stream_delay=0, heartbeat_interval=None)
    if tty:
        run.write("\x1b[?25l")  # hide the cursor while redrawing
    else:
        run.write("\n".join(run.header()))
    try:
        async with SessionRegistry(config) as registry, anyio.create_task_group() as tg:
            session = await registry.create(user_id=_USER, context={"prompt": prompt})
            session_id = session.session_id
            registry.start(session_id, agent(prompt), config=stream_config)
            if tty:
                tg.start_soon(_redraw, run)
            async with anyio.create_task_group() as readers:
                readers.start_soon(_read_a, run, registry, session_id)
                readers.start_soon(_read_b, run, registry, session_id)
            tg.cancel_scope.cancel()
    finally:
        if tty:
            run.write("\x1b[?25h")
    if tty:
        # The whole answers, once they are complete, scrolling as ordinary output.
        run.write(run.erase() + "\n".join(run.frame(tail=None, notes=None)) + "\n\n")
    else:
        run.write(f"[{run.elapsed():5.2f} s] {run.progress()}\n")
        run.write("\n" + "\n".join(run.columns(tail=None)) + "\n\n")
    results = [_verdict(run, reader) for reader in (run.a, run.b)]
    for _, line in results:
        run.write(line + "\n")
    return all(good for good, _ in results)
