import { describe, expect, it } from "vitest";
import { Api } from "../src/lib/api";
import { classAt, classColour, fetchCrosscoder, fetchPair, featuresOfClass, MAX_PAIR, normBars, pairTip, parseFeatureIds, type CrosscoderPair, type NormClass } from "../src/lib/features";

// the server's classes with its default thresholds (features.crosscoder BASE_ONLY, SHARED, CHAT_ONLY)
const CLASSES: NormClass[] = [
  { name: "base-only", count: 2, lo: 0, hi: 0.1 },
  { name: "shared", count: 3, lo: 0.4, hi: 0.6 },
  { name: "chat-only", count: 1, lo: 0.9, hi: 1 },
  { name: "other", count: 4, lo: 0.1, hi: 0.9 },
  { name: "dead", count: 1, lo: null, hi: null },
];

describe("the crosscoder page's logic", () => {
  it("classes a relative norm as the server does (features.crosscoder.decoder_norm_classes)", () => {
    const r = [0, 0.099, 0.1, 0.4, 0.5, 0.6, 0.61, 0.9, 0.901, 1, null];
    expect(r.map((v) => classAt(v, CLASSES))).toEqual(["base-only", "base-only", "other", "shared", "shared", "shared", "other", "other", "chat-only", "chat-only", "dead"]);
    expect(classColour("shared")).not.toBe(classColour("base-only"));
    expect(classColour("nonesuch")).toBe(classColour("other"));
  });

  it("draws one bar per bin over [0, 1], coloured by its middle's class, the tallest full height", () => {
    const edges = Array.from({ length: 21 }, (_, i) => i / 20);
    const counts = Array.from({ length: 20 }, (_, i) => (i === 10 ? 8 : i === 0 ? 2 : i === 19 ? 4 : 0));
    const bars = normBars(edges, counts, CLASSES, 200, 50, 10, 5);
    expect(bars).toHaveLength(20);
    expect(bars[0]).toMatchObject({ x: 10, count: 2, cls: "base-only", h: 12.5, y: 42.5 });
    expect(bars[10]).toMatchObject({ x: 110, count: 8, cls: "shared", h: 50, y: 5 });
    expect(bars[19]).toMatchObject({ count: 4, cls: "chat-only" });
    expect(bars[5].cls).toBe("other");
    expect(bars[1].h).toBe(0);
    expect(normBars(edges, new Array(20).fill(0), CLASSES, 200, 50).every((b) => b.h === 0)).toBe(true);
  });

  it("lists a class's features by relative norm, dead ones last", () => {
    const s = { class_of: [1, 0, 1, 4, 3, 1], relative_norm: [0.55, 0.02, 0.41, null, 0.7, 0.41] };
    expect(featuresOfClass(s, 1)).toEqual([2, 5, 0]);
    expect(featuresOfClass(s, null)).toEqual([1, 2, 5, 0, 4, 3]);
    expect(featuresOfClass(s, null, 2)).toEqual([1, 2]);
    expect(featuresOfClass(s, 2)).toEqual([]);
  });

  it("reads typed feature ids: valid ones, once each, at most MAX_PAIR", () => {
    expect(parseFeatureIds("3, 17 42;3 -1 2.5 x 100", 50)).toEqual([3, 17, 42]);
    expect(parseFeatureIds(Array.from({ length: 20 }, (_, i) => i).join(" "), 50)).toHaveLength(MAX_PAIR);
    expect(parseFeatureIds("", 5)).toEqual([]);
  });

  it("a token's tooltip: id, activation, both contributions and the bias, both norms", () => {
    const p: CrosscoderPair = {
      tokens: [
        { id: 1, label: "<s>", template: true },
        { id: 412, label: "▁Paris", template: false },
      ],
      features: [7],
      activation: [[0, 3.25]],
      base: [[-0.5, 1.5]],
      chat: [[0.25, 0.125]],
      bias: [-0.0625],
      code: [2],
      threshold: null,
      norms: { base: [80, 12.5], chat: [79, 13] },
      relative_norm: [0.5],
      class_of: [1],
    };
    const lines = pairTip(p, 0, 1);
    expect(lines[0]).toContain("id 412");
    expect(lines[1]).toBe("feature #7: activation 3.25");
    expect(lines[2]).toBe("pre-activation: base 1.5 + chat 0.125 + bias -0.0625");
    expect(lines[3]).toBe("‖x‖ base 12.5 · chat 13");
  });

  it("calls both routes with the source id encoded", async () => {
    const seen: string[] = [];
    const bodies: unknown[] = [];
    const api = new Api("http://x", async (url, init) => {
      seen.push(`${init?.method ?? "GET"} ${url}`);
      if (typeof init?.body === "string") bodies.push(JSON.parse(init.body));
      return new Response("{}", { status: 200, headers: { "content-type": "application/json" } });
    });
    await fetchCrosscoder(api, "my cc");
    await fetchPair(api, "my cc", { text: "hi<eot>yo", features: [3, 1] });
    expect(seen).toEqual(["GET http://x/api/features/my%20cc/crosscoder", "POST http://x/api/features/my%20cc/pair"]);
    expect(bodies).toEqual([{ text: "hi<eot>yo", features: [3, 1] }]);
  });
});
