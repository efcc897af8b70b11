/**
 * A long server job streamed as server-sent events (server/sse.py `long_run_stream`): `estimate`
 * {forwards, seconds, cached}, `progress` {done, total} while it runs, then `result` or `error`.
 * Every Why section (attribution, prompt ablation, patching, steering, interventions) runs its job
 * through one LongJob: `run(body)` starts it (aborting the previous run: its late events are
 * dropped), `cancel()` closes the stream, which cancels the job on the server. `result` keeps the
 * last answer while a new run streams (a view shows it dimmed: `running`).
 */
import type { Api } from "./api";
import type { WhyEstimate, WhyProgress } from "./api-types";

export type JobEstimate = WhyEstimate;
export type JobProgress = WhyProgress;

export class LongJob<R> {
  estimate = $state.raw<JobEstimate | null>(null);
  progress = $state.raw<JobProgress | null>(null);
  result = $state.raw<R | null>(null);
  running = $state(false);
  error = $state("");
  #controller: AbortController | null = null;

  constructor(
    private client: Pick<Api, "stream">,
    private path: string,
  ) {}

  async run(body: unknown): Promise<void> {
    this.#controller?.abort();
    const c = new AbortController();
    this.#controller = c;
    this.running = true;
    this.error = "";
    this.estimate = null;
    this.progress = null;
    try {
      await this.client.stream(
        this.path,
        body,
        (ev) => {
          if (c !== this.#controller) return;
          const data = JSON.parse(ev.data);
          if (ev.event === "estimate") this.estimate = data;
          else if (ev.event === "progress") this.progress = data;
          else if (ev.event === "result") this.result = data as R;
          else if (ev.event === "error") this.error = data.detail;
        },
        c.signal,
      );
    } catch (err) {
      if (c === this.#controller && (err as Error).name !== "AbortError") this.error = (err as Error).message;
    } finally {
      if (c === this.#controller) {
        this.running = false;
        this.#controller = null;
      }
    }
  }

  /** Close the stream: the server cancels the job. */
  cancel(): void {
    this.#controller?.abort();
    this.#controller = null;
    this.running = false;
    this.progress = null;
  }
}

/** "~1,234 forwards · ~5.1 s", or what a cached answer says. */
export function estimateText(e: JobEstimate): string {
  if (e.cached) return "cached: no forward to run";
  const s = e.seconds ?? 0;
  const time = s < 1 ? "< 1 s" : s < 90 ? `~${s.toFixed(1)} s` : `~${(s / 60).toFixed(1)} min`;
  return `~${e.forwards.toLocaleString("en-US")} forwards · ${time}`;
}

/** Progress in [0, 1]. */
export function fraction(p: JobProgress | null): number {
  return p && p.total > 0 ? Math.min(1, p.done / p.total) : 0;
}
