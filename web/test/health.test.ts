import { describe, expect, it } from "vitest";
import { healthStatus, pollDelay } from "../src/lib/health";
import type { Health } from "../src/lib/types";

const ready = (pending: number): Health => ({ status: "ready", message: "m ready", model: null, queue: { pending, limit: 16 } });

describe("the header's model status", () => {
  it("ready, busy with one running, busy with some waiting", () => {
    expect(healthStatus(ready(0), "", 0)).toEqual({ kind: "ready", text: "ready" });
    expect(healthStatus(ready(1), "", 0)).toEqual({ kind: "busy", text: "busy: 1 running" });
    expect(healthStatus(ready(4), "", 0)).toEqual({ kind: "busy", text: "busy: 1 running, 3 waiting" });
  });
  it("a 503's Retry-After wins while it lasts", () => {
    expect(healthStatus(ready(16), "", 2)).toEqual({ kind: "busy", text: "model busy, retry in 2 s" });
    expect(healthStatus(ready(0), "", 0).kind).toBe("ready");
  });
  it("loading, failed, unreachable", () => {
    expect(healthStatus(null, "", 0).kind).toBe("loading");
    expect(healthStatus(null, "cannot reach", 0).kind).toBe("offline");
    expect(healthStatus({ status: "error", message: "bad", model: null }, "", 0)).toEqual({ kind: "error", text: "error" });
    expect(healthStatus({ status: "loading", message: "…", model: null }, "", 5).kind).toBe("loading");
  });
  it("an older server without a queue field reads as ready", () => {
    expect(healthStatus({ status: "ready", message: "", model: null }, "", 0).kind).toBe("ready");
  });
});

describe("health polling", () => {
  it("quick while loading, every 2 s while working, slow when idle", () => {
    expect(pollDelay(null, "", false)).toBe(500);
    expect(pollDelay({ status: "loading", message: "", model: null }, "", false)).toBe(500);
    expect(pollDelay(ready(0), "", false)).toBe(15000);
    expect(pollDelay(ready(0), "", true)).toBe(2000);
    expect(pollDelay(ready(2), "", false)).toBe(2000);
    expect(pollDelay({ status: "error", message: "", model: null }, "", false)).toBe(5000);
    expect(pollDelay(null, "offline", false)).toBe(2000);
  });
});
