"""SimulatedAgent: a seeded, deterministic fake LLM for demos, docs and tests.

The same seed and prompt always give the same answer, split into the same tokens
(word pieces with their leading space, as real tokenizers make them) with the same
delays. The delays are slept on anyio's clock, so the agent runs on asyncio and
Trio, and ``realtime=False`` runs it with no delay at all (it still yields control
between tokens, as a real network source does).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Final

import anyio
import anyio.lowlevel

from .._errors import ValidationError
from .._parts import (
    DataPart,
    Part,
    ReasoningDelta,
    SourcePart,
    StepFinish,
    StepStart,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    Usage,
)
from .._validate import check_bool, check_int, check_number, check_str, type_name

__all__ = ["SimulatedAgent", "SimulatedToolAgent"]

_SENTENCES: Final = (
    "Streaming sends each piece of the answer as soon as it exists.",
    "The first words matter most, because a reader judges speed by them.",
    "A token is a short piece of text, often a word or part of one.",
    "Chunking groups a few tokens into one event to save work on the wire.",
    "Heartbeats keep a quiet connection open through proxies and load balancers.",
    "A deadline bounds the whole stream, however slow the model turns out to be.",
    "Each event has a sequence number, so a client can resume where it stopped.",
    "Many readers can follow one session without asking the model twice.",
    "Back-pressure lets a slow reader slow the producer instead of losing text.",
    "Cancelling a stream closes the model's connection promptly.",
    "Server-Sent Events carry one event per block of text lines.",
    "A WebSocket carries the same events in both directions.",
    "The log keeps recent events in memory and forgets the oldest first.",
    "A lost connection is not a lost answer: reconnect and read on.",
    "Structured concurrency means every task has an owner that waits for it.",
    "Time to first token is the delay before the first visible word.",
    "Tokens per second measures how fast the rest of the answer arrives.",
    "Jitter makes the gaps between tokens uneven, as they are in real models.",
    "A simulated model is handy for demos, notebooks and tests.",
    "Deterministic output makes a failing test fail the same way every time.",
    "Validation at the edges keeps bad input from travelling deep inside.",
    "Bounded buffers turn unbounded growth into a clear and documented error.",
    "The same events can reach a browser, a terminal or another service.",
    "Multi-byte characters such as é, 字 or 🙂 are never split in two.",
    "Small, frequent events feel faster than large and rare ones.",
    "An error event tells the client why the stream ended early.",
    "Resuming after a gap is refused rather than silently skipping text.",
    "A session belongs to its owner unless the application shares it.",
    "Redis lets several processes serve the same sessions.",
    "Every piece of the answer arrives in order and exactly once.",
)
_PIECES: Final = re.compile(r"\s*[^\W\d_]+|\s*\d+|\s*[^\w\s]|\s*_|\s+")


def _rng(seed: int, prompt: str) -> random.Random:
    # Independent of PYTHONHASHSEED: the seed and the prompt are hashed explicitly.
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - not security


class SimulatedAgent:
    """A fake LLM that streams a deterministic answer with realistic timing.

    Use it as a token source: ``agent(prompt)`` (or ``agent.stream(prompt)``) is an
    async iterator of text pieces, ``agent.stream_sync(prompt)`` a blocking iterator
    (like a local model's streamer), ``agent.answer(prompt)`` the whole text.

    Args:
        seed: Picks the answers and timings; the same seed and prompt always give the
            same tokens and delays.
        tokens_per_second: The mean rate after the first token.
        first_token_latency: Seconds before the first token.
        jitter: How uneven the delays are: each is multiplied by a factor drawn in
            ``[1 - jitter, 1 + jitter]``; from 0 to 1.
        realtime: Sleep the delays (``True``), or stream with no delay (``False``).
        answers: Fixed answers for given prompts (exact match); other prompts get a
            generated answer of a few sentences.
        error_after_tokens: Raise ``RuntimeError`` after this many tokens, to
            simulate a model that fails mid-answer. ``None``: never.

    Raises:
        ValidationError: an argument is of the wrong type or out of range.
    """

    __slots__ = (
        "_answers",
        "_error_after",
        "_first_latency",
        "_jitter",
        "_realtime",
        "_seed",
        "_tps",
    )

    def __init__(
        self,
        *,
        seed: int = 0,
        tokens_per_second: float = 30.0,
        first_token_latency: float = 0.3,
        jitter: float = 0.2,
        realtime: bool = True,
        answers: Mapping[str, str] | None = None,
        error_after_tokens: int | None = None,
    ) -> None:
        self._seed = check_int("seed", seed)
        self._tps = check_number("tokens_per_second", tokens_per_second, positive=True)
        self._first_latency = check_number("first_token_latency", first_token_latency, minimum=0)
        self._jitter = check_number("jitter", jitter, minimum=0)
        if self._jitter > 1:
            raise ValidationError(f"jitter must be <= 1, got {jitter!r}", field="jitter")
        self._realtime = check_bool("realtime", realtime)
        if answers is not None and not isinstance(answers, Mapping):
            raise ValidationError(
                f"answers must be a mapping, got {type_name(answers)}", field="answers"
            )
        self._answers = dict(answers or {})
        for key, value in self._answers.items():
            check_str("answers key", key)
            check_str(f"answers[{key!r}]", value)
        self._error_after = (
            None
            if error_after_tokens is None
            else check_int("error_after_tokens", error_after_tokens, minimum=0)
        )

    def __repr__(self) -> str:
        return (
            f"SimulatedAgent(seed={self._seed}, tokens_per_second={self._tps:g}, "
            f"first_token_latency={self._first_latency:g}, jitter={self._jitter:g}, "
            f"realtime={self._realtime})"
        )

    def answer(self, prompt: str) -> str:
        """Return the whole answer to ``prompt``: the streamed tokens, joined.

        Raises:
            ValidationError: ``prompt`` is not a ``str``.
        """
        return "".join(self.tokens(prompt))

    def tokens(self, prompt: str) -> list[str]:
        """Return the tokens the agent streams for ``prompt``.

        Raises:
            ValidationError: ``prompt`` is not a ``str``.
        """
        return self._plan(prompt)[0]

    def delays(self, prompt: str) -> list[float]:
        """Return the seconds the agent waits before each token of ``prompt``.

        Raises:
            ValidationError: ``prompt`` is not a ``str``.
        """
        return self._plan(prompt)[1]

    def __call__(self, prompt: str) -> AsyncIterator[str]:
        """Same as :meth:`stream`.

        Raises:
            ValidationError: ``prompt`` is not a ``str``.
        """
        return self.stream(prompt)

    def stream(self, prompt: str) -> AsyncIterator[str]:
        """Stream the answer to ``prompt``, token by token, on anyio's clock.

        Raises:
            ValidationError: at once, if ``prompt`` is not a ``str``.
            RuntimeError: while iterating, after ``error_after_tokens`` tokens.
        """
        tokens, delays = self._plan(prompt)
        return self._stream(tokens, delays)

    def stream_sync(self, prompt: str) -> Iterator[str]:
        """Stream the answer with blocking sleeps, like a local model in a thread.

        Raises:
            ValidationError: at once, if ``prompt`` is not a ``str``.
            RuntimeError: while iterating, after ``error_after_tokens`` tokens.
        """
        tokens, delays = self._plan(prompt)
        return self._stream_sync(tokens, delays)

    async def _stream(self, tokens: list[Any], delays: list[float]) -> AsyncIterator[Any]:
        due = anyio.current_time()
        for count, (token, delay) in enumerate(zip(tokens, delays, strict=True)):
            self._maybe_fail(count)
            if self._realtime:
                due += delay  # an absolute schedule: sleep overshoot does not add up
                await anyio.sleep_until(due)
            else:
                await anyio.lowlevel.checkpoint()
            yield token
        self._maybe_fail(len(tokens))

    def _stream_sync(self, tokens: list[Any], delays: list[float]) -> Iterator[Any]:
        due = time.monotonic()
        for count, (token, delay) in enumerate(zip(tokens, delays, strict=True)):
            self._maybe_fail(count)
            if self._realtime:
                due += delay
                time.sleep(max(0.0, due - time.monotonic()))
            yield token
        self._maybe_fail(len(tokens))

    def _maybe_fail(self, count: int) -> None:
        if self._error_after is not None and count >= self._error_after:
            raise RuntimeError(f"simulated model failure after {count} tokens")

    def _plan(self, prompt: str) -> tuple[list[str], list[float]]:
        check_str("prompt", prompt)
        rng = _rng(self._seed, prompt)
        text = self._answers.get(prompt)
        if text is None:
            text = self._compose(rng)
        tokens = self._tokenize(text, rng)
        jitter = self._jitter
        first = self._first_latency * rng.uniform(1 - jitter, 1 + jitter)
        gap = 1.0 / self._tps
        delays = [first] + [gap * rng.uniform(1 - jitter, 1 + jitter) for _ in tokens[1:]]
        return tokens, delays[: len(tokens)]

    @staticmethod
    def _compose(rng: random.Random) -> str:
        sentences = rng.sample(_SENTENCES, rng.randint(2, 5))
        if len(sentences) > 3:  # two paragraphs, so that chunk_by="line" has lines
            return " ".join(sentences[:2]) + "\n\n" + " ".join(sentences[2:])
        return " ".join(sentences)

    @staticmethod
    def _tokenize(text: str, rng: random.Random) -> list[str]:
        tokens: list[str] = []
        for piece in _PIECES.findall(text):
            word = piece.lstrip()
            if len(word) > 6:  # long words become two pieces, as BPE would split them
                cut = len(piece) - len(word) + rng.randint(3, len(word) - 3)
                tokens += (piece[:cut], piece[cut:])
            else:
                tokens.append(piece)
        return tokens


_CITIES: Final = ("Paris", "Lisbon", "Kyoto", "Montréal", "Nairobi", "Oslo", "Lima")
_TOPICS: Final = ("trains", "museums", "markets", "parks", "bakeries", "bridges")


class SimulatedToolAgent:
    """A fake agent that reasons, calls tools, gets their results and answers.

    Deterministic like :class:`SimulatedAgent` (the same seed and prompt always give
    the same parts and delays), it yields what a tool-calling model's stream holds,
    as ``str`` (the answer's text) and typed parts (:mod:`streamkit.parts`), in three
    steps:

    1. reasoning, then one call of ``search`` whose JSON arguments stream in pieces;
       its result;
    2. reasoning, then a parallel pair, ``get_weather`` and ``get_time``, whose
       argument pieces interleave; ``get_weather`` answers and ``get_time`` fails
       (a :class:`~streamkit.parts.ToolResult` with an ``error``);
    3. the answer's text, a cited source, app data (``data-forecast``), usage, and the
       final step's finish.

    Every step starts with a :class:`~streamkit.parts.StepStart` and ends with a
    :class:`~streamkit.parts.StepFinish` and the step's
    :class:`~streamkit.parts.Usage`.

    Args:
        seed: Picks the city, the topic, the texts and the timings.
        tokens_per_second: The mean rate of the pieces after the first.
        first_token_latency: Seconds before the first piece.
        jitter: How uneven the delays are, from 0 to 1.
        realtime: Sleep the delays (``True``), or stream with no delay (``False``).

    Raises:
        ValidationError: an argument is of the wrong type or out of range.
    """

    __slots__ = ("_text",)

    def __init__(
        self,
        *,
        seed: int = 0,
        tokens_per_second: float = 30.0,
        first_token_latency: float = 0.3,
        jitter: float = 0.2,
        realtime: bool = True,
    ) -> None:
        self._text = SimulatedAgent(
            seed=seed,
            tokens_per_second=tokens_per_second,
            first_token_latency=first_token_latency,
            jitter=jitter,
            realtime=realtime,
        )

    def __repr__(self) -> str:
        return repr(self._text).replace("SimulatedAgent", "SimulatedToolAgent", 1)

    def parts(self, prompt: str) -> list[str | Part]:
        """Return everything the agent streams for ``prompt``, in order.

        Raises:
            ValidationError: ``prompt`` is not a ``str``.
        """
        return self._plan(prompt)[0]

    def answer(self, prompt: str) -> str:
        """Return the answer's text: the ``str`` items of :meth:`parts`, joined.

        Raises:
            ValidationError: ``prompt`` is not a ``str``.
        """
        return "".join(item for item in self.parts(prompt) if isinstance(item, str))

    def __call__(self, prompt: str) -> AsyncIterator[str | Part]:
        """Same as :meth:`stream`.

        Raises:
            ValidationError: ``prompt`` is not a ``str``.
        """
        return self.stream(prompt)

    def stream(self, prompt: str) -> AsyncIterator[str | Part]:
        """Stream the agent's run for ``prompt`` on anyio's clock.

        Raises:
            ValidationError: at once, if ``prompt`` is not a ``str``.
        """
        items, delays = self._plan(prompt)
        return self._text._stream(items, delays)

    def stream_sync(self, prompt: str) -> Iterator[str | Part]:
        """Stream the agent's run with blocking sleeps, like a local model in a thread.

        Raises:
            ValidationError: at once, if ``prompt`` is not a ``str``.
        """
        items, delays = self._plan(prompt)
        return self._text._stream_sync(items, delays)

    def _plan(self, prompt: str) -> tuple[list[str | Part], list[float]]:
        check_str("prompt", prompt)
        text = self._text
        rng = _rng(text._seed, "tools\x00" + prompt)
        city = rng.choice(_CITIES)
        topic = rng.choice(_TOPICS)
        items: list[str | Part] = []

        def say(words: str, kind: type[ReasoningDelta] | None) -> None:
            for piece in SimulatedAgent._tokenize(words, rng):
                items.append(piece if kind is None else kind(text=piece))

        def arguments(call_id: str, data: dict[str, object]) -> list[ToolCallDelta]:
            whole = json.dumps(data, ensure_ascii=False)
            cuts = sorted(rng.sample(range(1, len(whole)), min(3, len(whole) - 1)))
            bounds = [0, *cuts, len(whole)]
            return [
                ToolCallDelta(call_id=call_id, delta=whole[a:b])
                for a, b in itertools.pairwise(bounds)
            ]

        def usage(out: int) -> Usage:
            return Usage(
                input_tokens=40 + rng.randint(0, 40),
                output_tokens=out,
                reasoning_tokens=out // 2,
                cached_tokens=rng.randint(0, 30),
            )

        # Step 1: reason, search.
        items.append(StepStart())
        say(
            f"The user asks about {prompt or 'the city'}. I should search for {topic} first.",
            ReasoningDelta,
        )
        items.append(ToolCallStart(call_id="call_1", name="search"))
        items += arguments("call_1", {"query": f"{topic} in {city}", "limit": 3})
        items.append(ToolCallEnd(call_id="call_1"))
        items += [StepFinish(finish_reason="tool_calls"), usage(len(items))]
        results = [f"{topic.capitalize()} of {city} #{n}" for n in range(1, 4)]
        items.append(ToolResult(call_id="call_1", output={"results": tuple(results)}))
        # Step 2: reason, a parallel pair; the second tool fails.
        items.append(StepStart())
        say(f"Now the weather and the local time in {city}, both at once.", ReasoningDelta)
        items.append(ToolCallStart(call_id="call_2", name="get_weather"))
        items.append(ToolCallStart(call_id="call_3", name="get_time"))
        weather = arguments("call_2", {"city": city, "unit": "celsius"})
        clock = arguments("call_3", {"city": city})
        for pair in itertools.zip_longest(weather, clock):
            items += [delta for delta in pair if delta is not None]
        items += [ToolCallEnd(call_id="call_2"), ToolCallEnd(call_id="call_3")]
        items += [StepFinish(finish_reason="tool_calls"), usage(12)]
        temp = rng.randint(-5, 30)
        items.append(
            ToolResult(call_id="call_2", output={"city": city, "temp_c": temp, "sky": "clear"})
        )
        items.append(ToolResult(call_id="call_3", error="get_time: the time service timed out"))
        # Step 3: the answer.
        items.append(StepStart())
        say(
            f"In {city} it is {temp} °C under a clear sky, a fine day for {topic}: "
            f"start with {results[0]}, then {results[1]}. "
            "I could not get the local time, so check it before you go.",
            None,
        )
        items.append(
            SourcePart(
                source_id="src_1",
                url=f"https://example.com/{topic}/{city.lower()}",
                title=results[0],
            )
        )
        items.append(DataPart(name="forecast", value={"city": city, "temp_c": temp}))
        items += [StepFinish(finish_reason="stop"), usage(sum(isinstance(i, str) for i in items))]
        jitter = text._jitter
        gap = 1.0 / text._tps
        delays = [text._first_latency * rng.uniform(1 - jitter, 1 + jitter)] + [
            gap * rng.uniform(1 - jitter, 1 + jitter) for _ in items[1:]
        ]
        return items, delays
