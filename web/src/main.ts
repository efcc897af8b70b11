/**
 * The one entry point: `render(el, data)` mounts the whole app into `el`. The web page, a notebook
 * widget and an exported HTML file all call it; every piece of state lives inside the mounted app.
 * The default export is the anywidget module (`render({model, el})`, see lmpeek/views/widget.py).
 */
import { mount, unmount } from "svelte";
import App from "./App.svelte";
import { Api } from "./lib/api";
import { decodePack, hasFeatures, hasWhy, staticFetcher, widgetFetcher, type WidgetModel } from "./lib/transport";

export type Host = "app" | "widget" | "static";
export type View = "generate" | "explore" | "attention" | "features" | "why";

/** A view name from outside (a widget trait, an export's page): anything unknown is Explore. */
export function viewOf(v: unknown): View {
  return v === "generate" || v === "attention" || v === "features" || v === "why" ? v : "explore";
}

/** A feature to open in the Features tab: its source's id and index. */
export interface OpenFeature {
  source: string;
  feature: number;
}

/** A feature from outside (widget traits, an export's pack): a source id and an index ≥ 0, else none. */
export function featureOf(source: unknown, feature: unknown): OpenFeature | undefined {
  const f = Number(feature);
  if (typeof source !== "string" || !source || !Number.isInteger(f) || f < 0) return undefined;
  return { source, feature: f };
}

export interface RenderData {
  /** base URL of the lmpeek API; "" = same origin */
  api?: string;
  /** the tab to open first (an export or a Trace alone has no Generate tab: Explore instead) */
  view?: View;
  /** keep the view state (tabs, selection, controls) in the URL's hash, so a reload restores it */
  urlState?: boolean;
  /** an export's recorded responses (lmpeek/views/export.py): no server, only what was recorded */
  pack?: Uint8Array;
  /** a client to use instead of HTTP to `api` (the notebook widget's) */
  client?: Api;
  /** a stored trace to open in Explore */
  trace?: string;
  /** a prompt to put in the Generate view */
  prompt?: string;
  /** a feature whose page the Features tab opens (view "features") */
  feature?: OpenFeature;
  host?: Host;
}

/** Mount the app into `el`; returns a function that unmounts it. anywidget calls the module's
 * `render` too, with `{model, el}`: that is the notebook widget. */
export function render(el: HTMLElement | WidgetArgs, data: RenderData = {}): () => void {
  if (!(el instanceof HTMLElement)) return renderWidget(el);
  return mountApp(el, data);
}

function mountApp(el: HTMLElement, data: RenderData): () => void {
  let client = data.client ?? new Api(data.api ?? "");
  let host: Host = data.host ?? "app";
  let trace = data.trace;
  let feature = data.feature;
  // a file shows the Features tab only when the exporter recorded its answers (lmpeek/views/features_export.py)
  let featuresTab = true;
  // …and its Why tab only when it recorded an attribution (--include why); a live widget runs it
  let whyTab = host === "widget";
  if (data.pack) {
    const pack = decodePack(data.pack);
    client = new Api("", staticFetcher(pack));
    host = "static";
    trace = pack.header.trace_id ?? undefined;
    feature ??= featureOf(pack.header.open?.source, pack.header.open?.feature);
    featuresTab = hasFeatures(pack);
    whyTab = hasWhy(pack);
  }
  const staticView = data.view === "attention" || (data.view === "features" && featuresTab) || (data.view === "why" && whyTab) ? data.view : "explore";
  const props = {
    api: data.api ?? "",
    client,
    host,
    openTrace: trace,
    openFeature: feature,
    featuresTab,
    whyTab,
    prompt: data.prompt,
    initialView: host === "static" ? staticView : (data.view ?? (trace ? "explore" : "generate")),
    urlState: data.urlState ?? false,
  } as const;
  const app = mount(App, { target: el, props });
  return () => {
    void unmount(app);
  };
}

function bytes(v: unknown): Uint8Array | undefined {
  if (v instanceof DataView) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (v instanceof Uint8Array) return v;
  return undefined;
}

interface WidgetArgs {
  model: WidgetModel;
  el: HTMLElement;
}

/** anywidget: the widget's model says whether a kernel Session answers (live) or a pack does. */
function renderWidget({ model, el }: WidgetArgs): () => void {
  const live = model.get("live") === true;
  const pack = bytes(model.get("pack"));
  // the output grows with the app (App's flow layout, host "widget"/"static"): no fixed height here; the
  // widget's height only caps the token pane, which scrolls inside
  el.style.setProperty("--lmpeek-pane-max", `${Number(model.get("height")) || 640}px`);
  el.style.position = "relative";
  if (!live && pack && pack.length) return mountApp(el, { pack, host: "static", view: viewOf(model.get("view")) });
  const kernel = widgetFetcher(model);
  const stop = mountApp(el, {
    client: new Api("", kernel.fetch),
    host: "widget",
    trace: String(model.get("trace_id") ?? "") || undefined,
    view: viewOf(model.get("view")),
    feature: featureOf(model.get("feature_source"), model.get("feature")),
    prompt: String(model.get("prompt") ?? "") || undefined,
  });
  return () => {
    stop();
    kernel.close();
  };
}

export default { render: renderWidget };
