/**
 * The Explore view's state and actions, apart from its markup: the open tabs (one trace each), the
 * controls, the metric values fetched for the shown pane(s), the selected token's prediction, and the
 * view state a link keeps. The view and its components read and set these fields; nothing here touches
 * the DOM, so it can be driven from a test with a fake client.
 * Create it during component initialisation (the metric Loader and the limits reset register $effects).
 */
import { untrack } from "svelte";
import type { Api } from "./api";
import { DEFAULT_POINT, FALLBACK_POINTS, addsToResidual, findPoint, hookName } from "./hooks";
import { Loader } from "./loader.svelte";
import { clampIndex, drawnMap, isTextField, METRICS, metricInfo, paneValues, predictionRows, predictionStats, remoteKey, type FetchArgs, type Metric } from "./metrics";
import { problemsMessage, traceProblems } from "./formcheck";
import { fetchMetric } from "./remote";
import { SCALES, withOverrides, type Scale } from "./scale";
import { exactText } from "./tokens";
import { remapTabs, type ExploreState } from "./viewstate";
import type { HookPoint, Limits, MetricData, ModelInfo, Rope, Sample, Trace } from "./types";

export const DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog.\nThe capital of France is Paris, and the capital of Italy is Rome.";
/** an index with no known bound (a residual dimension): large, but still clamped before it is sent */
export const BIG = 1 << 20;

/** One open text: its trace, and the text that was run (the box may hold another since). */
export interface Tab {
  uid: number;
  title: string;
  text: string;
  trace: Trace;
}

/** One prediction row as the bars draw it. */
export interface PredBar {
  token: string;
  prob: number | null;
  id: number;
  cls: string;
  note: string;
}

export function titleOf(s: string): string {
  const t = s.replace(/\s+/g, " ").trim();
  return t.length > 24 ? `${t.slice(0, 23)}…` : t || "(empty)";
}

export class Explorer {
  text = $state(DEFAULT_TEXT);
  running = $state(false);
  error = $state("");
  selected = $state(0);
  metric = $state<Metric>("loss");
  layer = $state(0);
  head = $state(0);
  point = $state(DEFAULT_POINT);
  points = $state.raw<HookPoint[]>(FALLBACK_POINTS);
  dim = $state(0);
  neuron = $state(0);
  scale = $state<Scale>("raw");
  // on by default: most LMs park massive activations and attention on the first position (a residual
  // norm of ~22,000 against 150–250 elsewhere), which would wash out every other token's colour; left
  // out, it is still drawn (clipped, marked) and the limits come from the rest
  skipFirst = $state(true);
  rope = $state<Rope>("full");
  opacity = $state(0.8);
  showNewlines = $state(true);

  // ---- tabs: several texts open at once; the active one is `trace` -------------------------------
  tabs = $state.raw<Tab[]>([]);
  activeTab = $state(-1);
  otherTab = $state(-1);
  sideBySide = $state(false);
  samples = $state.raw<Sample[]>([]);
  samplesError = $state("");
  /** the user's colour limits, laid over the server's until what is coloured changes */
  edited = $state<Partial<Limits>>({});

  #nextUid = 1;
  #controller: AbortController | null = null;
  #client: () => Api;
  #model: () => ModelInfo;
  #remote: Loader<MetricData>;

  constructor(client: () => Api, model: () => ModelInfo) {
    this.#client = client;
    this.#model = model;
    const cache = new Map<string, unknown>();
    // values and colour scale come from the server (GET /metric), one request for one or two panes
    this.#remote = new Loader<MetricData>(
      () => this.keyA,
      (s) => fetchMetric(this.client, this.trace!.id, this.metric, this.fetchArgs, this.otherId, s),
      { cache },
    );
    $effect(() => {
      void this.limitsKey;
      untrack(() => (this.edited = {}));
    });
  }

  get client(): Api {
    return this.#client();
  }
  get model(): ModelInfo {
    return this.#model();
  }

  readonly trace = $derived<Trace | null>(this.tabs[this.activeTab]?.trace ?? null);
  readonly other = $derived<Trace | null>(this.sideBySide && this.otherTab !== this.activeTab ? (this.tabs[this.otherTab]?.trace ?? null) : null);
  readonly T = $derived(this.trace?.tokens.length ?? 0);
  readonly info = $derived(metricInfo(this.metric));
  readonly pointInfo = $derived(findPoint(this.points, this.point) ?? FALLBACK_POINTS[4]);
  readonly hook = $derived(this.pointInfo.per_layer ? hookName(this.point, this.layer) : this.point);
  readonly perHead = $derived(this.pointInfo.per_head);
  readonly hookHead = $derived(this.perHead ? this.head : null);
  readonly rotary = $derived(this.points.some((p) => p.point === "attn.hook_rot_q"));
  /** an MLP neuron index lies below the MLP's width; an out-of-range number is clamped, never sent */
  readonly nNeurons = $derived(this.model.d_mlp ?? BIG);

  /** The hook points and samples the server offers (an older server: the residual-stream points only). */
  init(): void {
    this.client.components().then(
      (ps) => (this.points = ps),
      () => {},
    );
    this.client.samples().then(
      (s) => (this.samples = s),
      (err) => (this.samplesError = (err as Error).message),
    );
  }

  destroy(): void {
    this.#controller?.abort();
  }

  // ---- running a text / loading a stored trace ---------------------------------------------------
  async load(fetcher: (signal: AbortSignal) => Promise<Trace>, opts: { title?: string; newTab?: boolean } = {}): Promise<void> {
    this.#controller?.abort();
    const c = (this.#controller = new AbortController());
    this.running = true;
    this.error = "";
    try {
      const t = await fetcher(c.signal);
      if (c.signal.aborted) return;
      this.selected = 0;
      const tab: Tab = { uid: this.#nextUid++, title: opts.title ?? titleOf(t.text), text: t.text, trace: t };
      if (opts.newTab || this.activeTab < 0) {
        if (this.activeTab >= 0) this.otherTab = this.activeTab;
        this.tabs = [...this.tabs, tab];
        this.activeTab = this.tabs.length - 1;
      } else {
        this.tabs = this.tabs.map((x, i) => (i === this.activeTab ? tab : x));
      }
    } catch (err) {
      if ((err as Error).name !== "AbortError") this.error = (err as Error).message;
    } finally {
      if (this.#controller === c) {
        this.running = false;
        this.#controller = null;
      }
    }
  }

  run(newTab = false): void {
    const t = this.text;
    // the form's own checks, every problem at once; nothing is sent and the shown result stays
    const problems = traceProblems(t);
    if (problems.length) {
      this.error = problemsMessage(problems);
      return;
    }
    void this.load((signal) => this.client.trace(t, 10, signal), { newTab });
  }

  /** Show a stored trace (e.g. a generation's) in a new tab. */
  loadTrace(id: string): Promise<void> {
    return this.load(
      async (signal) => {
        const t = await this.client.getTrace(id, signal);
        this.text = exactText(t); // never a literal U+FFFD for a character cut by the end of a generation
        return t;
      },
      { newTab: true },
    );
  }

  async openSample(id: string): Promise<void> {
    if (!id) return;
    try {
      const s = await this.client.sample(id);
      this.text = s.text;
      void this.load((signal) => this.client.trace(s.text, 10, signal), { title: s.title, newTab: true });
    } catch (err) {
      this.error = (err as Error).message;
    }
  }

  // ---- view state: what the URL keeps (lib/viewstate), and reopening it after a reload ------------
  /** The open tabs (stored trace ids) and every control, for the URL. */
  viewState(): ExploreState {
    return {
      traces: this.tabs.map((t) => t.trace.id),
      tab: this.activeTab,
      other: this.otherTab,
      sideBySide: this.sideBySide,
      token: this.selected,
      layer: this.layer,
      head: this.head,
      hook: this.point,
      metric: this.metric,
      dim: this.dim,
      neuron: this.neuron,
      scale: this.scale,
      rope: this.rope,
    };
  }

  /** Reopen a link's tabs from the store and set its controls; a trace that is gone is named in the error. */
  async restore(s: Partial<ExploreState>): Promise<void> {
    const ids = s.traces ?? [];
    const got: (Tab | null)[] = [];
    const missing: string[] = [];
    this.running = true;
    for (const id of ids) {
      try {
        const t = await this.client.getTrace(id);
        got.push({ uid: this.#nextUid++, title: titleOf(t.text), text: t.text, trace: t });
      } catch (err) {
        got.push(null);
        missing.push(`${id} (${(err as Error).message})`);
      }
    }
    this.running = false;
    const kept = remapTabs(got.map((t) => t !== null));
    const before = this.tabs.length; // a link opened on a page with tabs: its tabs come after them
    const to = (i: number) => (kept(i) < 0 ? -1 : before + kept(i));
    this.tabs = [...this.tabs, ...got.filter((t): t is Tab => t !== null)];
    if (this.tabs.length) {
      this.activeTab = Math.max(0, to(s.tab ?? 0));
      this.otherTab = to(s.other ?? -1);
      this.sideBySide = !!s.sideBySide && this.otherTab >= 0 && this.otherTab !== this.activeTab;
      this.text = this.tabs[this.activeTab].text;
    }
    const model = this.model;
    if (s.metric && METRICS.some((m) => m.value === s.metric)) this.metric = s.metric as Metric;
    if (s.scale && SCALES.some((x) => x.value === s.scale)) this.scale = s.scale as Scale;
    if (s.rope === "full" || s.rope === "applied" || s.rope === "not_applied") this.rope = s.rope;
    if (s.hook) this.point = s.hook;
    if (s.layer !== undefined) this.layer = clampIndex(s.layer, model.n_layers);
    if (s.head !== undefined) this.head = clampIndex(s.head, model.n_heads);
    if (s.dim !== undefined) this.dim = clampIndex(s.dim, BIG);
    if (s.neuron !== undefined) this.neuron = clampIndex(s.neuron, this.nNeurons);
    if (s.token !== undefined) this.selected = clampIndex(s.token, this.T);
    if (missing.length)
      this.error =
        `The link's ${missing.length === 1 ? "trace is" : `${missing.length} traces are`} no longer stored: ${missing.join("; ")}. ` +
        `Old traces are evicted to keep the store within its disk budget; run the text again, or reopen one under "Stored traces".`;
  }

  // ---- tabs ---------------------------------------------------------------------------------------
  switchTab(i: number): void {
    if (i === this.activeTab || !this.tabs[i]) return;
    if (this.otherTab === i || this.otherTab < 0 || !this.sideBySide) this.otherTab = this.activeTab;
    this.activeTab = i;
    this.text = this.tabs[i].text;
    this.selected = clampIndex(this.selected, this.tabs[i].trace.tokens.length);
  }
  closeTab(i: number): void {
    this.tabs = this.tabs.filter((_, j) => j !== i);
    const fix = (k: number) => (k === i ? -1 : k > i ? k - 1 : k);
    this.otherTab = fix(this.otherTab);
    this.activeTab = fix(this.activeTab);
    if (this.activeTab < 0 && this.tabs.length) this.activeTab = Math.max(0, Math.min(i, this.tabs.length - 1));
    if (this.tabs[this.activeTab]) this.text = this.tabs[this.activeTab].text;
    if (this.otherTab === this.activeTab) this.otherTab = -1;
    this.selected = clampIndex(this.selected, this.tabs[this.activeTab]?.trace.tokens.length ?? 0);
  }
  toggleSide(): void {
    this.sideBySide = !this.sideBySide;
    if (this.sideBySide && (this.otherTab < 0 || this.otherTab === this.activeTab || !this.tabs[this.otherTab]))
      this.otherTab = this.tabs.findIndex((_, i) => i !== this.activeTab);
  }

  // ---- values and colour scale of the shown pane(s) ---------------------------------------------
  readonly selB = $derived(this.other ? clampIndex(this.selected, this.other.tokens.length) : 0);
  readonly fetchArgs = $derived<FetchArgs>({
    hook: this.hook,
    head: this.info.attention ? this.head : this.hookHead,
    layer: this.layer,
    selected: this.selected,
    dim: this.dim,
    neuron: this.neuron,
    scale: this.scale,
    skipFirst: this.skipFirst,
    rope: this.info.attention && this.rotary ? this.rope : "full",
  });
  // the compared text rides along (`with`): its values come back with limits shared by both panes
  readonly otherId = $derived(this.other?.id ?? null);
  readonly keyA = $derived(this.trace ? remoteKey(this.trace.id, this.metric, this.fetchArgs, this.otherId) : null);
  get data(): MetricData | null {
    return this.#remote.current?.data ?? null;
  }
  get remoteError(): string {
    return this.#remote.error;
  }
  get remoteLoading(): boolean {
    return this.#remote.loading;
  }
  readonly values = $derived(paneValues(this.data?.values, this.T));
  readonly valuesB = $derived(paneValues(this.data?.values_with, this.other?.tokens.length ?? 0));
  readonly serverScale = $derived(this.data?.scale ?? null);
  readonly map = $derived(drawnMap(this.info, this.serverScale));
  readonly limitsKey = $derived(`${this.metric}|${this.hook}|${this.hookHead}|${this.dim}|${this.neuron}|${this.scale}|${this.skipFirst}|${this.layer}`);
  readonly limits = $derived(withOverrides(this.serverScale, this.edited));
  editLimit(k: keyof Limits, v: number | undefined): void {
    const e = { ...this.edited };
    if (v === undefined) delete e[k];
    else e[k] = v;
    this.edited = e;
  }

  pickDim(d: number): void {
    this.dim = d;
    this.metric = "act-value";
  }
  pickNeuron(i: number): void {
    this.neuron = i;
    this.metric = "neuron";
  }

  // ---- keys: ←/→ the token, [/] the layer, {/} the head ----------------------------------------
  /** Handles one key press; returns whether it was the view's. */
  key(e: KeyboardEvent): boolean {
    if (!this.trace) return false;
    if (e.altKey || e.ctrlKey || e.metaKey || isTextField(e.target as Element | null)) return false;
    const step = ({ "[": [-1, 0], "]": [1, 0], "{": [0, -1], "}": [0, 1] } as Record<string, number[]>)[e.key];
    if (step) {
      this.layer = clampIndex(this.layer + step[0], this.model.n_layers);
      this.head = clampIndex(this.head + step[1], this.model.n_heads);
      return true;
    }
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return false;
    this.selected = clampIndex(this.selected + (e.key === "ArrowLeft" ? -1 : 1), this.T);
    return true;
  }

  // ---- the selected token ------------------------------------------------------------------------
  // each token shows the prediction that produced it (made at the previous position), as in Generate
  readonly predRows = $derived.by((): PredBar[] => {
    if (!this.trace || this.selected >= this.T) return [];
    return predictionRows(this.trace, this.selected, 5).map((r) => ({
      token: r.token,
      prob: r.prob,
      id: r.id,
      cls: (r.actual ? "actual" : "") + (r.extra ? " extra" : ""),
      note: r.extra ? "this token (not in top 5)" : r.actual ? "this token" : "",
    }));
  });
  readonly selStats = $derived(this.trace ? predictionStats(this.trace, this.selected) : null);
  readonly selLoss = $derived(this.selStats?.loss ?? null);
  // the shown result is of the text last run in this tab; say so once the box holds something else
  // (a generation opened here fills the box with its whole characters, exactText: that is the same text)
  readonly staleText = $derived(!!this.trace && !this.running && this.text !== this.tabs[this.activeTab]?.text && this.text !== exactText(this.trace));
  readonly usesLayer = $derived(this.metric === "neuron" || !!this.info.attention || ((this.info.hook || this.metric === "norm") && this.pointInfo.per_layer));
  readonly usesHead = $derived(!!this.info.attention || ((this.info.hook || this.metric === "norm") && this.perHead));
  readonly usesPoint = $derived(!!this.info.hook || this.metric === "norm");
  /** what the colour shows, after the metric's name (the tooltip's line) */
  readonly describe = $derived(
    this.info.attention
      ? ` L${this.layer} H${this.head}${this.rotary && this.rope !== "full" ? ` rope ${this.rope}` : ""}`
      : this.metric === "neuron"
        ? ` L${this.layer} #${this.neuron}`
        : this.usesPoint
          ? ` ${this.hook}${this.hookHead === null ? "" : ` h${this.hookHead}`}${this.metric === "act-value" ? ` dim ${this.dim}` : ""}`
          : "",
  );
  readonly residualOk = $derived(addsToResidual(this.point));
}
