/** The forms' own checks before a request is sent: every problem at once, in the words and field names
 * the server uses for the same problems ("top_k: must be ≤ 100; text: must not be empty"). The server
 * checks again (it is the authority); these only save a round trip and say everything in one go. */

/** The server's limits (src/lmpeek/server/app.py TraceRequest / GenerateRequest). */
export const LIMITS = {
  textChars: 200_000,
  traceTopK: 100,
  maxNewTokens: 2048,
  temperature: 100,
} as const;

const EMPTY = "must not be empty: give some text to run the model on";

function textProblem(name: string, text: string): string | null {
  if (text.trim() === "") return `${name}: ${EMPTY}`;
  if (text.length > LIMITS.textChars) return `${name}: must be at most ${LIMITS.textChars.toLocaleString("en-US")} characters`;
  return null;
}

/** A number box's value: number inputs give a number, null or "" when empty or not a number. */
type Box = number | string | null | undefined;

function asNumber(v: Box): number | null {
  if (v === null || v === undefined || (typeof v === "string" && v.trim() === "")) return null;
  const n = typeof v === "number" ? v : Number(v);
  return Number.isFinite(n) ? n : null;
}

function intProblem(name: string, v: Box, lo: number, hi: number): string | null {
  const n = asNumber(v);
  if (n === null) return `${name}: must be a whole number`;
  if (!Number.isInteger(n)) return `${name}: must be a whole number`;
  if (n < lo) return `${name}: must be ≥ ${lo}`;
  if (n > hi) return `${name}: must be ≤ ${hi}`;
  return null;
}

/** Problems with an Explore run (empty list: fine to send). */
export function traceProblems(text: string): string[] {
  const p = textProblem("text", text);
  return p ? [p] : [];
}

export interface GenerateForm {
  prompt: string;
  maxNew: Box;
  temperature: Box;
  topP: Box;
  topK: Box;
  /** the seed box's text: empty = random */
  seed: string;
}

/** Problems with a Generate form (empty list: fine to send), in the order of the form's fields. */
export function generateProblems(f: GenerateForm): string[] {
  const out: (string | null)[] = [textProblem("prompt", f.prompt), intProblem("max_new_tokens", f.maxNew, 1, LIMITS.maxNewTokens)];
  const t = asNumber(f.temperature);
  out.push(t === null ? "temperature: must be a number" : t < 0 ? "temperature: must be ≥ 0" : t > LIMITS.temperature ? `temperature: must be ≤ ${LIMITS.temperature}` : null);
  const p = asNumber(f.topP);
  out.push(p === null ? "top_p: must be a number" : p <= 0 ? "top_p: must be > 0" : p > 1 ? "top_p: must be ≤ 1" : null);
  out.push(intProblem("top_k", f.topK, 0, 2 ** 31 - 1));
  const s = f.seed.trim();
  // what torch's generator takes: -2**63 … 2**64 - 1; digits only, so a 20-digit seed is not rounded
  if (s !== "" && !/^-?\d{1,20}$/.test(s)) out.push("seed: must be a whole number (or empty for a random one)");
  else if (s !== "" && (Number(s) < -(2 ** 63) || Number(s) >= 2 ** 64)) out.push("seed: must be from -2**63 to 2**64 - 1");
  return out.filter((x): x is string => x !== null);
}

/** The seed to send: null when the box is empty (the server draws one). Call after generateProblems. */
export function seedValue(seed: string): number | null {
  const s = seed.trim();
  return s === "" ? null : Number(s);
}

/** All problems as one message, like the server's `detail`. */
export function problemsMessage(problems: string[]): string {
  return problems.join("; ");
}
