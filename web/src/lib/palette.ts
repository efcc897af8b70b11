import type { Component } from "./types";

/** One colour per residual-stream component, shared by the chart lines and their toggles. */
export const SERIES_COLORS: Record<Component, string> = {
  resid_pre: "#a3a3a3",
  resid_mid: "#737373",
  resid_post: "#111827",
  attn_out: "#2563eb",
  mlp_out: "#dc2626",
};
