import { describe, expect, it } from "vitest";
import { Api } from "../src/lib/api";
import { luminance, parseRgb } from "../src/lib/color";
import {
  displayTokens,
  fetchActivations,
  fetchDocument,
  fetchFeature,
  fetchList,
  fetchSources,
  fmtDensity,
  fmtQuantile,
  histBars,
  labelHex,
  paintToken,
  pickerSources,
  pickSlot,
  placeWindow,
  rankRows,
  saveLabel,
  slotColor,
  tokensText,
  tokenTip,
  type FeatureSourceInfo,
  valueSpan,
} from "../src/lib/features";
import { decodeViewState, encodeViewState, type ViewState } from "../src/lib/viewstate";

const rgb = (s: string) => parseRgb(s);

describe("token labels as Explore shows them", () => {
  it("a label's bytes: text as UTF-8, <0xNN> markers back to their byte", () => {
    expect(labelHex(" def")).toBe("20646566");
    expect(labelHex("\n")).toBe("0a");
    expect(labelHex("<0xE6><0x97>")).toBe("e697");
    expect(labelHex(" <0xE6>")).toBe("20e6");
    expect(labelHex("é")).toBe("c3a9");
    // a byte below 0x80 is always a whole character: "<0x41>" is literal text, never a marker
    expect(labelHex("<0x41>")).toBe(Array.from(new TextEncoder().encode("<0x41>"), (b) => b.toString(16).padStart(2, "0")).join(""));
  });
  it("byte pieces split over tokens show their character once, on the first piece", () => {
    // 日 = E6 97 A5, split over two tokens; then a space-led word and a newline-led indent
    const m = displayTokens(["<0xE6><0x97>", "<0xA5>", " ok", "\n    x"]);
    expect(m.map((t) => t.label)).toEqual(["日", "", " ok", "\n    x"]);
    expect(m.map((t) => t.byte)).toEqual([true, true, false, false]);
    expect(m[1].cont).toBe(true);
    expect(tokensText(["<0xE6><0x97>", "<0xA5>", " ok", "\n    x"])).toBe("日 ok\n    x");
  });
  it("a byte with no whole character keeps its marker", () => {
    const m = displayTokens(["a", "<0xE6>", "b"]);
    expect(m[1].label).toBe("<0xE6>");
    expect(m[1].byte).toBe(true);
    expect(tokensText(["a", "<0xE6>", "b"])).toBe("ab"); // no U+FFFD invented
  });
  it("a document's values: the stored window placed at its start, null elsewhere", () => {
    expect(placeWindow(6, 2, [1, 0, -2])).toEqual([null, null, 1, 0, -2, null]);
    expect(placeWindow(3, 2, [1, 5])).toEqual([null, null, 1]); // cut at the document's end
  });
});

describe("two features at once: two distinct colours, negative values visible", () => {
  const S = { min: -2, max: 2 };
  it("slot A: red for positive, blue for negative; slot B: green for positive, purple for negative", () => {
    const [ar, ag, ab] = rgb(slotColor(0, 2, S));
    expect(ar).toBeGreaterThan(ab + 50);
    expect(ar).toBeGreaterThan(ag + 50);
    const [nr, , nb] = rgb(slotColor(0, -2, S));
    expect(nb).toBeGreaterThan(nr + 50);
    const [br, bg, bb] = rgb(slotColor(1, 2, S));
    expect(bg).toBeGreaterThan(br + 20);
    expect(bg).toBeGreaterThan(bb + 20);
    const [pr, pg, pb] = rgb(slotColor(1, -2, S));
    expect(pr).toBeGreaterThan(pg + 20);
    expect(pb).toBeGreaterThan(pg + 20);
    // the same value in the two slots never looks the same
    for (const v of [2, 1, -1, -2]) expect(slotColor(0, v, S)).not.toBe(slotColor(1, v, S));
  });
  it("each side is scaled to its own extreme: a small negative next to a large positive still shows", () => {
    // a SiLU neuron: down to about -0.28, up to 50
    const span = { min: -0.26, max: 50 };
    expect(slotColor(0, -0.26, span)).toBe(slotColor(0, -2, S)); // the negative end, fully blue
    expect(slotColor(0, 50, span)).toBe(slotColor(0, 2, S));
    const [r, , b] = rgb(slotColor(0, -0.13, span));
    expect(b).toBeGreaterThan(r + 40);
  });
  it("the span of some values: the most negative and the largest finite ones, 0 when none", () => {
    expect(valueSpan([1, -3, null, Number.NaN, 2, Infinity])).toEqual({ min: -3, max: 2 });
    expect(valueSpan([null, 0])).toEqual({ min: 0, max: 0 });
    expect(valueSpan([0.5, 2])).toEqual({ min: 0, max: 2 });
  });
  it("zero, a missing value or no scale on its side: no colour; a larger |value| is darker", () => {
    for (const slot of [0, 1] as const) {
      expect(slotColor(slot, 0, S)).toBe("");
      expect(slotColor(slot, null, S)).toBe("");
      expect(slotColor(slot, Number.NaN, S)).toBe("");
      expect(slotColor(slot, 1, { min: -1, max: 0 })).toBe("");
      expect(slotColor(slot, -1, { min: 0, max: 1 })).toBe("");
      for (const sign of [1, -1]) expect(luminance(rgb(slotColor(slot, 2 * sign, S)))).toBeLessThan(luminance(rgb(slotColor(slot, 0.7 * sign, S))));
    }
  });
  it("beyond the scale: clamped to its end", () => {
    expect(slotColor(0, 10, S)).toBe(slotColor(0, 2, S));
    expect(slotColor(1, -10, S)).toBe(slotColor(1, -2, S));
  });
  it("a token painted with both: A's background, B's bar, white text on A's dark end", () => {
    const p = paintToken(4, { min: 0, max: 4 }, -1, S);
    expect(p.background).toBe(slotColor(0, 4, { min: 0, max: 4 }));
    expect(p.bar).toBe(slotColor(1, -1, S));
    expect(p.color).toBe("#fff");
    expect(paintToken(0.3, { min: 0, max: 4 }, null, S)).toEqual({ background: slotColor(0, 0.3, { min: 0, max: 4 }), color: "", bar: "" });
    expect(paintToken(null, S, 2, S).background).toBe("");
    expect(paintToken(1, null, 1, undefined)).toEqual({ background: "", color: "", bar: "" });
  });
  it("picking a feature for a slot moves it from the other; picking it again clears it", () => {
    expect(pickSlot([null, null], 0, 5)).toEqual([5, null]);
    expect(pickSlot([5, null], 1, 5)).toEqual([null, 5]);
    expect(pickSlot([5, 7], 0, 5)).toEqual([null, 7]);
    expect(pickSlot([5, 7], 1, 9)).toEqual([5, 9]);
  });
});

describe("ranking and tooltips in words", () => {
  it.each([
    [null, "–"],
    [1, "max"],
    [0.999, "top 0.1%"],
    [0.99995, "top 0.005%"],
    [0.5, "p50"],
    [0.129, "p12"],
    [0, "p0"],
  ])("fmtQuantile(%s) = %s", (q, want) => expect(fmtQuantile(q)).toBe(want));
  it.each([
    [0.0123, "1.23%"],
    [0.5, "50%"],
    [0, "0"],
    [5e-6, "<0.01%"],
  ])("fmtDensity(%s) = %s", (d, want) => expect(fmtDensity(d)).toBe(want));
  it("a token's rows mark the features shown in a slot", () => {
    const rows = rankRows(
      [
        { feature: 5, value: 3.2, quantile: 0.999 },
        { feature: 9, value: -0.5, quantile: null },
        { feature: 2, value: 1, quantile: 0.5 },
      ],
      [9, 2],
    );
    expect(rows).toEqual([
      { feature: 5, value: "3.2", quantile: "top 0.1%", slot: null },
      { feature: 9, value: "-0.5", quantile: "–", slot: 0 },
      { feature: 2, value: "1", quantile: "p50", slot: 1 },
    ]);
    expect(rankRows(undefined, [null, null])).toEqual([]);
  });
  it("a tooltip: position, token (spaces and newlines visible), id, each slot's value and quantile", () => {
    expect(tokenTip(3, " def\n", 1234, [{ slot: 0, feature: 17, value: 2.5, quantile: 0.999 }, { slot: 1, feature: 93, value: -0.25 }])).toEqual([
      "#3 ␣def↵ · id 1234",
      "A #17: 2.5 · top 0.1%",
      "B #93: -0.25",
    ]);
    expect(tokenTip(0, "", undefined, [{ slot: 0, feature: 1, value: null, quantile: null }])).toEqual(["#0 ∅", "A #1: – · –"]);
  });
});

describe("the activation histogram", () => {
  // the database's edges: (0, 1e-4), then 16 per decade (here 4 bins of a decade each for brevity)
  const edges = [0, 1e-4, 1e-3, 1e-2, 1e-1, 1, null];
  it("bars on a log axis; empty end bins left out; a bin from 0 and one to infinity drawn one bin wide", () => {
    const h = histBars(edges, [0, 2, 0, 8, 4, 1], 100, 50)!;
    expect(h.bars.map((b) => b.count)).toEqual([2, 8, 4, 1]);
    // bins 1..5 drawn: 1e-4 .. 1 and one more decade for the open last bin -> 5 decades over 100 px
    const width = 100 / 5;
    expect(h.bars[0].x).toBeCloseTo(0);
    expect(h.bars[1].x).toBeCloseTo(2 * width); // the empty bin 2 is a gap
    expect(h.bars[3].x).toBeCloseTo(4 * width);
    expect(h.bars[3].hi).toBeNull();
    for (const b of h.bars) expect(b.w).toBeGreaterThan(0);
    // heights against the largest count
    expect(h.bars[1].h).toBeCloseTo(50);
    expect(h.bars[0].h).toBeCloseTo(12.5);
    expect(h.at(1e-2)).toBeCloseTo(2 * width);
    expect(h.lo).toBeCloseTo(1e-4);
    expect(h.hi).toBeCloseTo(10);
  });
  it("the first bin (0, 1e-4) sits one bin left of 1e-4", () => {
    const h = histBars(edges, [3, 3, 0, 0, 0, 0], 100, 50)!;
    expect(h.bars).toHaveLength(2);
    expect(h.bars[0].x).toBeCloseTo(0);
    expect(h.bars[1].x).toBeCloseTo(50);
    expect(h.lo).toBeCloseTo(1e-5);
  });
  it("never active: no bars", () => {
    expect(histBars(edges, [0, 0, 0, 0, 0, 0], 100, 50)).toBeNull();
  });
});

describe("the calls", () => {
  function fake(answer: (url: string, init?: RequestInit) => Response) {
    const seen: { url: string; method: string; body: unknown }[] = [];
    const api = new Api("http://x", async (url, init) => {
      seen.push({ url, method: init?.method ?? "GET", body: typeof init?.body === "string" ? JSON.parse(init.body) : null });
      return answer(url, init);
    });
    return { api, seen };
  }
  const ok = (body: unknown) => new Response(JSON.stringify(body), { status: 200, headers: { "content-type": "application/json" } });

  it("every route, with the source id encoded", async () => {
    const { api, seen } = fake(() => ok({}));
    await fetchSources(api);
    await fetchList(api, "neurons:12", { q: "token:def", sort: "max", order: "asc", offset: 50, limit: 50 });
    await fetchList(api, "a b", { q: "", sort: "density", order: "desc", offset: 0, limit: 50 });
    await fetchList(api, "db", { q: "def", sort: "relevance", order: "desc", offset: 0, limit: 20 });
    await fetchFeature(api, "neurons:12", 17);
    await fetchDocument(api, "neurons:12", 17, 3);
    await fetchActivations(api, "neurons:12", { text: "hi<eot>yo", features: [17, 93], rank: "quantile", top: 5, exclude_template: true });
    expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual([
      "GET http://x/api/features",
      "GET http://x/api/features/neurons%3A12/list?q=token%3Adef&sort=max&order=asc&offset=50&limit=50",
      "GET http://x/api/features/a%20b/list?sort=density&order=desc&offset=0&limit=50",
      "GET http://x/api/features/db/list?q=def&sort=relevance&offset=0&limit=20",
      "GET http://x/api/features/neurons%3A12/17",
      "GET http://x/api/features/neurons%3A12/17/document/3",
      "POST http://x/api/features/neurons%3A12/activations",
    ]);
    expect(seen[6].body).toEqual({ text: "hi<eot>yo", features: [17, 93], rank: "quantile", top: 5, exclude_template: true });
  });
  it("a label is PUT and its 204 read as done", async () => {
    const { api, seen } = fake(() => new Response(null, { status: 204 }));
    await saveLabel(api, "db", 4, "python defs", "fires on def");
    expect(seen).toEqual([{ url: "http://x/api/features/db/4/label", method: "PUT", body: { label: "python defs", notes: "fires on def" } }]);
  });
  it("a refused search says the server's reason", async () => {
    const { api } = fake(() => new Response(JSON.stringify({ detail: 'bad search: fts5: syntax error near "("' }), { status: 400 }));
    await expect(fetchList(api, "db", { q: "(", sort: "density", order: "desc", offset: 0, limit: 50 })).rejects.toThrow('bad search: fts5: syntax error near "("');
  });
  it("the picker adds neurons:L for each layer of a loaded model the server did not list", () => {
    const db: FeatureSourceInfo = { id: "neurons:1", name: "neurons:1", kind: "neurons", n_features: 64, hooks: ["blocks.1.mlp.hook_post"], online: true, database: null };
    expect(pickerSources([db], null).map((s) => s.id)).toEqual(["neurons:1"]);
    const all = pickerSources([db], { n_layers: 3, d_mlp: 64 });
    expect(all.map((s) => s.id)).toEqual(["neurons:1", "neurons:0", "neurons:2"]);
    expect(all[1]).toMatchObject({ online: true, database: null, n_features: 64, hooks: ["blocks.0.mlp.hook_post"] });
  });
});

describe("the Features tab in the URL", () => {
  it("round-trips its source, sub-view, open feature and highlights", () => {
    const s: ViewState = { view: "features", explore: {}, features: { source: "neurons:12", mode: "text", feature: 17, a: 0, b: 93 } };
    const hash = encodeViewState(s);
    expect(decodeViewState(`#${hash}`)).toEqual(s);
  });
  it("keeps a source named like a folder (spaces, dots) and leaves out what is malformed", () => {
    const s = decodeViewState("#view=features&f.source=my%20SAE.v2&f.mode=admin&f.feature=-3&f.a=1.5&f.b=7");
    expect(s).toEqual({ view: "features", explore: {}, features: { source: "my SAE.v2", b: 7 } });
    expect(decodeViewState("#view=features&f.source=%1B%5B31m").features).toBeUndefined();
  });
  it("without Features keys, no features state (Explore's links decode as before)", () => {
    expect(decodeViewState("#view=explore&token=3")).toEqual({ view: "explore", explore: { token: 3 } });
    expect(encodeViewState({ view: "explore", explore: { token: 3 }, features: {} })).toBe("view=explore&token=3");
  });
});
