import { flushSync } from "svelte";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { abortable, Loader } from "../src/lib/loader.svelte";

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

function setup(cache?: Map<string, unknown>) {
  const state = $state({ key: "a" as string | null });
  const calls: string[] = [];
  const aborted: string[] = [];
  let loader!: Loader<string>;
  const stop = $effect.root(() => {
    loader = new Loader<string>(
      () => state.key,
      (signal) => {
        const k = state.key!;
        calls.push(k);
        signal.addEventListener("abort", () => aborted.push(k));
        return k === "bad" ? Promise.reject(new Error("no such endpoint")) : Promise.resolve(`data:${k}`);
      },
      { delay: 10, cache },
    );
  });
  flushSync();
  return { state, calls, aborted, loader: () => loader, stop };
}

describe("Loader", () => {
  it("debounces: only the last key of a quick series is fetched", async () => {
    const t = setup();
    t.state.key = "b";
    flushSync();
    t.state.key = "c";
    flushSync();
    await vi.advanceTimersByTimeAsync(20);
    expect(t.calls).toEqual(["c"]);
    expect(t.loader().current).toEqual({ key: "c", data: "data:c" });
    expect(t.loader().for("c")).toBe("data:c");
    expect(t.loader().for("b")).toBeNull();
    t.stop();
  });
  it("keeps the error message and clears it on success", async () => {
    const t = setup();
    t.state.key = "bad";
    flushSync();
    await vi.advanceTimersByTimeAsync(20);
    expect(t.loader().error).toBe("no such endpoint");
    expect(t.loader().current).toBeNull();
    t.state.key = "ok";
    flushSync();
    await vi.advanceTimersByTimeAsync(20);
    expect(t.loader().error).toBe("");
    t.stop();
  });
  it("answers from the cache without fetching; a null key clears", async () => {
    const cache = new Map<string, unknown>([["z", "cached"]]);
    const t = setup(cache);
    await vi.advanceTimersByTimeAsync(20);
    expect(cache.get("a")).toBe("data:a");
    t.state.key = "z";
    flushSync();
    expect(t.loader().for("z")).toBe("cached");
    expect(t.calls).toEqual(["a"]);
    t.state.key = null;
    flushSync();
    expect(t.loader().current).toBeNull();
    t.stop();
  });
  it("aborts an in-flight request when the key changes", async () => {
    const t = setup();
    await vi.advanceTimersByTimeAsync(11); // "a" started
    t.state.key = "b";
    flushSync();
    expect(t.aborted).toEqual(["a"]);
    t.stop();
  });
});

describe("Loader never shows an older selection's answer as the current one", () => {
  function slow() {
    // each fetch resolves when the test says so, in any order
    const state = $state({ key: "a" as string | null });
    const pending = new Map<string, (v: string) => void>();
    let loader!: Loader<string>;
    const stop = $effect.root(() => {
      loader = new Loader<string>(
        () => state.key,
        () => {
          const k = state.key!;
          return new Promise<string>((res) => pending.set(k, res));
        },
        { delay: 5 },
      );
    });
    flushSync();
    return { state, pending, loader: () => loader, stop };
  }
  it("while the new key loads, current is null and the old answer is only `last` (stale)", async () => {
    const t = slow();
    await vi.advanceTimersByTimeAsync(10);
    t.pending.get("a")!("data:a");
    await vi.advanceTimersByTimeAsync(0);
    expect(t.loader().current?.data).toBe("data:a");
    expect(t.loader().stale).toBe(false);
    t.state.key = "b";
    flushSync();
    expect(t.loader().current).toBeNull();
    expect(t.loader().last?.data).toBe("data:a");
    expect(t.loader().stale).toBe(true);
    expect(t.loader().loading).toBe(true);
    t.stop();
  });
  it("an answer for an old key arriving late does not overwrite the newer one", async () => {
    const t = slow();
    await vi.advanceTimersByTimeAsync(10); // "a" in flight
    t.state.key = "b";
    flushSync();
    await vi.advanceTimersByTimeAsync(10); // "b" in flight
    t.pending.get("b")!("data:b");
    await vi.advanceTimersByTimeAsync(0);
    t.pending.get("a")!("data:a"); // the old one answers last
    await vi.advanceTimersByTimeAsync(0);
    expect(t.loader().current?.data).toBe("data:b");
    expect(t.loader().last?.data).toBe("data:b");
    expect(t.loader().loading).toBe(false);
    t.stop();
  });
});

describe("abortable (FeatureList's and FeaturePage's one request)", () => {
  function request() {
    // resolves or rejects when the test says so; records the signal it was given
    let settle!: { res: (v: string) => void; rej: (e: Error) => void };
    let signal!: AbortSignal;
    const got: string[] = [];
    const errors: string[] = [];
    const abort = abortable<string>(
      (s) => {
        signal = s;
        return new Promise((res, rej) => (settle = { res, rej }));
      },
      (d) => got.push(d),
      (m) => errors.push(m),
    );
    return { settle, signal, got, errors, abort };
  }
  it("starts at once and hands over the answer", async () => {
    const t = request();
    expect(t.signal.aborted).toBe(false);
    t.settle.res("rows");
    await vi.advanceTimersByTimeAsync(0);
    expect(t.got).toEqual(["rows"]);
    expect(t.errors).toEqual([]);
  });
  it("hands over a failure's message", async () => {
    const t = request();
    t.settle.rej(new Error("fts5: syntax error"));
    await vi.advanceTimersByTimeAsync(0);
    expect(t.errors).toEqual(["fts5: syntax error"]);
    expect(t.got).toEqual([]);
  });
  it("once aborted: the signal says so; neither a late answer nor the AbortError is handed over", async () => {
    const a = request();
    a.abort();
    expect(a.signal.aborted).toBe(true);
    a.settle.res("old rows");
    const b = request();
    b.abort();
    b.settle.rej(Object.assign(new Error("aborted"), { name: "AbortError" }));
    await vi.advanceTimersByTimeAsync(0);
    expect([a.got, a.errors, b.got, b.errors]).toEqual([[], [], [], []]);
  });
});
