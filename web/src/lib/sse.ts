/** A server-sent-events parser for fetch() streams (EventSource cannot POST). */

export interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

/**
 * Incremental parser: feed it text chunks as they arrive (split anywhere, even inside a line or a
 * CRLF pair); it returns the events completed so far. Follows the WHATWG rules that matter here:
 * `event:`, multi-line `data:` joined with "\n", `id:`, comments (`:`), default event "message",
 * and blocks without data are dropped.
 */
export class SseParser {
  private buf = "";
  private event = "";
  private data: string[] = [];
  private id: string | undefined;
  private pendingCR = false;

  feed(chunk: string): SseEvent[] {
    const out: SseEvent[] = [];
    let text = chunk;
    if (this.pendingCR) {
      // a "\r" ended the previous chunk; a "\n" starting this one belongs to it
      if (text.startsWith("\n")) text = text.slice(1);
      this.pendingCR = false;
    }
    this.buf += text;
    let start = 0;
    for (let i = 0; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (c !== "\n" && c !== "\r") continue;
      const line = this.buf.slice(start, i);
      if (c === "\r") {
        if (i + 1 < this.buf.length) {
          if (this.buf[i + 1] === "\n") i++;
        } else {
          this.pendingCR = true;
        }
      }
      start = i + 1;
      this.line(line, out);
    }
    this.buf = this.buf.slice(start);
    return out;
  }

  /** Flush at end of stream: a final block without its blank line is still dispatched. */
  end(): SseEvent[] {
    const out: SseEvent[] = [];
    if (this.buf !== "") this.line(this.buf, out);
    this.buf = "";
    this.line("", out);
    return out;
  }

  private line(line: string, out: SseEvent[]): void {
    if (line === "") {
      if (this.data.length > 0) {
        const ev: SseEvent = { event: this.event || "message", data: this.data.join("\n") };
        if (this.id !== undefined) ev.id = this.id;
        out.push(ev);
      }
      this.event = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id") this.id = value;
  }
}

/** Read a fetch Response body as SSE, calling onEvent for each event. Resolves at end of stream. */
export async function readSse(resp: Response, onEvent: (ev: SseEvent) => void): Promise<void> {
  if (!resp.body) throw new Error("the response has no body");
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    for (const ev of parser.feed(decoder.decode(value, { stream: true }))) onEvent(ev);
  }
  for (const ev of parser.feed(decoder.decode())) onEvent(ev);
  for (const ev of parser.end()) onEvent(ev);
}
