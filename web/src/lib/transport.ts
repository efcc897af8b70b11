/**
 * Where the page's requests go. The app, the notebook widget and an exported file all use the same
 * HTTP client (api.ts) with a different `fetch`:
 * - the web app: the browser's fetch to the lmpeek server;
 * - the widget: messages to the kernel, answered in-process by the same FastAPI routes
 *   (lmpeek/views/widget.py), so responses are byte for byte what the server sends;
 * - an export: responses recorded by the exporter and inlined in the file (lmpeek/views/export.py);
 *   a request the export did not record is answered 404 with a message saying what to include.
 */

import { decodeFloat16 } from "./float16";

export type Fetcher = (url: string, init?: RequestInit) => Promise<Response>;

/** What anywidget gives `render`: the widget model (see lmpeek/views/widget.py for the messages). */
export interface WidgetModel {
  get(name: string): unknown;
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[] | ArrayBufferView[]): void;
  on(event: string, handler: (...args: never[]) => void): void;
  off(event?: string, handler?: (...args: never[]) => void): void;
}

interface Pending {
  resolve: (r: Response) => void;
  reject: (e: unknown) => void;
  controller?: ReadableStreamDefaultController<Uint8Array>;
}

function bytesOf(b: ArrayBuffer | ArrayBufferView | DataView): Uint8Array {
  if (b instanceof ArrayBuffer) return new Uint8Array(b);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** A fetch that asks the kernel. Returns the fetcher and a function that detaches it. */
export function widgetFetcher(model: WidgetModel): { fetch: Fetcher; close: () => void } {
  let next = 0;
  const pending = new Map<string, Pending>();
  const onMsg = (content: { kind?: string; id?: string; status?: number; headers?: Record<string, string> }, buffers: (ArrayBuffer | DataView)[]) => {
    const p = content?.id !== undefined ? pending.get(String(content.id)) : undefined;
    if (!p) return;
    if (content.kind === "head") {
      const body = new ReadableStream<Uint8Array>({ start: (c) => void (p.controller = c) });
      p.resolve(new Response(body, { status: content.status ?? 500, headers: content.headers ?? {} }));
    } else if (content.kind === "chunk" && buffers?.length) {
      p.controller?.enqueue(bytesOf(buffers[0]).slice());
    } else if (content.kind === "end") {
      pending.delete(String(content.id));
      try {
        p.controller?.close();
      } catch {
        /* already closed by an abort */
      }
      p.reject(new TypeError("the kernel sent no response"));
    }
  };
  model.on("msg:custom", onMsg as never);
  const fetchImpl: Fetcher = (url, init) =>
    new Promise<Response>((resolve, reject) => {
      const id = String(next++);
      const signal = init?.signal;
      if (signal?.aborted) return reject(new DOMException("aborted", "AbortError"));
      const entry: Pending = { resolve, reject };
      pending.set(id, entry);
      signal?.addEventListener("abort", () => {
        model.send({ kind: "abort", id });
        pending.delete(id);
        const err = new DOMException("aborted", "AbortError");
        reject(err);
        try {
          entry.controller?.error(err);
        } catch {
          /* closed */
        }
      });
      const headers: Record<string, string> = {};
      new Headers(init?.headers).forEach((v, k) => (headers[k] = v));
      const body = typeof init?.body === "string" ? new TextEncoder().encode(init.body) : null;
      model.send({ kind: "fetch", id, method: init?.method ?? "GET", url, headers }, undefined, body ? [body] : []);
    });
  return { fetch: fetchImpl, close: () => model.off("msg:custom", onMsg as never) };
}

// ---- exports ------------------------------------------------------------------------------------

interface Recorded {
  status: number;
  headers: Record<string, string>;
  /** the body: these [offset, length] slices of the data joined (a repeated part is stored once) */
  parts: [number, number][];
  /** [offset, nbytes, itemsize] in the body: byte planes to put back (an envelope's buffers: the
   * exporter stores each value's first bytes together, then its second…, which gzip packs better) */
  shuffled?: [number, number, number][];
}

interface PackHeader {
  format: "lmpeek.export";
  version: string;
  /** the trace an Explore export opens; null in a features export */
  trace_id: string | null;
  /** a features export: the feature page it opens on (its source id and index) */
  open?: { source: string; feature: number };
  responses: Record<string, Recorded>;
  /** "layer,head" -> the causal (lower-triangle) pattern, row by row, float16 bits; and the colour
   * scale the metric route gives attention from / to a token in the raw mode ("attn-from,true": the
   * name and skip_first), the same for every token */
  attention: Record<string, { T: number; offset: number; scales?: Record<string, unknown> }>;
  /** what to tell a user who asks for something not recorded */
  hint: string;
}

export interface Pack {
  header: PackHeader;
  data: Uint8Array;
}

const MAGIC = "LMPX";

/** Whether an export holds answers of the Features tab's routes (a features export). */
export function hasFeatures(pack: Pack): boolean {
  return Object.keys(pack.header.responses).some((k) => k.startsWith("GET /api/features"));
}

/** Whether an export holds a recorded attribution (`--include why`): its Why tab shows it. */
export function hasWhy(pack: Pack): boolean {
  return "GET /api/why/methods" in pack.header.responses;
}

/** Read an export's data block: "LMPX", uint32 little-endian header length, JSON header, data. */
export function decodePack(bytes: Uint8Array): Pack {
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  if (magic !== MAGIC) throw new Error("not an lmpeek export (the data block is damaged)");
  const n = new DataView(bytes.buffer, bytes.byteOffset + 4, 4).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as PackHeader;
  const major = Number(String(header.version).split(".")[0]);
  if (header.format !== "lmpeek.export" || major > 2) throw new Error(`this export needs a newer lmpeek (format ${header.version})`);
  return { header, data: bytes.subarray(8 + n) };
}

/** The key a response is recorded under: method, path and the query sorted by name. */
export function requestKey(method: string, url: string): string {
  const u = new URL(url, "http://lmpeek.invalid");
  const q = [...u.searchParams.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const qs = new URLSearchParams(q).toString();
  return `${method.toUpperCase()} ${u.pathname}${qs ? `?${qs}` : ""}`;
}

/** JSON with every object's keys sorted, no spaces: Python's json.dumps(sort_keys=True,
 * separators=(",", ":"), ensure_ascii=False) of the same value (lmpeek/views/features_export.py). */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

/** The key a POST with a JSON body is recorded under: requestKey's, a space, the body as canonicalJson
 * (a features export records the online panel's questions this way); null for a body that is not JSON. */
export function postKey(url: string, body: unknown): string | null {
  if (typeof body !== "string") return null;
  try {
    return `${requestKey("POST", url)} ${canonicalJson(JSON.parse(body))}`;
  } catch {
    return null;
  }
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

const ATTENTION = /^\/api\/traces\/([^/]+)\/attention$/;
const METRIC = /^\/api\/traces\/([^/]+)\/metric$/;

/** One head's pattern from the causal triangle: the full [T, T], one row (query) or one column (key). */
export function attentionSlice(tri: Uint16Array, T: number, which: { query?: number; key?: number }): { shape: number[]; data: Uint16Array } {
  const rowStart = (q: number) => (q * (q + 1)) / 2;
  if (which.query !== undefined) {
    const q = which.query;
    const out = new Uint16Array(T);
    out.set(tri.subarray(rowStart(q), rowStart(q) + q + 1));
    return { shape: [1, T], data: out };
  }
  if (which.key !== undefined) {
    const k = which.key;
    const out = new Uint16Array(T);
    for (let q = k; q < T; q++) out[q] = tri[rowStart(q) + k];
    return { shape: [1, T], data: out };
  }
  const out = new Uint16Array(T * T);
  for (let q = 0; q < T; q++) out.set(tri.subarray(rowStart(q), rowStart(q) + q + 1), q * T);
  return { shape: [T, T], data: out };
}

/** A recorded body: its parts joined. */
export function recordedBody(hit: Recorded, data: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(hit.parts.reduce((n, [, len]) => n + len, 0));
  let at = 0;
  for (const [offset, len] of hit.parts) {
    out.set(data.subarray(offset, offset + len), at);
    at += len;
  }
  for (const [offset, nbytes, size] of hit.shuffled ?? []) {
    const planes = out.slice(offset, offset + nbytes);
    const n = nbytes / size;
    for (let b = 0; b < size; b++) {
      const plane = planes.subarray(b * n, (b + 1) * n);
      for (let i = 0, j = offset + b; i < n; i++, j += size) out[j] = plane[i];
    }
  }
  return out;
}

const GRID = /^\/api\/traces\/([^/]+)\/attention_grid$/;
const QK = /^\/api\/traces\/([^/]+)\/qk$/;
const FLOW = /^\/api\/traces\/([^/]+)\/flow$/;
const FEATURE_LIST = /^\/api\/features\/([^/]+)\/list$/;
const FEATURE_PAGE = /^\/api\/features\/([^/]+)\/(\d+)$/;
const FEATURE_DOC = /^\/api\/features\/([^/]+)\/(\d+)\/document\/(\d+)$/;

/** What an unrecorded request would have needed: words for the message and the option that adds it
 * (`--include` items of lmpeek/views/export.py Include, `--feature` of a features export), or null
 * when no option adds it. */
function wanted(u: URL): { what: string; add?: string } | null {
  const p = u.searchParams;
  if (GRID.test(u.pathname)) {
    const [start, end] = [p.get("start") ?? "0", p.get("end") ?? "?"];
    return { what: `the model view of tokens ${start}–${Number(end) - 1}`, add: `--include grid=${start}:${end}` };
  }
  if (QK.test(u.pathname)) {
    const [l, h, q] = [p.get("layer"), p.get("head"), p.get("query")];
    return { what: `the q·k terms of layer ${l} head ${h} for query #${q}`, add: `--include qk=${l}:${h}:${q}` };
  }
  if (FLOW.test(u.pathname)) {
    const [tok, thr, b] = [p.get("token"), p.get("threshold"), p.get("contrast")];
    const what = `the information flow at #${tok}, threshold ${thr}${b ? `, contrast token ${b}` : ""} (an export holds thresholds 0.02, 0.04, 0.06, 0.1 without contrast)`;
    return { what, add: `--include flow=${tok}` };
  }
  if (ATTENTION.test(u.pathname)) {
    const [l, h] = [p.get("layer"), p.get("head")];
    return { what: `attention of layer ${l} head ${h}`, add: `--include attention=${l}:${h}` };
  }
  // a features export holds its features' pages and the list of just those (every sort, no search)
  let m: RegExpExecArray | null;
  if ((m = FEATURE_DOC.exec(u.pathname))) return { what: `document ${m[3]} (an example's whole context)` };
  if ((m = FEATURE_PAGE.exec(u.pathname))) return { what: `feature #${m[2]}`, add: `--feature ${m[2]}` };
  if (FEATURE_LIST.test(u.pathname)) return { what: p.get("q") ? "searching features (the list holds the exported ones)" : "this page of the feature list" };
  return null;
}

const FEATURE_ACTS = /^\/api\/features\/([^/]+)\/activations$/;

/** What an unrecorded question of the online panel (POST …/activations, `key` as postKey) needed,
 * told from the recorded ones of the same source: another text, a feature, or other options. */
function wantedText(responses: Record<string, Recorded>, key: string): { what: string; add?: string } {
  const space = key.indexOf(" ", key.indexOf(" ") + 1);
  const prefix = key.slice(0, space + 1);
  const asked = JSON.parse(key.slice(space + 1)) as { text?: string; features?: number[] | null; top?: number };
  const same = Object.keys(responses)
    .filter((k) => k.startsWith(prefix))
    .map((k) => JSON.parse(k.slice(prefix.length)) as { text?: string; features?: number[] | null; top?: number })
    .find((r) => r.text === asked.text);
  if (!same) return { what: "the features of this text (the file holds its recorded texts only)", add: "--text" };
  const extra = (asked.features ?? []).filter((f) => !(same.features ?? []).includes(f));
  if (extra.length) return { what: `feature #${extra[0]} on this text`, add: `--feature ${extra[0]}` };
  if (asked.top !== same.top) return { what: `the top ${asked.top} features per token (the file holds the top ${same.top})` };
  return { what: "this text with these options" };
}

/** A fetch answered from an export's recorded responses. */
export function staticFetcher(pack: Pack): Fetcher {
  const { header, data } = pack;
  const missing = (what: string, add?: string) => json(404, { detail: `not in this export: ${what}${add ? ` (${add})` : ""}. ${header.hint}` });
  return async (url, init) => {
    const method = (init?.method ?? "GET").toUpperCase();
    const posted = method === "POST" ? postKey(url, init?.body) : null;
    const answered = posted !== null ? header.responses[posted] : undefined;
    if (answered) return new Response(recordedBody(answered, data), { status: answered.status, headers: answered.headers });
    if (posted !== null && FEATURE_ACTS.test(new URL(url, "http://lmpeek.invalid").pathname)) {
      const need = wantedText(header.responses, posted);
      return missing(need.what, need.add);
    }
    // the Why tab: an export holds at most its recorded attribution (lmpeek/views/export.py --include why)
    if (method === "POST" && new URL(url, "http://lmpeek.invalid").pathname.startsWith("/api/why/")) {
      const attribution = url.includes("/api/why/attribute");
      return missing(attribution ? "this attribution (the file holds the recorded one)" : "running this in the Why tab (nothing runs in a file)", attribution ? "--include why=METHOD" : undefined);
    }
    if (method !== "GET") {
      const detail = url.includes("/api/features/")
        ? `this is an exported file: nothing can be saved here. ${header.hint}`
        : "this is an exported file: there is no model here to run new text. Open the text in lmpeek (lmpeek serve) to run it.";
      return json(405, { detail });
    }
    const hit = header.responses[requestKey(method, url)];
    if (hit) return new Response(recordedBody(hit, data), { status: hit.status, headers: hit.headers });
    const u = new URL(url, "http://lmpeek.invalid");
    const name = u.searchParams.get("name");
    if (METRIC.test(u.pathname) && (name === "attn-from" || name === "attn-to")) {
      // the values are the embedded pattern's row or column (as the route slices them); the colour
      // scale is the route's own, recorded once: in the raw mode it does not depend on the token
      const p = u.searchParams;
      const layer = Number(p.get("layer"));
      const head = Number(p.get("head"));
      const token = Number(p.get("token"));
      const mode = p.get("mode") ?? "raw";
      const emb = header.attention[`${layer},${head}`];
      const scale = emb?.scales?.[`${name},${p.get("skip_first") ?? "false"}`];
      if (!emb || !scale || (p.get("rope") ?? "full") !== "full" || mode !== "raw" || p.has("with")) {
        const why = !emb ? "" : mode !== "raw" ? ` in the ${mode} scale (exports hold the raw one)` : " with these options";
        return missing(`attention of layer ${layer} head ${head}${why}`, emb ? undefined : `--include attention=${layer}:${head}`);
      }
      const tri = new Uint16Array(data.slice(emb.offset, emb.offset + emb.T * (emb.T + 1)).buffer);
      const s = attentionSlice(tri, emb.T, name === "attn-from" ? { query: token } : { key: token });
      const f = decodeFloat16(s.data.buffer as ArrayBuffer);
      const values = Array.from(f, (v, i) => ((name === "attn-from" ? i > token : i < token) ? null : v));
      return json(200, { name, values, scale });
    }
    const m = ATTENTION.exec(u.pathname);
    if (m) {
      const p = u.searchParams;
      const layer = Number(p.get("layer"));
      const head = Number(p.get("head"));
      const rope = p.get("rope") ?? "full";
      const emb = header.attention[`${layer},${head}`];
      if (!emb || rope !== "full") return missing(`attention of layer ${layer} head ${head}${rope !== "full" ? ` (rope=${rope})` : ""}`, emb ? undefined : `--include attention=${layer}:${head}`);
      const n = (emb.T * (emb.T + 1)) / 2;
      const tri = new Uint16Array(data.slice(emb.offset, emb.offset + 2 * n).buffer);
      const which = { query: p.has("query") ? Number(p.get("query")) : undefined, key: p.has("key") ? Number(p.get("key")) : undefined };
      const s = attentionSlice(tri, emb.T, which);
      return new Response(s.data.buffer as ArrayBuffer, {
        status: 200,
        headers: { "content-type": "application/octet-stream", "x-shape": s.shape.join(","), "x-nonfinite": "0" },
      });
    }
    const need = wanted(u);
    if (need) return missing(need.what, need.add);
    return missing(u.pathname.replace(/^\/api\/traces\/[^/]+\//, "").replace(/^\/api\//, "") || u.pathname);
  };
}
