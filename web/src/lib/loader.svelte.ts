/**
 * A debounced, abortable fetch tied to a reactive key: when key() changes the previous request is
 * aborted and a new one starts after `delay` ms. `data` is the last answer together with its key
 * (a view can tell a stale answer from a current one); `error` the last failure's message.
 * Create it during component initialisation (it registers an $effect).
 */
export class Loader<T> {
  current = $state.raw<{ key: string; data: T } | null>(null);
  error = $state("");
  loading = $state(false);

  constructor(
    key: () => string | null,
    fn: (signal: AbortSignal) => Promise<T>,
    opts: { delay?: number; cache?: Map<string, unknown> } = {},
  ) {
    const delay = opts.delay ?? 40;
    const cache = opts.cache;
    $effect(() => {
      const k = key();
      if (k === null) {
        this.current = null;
        this.error = "";
        this.loading = false;
        return;
      }
      if (cache?.has(k)) {
        this.current = { key: k, data: cache.get(k) as T };
        this.error = "";
        this.loading = false;
        return;
      }
      const c = new AbortController();
      this.loading = true;
      const timer = setTimeout(async () => {
        try {
          const d = await fn(c.signal);
          if (c.signal.aborted) return;
          if (cache) {
            if (cache.size > 300) cache.delete(cache.keys().next().value!);
            cache.set(k, d);
          }
          this.current = { key: k, data: d };
          this.error = "";
        } catch (err) {
          if (c.signal.aborted || (err as Error).name === "AbortError") return;
          this.error = (err as Error).message;
          this.current = null;
        } finally {
          if (!c.signal.aborted) this.loading = false;
        }
      }, delay);
      return () => {
        clearTimeout(timer);
        c.abort();
      };
    });
  }

  /** The data if it answers `key`, else null. */
  for(key: string | null): T | null {
    const c = this.current;
    return c && key !== null && c.key === key ? c.data : null;
  }
}
