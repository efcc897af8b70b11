/** What the header says about the model, and how often it asks (pure: the health answer in, words out). */
import type { Health } from "./types";

export type StatusKind = "loading" | "ready" | "busy" | "error" | "offline";

/** The header's status: `retryIn` is the seconds left of a 503's Retry-After (≤ 0: none pending). */
export function healthStatus(health: Health | null, healthError: string, retryIn: number): { kind: StatusKind; text: string } {
  if (health === null) return healthError ? { kind: "offline", text: "offline" } : { kind: "loading", text: "loading" };
  if (health.status !== "ready") return { kind: health.status, text: health.status };
  if (retryIn > 0) return { kind: "busy", text: `model busy, retry in ${retryIn} s` };
  const pending = health.queue?.pending ?? 0;
  if (pending <= 0) return { kind: "ready", text: "ready" };
  // one worker thread: of the jobs queued or running, one runs and the rest wait
  return { kind: "busy", text: pending === 1 ? "busy: 1 running" : `busy: 1 running, ${pending - 1} waiting` };
}

/** Milliseconds until the next health check: quick while the model loads, every 2 s while it works (or
 * this page just asked for something), slowly when idle. */
export function pollDelay(health: Health | null, healthError: string, working: boolean): number {
  if (!health) return healthError ? 2000 : 500;
  if (health.status === "loading") return 500;
  if (health.status === "error") return 5000;
  return working || (health.queue?.pending ?? 0) > 0 ? 2000 : 15000;
}
