/**
 * lib/envelope against fixtures the Python writer made (tests/store/envelope_fixture.py; a Python test
 * fails when they are stale): the decoded Trace must equal the JSON summary the server sends for the
 * same trace, NaN and ±inf as null, byte tokens, a kept tensor, a newer minor version read, a newer
 * major refused.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { decodeEnvelope, EnvelopeError, finiteOrNull, traceFromEnvelope } from "../src/lib/envelope";
import type { Trace } from "../src/lib/types";

// vitest runs in web/ (the client environment gives import.meta.url as a served path, not a file)
const fixture = (name: string) => new Uint8Array(readFileSync(resolve("test/fixtures", name)));
const json = JSON.parse(new TextDecoder().decode(fixture("trace-compact.json"))) as Trace & { kept: string[]; nonfinite: string[] };

/** A value with every typed array turned into a plain array, as JSON.parse would give it (-0 kept). */
function plain(v: unknown): unknown {
  if (ArrayBuffer.isView(v)) return Array.from(v as unknown as ArrayLike<number>);
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

describe("traceFromEnvelope", () => {
  const t = traceFromEnvelope(fixture("trace-compact.lmpeek"));

  it("gives what the JSON summary holds, field for field", () => {
    expect(plain(t)).toEqual(json);
  });

  it("keeps the float32 summaries as typed-array views and the awkward values as JSON has them", () => {
    expect(t.id).toBe("0123456789abcdef");
    expect(t.token_ids).toBeInstanceOf(Int32Array);
    expect(t.topk_ids[0]).toBeInstanceOf(Int32Array);
    expect(t.tokens[3]).toBe(" <0xF0>");
    expect(t.partial).toEqual([false, false, false, true, true, false]);
    expect(t.token_bytes?.[4]).toBe("9f");
    expect(t.topk_tokens[0]).toEqual(["<0xC3>", " the", "\ud800"]);
    expect(t.topk_probs[1][2]).toBeNull(); // NaN in the trace
    expect(t.topk_probs[2][0]).toBe(Math.fround(1e-30)); // float32, not rounded to 0 by float16
    expect(t.entropy[0]).toBeNull(); // +inf
    expect(t.loss[5]).toBeNull();
    expect(Object.is(t.loss[2], -0)).toBe(true);
    expect(t.attn_entropy[1][0][5]).toBeNull();
    expect(t.kept).toEqual(["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]);
    expect(t.nonfinite).toEqual(["blocks.0.hook_resid_post", "logits"]);
    expect(t.text).toBe("Zürich 東京 🙂\t\u0000");
    expect(t.chat).toBe(true);
  });

  it("reads bytes that do not start on an 8-byte boundary", () => {
    const bytes = fixture("trace-compact.lmpeek");
    const shifted = new Uint8Array(bytes.length + 3);
    shifted.set(bytes, 3);
    expect(plain(traceFromEnvelope(shifted.subarray(3)))).toEqual(json);
    expect(plain(traceFromEnvelope(bytes.slice().buffer))).toEqual(json);
  });

  it("reads a newer minor version, ignoring what it added", () => {
    const env = decodeEnvelope(fixture("trace-v1_9.lmpeek"));
    expect(env.header.version).toBe("1.9");
    expect(env.has("attribution/saliency")).toBe(true);
    expect(plain(traceFromEnvelope(fixture("trace-v1_9.lmpeek")))).toEqual(json);
  });

  it("refuses a newer major version, naming the lmpeek that reads it", () => {
    expect(() => traceFromEnvelope(fixture("trace-v2_0.lmpeek"))).toThrow(EnvelopeError);
    expect(() => traceFromEnvelope(fixture("trace-v2_0.lmpeek"))).toThrow(
      "this trace is in envelope format 2.0, written by lmpeek 9.0.0; this page reads format 1.x only. Open it with lmpeek 9.0.0 or newer (pip install -U 'lmpeek>=9.0.0')",
    );
  });

  it("refuses damaged bytes with a reason", () => {
    const bytes = fixture("trace-compact.lmpeek");
    expect(() => traceFromEnvelope(new TextEncoder().encode('{"tokens": []}'))).toThrow("does not start with LMPK");
    expect(() => traceFromEnvelope(bytes.slice(0, 40))).toThrow("truncated");
    expect(() => traceFromEnvelope(bytes.slice(0, bytes.length - 16))).toThrow("truncated or damaged");
    const bad = bytes.slice();
    bad[8] = 0xff;
    expect(() => traceFromEnvelope(bad)).toThrow("not valid JSON");
  });
});

describe("an export's envelope", () => {
  it("leaves out norms and attention entropy, and says so when asked for them", () => {
    const t = traceFromEnvelope(fixture("trace-export.lmpeek"));
    expect(plain(t.topk_probs)).toEqual(json.topk_probs);
    expect(plain(t.loss)).toEqual(json.loss);
    expect(t.tokens).toEqual(json.tokens);
    expect(t.norms).toEqual({});
    expect(() => t.attn_entropy).toThrow("attention entropy is not in this export");
  });
});

describe("finiteOrNull", () => {
  it("returns the view itself when all is finite, else an array with null", () => {
    const ok = new Float32Array([1, 2]);
    expect(finiteOrNull(ok)).toBe(ok);
    expect(finiteOrNull(new Float32Array([1, NaN, -Infinity]))).toEqual([1, null, null]);
  });
});

describe("lazy fields", () => {
  it("decodes norms and attention entropy on first read only, then keeps them", () => {
    const t = traceFromEnvelope(fixture("trace-compact.lmpeek"));
    expect(Object.getOwnPropertyDescriptor(t, "attn_entropy")?.get).toBeTypeOf("function");
    const key = Object.keys(t.norms)[0];
    expect(Object.getOwnPropertyDescriptor(t.norms, key)?.get).toBeTypeOf("function");
    const first = t.attn_entropy;
    expect(t.attn_entropy).toBe(first);
    expect(Object.getOwnPropertyDescriptor(t, "attn_entropy")?.value).toBe(first);
    expect(t.norms[key]).toBe(t.norms[key]);
    expect(Object.getOwnPropertyDescriptor(t.norms, key)?.get).toBeUndefined();
  });
});
