/**
 * The one entry point: `render(el, data)` mounts the whole app into `el`. The web page, a notebook
 * widget and an exported HTML file all call it; every piece of state lives inside the mounted app.
 */
import { mount, unmount } from "svelte";
import App from "./App.svelte";

export interface RenderData {
  /** base URL of the lmpeek API; "" = same origin */
  api?: string;
  /** the tab to open first */
  view?: "generate" | "explore";
  /** keep the view state (tabs, selection, controls) in the URL's hash, so a reload restores it */
  urlState?: boolean;
}

/** Mount the app into `el`; returns a function that unmounts it. */
export function render(el: HTMLElement, data: RenderData = {}): () => void {
  const app = mount(App, { target: el, props: { api: data.api ?? "", initialView: data.view ?? "generate", urlState: data.urlState ?? false } });
  return () => {
    void unmount(app);
  };
}

export default render;
