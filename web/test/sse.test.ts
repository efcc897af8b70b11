import { describe, expect, it } from "vitest";
import { readSse, SseParser, type SseEvent } from "../src/lib/sse";

const STREAM =
  'event: start\ndata: {"prompt_tokens": ["a"]}\n\n' +
  'event: token\ndata: {"index": 0, "token": "\\n"}\n\n' +
  ": a comment\n\n" +
  'event: done\ndata: {"trace_id": "x"}\n\n';

function parseAll(chunks: string[]): SseEvent[] {
  const p = new SseParser();
  const out = chunks.flatMap((c) => p.feed(c));
  return [...out, ...p.end()];
}

describe("SseParser", () => {
  const want = [
    { event: "start", data: '{"prompt_tokens": ["a"]}' },
    { event: "token", data: '{"index": 0, "token": "\\n"}' },
    { event: "done", data: '{"trace_id": "x"}' },
  ];
  it("parses a whole stream", () => {
    expect(parseAll([STREAM])).toEqual(want);
  });
  it.each([1, 2, 3, 7, 13])("parses the stream in chunks of %i chars", (n) => {
    const chunks: string[] = [];
    for (let i = 0; i < STREAM.length; i += n) chunks.push(STREAM.slice(i, i + n));
    expect(parseAll(chunks)).toEqual(want);
  });
  it("handles CRLF, also split between chunks", () => {
    const s = STREAM.replace(/\n/g, "\r\n");
    expect(parseAll([s])).toEqual(want);
    const chunks: string[] = [];
    for (let i = 0; i < s.length; i += 2) chunks.push(s.slice(i, i + 2));
    expect(parseAll(chunks)).toEqual(want);
  });
  it("handles bare CR line ends", () => {
    expect(parseAll(["event: a\rdata: 1\r\r"])).toEqual([{ event: "a", data: "1" }]);
  });
  it.each([
    ["data: x\n\n", [{ event: "message", data: "x" }]],
    ["data: a\ndata: b\n\n", [{ event: "message", data: "a\nb" }]],
    ["data:nospace\n\n", [{ event: "message", data: "nospace" }]],
    ["event: e\n\n", []],
    ["id: 7\ndata: x\n\n", [{ event: "message", data: "x", id: "7" }]],
    ["data: tail-without-blank-line", [{ event: "message", data: "tail-without-blank-line" }]],
  ])("%j", (s, events) => {
    expect(parseAll([s])).toEqual(events);
  });
});

describe("readSse", () => {
  it("reads a fetch Response with multi-byte characters split across chunks", async () => {
    const bytes = new TextEncoder().encode('event: token\ndata: {"token": "é😀"}\n\n');
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < bytes.length; i += 3) c.enqueue(bytes.slice(i, i + 3));
        c.close();
      },
    });
    const got: SseEvent[] = [];
    await readSse(new Response(body), (e) => got.push(e));
    expect(got).toEqual([{ event: "token", data: '{"token": "é😀"}' }]);
  });
});
