/** The HTTP client: one instance per mounted app, bound to a base URL ("" = same origin). */
import { decodeFloat16, parseShape } from "./float16";
import { readSse, type SseEvent } from "./sse";
import type { GenParams, Health, Pattern, Trace } from "./types";

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

/** A readable message from an error body: FastAPI's {"detail": str | [{loc, msg}]} or plain text. */
export function errorMessage(status: number, body: string): string {
  try {
    const j = JSON.parse(body) as { detail?: unknown };
    const d = j.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d
        .map((e: { loc?: unknown[]; msg?: string }) => {
          const loc = Array.isArray(e.loc) ? e.loc.filter((p) => p !== "body").join(".") : "";
          return loc ? `${loc}: ${e.msg ?? ""}` : String(e.msg ?? JSON.stringify(e));
        })
        .join("; ");
    }
  } catch {
    /* not JSON */
  }
  return body.trim() ? `HTTP ${status}: ${body.trim().slice(0, 300)}` : `HTTP ${status}`;
}

export class Api {
  constructor(readonly base: string = "") {
    this.base = base.replace(/\/$/, "");
  }

  private async request(path: string, init?: RequestInit): Promise<Response> {
    let resp: Response;
    try {
      resp = await fetch(this.base + path, init);
    } catch (err) {
      if ((err as Error).name === "AbortError") throw err;
      throw new ApiError(`cannot reach the lmpeek server (${(err as Error).message})`, 0);
    }
    if (!resp.ok) throw new ApiError(errorMessage(resp.status, await resp.text()), resp.status);
    return resp;
  }

  private async json<T>(path: string, init?: RequestInit): Promise<T> {
    return (await (await this.request(path, init)).json()) as T;
  }

  health(): Promise<Health> {
    return this.json("/api/health");
  }

  trace(text: string, topK = 10, signal?: AbortSignal): Promise<Trace> {
    return this.json("/api/trace", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ text, top_k: topK }),
      signal,
    });
  }

  getTrace(id: string, signal?: AbortSignal): Promise<Trace> {
    return this.json(`/api/traces/${encodeURIComponent(id)}`, { signal });
  }

  /** One head's attention: a row (`query`: from that token) or a column (`key`: to that token). */
  async attention(
    id: string,
    layer: number,
    head: number,
    which: { query?: number; key?: number },
    signal?: AbortSignal,
  ): Promise<Pattern> {
    const q = new URLSearchParams({ layer: String(layer), head: String(head) });
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
}
