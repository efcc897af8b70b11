import { describe, expect, it } from "vitest";
import type { SseEvent } from "../src/lib/sse";
import { LongJob } from "../src/lib/job.svelte";

type OnEvent = (ev: SseEvent) => void;

/** A client whose stream plays `events` (one per microtask), then resolves; an abort rejects it. */
function client(events: SseEvent[], seen: { bodies: unknown[] }) {
  return {
    async stream(_path: string, body: unknown, on: OnEvent, signal?: AbortSignal) {
      seen.bodies.push(body);
      for (const ev of events) {
        await Promise.resolve();
        if (signal?.aborted) throw Object.assign(new Error("aborted"), { name: "AbortError" });
        on(ev);
      }
    },
  };
}

const ev = (event: string, data: unknown): SseEvent => ({ event, data: JSON.stringify(data) });

describe("LongJob", () => {
  it("keeps the estimate, progress and result of a run", async () => {
    const seen = { bodies: [] as unknown[] };
    const events = [ev("estimate", { forwards: 9, seconds: 1.5, cached: false }), ev("progress", { done: 3, total: 9 }), ev("result", { x: 1 })];
    const job = new LongJob<{ x: number }>(client(events, seen), "/api/why/x");
    const done = job.run({ a: 1 });
    expect(job.running).toBe(true);
    await done;
    expect(seen.bodies).toEqual([{ a: 1 }]);
    expect(job.estimate).toEqual({ forwards: 9, seconds: 1.5, cached: false });
    expect(job.progress).toEqual({ done: 3, total: 9 });
    expect(job.result).toEqual({ x: 1 });
    expect(job.running).toBe(false);
    expect(job.error).toBe("");
  });

  it("shows an error event, and keeps the previous result", async () => {
    const seen = { bodies: [] as unknown[] };
    const job = new LongJob<{ x: number }>(client([ev("result", { x: 1 })], seen), "/p");
    await job.run({});
    (job as unknown as { client: unknown }).client = client([ev("error", { detail: "target 'zz' has no tokens" })], seen);
    await job.run({});
    expect(job.error).toBe("target 'zz' has no tokens");
    expect(job.result).toEqual({ x: 1 });
  });

  it("drops a cancelled run's late events and says nothing of the abort", async () => {
    const seen = { bodies: [] as unknown[] };
    const events = [ev("estimate", { forwards: 9, seconds: 1, cached: false }), ev("progress", { done: 1, total: 9 }), ev("result", { x: 2 })];
    const job = new LongJob<{ x: number }>(client(events, seen), "/p");
    const done = job.run({});
    await Promise.resolve();
    job.cancel();
    await done;
    expect(job.result).toBeNull();
    expect(job.running).toBe(false);
    expect(job.error).toBe("");
  });

  it("a new run replaces one still streaming", async () => {
    const seen = { bodies: [] as unknown[] };
    const job = new LongJob<{ x: number }>(client([ev("progress", { done: 1, total: 2 }), ev("result", { x: 1 })], seen), "/p");
    const first = job.run({ n: 1 });
    (job as unknown as { client: unknown }).client = client([ev("result", { x: 2 })], seen);
    const second = job.run({ n: 2 });
    await Promise.all([first, second]);
    expect(job.result).toEqual({ x: 2 });
    expect(job.running).toBe(false);
  });
});
