/** A features export (lmpeek/views/features_export.py) read by the page: the requests the Features tab
 * makes hit the keys the exporter records, what is not recorded says so (and what adds it), nothing can
 * be saved; main.ts knows the "features" view and the feature to open. */
import { describe, expect, it } from "vitest";
import { Api } from "../src/lib/api";
import { fetchDocument, fetchFeature, fetchList, saveLabel } from "../src/lib/features";
import { decodePack, hasFeatures, requestKey, staticFetcher, type Fetcher } from "../src/lib/transport";
import { featureOf, viewOf } from "../src/main";

const HINT = "Open the database in lmpeek.";

function makePack(responses: Record<string, unknown>, bodies: Uint8Array[]): Uint8Array {
  const data: number[] = [];
  for (const b of bodies) data.push(...b);
  const header = { format: "lmpeek.export", version: "2.0", trace_id: null, hint: HINT, attention: {}, open: { source: "neurons:10", feature: 3 }, responses };
  const h = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  out.set(new TextEncoder().encode("LMPX"));
  new DataView(out.buffer).setUint32(4, h.length, true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

const page = new TextEncoder().encode(JSON.stringify({ feature: 3, max: 1.5 }));
const list = new TextEncoder().encode(JSON.stringify({ total: 1, items: [{ feature: 3 }] }));
const json = { "content-type": "application/json" };
// the keys as Python's request_key writes them (tests/views/test_features_export.py checks that side)
const responses = {
  "GET /api/features/neurons%3A10/3": { status: 200, headers: json, parts: [[0, page.length]] },
  "GET /api/features/neurons%3A10/list?limit=50&offset=0&order=desc&sort=density": { status: 200, headers: json, parts: [[page.length, list.length]] },
};
const pack = decodePack(makePack(responses, [page, list]));
const asked: string[] = [];
const inner = staticFetcher(pack);
const fetcher: Fetcher = (url, init) => (asked.push(requestKey(init?.method ?? "GET", url)), inner(url, init));
const client = new Api("", fetcher);

describe("a features export", () => {
  it("is told apart from a trace export, and says which feature it opens", () => {
    expect(hasFeatures(pack)).toBe(true);
    expect(pack.header.trace_id).toBeNull();
    expect(pack.header.open).toEqual({ source: "neurons:10", feature: 3 });
    const trace = decodePack(makePack({ "GET /api/health": { status: 200, headers: json, parts: [[0, 2]] } }, [page]));
    expect(hasFeatures(trace)).toBe(false);
  });
  it("answers the Features tab's requests from the recorded keys", async () => {
    expect(await fetchFeature(client, "neurons:10", 3)).toEqual({ feature: 3, max: 1.5 });
    expect(await fetchList(client, "neurons:10", { q: "", sort: "density", order: "desc", offset: 0, limit: 50 })).toEqual({ total: 1, items: [{ feature: 3 }] });
  });
  it("says what is not in it, with the option that adds a feature", async () => {
    await expect(fetchFeature(client, "neurons:10", 93)).rejects.toThrow(`not in this export: feature #93 (--feature 93). ${HINT}`);
    await expect(fetchDocument(client, "neurons:10", 3, 12)).rejects.toThrow(/^not in this export: document 12 \(an example's whole context\)\. /);
    await expect(fetchList(client, "neurons:10", { q: "def", sort: "density", order: "desc", offset: 0, limit: 50 })).rejects.toThrow(/not in this export: searching features/);
    await expect(saveLabel(client, "neurons:10", 3, "x", "")).rejects.toThrow(/exported file: nothing can be saved here/);
    expect(asked).toContain("GET /api/features/neurons%3A10/93");
  });
});

describe("main.ts", () => {
  it("knows the features view and a feature to open", () => {
    expect(viewOf("features")).toBe("features");
    expect(viewOf("nope")).toBe("explore");
    expect(featureOf("neurons:10", 7)).toEqual({ source: "neurons:10", feature: 7 });
    expect(featureOf("neurons:10", -1)).toBeUndefined(); // the widget's "none"
    expect(featureOf("", 3)).toBeUndefined();
    expect(featureOf("neurons:10", 1.5)).toBeUndefined();
  });
});
