import { flushSync } from "svelte";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Api } from "../src/lib/api";
import { Explorer } from "../src/lib/explore.svelte";
import type { MetricData, ModelInfo, Trace } from "../src/lib/types";

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

const MODEL = { name: "tiny", n_layers: 2, n_heads: 4, d_model: 8, d_mlp: 16 } as unknown as ModelInfo;

function fakeTrace(id: string, text: string): Trace {
  const tokens = text.split(" ");
  const T = tokens.length;
  return {
    id,
    text,
    tokens,
    token_ids: tokens.map((_, i) => 100 + i),
    offsets: [],
    topk_ids: tokens.map((_, i) => [101 + i, 7]),
    topk_probs: tokens.map(() => [0.75, 0.25]),
    topk_tokens: tokens.map((_, i) => [tokens[i + 1] ?? "x", "y"]),
    entropy: tokens.map(() => 0.5),
    loss: tokens.map((_, i) => (i < T - 1 ? 0.3 : null)),
    true_prob: tokens.map((_, i) => (i < T - 1 ? 0.75 : null)),
    norms: {},
    attn_entropy: [],
    model: MODEL,
    chat: false,
  } as unknown as Trace;
}

function fakeClient(stored: Record<string, Trace>) {
  const asked: string[] = [];
  const client = {
    trace: async (text: string) => fakeTrace(`t${text.length}`, text),
    getTrace: async (id: string) => {
      if (!stored[id]) throw new Error("404 no such trace");
      return stored[id];
    },
    components: async () => [],
    samples: async () => [],
    metric: async (id: string, q: Record<string, unknown>): Promise<MetricData> => {
      asked.push(`${id}:${q.name}:${q.with ?? ""}`);
      const T = stored[id]?.tokens.length ?? 3;
      return { values: Array.from({ length: T }, (_, i) => i), scale: { min: 0, max: T - 1, kind: "sequential", left_out: [] } } as unknown as MetricData;
    },
  } as unknown as Api;
  return { client, asked };
}

function setup(stored: Record<string, Trace> = {}) {
  const { client, asked } = fakeClient(stored);
  let ex!: Explorer;
  const stop = $effect.root(() => {
    ex = new Explorer(
      () => client,
      () => MODEL,
    );
  });
  flushSync();
  return { ex, asked, stop };
}

const A = fakeTrace("aaaaaaaa", "one two three four");
const B = fakeTrace("bbbbbbbb", "five six");

describe("Explorer", () => {
  it("opens stored traces in new tabs; switching keeps the selection inside the new text", async () => {
    const { ex, stop } = setup({ [A.id]: A, [B.id]: B });
    await ex.loadTrace(A.id);
    ex.selected = 3;
    await ex.loadTrace(B.id);
    expect(ex.tabs.map((t) => t.trace.id)).toEqual([A.id, B.id]);
    expect(ex.activeTab).toBe(1);
    expect(ex.otherTab).toBe(0); // the previous tab is the one compared
    expect(ex.text).toBe(B.text);
    expect(ex.selected).toBe(0);
    ex.switchTab(0);
    ex.selected = 3;
    ex.switchTab(1);
    expect(ex.selected).toBe(1); // clamped to B's two tokens
    ex.closeTab(1);
    expect(ex.tabs.length).toBe(1);
    expect([ex.activeTab, ex.otherTab]).toEqual([0, -1]);
    expect(ex.text).toBe(A.text);
    stop();
  });

  it("side by side: the other tab's values come with the active one's, in one request", async () => {
    const { ex, asked, stop } = setup({ [A.id]: A, [B.id]: B });
    await ex.loadTrace(A.id);
    await ex.loadTrace(B.id);
    ex.toggleSide();
    flushSync();
    expect(ex.other?.id).toBe(A.id);
    await vi.advanceTimersByTimeAsync(100);
    expect(asked.at(-1)).toBe(`${B.id}:loss:${A.id}`);
    expect(ex.values).toEqual([0, 1]);
    stop();
  });

  it("keys step the token, layer and head within the model, and ignore text fields", async () => {
    const { ex, stop } = setup({ [A.id]: A });
    const key = (k: string, target: unknown = null) => ex.key({ key: k, target, altKey: false, ctrlKey: false, metaKey: false } as unknown as KeyboardEvent);
    expect(key("ArrowRight")).toBe(false); // nothing open yet
    await ex.loadTrace(A.id);
    expect(key("ArrowRight")).toBe(true);
    expect(ex.selected).toBe(1);
    key("]");
    key("]");
    key("]");
    expect(ex.layer).toBe(1); // two layers
    key("}");
    expect(ex.head).toBe(1);
    expect(key("ArrowRight", { tagName: "TEXTAREA" })).toBe(false);
    expect(ex.selected).toBe(1);
    stop();
  });

  it("restores a link: its tabs and controls, and names a trace that is gone", async () => {
    const { ex, stop } = setup({ [A.id]: A, [B.id]: B });
    await ex.restore({ traces: [A.id, "cccccccc", B.id], tab: 2, other: 0, sideBySide: true, token: 9, layer: 7, metric: "entropy", scale: "nope" });
    expect(ex.tabs.map((t) => t.trace.id)).toEqual([A.id, B.id]);
    expect([ex.activeTab, ex.otherTab, ex.sideBySide]).toEqual([1, 0, true]);
    expect(ex.selected).toBe(1); // clamped to B
    expect(ex.layer).toBe(1);
    expect(ex.metric).toBe("entropy");
    expect(ex.scale).toBe("raw"); // unknown: left as it was
    expect(ex.error).toContain("cccccccc");
    expect(ex.viewState()).toMatchObject({ traces: [A.id, B.id], tab: 1, other: 0, sideBySide: true, token: 1, layer: 1 });
    stop();
  });

  it("edited colour limits last until what is coloured changes", async () => {
    const { ex, stop } = setup({ [A.id]: A });
    await ex.loadTrace(A.id);
    await vi.advanceTimersByTimeAsync(100);
    ex.editLimit("max", 1);
    flushSync();
    expect(ex.limits?.max).toBe(1);
    ex.metric = "entropy";
    flushSync();
    expect(ex.edited).toEqual({});
    stop();
  });

  it("a text that fails the form's checks is not sent and says why", () => {
    const { ex, stop } = setup();
    ex.text = "";
    ex.run();
    expect(ex.error).not.toBe("");
    expect(ex.running).toBe(false);
    stop();
  });
});
