"""Byte-exact SSE streams in the providers' documented formats, and a server replaying them.

Written by hand from the OpenAI Chat Completions streaming reference (chunk objects,
``stream_options.include_usage``, ``data: [DONE]``), the OpenAI Responses API streaming
events reference (``event:`` + ``data:`` with ``type`` and ``sequence_number``), and the
Anthropic Messages streaming reference (``message_start`` ... ``message_stop``, ``ping``,
``error``). The server is a plain ``http.server`` in a daemon thread on 127.0.0.1: it
answers ``POST /<name>/...`` with the stream ``STREAMS[name]``, chunked; a name ending in
``-dropped`` closes the connection without the last chunk (a connection cut mid-stream).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# --- OpenAI Chat Completions ----------------------------------------------------------

_C = '"id":"chatcmpl-1","object":"chat.completion.chunk","created":1765000000,"model":"gpt-4o-mini","system_fingerprint":"fp_1"'  # noqa: E501
_USAGE = (
    '"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,'
    '"prompt_tokens_details":{"cached_tokens":8,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":4,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
)


def _chat(*deltas: str, finish: str | None = None, usage: bool = True, done: bool = True) -> bytes:
    lines = [
        f'data: {{{_C},"choices":[{{"index":0,"delta":{delta},"logprobs":null,'
        f'"finish_reason":null}}]}}\n\n'
        for delta in deltas
    ]
    if finish is not None:
        lines.append(
            f'data: {{{_C},"choices":[{{"index":0,"delta":{{}},"logprobs":null,'
            f'"finish_reason":"{finish}"}}]}}\n\n'
        )
    if usage:
        lines.append(f'data: {{{_C},"choices":[],{_USAGE}}}\n\n')
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


CHAT_TEXT = _chat(
    '{"role":"assistant","content":"","refusal":null}',
    '{"content":"Hello"}',
    '{"content":" world"}',
    finish="stop",
)
# OpenAI-compatible servers that stream reasoning (DeepSeek, vLLM) send reasoning_content.
CHAT_REASONING = _chat(
    '{"role":"assistant","content":null,"reasoning_content":""}',
    '{"reasoning_content":"The user"}',
    '{"reasoning_content":" greets me."}',
    '{"content":"Hi!"}',
    finish="stop",
)
CHAT_TOOLS = _chat(
    '{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function",'
    '"function":{"name":"get_weather","arguments":""}}],"refusal":null}',
    '{"tool_calls":[{"index":0,"function":{"arguments":"{\\"ci"}}]}',
    '{"tool_calls":[{"index":0,"function":{"arguments":"ty\\": \\"Paris\\"}"}}]}',
    '{"tool_calls":[{"index":1,"id":"call_b","type":"function",'
    '"function":{"name":"get_time","arguments":""}}]}',
    '{"tool_calls":[{"index":1,"function":{"arguments":"{\\"tz\\": \\"CET\\"}"}}]}',
    finish="tool_calls",
)
CHAT_ERROR = _chat(
    '{"role":"assistant","content":""}', '{"content":"Hel"}', usage=False, done=False
) + (
    b'data: {"error":{"message":"The server had an error while processing your request.",'
    b'"type":"server_error","param":null,"code":null}}\n\n'
)
CHAT_CUT = _chat('{"role":"assistant","content":""}', '{"content":"Hel"}', usage=False, done=False)

# --- OpenAI Responses API -------------------------------------------------------------

_RESPONSE = (
    '"id":"resp_1","object":"response","created_at":1765000000,"model":"gpt-5",'
    '"parallel_tool_calls":true,"tool_choice":"auto","tools":[],"error":null,'
    '"incomplete_details":null,"instructions":null,"metadata":{},"temperature":1.0,"top_p":1.0'
)
_R_USAGE = (
    '"usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":10},'
    '"output_tokens":20,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":50}'
)


def _responses(*events: str, complete: bool = True) -> bytes:
    out = [
        f'event: response.created\ndata: {{"type":"response.created","sequence_number":0,'
        f'"response":{{{_RESPONSE},"status":"in_progress","output":[],"usage":null}}}}\n\n'
    ]
    seq = 1
    for event in events:
        kind = json.loads(event)["type"]
        body = event.replace('"SEQ"', str(seq))
        out.append(f"event: {kind}\ndata: {body}\n\n")
        seq += 1
    if complete:
        out.append(
            f'event: response.completed\ndata: {{"type":"response.completed",'
            f'"sequence_number":{seq},"response":{{{_RESPONSE},"status":"completed",'
            f'"output":[],{_R_USAGE}}}}}\n\n'
        )
    return "".join(out).encode()


_MSG_ADDED = (
    '{"type":"response.output_item.added","sequence_number":"SEQ","output_index":1,'
    '"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}}'
)
_PART_ADDED = (
    '{"type":"response.content_part.added","sequence_number":"SEQ","item_id":"msg_1",'
    '"output_index":1,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}'
)


def _text_delta(text: str) -> str:
    return (
        '{"type":"response.output_text.delta","sequence_number":"SEQ","item_id":"msg_1",'
        f'"output_index":1,"content_index":0,"delta":{json.dumps(text)},"logprobs":[]}}'
    )


_TEXT_DONE = (
    '{"type":"response.output_text.done","sequence_number":"SEQ","item_id":"msg_1",'
    '"output_index":1,"content_index":0,"text":"Hello world","logprobs":[]}',
    '{"type":"response.output_item.done","sequence_number":"SEQ","output_index":1,"item":'
    '{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":'
    '[{"type":"output_text","text":"Hello world","annotations":[]}]}}',
)
RESPONSES_TEXT = _responses(
    _MSG_ADDED, _PART_ADDED, _text_delta("Hello"), _text_delta(" world"), *_TEXT_DONE
)
RESPONSES_REASONING = _responses(
    '{"type":"response.output_item.added","sequence_number":"SEQ","output_index":0,'
    '"item":{"id":"rs_1","type":"reasoning","summary":[]}}',
    '{"type":"response.reasoning_summary_part.added","sequence_number":"SEQ","item_id":"rs_1",'
    '"output_index":0,"summary_index":0,"part":{"type":"summary_text","text":""}}',
    '{"type":"response.reasoning_summary_text.delta","sequence_number":"SEQ","item_id":"rs_1",'
    '"output_index":0,"summary_index":0,"delta":"**Greeting** "}',
    '{"type":"response.reasoning_summary_text.delta","sequence_number":"SEQ","item_id":"rs_1",'
    '"output_index":0,"summary_index":0,"delta":"the user."}',
    '{"type":"response.reasoning_summary_text.done","sequence_number":"SEQ","item_id":"rs_1",'
    '"output_index":0,"summary_index":0,"text":"**Greeting** the user."}',
    '{"type":"response.output_item.done","sequence_number":"SEQ","output_index":0,"item":'
    '{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text",'
    '"text":"**Greeting** the user."}]}}',
    _MSG_ADDED,
    _PART_ADDED,
    _text_delta("Hello"),
    _text_delta(" world"),
    '{"type":"response.output_text.annotation.added","sequence_number":"SEQ","item_id":"msg_1",'
    '"output_index":1,"content_index":0,"annotation_index":0,"annotation":{"type":"url_citation",'
    '"start_index":0,"end_index":5,"url":"https://example.com/hello","title":"Hello"}}',
    *_TEXT_DONE,
)


def _call(n: int, call_id: str, name: str, pieces: list[str]) -> list[str]:
    whole = "".join(pieces)
    item = f'"id":"fc_{n}","type":"function_call","call_id":"{call_id}","name":"{name}"'
    return [
        '{"type":"response.output_item.added","sequence_number":"SEQ",'
        f'"output_index":{n},"item":{{{item},"arguments":"","status":"in_progress"}}}}',
        *(
            '{"type":"response.function_call_arguments.delta","sequence_number":"SEQ",'
            f'"item_id":"fc_{n}","output_index":{n},"delta":{json.dumps(piece)}}}'
            for piece in pieces
        ),
        '{"type":"response.function_call_arguments.done","sequence_number":"SEQ",'
        f'"item_id":"fc_{n}","output_index":{n},"arguments":{json.dumps(whole)}}}',
        '{"type":"response.output_item.done","sequence_number":"SEQ",'
        f'"output_index":{n},"item":{{{item},"arguments":{json.dumps(whole)},'
        '"status":"completed"}}',
    ]


RESPONSES_TOOLS = _responses(
    *_call(0, "call_a", "get_weather", ['{"ci', 'ty": "Paris"}']),
    *_call(1, "call_b", "get_time", ['{"tz": "CET"}']),
)
RESPONSES_ERROR = _responses(
    _MSG_ADDED,
    _PART_ADDED,
    _text_delta("Hel"),
    '{"type":"error","sequence_number":"SEQ","code":"server_error",'
    '"message":"The model failed mid-stream.","param":null}',
    complete=False,
)
RESPONSES_CUT = _responses(_MSG_ADDED, _PART_ADDED, _text_delta("Hel"), complete=False)

# --- Anthropic Messages ---------------------------------------------------------------


def _anthropic(*events: str, stop: str | None = "end_turn", end: bool = True) -> bytes:
    out = [
        'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_01",'
        '"type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5",'
        '"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,'
        '"cache_creation_input_tokens":0,"cache_read_input_tokens":10,"output_tokens":1}}}\n\n',
    ]
    for event in events:
        kind = json.loads(event)["type"]
        out.append(f"event: {kind}\ndata: {event}\n\n")
    if end:
        out.append(
            'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
            f'"{stop}","stop_sequence":null}},"usage":{{"output_tokens":42}}}}\n\n'
            'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        )
    return "".join(out).encode()


def _block_start(index: int, block: str) -> str:
    return f'{{"type":"content_block_start","index":{index},"content_block":{block}}}'


def _block_delta(index: int, delta: str) -> str:
    return f'{{"type":"content_block_delta","index":{index},"delta":{delta}}}'


def _block_stop(index: int) -> str:
    return f'{{"type":"content_block_stop","index":{index}}}'


def _text(index: int, text: str) -> str:
    return _block_delta(index, f'{{"type":"text_delta","text":{json.dumps(text)}}}')


_PING = '{"type": "ping"}'
ANTHROPIC_TEXT = _anthropic(
    _block_start(0, '{"type":"text","text":""}'),
    _PING,
    _text(0, "Hello"),
    _text(0, " world"),
    _block_stop(0),
)
ANTHROPIC_REASONING = _anthropic(
    _block_start(0, '{"type":"thinking","thinking":"","signature":""}'),
    _block_delta(0, '{"type":"thinking_delta","thinking":"The user"}'),
    _block_delta(0, '{"type":"thinking_delta","thinking":" greets me."}'),
    _block_delta(0, '{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA"}'),
    _block_stop(0),
    _block_start(1, '{"type":"text","text":""}'),
    _text(1, "Hi!"),
    _block_stop(1),
)
ANTHROPIC_TOOLS = _anthropic(
    _block_start(0, '{"type":"text","text":""}'),
    _text(0, "Checking."),
    _block_stop(0),
    _block_start(1, '{"type":"tool_use","id":"toolu_a","name":"get_weather","input":{}}'),
    _block_delta(1, '{"type":"input_json_delta","partial_json":""}'),
    _block_delta(1, '{"type":"input_json_delta","partial_json":"{\\"ci"}'),
    _block_delta(1, '{"type":"input_json_delta","partial_json":"ty\\": \\"Paris\\"}"}'),
    _block_stop(1),
    _block_start(2, '{"type":"tool_use","id":"toolu_b","name":"get_time","input":{}}'),
    _block_delta(2, '{"type":"input_json_delta","partial_json":"{\\"tz\\": \\"CET\\"}"}'),
    _block_stop(2),
    stop="tool_use",
)
ANTHROPIC_ERROR = _anthropic(
    _block_start(0, '{"type":"text","text":""}'),
    _text(0, "Hel"),
    end=False,
) + (
    b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
    b'"message":"Overloaded"}}\n\n'
)
ANTHROPIC_CUT = _anthropic(_block_start(0, '{"type":"text","text":""}'), _text(0, "Hel"), end=False)

STREAMS: dict[str, bytes] = {
    "chat-text": CHAT_TEXT,
    "chat-reasoning": CHAT_REASONING,
    "chat-tools": CHAT_TOOLS,
    "chat-error": CHAT_ERROR,
    "chat-cut": CHAT_CUT,
    "responses-text": RESPONSES_TEXT,
    "responses-reasoning": RESPONSES_REASONING,
    "responses-tools": RESPONSES_TOOLS,
    "responses-error": RESPONSES_ERROR,
    "responses-cut": RESPONSES_CUT,
    "anthropic-text": ANTHROPIC_TEXT,
    "anthropic-reasoning": ANTHROPIC_REASONING,
    "anthropic-tools": ANTHROPIC_TOOLS,
    "anthropic-error": ANTHROPIC_ERROR,
    "anthropic-cut": ANTHROPIC_CUT,
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests: list[tuple[str, dict[str, object]]]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        name = self.path.strip("/").split("/")[0]
        self.server.requests.append((self.path, body))  # type: ignore[attr-defined]
        dropped = name.endswith("-dropped")
        stream = STREAMS.get(name.removesuffix("-dropped"))
        if stream is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        if dropped:
            self.send_header("connection", "close")
        self.end_headers()
        # One HTTP chunk per SSE event, as the providers flush them.
        for event in stream.split(b"\n\n"):
            if event:
                data = event + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
        if dropped:
            self.close_connection = True
            return  # no last chunk: the body is cut
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@contextmanager
def provider_server() -> Iterator[tuple[str, list[tuple[str, dict[str, object]]]]]:
    """Run the replaying server; yield its root URL and the requests it received."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    requests: list[tuple[str, dict[str, object]]] = []
    server.requests = requests  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="provider-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
