/** Number formatting for dense panels: short, fixed-width-ish, never "NaN". */

/** A compact representation: 3 significant digits, exponent for very small/large magnitudes. */
export function fmt(value: number | null | undefined, digits = 3): string {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (!Number.isFinite(value)) return value > 0 ? "∞" : "-∞";
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 1e5 || abs < 1e-3) return value.toExponential(Math.max(0, digits - 1)).replace("e+", "e");
  if (abs >= 10 ** digits) return value.toFixed(0);
  // toPrecision, then drop trailing zeros ("1.50" -> "1.5", "2.00" -> "2")
  const s = value.toPrecision(digits);
  return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
}

/** A probability as a percentage with one decimal ("77.1%"), "<0.1%" for tiny ones. */
export function fmtPct(p: number | null | undefined): string {
  if (p === null || p === undefined || Number.isNaN(p)) return "–";
  if (p > 0 && p < 0.001) return "<0.1%";
  return `${(p * 100).toFixed(1)}%`;
}

/** How long ago a Unix time (seconds) was: "12 s ago", "5 min ago", "3 h ago", else the date
 * (YYYY-MM-DD, UTC). "age unknown" when there is no time (null: the store's catalogue lacks it), never an
 * age computed from 0. `now`: Unix seconds. */
export function fmtAgo(created: number | null | undefined, now: number = Date.now() / 1000): string {
  if (created === null || created === undefined || !Number.isFinite(created)) return "age unknown";
  const s = Math.max(0, now - created);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(created * 1000).toISOString().slice(0, 10);
}
