/** The HTTP client: one instance per mounted app, bound to a base URL ("" = same origin). */
import { TRACE_MEDIA_TYPE, traceFromEnvelope } from "./envelope";
import { decodeFloat16, parseShape } from "./float16";
import { readSse, type SseEvent } from "./sse";
import type { Fetcher } from "./transport";
import type {
  Activations,
  AttentionGrid,
  Compare,
  GenParams,
  Health,
  Histogram,
  HookPoint,
  LogitLens,
  MetricData,
  Neurons,
  Pattern,
  QkTerms,
  Rope,
  CorpusSearch,
  Sample,
  SampleText,
  Scatter,
  StoredTrace,
  Trace,
  Values,
  VectorData,
} from "./types";

/** Query parameters: undefined and null are left out. */
export function query(params: Record<string, string | number | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, String(v));
  return q.toString();
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

/** One readable message from an error body, never raw JSON: the server's `detail` (one string listing
 * every problem, e.g. "top_k: must be ≤ 100; text: must not be empty"); from an older server, FastAPI's
 * list of {loc, msg} joined the same way; plain text (a proxy's page) shortened, with the status. */
export function errorMessage(status: number, body: string): string {
  let j: unknown;
  try {
    j = JSON.parse(body);
  } catch {
    const plain = body.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim();
    return plain ? `HTTP ${status}: ${plain.slice(0, 300)}` : `HTTP ${status}`;
  }
  const d = j !== null && typeof j === "object" ? (j as { detail?: unknown }).detail : undefined;
  if (typeof d === "string" && d.trim()) return d;
  if (Array.isArray(d) && d.length) {
    const said = d.map((e: { loc?: unknown[]; msg?: unknown }) => {
      const loc = Array.isArray(e?.loc) ? e.loc.filter((p, i) => !(i === 0 && ["body", "query", "path"].includes(String(p)))).join(".") : "";
      const msg = typeof e?.msg === "string" ? e.msg : "invalid";
      return loc ? `${loc}: ${msg}` : msg;
    });
    return [...new Set(said)].join("; ");
  }
  return `HTTP ${status}: the server gave no reason`;
}

/** What the app's header hears of each model request: one started, or an answer's status (a 503's
 * Retry-After in seconds: the model's queue is full). */
export type ApiActivity = { started: string } | { status: number; retryAfter: number | null };

export class Api {
  /** Set by the app to follow requests (the header polls health faster while the model works). */
  onactivity: ((a: ApiActivity) => void) | null = null;

  /** `fetcher`: where requests go (lib/transport.ts: the kernel for a notebook widget, recorded
   * responses for an exported file); the browser's fetch by default. */
  constructor(
    readonly base: string = "",
    private readonly fetcher: Fetcher = (url, init) => fetch(url, init),
  ) {
    this.base = base.replace(/\/$/, "");
  }

  private async request(path: string, init?: RequestInit): Promise<Response> {
    let resp: Response;
    this.onactivity?.({ started: path });
    try {
      resp = await this.fetcher(this.base + path, init);
      const retry = resp.headers.get("retry-after");
      this.onactivity?.({ status: resp.status, retryAfter: retry !== null && Number.isFinite(Number(retry)) ? Number(retry) : null });
    } catch (err) {
      if ((err as Error).name === "AbortError") throw err;
      throw new ApiError(`cannot reach the lmpeek server (${(err as Error).message})`, 0);
    }
    if (!resp.ok) {
      let msg = errorMessage(resp.status, await resp.text());
      // FastAPI's bare 404: the route itself is missing (an older server)
      if (resp.status === 404 && (msg === "Not Found" || msg === "HTTP 404: Not Found")) msg = `not available on this server (${path.split("?")[0]})`;
      throw new ApiError(msg, resp.status);
    }
    return resp;
  }

  private async json<T>(path: string, init?: RequestInit): Promise<T> {
    return (await (await this.request(path, init)).json()) as T;
  }

  /** Any route's JSON answer, with this client's transport, errors and activity (lib/features.ts builds
   * the Features tab's calls on it, so a widget or an export serves them as it serves the rest). */
  call<T>(path: string, init?: RequestInit): Promise<T> {
    return this.json(path, init);
  }

  /** A request whose answer has no body to read (204). */
  async send(path: string, init?: RequestInit): Promise<void> {
    await this.request(path, init);
  }

  health(): Promise<Health> {
    return this.json("/api/health");
  }

  trace(text: string, topK = 10, signal?: AbortSignal): Promise<Trace> {
    return this.traceBody("/api/trace", {
      method: "POST",
      headers: { "content-type": "application/json", accept: TRACE_MEDIA_TYPE },
      body: JSON.stringify({ text, top_k: topK }),
      signal,
    });
  }

  /** A trace as the binary envelope (lib/envelope: 4.9 MB at 4,096 tokens of the default model, not
   * 33 MB of JSON), or as JSON from a server that does not send one. */
  private async traceBody(path: string, init: RequestInit): Promise<Trace> {
    const resp = await this.request(path, init);
    if (resp.headers.get("content-type")?.startsWith(TRACE_MEDIA_TYPE)) return traceFromEnvelope(await resp.arrayBuffer());
    return (await resp.json()) as Trace;
  }

  /** The stored traces, newest first (to reopen one). */
  storedTraces(signal?: AbortSignal): Promise<StoredTrace[]> {
    return this.json("/api/traces?limit=200", { signal });
  }

  getTrace(id: string, signal?: AbortSignal): Promise<Trace> {
    return this.traceBody(`/api/traces/${encodeURIComponent(id)}`, { headers: { accept: TRACE_MEDIA_TYPE }, signal });
  }

  /** One head's attention: a row (`query`: from that token) or a column (`key`: to that token). */
  async attention(
    id: string,
    layer: number,
    head: number,
    which: { query?: number; key?: number },
    signal?: AbortSignal,
    rope: Rope = "full",
  ): Promise<Pattern> {
    const q = new URLSearchParams({ layer: String(layer), head: String(head) });
    if (rope !== "full") q.set("rope", rope);
    if (which.query !== undefined) q.set("query", String(which.query));
    if (which.key !== undefined) q.set("key", String(which.key));
    const resp = await this.request(`/api/traces/${encodeURIComponent(id)}/attention?${q}`, {
      headers: { accept: "application/octet-stream" },
      signal,
    });
    const shape = parseShape(resp.headers.get("x-shape"));
    const data = decodeFloat16(await resp.arrayBuffer());
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.length !== n) throw new Error(`attention: got ${data.length} values for shape ${shape}`);
    return { shape, data };
  }

  /** Every layer × head's attention over tokens start..end-1 (the Attention tab's thumbnails), pooled by
   * the server to at most `size` cells per side. */
  async attentionGrid(id: string, win: { start: number; end: number }, size: number, signal?: AbortSignal): Promise<AttentionGrid> {
    const resp = await this.request(`/api/traces/${encodeURIComponent(id)}/attention_grid?${query({ start: win.start, end: win.end, size })}`, {
      headers: { accept: "application/octet-stream" },
      signal,
    });
    const shape = parseShape(resp.headers.get("x-shape"));
    const data = decodeFloat16(await resp.arrayBuffer());
    if (shape.length !== 4 || data.length !== shape.reduce((a, b) => a * b, 1)) throw new Error(`attention grid: got ${data.length} values for shape ${shape}`);
    const [start, end] = (resp.headers.get("x-window") ?? `${win.start},${win.end}`).split(",").map(Number);
    return { shape, data, pool: Number(resp.headers.get("x-pool") ?? 1), start, end };
  }

  /** The products q_i·k_i behind one attention score (the Attention tab's neuron view). */
  qk(id: string, p: { layer: number; head: number; query: number; key: number }, signal?: AbortSignal): Promise<QkTerms> {
    return this.traceGet(id, "qk", p, signal);
  }

  /** Stream a generation; resolves when the stream ends. Throws ApiError for a 4xx before streaming. */
  async generate(params: GenParams, onEvent: (ev: SseEvent) => void, signal?: AbortSignal): Promise<void> {
    const resp = await this.request("/api/generate", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(params),
      signal,
    });
    await readSse(resp, onEvent);
  }

  /** POST `body` to a route that answers server-sent events (the Why tab's attribution); resolves when
   * the stream ends. Throws ApiError for a 4xx before streaming. */
  async stream(path: string, body: unknown, onEvent: (ev: SseEvent) => void, signal?: AbortSignal): Promise<void> {
    const resp = await this.request(path, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal,
    });
    await readSse(resp, onEvent);
  }

  private traceGet<T>(id: string, what: string, params: Record<string, string | number | null | undefined>, signal?: AbortSignal): Promise<T> {
    return this.json(`/api/traces/${encodeURIComponent(id)}/${what}?${query(params)}`, { signal });
  }

  components(): Promise<HookPoint[]> {
    return this.json("/api/components");
  }

  /** URL of a trace's self-contained HTML file (the Explore view offline; the server records it from its
   * own routes, as `lmpeek export` does). `include`: e.g. "attention=3:1,lens". */
  exportUrl(id: string, include = ""): string {
    const q = query({ include: include || undefined });
    return `${this.base}/api/traces/${encodeURIComponent(id)}/export${q ? `?${q}` : ""}`;
  }

  /** URL of one token's vector at a hook (JSON, or a .npy download). */
  vectorUrl(id: string, hook: string, token: number, head: number | null, format: "json" | "npy" = "json"): string {
    return `${this.base}/api/traces/${encodeURIComponent(id)}/vector?${query({ hook, token, head, format: format === "npy" ? "npy" : undefined })}`;
  }

  vector(id: string, hook: string, token: number, head: number | null, signal?: AbortSignal): Promise<VectorData> {
    return this.traceGet(id, "vector", { hook, token, head }, signal);
  }

  activations(
    id: string,
    p: { hook: string; head: number | null; stat: "norm" | "abs_sum" | "value"; dim?: number; scale?: string },
    signal?: AbortSignal,
  ): Promise<Activations> {
    return this.traceGet(id, "activations", p, signal);
  }

  /** One Explore metric's values with the colour scale the server computed: `q` holds name, mode,
   * skip_first and what the metric reads (metrics.metricQuery); `with`: a second trace, joint limits. */
  metric(id: string, q: Record<string, string | number | null | undefined>, signal?: AbortSignal): Promise<MetricData> {
    return this.traceGet(id, "metric", q, signal);
  }

  similarity(
    id: string,
    p: { hook: string; head: number | null; token: number; kind: "tokens" | "previous" | "residual" },
    signal?: AbortSignal,
  ): Promise<Values> {
    return this.traceGet(id, "similarity", p, signal);
  }

  histogram(id: string, p: { hook: string; head: number | null; token: number; bins?: number }, signal?: AbortSignal): Promise<Histogram> {
    return this.traceGet(id, "histogram", { bins: 64, ...p }, signal);
  }

  scatter(
    id: string,
    p: { hook: string; head: number | null; x?: number; y?: number; a?: number; b?: number },
    signal?: AbortSignal,
  ): Promise<Scatter> {
    return this.traceGet(id, "scatter", p, signal);
  }

  /** The logit lens at position `token`; with `target` (a token id), that token's rank and probability per layer. */
  logitLens(id: string, token: number, k = 5, target?: number, signal?: AbortSignal): Promise<LogitLens> {
    return this.traceGet(id, "logit_lens", { token, k, target }, signal);
  }

  /** The k MLP neurons most active at `token`; a value is null where the model made it inf or NaN. */
  neurons(id: string, layer: number, token: number, k = 10, signal?: AbortSignal): Promise<Neurons> {
    return this.traceGet(id, "neurons", { layer, token, k }, signal);
  }

  neuron(id: string, layer: number, index: number, signal?: AbortSignal): Promise<Values> {
    return this.traceGet(id, "neuron", { layer, index }, signal);
  }

  samples(): Promise<Sample[]> {
    return this.json("/api/samples");
  }

  /** Documents of the demo corpus matching every word of `q`, best first (open one with `sample`). */
  searchSamples(q: string, limit = 20, signal?: AbortSignal): Promise<CorpusSearch> {
    return this.json(`/api/samples/search?${query({ q, limit })}`, { signal });
  }

  sample(id: string): Promise<SampleText> {
    return this.json(`/api/samples/${encodeURIComponent(id)}`);
  }

  compare(a: string, b: string, component: string, signal?: AbortSignal): Promise<Compare> {
    return this.json(`/api/compare?${query({ a, b, component })}`, { signal });
  }
}
