// @vitest-environment node
/** Copy in the Features views gives the text, as Explore's copy does: with each token's bytes (an online
 * answer's token_bytes) a BOS ("<s>") and sentencepiece's prepended space copy as nothing; the labels
 * alone would copy them. And a features export answers the online panel's POST for a recorded text
 * from the key the exporter writes (lmpeek/views/features_export.py post_key: the body, keys sorted),
 * and anything else with "not in this export". The tokens are the server's for TEXT with the
 * sentencepiece-style tokenizer of tests/features/test_feature_tokens.py (a BOS, a dummy prefix). */
import { render } from "svelte/server";
import { describe, expect, it } from "vitest";
import FeatureText from "../src/components/FeatureText.svelte";
import { Api } from "../src/lib/api";
import { fetchActivations, selectionText, tokensText, type OnlineRequest } from "../src/lib/features";
import { canonicalJson, decodePack, postKey, staticFetcher } from "../src/lib/transport";

const TEXT = "  a 🙂 b\n日本";
const LABELS = ["<s>", " ", " ", " ", "a", " ", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>", " ", "b", "\n", "<0xE6>", "<0x97>", "<0xA5>", "<0xE6>", "<0x9C>", "<0xAC>"];
const BYTES = ["", "", "20", "20", "61", "20", "f0", "9f", "99", "82", "20", "62", "0a", "e6", "97", "a5", "e6", "9c", "ac"];

describe("FeatureText's copy", () => {
  it("all tokens copy as the text: no BOS label, no prepended space", () => {
    expect(selectionText(LABELS, BYTES, 0, LABELS.length - 1)).toBe(TEXT);
    expect(tokensText(LABELS, BYTES)).toBe(TEXT);
    expect(selectionText(LABELS, null, 0, LABELS.length - 1)).toBe("<s> " + TEXT); // labels alone cannot tell
  });
  it("a part copies its characters (a character split over tokens whole, on its first piece)", () => {
    expect(selectionText(LABELS, BYTES, 4, 11)).toBe("a 🙂 b");
    expect(selectionText(LABELS, BYTES, 0, 4)).toBe("  a");
    expect(selectionText(LABELS, BYTES, 13, 18)).toBe("日本");
  });
  it("bytes of another length are ignored (labels used), never misaligned", () => {
    expect(selectionText(LABELS, BYTES.slice(1), 0, LABELS.length - 1)).toBe("<s> " + TEXT);
  });
  it("renders the same tokens with and without the bytes", () => {
    const html = (bytes: string[] | null) => render(FeatureText, { props: { labels: LABELS, bytes, testid: "t" } }).body.replace(/<!--[^]*?-->/g, "");
    expect(html(BYTES)).toBe(html(null));
    expect(html(BYTES)).toContain(">🙂</span>");
  });
});

describe("a recorded text in an export", () => {
  const source = "neurons:10";
  const body: OnlineRequest = { text: TEXT, features: [3, 7], rank: "quantile", top: 5, exclude_template: false };
  // as Python's json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False) writes it
  const key = `POST /api/features/neurons%3A10/activations {"exclude_template":false,"features":[3,7],"rank":"quantile","text":"  a 🙂 b\\n日本","top":5}`;
  const answer = new TextEncoder().encode(JSON.stringify({ tokens: [], token_bytes: [], features: [3, 7], values: [], quantiles: [], ranking: [], top_features: [] }));
  const header = { format: "lmpeek.export", version: "2.0", trace_id: null, hint: "Open it in lmpeek.", attention: {}, responses: { [key]: { status: 200, headers: { "content-type": "application/json" }, parts: [[0, answer.length]] } } };
  const h = new TextEncoder().encode(JSON.stringify(header));
  const raw = new Uint8Array(8 + h.length + answer.length);
  raw.set(new TextEncoder().encode("LMPX"));
  new DataView(raw.buffer).setUint32(4, h.length, true);
  raw.set(h, 8);
  raw.set(answer, 8 + h.length);
  const client = new Api("", staticFetcher(decodePack(raw)));

  it("keys the body as Python does", () => {
    expect(postKey("/api/features/neurons%3A10/activations", JSON.stringify(body))).toBe(key);
    expect(canonicalJson({ b: [1, { d: null, c: "\t\u0001é" }], a: true })).toBe(JSON.stringify({ a: true, b: [1, { c: "\t\u0001é", d: null }] }));
  });
  it("answers the panel's question, and says what is not in the file", async () => {
    expect((await fetchActivations(client, source, { ...body, features: [3, 7] })).features).toEqual([3, 7]);
    await expect(fetchActivations(client, source, { ...body, features: [3, 7, 9] })).rejects.toThrow(/not in this export: feature #9 on this text \(--feature 9\)/);
    await expect(fetchActivations(client, source, { ...body, text: "new" })).rejects.toThrow(/not in this export: the features of this text/);
    await expect(fetchActivations(client, source, { ...body, top: 7 })).rejects.toThrow(/not in this export: the top 7/);
  });
});
