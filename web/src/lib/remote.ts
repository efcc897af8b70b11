/** Fetching a metric's values and colour scale from the server (see metrics.remoteKey for the cache key). */
import type { Api } from "./api";
import { metricQuery, type FetchArgs, type Metric } from "./metrics";
import type { MetricData } from "./types";

/** The metric for one trace; with `withId`, also for a second trace, both coloured by joint limits. */
export function fetchMetric(client: Api, traceId: string, metric: Metric, a: FetchArgs, withId: string | null, signal: AbortSignal): Promise<MetricData> {
  return client.metric(traceId, { ...metricQuery(metric, a), with: withId }, signal);
}
