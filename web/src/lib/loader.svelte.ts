/**
 * A debounced, abortable fetch tied to a reactive key: when key() changes the previous request is
 * aborted (its answer, if it still arrives, is dropped) and a new one starts after `delay` ms.
 *
 * `current` is the answer for the key wanted now, or null: never an older selection's answer, so a view
 * that reads `current` shows "loading" rather than old numbers under a new title. `last` is the latest
 * answer whatever its key, for a view that shows it dimmed (`stale`) while the new one loads.
 * Create it during component initialisation (it registers an $effect).
 */
import { untrack } from "svelte";

type Fetch<T> = (signal: AbortSignal) => Promise<T>;

export class Loader<T> {
  /** the key wanted now (null: nothing to load) */
  wanted = $state<string | null>(null);
  #latest = $state.raw<{ key: string; data: T } | null>(null);
  error = $state("");
  loading = $state(false);

  constructor(key: () => string | null, fn: Fetch<T>, opts: { delay?: number; cache?: Map<string, unknown> } = {}) {
    const delay = opts.delay ?? 40;
    $effect(() => {
      const k = key();
      // only the key is a dependency: the answer arriving must not restart the effect
      return untrack(() => this.#want(k, fn, delay, opts.cache));
    });
  }

  #want(k: string | null, fn: Fetch<T>, delay: number, cache?: Map<string, unknown>): (() => void) | undefined {
    this.wanted = k;
    this.error = ""; // an error belongs to the selection that had it
    if (k === null) {
      this.#latest = null;
      this.loading = false;
      return;
    }
    if (cache?.has(k)) {
      this.#latest = { key: k, data: cache.get(k) as T };
      this.loading = false;
      return;
    }
    if (this.#latest?.key === k) {
      this.loading = false;
      return;
    }
    const c = new AbortController();
    this.loading = true;
    const timer = setTimeout(async () => {
      try {
        const d = await fn(c.signal);
        if (c.signal.aborted) return; // a newer key is wanted: this answer must not overwrite it
        if (cache) {
          if (cache.size > 300) cache.delete(cache.keys().next().value!);
          cache.set(k, d);
        }
        this.#latest = { key: k, data: d };
      } catch (err) {
        if (c.signal.aborted || (err as Error).name === "AbortError") return;
        this.error = (err as Error).message;
      } finally {
        if (!c.signal.aborted) this.loading = false;
      }
    }, delay);
    return () => {
      clearTimeout(timer);
      c.abort();
    };
  }

  /** The answer for the key wanted now, or null (loading, failed, or nothing wanted). */
  get current(): { key: string; data: T } | null {
    const c = this.#latest;
    return c && c.key === this.wanted ? c : null;
  }

  /** The latest answer, possibly for an older key: show it only marked as stale. */
  get last(): { key: string; data: T } | null {
    return this.#latest;
  }

  /** What is shown is an older selection's answer (or nothing) while the wanted one loads. */
  get stale(): boolean {
    return this.wanted !== null && this.#latest?.key !== this.wanted;
  }

  /** The data if it answers `key`, else null. */
  for(key: string | null): T | null {
    const c = this.#latest;
    return c && key !== null && c.key === key ? c.data : null;
  }
}

/**
 * One abortable request, for an $effect that starts it and returns what this returns: `fn` starts at
 * once (so what it reads is the effect's dependency), `done` gets its answer and `failed` its error
 * message, unless the request was aborted by then: the effect's rerun or teardown aborts it, and its
 * late answer (or AbortError) must not overwrite the newer request's. For views that keep their own
 * state (the last answer shown while another loads, an error kept until one succeeds), where Loader's
 * per-key `current` and error do not fit.
 */
export function abortable<T>(fn: Fetch<T>, done: (data: T) => void, failed: (message: string) => void): () => void {
  const c = new AbortController();
  fn(c.signal).then(
    (d) => {
      if (!c.signal.aborted) done(d);
    },
    (err) => {
      if (c.signal.aborted || (err as Error).name === "AbortError") return;
      failed((err as Error).message);
    },
  );
  return () => c.abort();
}
