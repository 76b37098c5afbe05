// useChat's own transport (DefaultChatTransport from the `ai` package) against a StreamApp:
// send a message, cut the connection mid-answer, resume, read the whole answer.
// argv: base URL, chat id, prompt, chunks to read before the cut.
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [base, chatId, prompt, cutAfterText] = process.argv.slice(2);
const cutAfter = Number(cutAfterText);
const say = (data) => console.log(JSON.stringify(data));
const transport = new DefaultChatTransport({
  api: `${base}/chat`,
  headers: { authorization: "Bearer alice" },
});
const messages = [{ id: "user-1", role: "user", parts: [{ type: "text", text: prompt }] }];

// 1. The first request, cut after `cutAfter` chunks (what chat.stop() or a lost
//    network does to the fetch; the server's session goes on).
const controller = new AbortController();
const first = await transport.sendMessages({
  chatId,
  messages,
  trigger: "submit-message",
  messageId: undefined,
  abortSignal: controller.signal,
});
const reader = first.getReader();
const before = [];
while (before.length < cutAfter) {
  const { value, done } = await reader.read();
  if (done) break;
  before.push(value);
}
controller.abort();
await reader.read().catch(() => undefined);
say({ cut: before.length });

// 2. Resume as useChat({ resume: true }) does: GET {api}/{chatId}/stream, a full replay.
const resumed = await transport.reconnectToStream({ chatId });
if (resumed === null) {
  say({ resumed: null });
  process.exit(0);
}
const chunks = [];
const tapped = resumed.pipeThrough(
  new TransformStream({
    transform(chunk, controller) {
      chunks.push(chunk);
      // The replay has caught up with the cut: the test lets the agent go on.
      if (chunks.length === before.length) say({ replayed: chunks.length });
      controller.enqueue(chunk);
    },
  }),
);
let message;
const errors = [];
for await (const built of readUIMessageStream({
  stream: tapped,
  onError: (error) => errors.push(String(error)),
  terminateOnError: true,
})) {
  message = built;
}
// 3. Once the answer ended, nothing is left to resume: 204, which the transport reads as null.
const after = await transport.reconnectToStream({ chatId });
say({ before, chunks, message, errors, after });
