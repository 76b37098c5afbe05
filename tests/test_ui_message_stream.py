"""The AI SDK UI message stream encoder, read by the `ai` npm package's own reader in node.

The package is installed into a temporary folder once per session (``npm install
ai@6``: node 20 here, and ``ai`` 7 declares node >= 22); without npm or node, or when
the install fails (no registry), the node tests are skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

import streamkit as sk
from streamkit.parts import (
    DataPart,
    ReasoningDelta,
    SourcePart,
    StepFinish,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
)
from streamkit.testing import SimulatedToolAgent
from streamkit.ui_message_stream import HEADERS, UIMessageStreamEncoder

READER = Path(__file__).parent / "js" / "read_ui_message_stream.mjs"


@pytest.fixture(scope="session")
def ai_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm and node are needed to run the `ai` package's reader")
    folder = tmp_path_factory.mktemp("ai-sdk")
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "ai@6"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"`npm install ai@6` failed: {done.stderr.strip()[-500:]}")
    shutil.copy(READER, folder / "read.mjs")
    return folder


def read_with_ai(folder: Path, data: bytes) -> dict[str, Any]:
    stream = folder / "stream.txt"
    stream.write_bytes(data)
    done = subprocess.run(
        ["node", "read.mjs", str(stream)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def encoded(source: Any, session_id: str = "chat-1") -> bytes:
    encoder = UIMessageStreamEncoder()
    out = b""
    with anyio.fail_after(10):
        config = sk.StreamConfig(chunk_size=3, flush_interval=60)
        async with sk.stream_tokens(source, config, session_id=session_id) as stream:
            async for event in stream:
                out += encoder.encode(event)
    assert encoder.done
    return out


@pytest.mark.anyio
async def test_the_ai_package_reads_a_whole_agent_run(ai_package: Path) -> None:
    agent = SimulatedToolAgent(seed=1, realtime=False)
    result = read_with_ai(ai_package, await encoded(agent("go")))
    assert result["errors"] == []
    message = result["message"]
    assert message["id"] == "chat-1"
    parts = message["parts"]
    kinds = [part["type"] for part in parts]
    assert kinds.count("step-start") == 3
    assert [p["text"] for p in parts if p["type"] == "text"] == [agent.answer("go")]
    reasoning = [p["text"] for p in parts if p["type"] == "reasoning"]
    assert reasoning[0].startswith("The user asks about go.")
    tools = {p["toolCallId"]: p for p in parts if p["type"].startswith("tool-")}
    assert tools["call_1"]["type"] == "tool-search"
    assert tools["call_1"]["state"] == "output-available"
    assert tools["call_2"]["input"]["unit"] == "celsius"
    assert tools["call_3"]["state"] == "output-error"
    assert tools["call_3"]["errorText"] == "get_time: the time service timed out"
    assert "source-url" in kinds
    assert "data-forecast" in kinds
    assert message["metadata"]["usage"]["output_tokens"] > 0


@pytest.mark.anyio
async def test_the_ai_package_reads_an_error_end(ai_package: Path) -> None:
    async def failing() -> Any:
        yield "partial "
        raise RuntimeError("model down")

    result = read_with_ai(ai_package, await encoded(failing()))
    assert "Error: model down" in result["errors"]
    assert result["message"]["parts"][0]["text"] == "partial "


@pytest.mark.anyio
async def test_the_ai_package_reads_a_stopped_answer(ai_package: Path) -> None:
    encoder = UIMessageStreamEncoder()
    events = [
        sk.StreamEvent(event_type="start", session_id="chat-9"),
        sk.StreamEvent(event_type="token", content="half an"),
        sk.StreamEvent(event_type="complete", metadata={"reason": "cancelled"}),
    ]
    data = b"".join(encoder.encode(event) for event in events)
    assert encoder.done
    assert data.endswith(
        b'data: {"type":"text-end","id":"text-1"}\n\ndata: {"type":"abort"}\n\ndata: [DONE]\n\n'
    )
    result = read_with_ai(ai_package, data)
    assert result["errors"] == []
    assert result["message"]["parts"][0]["text"] == "half an"


def test_headers() -> None:
    assert (b"x-vercel-ai-ui-message-stream", b"v1") in HEADERS


def chunks_of(data: bytes) -> list[Any]:
    out: list[Any] = []
    for block in data.split(b"\n\n"):
        if block.startswith(b"data: "):
            payload = block[6:]
            out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
        elif block:
            out.append(block.decode())
    return out


def test_encoder_orders_blocks_and_maps_every_part() -> None:
    encoder = UIMessageStreamEncoder()
    events = [
        sk.StreamEvent(event_type="start"),
        sk.StreamEvent(event_type="token", content=""),
        sk.StreamEvent.from_part(TextDelta(text="a")),
        sk.StreamEvent.from_part(TextDelta(text="")),
        sk.StreamEvent.from_part(ReasoningDelta(text="")),
        sk.StreamEvent(event_type="heartbeat"),
        sk.StreamEvent(event_type="metadata", metadata={"x": 1}),
        sk.StreamEvent.from_part(ToolCallDelta(call_id="ghost", delta="{")),
        sk.StreamEvent.from_part(ToolCallEnd(call_id="c9", arguments={})),
        sk.StreamEvent.from_part(ToolResult(call_id="unknown", output=1)),
        sk.StreamEvent.from_part(ToolCallStart(call_id="c1", name="f")),
        sk.StreamEvent.from_part(ToolResult(call_id="c1", output=None)),
        sk.StreamEvent.from_part(SourcePart(source_id="s", document="Doc")),
        sk.StreamEvent.from_part(SourcePart(source_id="u", url="https://x")),
        sk.StreamEvent.from_part(DataPart(name="d", value=1, data_id="i", transient=True)),
        sk.StreamEvent.from_part(StepFinish(finish_reason="weird")),
        sk.StreamEvent(event_type="complete"),
    ]
    got = chunks_of(b"".join(encoder.encode(event) for event in events))
    assert got == [
        {"type": "start"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "a"},
        ": ping",
        {"type": "text-end", "id": "text-1"},
        {"type": "tool-input-start", "toolCallId": "c9", "toolName": "tool"},
        {"type": "tool-input-available", "toolCallId": "c9", "toolName": "tool", "input": {}},
        {"type": "tool-input-start", "toolCallId": "c1", "toolName": "f"},
        {"type": "tool-output-available", "toolCallId": "c1", "output": None},
        {"type": "source-document", "sourceId": "s", "mediaType": "text/plain", "title": "Doc"},
        {"type": "source-url", "sourceId": "u", "url": "https://x"},
        {"type": "data-d", "data": 1, "id": "i", "transient": True},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "other"},
        "[DONE]",
    ]
    with pytest.raises(sk.ValidationError, match="after the final event"):
        encoder.encode(sk.StreamEvent(event_type="token", content="late"))
    with pytest.raises(sk.ValidationError, match="must be a StreamEvent"):
        UIMessageStreamEncoder().encode("token")  # type: ignore[arg-type]


def test_encoder_error_without_message() -> None:
    encoder = UIMessageStreamEncoder()
    data = encoder.encode(sk.StreamEvent(event_type="error"))
    assert chunks_of(data) == [{"type": "error", "errorText": "the stream failed"}, "[DONE]"]
