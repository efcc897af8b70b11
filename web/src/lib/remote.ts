/** Fetching a metric's per-token values from the server (see metrics.remoteKey for the cache key). */
import type { Api } from "./api";
import { metricInfo, type FetchArgs, type Metric } from "./metrics";
import type { Rope } from "./types";

export interface Fetched {
  values: ArrayLike<number | null>;
}

export async function fetchMetric(client: Api, traceId: string, metric: Metric, a: FetchArgs, signal: AbortSignal): Promise<Fetched> {
  const info = metricInfo(metric);
  const base = { hook: a.hook, head: a.head };
  if (info.attention) {
    const which = info.attention === "query" ? { query: a.selected } : { key: a.selected };
    const p = await client.attention(traceId, a.layer, a.head ?? 0, which, signal, a.rope as Rope);
    return { values: p.data };
  }
  switch (metric) {
    case "norm":
    case "act-norm":
      return client.activations(traceId, { ...base, stat: "norm", scale: a.scale }, signal);
    case "act-abssum":
      return client.activations(traceId, { ...base, stat: "abs_sum", scale: a.scale }, signal);
    case "act-value":
      return client.activations(traceId, { ...base, stat: "value", dim: a.dim, scale: a.scale }, signal);
    case "cos-tokens":
      return client.similarity(traceId, { ...base, token: a.selected, kind: "tokens" }, signal);
    case "cos-previous":
      return client.similarity(traceId, { ...base, token: a.selected, kind: "previous" }, signal);
    case "cos-residual":
      return client.similarity(traceId, { ...base, token: a.selected, kind: "residual" }, signal);
    case "neuron":
      return client.neuron(traceId, a.layer, a.neuron, signal);
  }
  throw new Error(`${metric}: nothing to fetch`);
}
