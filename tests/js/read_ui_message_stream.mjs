import { readFileSync } from "node:fs";
import { parseJsonEventStream, readUIMessageStream, uiMessageChunkSchema } from "ai";

const bytes = readFileSync(process.argv[2]);
const body = new ReadableStream({
  start(controller) {
    // Cut the bytes anywhere: the reader must not care where the network split them.
    for (let i = 0; i < bytes.length; i += 7) controller.enqueue(bytes.subarray(i, i + 7));
    controller.close();
  },
});
const chunks = parseJsonEventStream({ stream: body, schema: uiMessageChunkSchema }).pipeThrough(
  new TransformStream({
    transform(result, controller) {
      if (!result.success) throw result.error;
      controller.enqueue(result.value);
    },
  }),
);
let last;
const errors = [];
try {
  for await (const message of readUIMessageStream({
    stream: chunks,
    onError: (error) => errors.push(String(error)),
    terminateOnError: true,
  })) {
    last = message;
  }
} catch (error) {
  errors.push(String(error));
}
console.log(JSON.stringify({ message: last, errors }));
