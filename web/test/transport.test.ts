import { describe, expect, it } from "vitest";
import { Api } from "../src/lib/api";
import { attentionSlice, decodePack, recordedBody, requestKey, staticFetcher, widgetFetcher, type Pack, type WidgetModel } from "../src/lib/transport";

/** A pack as lmpeek/views/export.py writes it. */
function makePack(header: Record<string, unknown>, bodies: Uint8Array[]): Uint8Array {
  const data: number[] = [];
  for (const b of bodies) {
    data.push(...b);
    while (data.length % 8) data.push(0);
  }
  const h = new TextEncoder().encode(JSON.stringify({ format: "lmpeek.export", version: "1.0", hint: "Include it.", ...header }));
  const out = new Uint8Array(8 + h.length + data.length);
  out.set(new TextEncoder().encode("LMPX"));
  new DataView(out.buffer).setUint32(4, h.length, true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

describe("requestKey", () => {
  it("sorts the query and keeps the path (the exporter records under the same key)", () => {
    expect(requestKey("get", "/api/traces/ab/metric?name=loss&mode=raw")).toBe("GET /api/traces/ab/metric?mode=raw&name=loss");
    expect(requestKey("GET", "/api/health")).toBe("GET /api/health");
    // the same as Python's request_key('GET', '/x', {'b': 'a b', 'a': 1}) (tests/views/test_export.py)
    expect(requestKey("GET", "/x?b=a+b&a=1")).toBe("GET /x?a=1&b=a+b");
  });
});

describe("attentionSlice", () => {
  // causal triangle of a 3-token pattern: row q holds keys 0..q
  const tri = new Uint16Array([1, 2, 3, 4, 5, 6]); // [[1], [2, 3], [4, 5, 6]]
  it("gives rows, columns and the full pattern with zeros where a key is masked", () => {
    expect([...attentionSlice(tri, 3, { query: 1 }).data]).toEqual([2, 3, 0]);
    expect([...attentionSlice(tri, 3, { key: 1 }).data]).toEqual([0, 3, 5]);
    const full = attentionSlice(tri, 3, {});
    expect(full.shape).toEqual([3, 3]);
    expect([...full.data]).toEqual([1, 0, 0, 2, 3, 0, 4, 5, 6]);
  });
});

describe("staticFetcher", () => {
  const body = new TextEncoder().encode(JSON.stringify({ status: "ready" }));
  const tri = new Uint16Array([0x3c00, 0x3800, 0x3800]); // float16 1, .5, .5
  const bytes = makePack(
    {
      trace_id: "t1",
      responses: { "GET /api/health": { status: 200, headers: { "content-type": "application/json" }, parts: [[0, 10], [10, body.length - 10]] } },
      attention: { "0,1": { T: 2, offset: 24 } }, // after the 18-byte body, padded to 8
    },
    [body, new Uint8Array(tri.buffer)],
  );
  const pack: Pack = decodePack(bytes);
  const client = new Api("", staticFetcher(pack));

  it("answers recorded requests with the recorded bytes", async () => {
    expect(await client.health()).toEqual({ status: "ready" });
  });
  it("answers attention rows and columns from an embedded head", async () => {
    const row = await client.attention("t1", 0, 1, { query: 1 });
    expect(row.shape).toEqual([1, 2]);
    expect([...row.data]).toEqual([0.5, 0.5]);
    const col = await client.attention("t1", 0, 1, { key: 0 });
    expect([...col.data]).toEqual([1, 0.5]);
  });
  it("says what is not in the export, and that nothing can run", async () => {
    await expect(client.attention("t1", 3, 0, { query: 0 })).rejects.toThrow(/not in this export: attention of layer 3 head 0 \(--include attention=3:0\)\. Include it\./);
    await expect(client.logitLens("t1", 0)).rejects.toThrow(/not in this export: logit_lens/);
    await expect(client.trace("hello")).rejects.toThrow(/exported file/);
    await expect(client.attentionGrid("t1", { start: 32, end: 96 }, 64)).rejects.toThrow(/the model view of tokens 32–95 \(--include grid=32:96\)/);
    await expect(client.qk("t1", { layer: 1, head: 2, query: 7, key: 3 })).rejects.toThrow(/q·k terms of layer 1 head 2 for query #7 \(--include qk=1:2:7\)/);
  });
  it("joins a body's parts and puts shuffled byte planes back", () => {
    const data = new Uint8Array([9, 9, 1, 3, 5, 2, 4, 6, 7]);
    const hit = { status: 200, headers: {}, parts: [[0, 2], [2, 6], [8, 1]] as [number, number][], shuffled: [[2, 6, 2]] as [number, number, number][] };
    expect([...recordedBody(hit, data)]).toEqual([9, 9, 1, 2, 3, 4, 5, 6, 7]);
    expect([...recordedBody({ ...hit, shuffled: undefined }, data)]).toEqual([9, 9, 1, 3, 5, 2, 4, 6, 7]);
  });
  it("refuses a damaged or newer pack", () => {
    expect(() => decodePack(new Uint8Array([1, 2, 3, 4, 0, 0, 0, 0]))).toThrow(/not an lmpeek export/);
    const newer = makePack({ version: "3.0", trace_id: "x", responses: {}, attention: {} }, []);
    expect(() => decodePack(newer)).toThrow(/newer lmpeek/);
  });
});

describe("widgetFetcher", () => {
  function fakeKernel() {
    const handlers: ((c: unknown, b: unknown[]) => void)[] = [];
    const sent: { content: Record<string, unknown>; buffers: unknown[] }[] = [];
    const model: WidgetModel = {
      get: () => undefined,
      send: (content, _cb, buffers) => void sent.push({ content: content as Record<string, unknown>, buffers: (buffers as unknown[]) ?? [] }),
      on: (_e, h) => void handlers.push(h as never),
      off: () => void handlers.splice(0),
    };
    const reply = (c: unknown, b: unknown[] = []) => handlers.forEach((h) => h(c, b));
    return { model, sent, reply };
  }

  it("sends the request and streams the kernel's answer into a Response", async () => {
    const k = fakeKernel();
    const { fetch } = widgetFetcher(k.model);
    const pending = fetch("/api/trace", { method: "POST", headers: { "content-type": "application/json" }, body: '{"text":"hi"}' });
    const req = k.sent[0];
    expect(req.content).toMatchObject({ kind: "fetch", method: "POST", url: "/api/trace", headers: { "content-type": "application/json" } });
    expect(new TextDecoder().decode(req.buffers[0] as Uint8Array)).toBe('{"text":"hi"}');
    const id = req.content.id;
    k.reply({ kind: "head", id, status: 200, headers: { "content-type": "application/json" } });
    k.reply({ kind: "chunk", id }, [new DataView(new TextEncoder().encode('{"a":').buffer)]);
    k.reply({ kind: "chunk", id }, [new TextEncoder().encode("1}").buffer]);
    k.reply({ kind: "end", id });
    const resp = await pending;
    expect(resp.status).toBe(200);
    expect(await resp.json()).toEqual({ a: 1 });
  });

  it("tells the kernel when the page gives up (Stop, a new selection)", async () => {
    const k = fakeKernel();
    const { fetch } = widgetFetcher(k.model);
    const ctl = new AbortController();
    const pending = fetch("/api/generate", { method: "POST", signal: ctl.signal });
    ctl.abort();
    await expect(pending).rejects.toThrow(/aborted/);
    expect(k.sent.at(-1)!.content).toMatchObject({ kind: "abort", id: k.sent[0].content.id });
  });
});
