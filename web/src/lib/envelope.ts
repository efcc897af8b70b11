/**
 * Reading the trace envelope (src/lmpeek/schema.py): a JSON header and named little-endian buffers,
 * what the server sends for `Accept: application/vnd.lmpeek.trace` and what an export embeds.
 *
 *   bytes 0-3  "LMPK";  bytes 4-7  uint32 header length n;  bytes 8..8+n  UTF-8 JSON header;
 *   then each buffer at its header `offset` (a multiple of 8 from byte 0), dtype float16 / float32 /
 *   int32 (float64 only in an "exact" envelope).
 *
 * The Trace it gives has the JSON summary's shape, with typed-array views instead of nested lists
 * where the page only indexes (no copy), norms and attention entropy read on first access: 4,096
 * tokens of the default model decode in about 10 ms in Chromium (benchmarks/envelope_decode.py). Where
 * a summary holds NaN or ±inf it becomes a plain array with null there, as JSON carries it.
 */
import { decodeFloat16 } from "./float16";
import type { ModelInfo, Trace } from "./types";

export const TRACE_MEDIA_TYPE = "application/vnd.lmpeek.trace";
/** The envelope format major version this page reads (any minor version of it). */
export const READS_MAJOR = 1;

export class EnvelopeError extends Error {}

export type Dtype = "float16" | "float32" | "float64" | "int32";
export type NumArray = Float32Array | Float64Array | Int32Array;

interface BufferSpec {
  dtype: Dtype;
  shape: number[];
  offset: number;
  nbytes: number;
  as?: string;
}

export interface EnvelopeHeader {
  format: string;
  version: string;
  writer?: string;
  buffers: Record<string, BufferSpec>;
  [field: string]: unknown;
}

export interface Envelope {
  header: EnvelopeHeader;
  /** A named buffer: float16 widened to Float32Array; others are views into the envelope's bytes. */
  array(name: string): NumArray;
  shape(name: string): number[];
  has(name: string): boolean;
}

const ITEMSIZE: Record<Dtype, number> = { float16: 2, float32: 4, float64: 8, int32: 4 };
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Header and buffers of an envelope; throws EnvelopeError for a newer major version or damage. */
export function decodeEnvelope(data: ArrayBuffer | Uint8Array): Envelope {
  let bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  // typed-array views need their alignment from the start of the ArrayBuffer
  if (bytes.byteOffset % 8 !== 0) bytes = bytes.slice();
  if (!LITTLE_ENDIAN) throw new EnvelopeError("this browser is big-endian; the trace envelope is little-endian");
  if (bytes.byteLength < 8 || String.fromCharCode(...bytes.subarray(0, 4)) !== "LMPK") {
    throw new EnvelopeError("not an lmpeek trace envelope (it does not start with LMPK)");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = view.getUint32(4, true);
  if (8 + size > bytes.byteLength) throw new EnvelopeError(`trace envelope truncated: its header needs ${8 + size} bytes, got ${bytes.byteLength}`);
  let header: EnvelopeHeader;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + size))) as EnvelopeHeader;
  } catch (err) {
    throw new EnvelopeError(`trace envelope header is not valid JSON: ${(err as Error).message}`);
  }
  if (header?.format !== "lmpeek.trace") throw new EnvelopeError(`not an lmpeek trace envelope (format ${JSON.stringify(header?.format)})`);
  const [major, minor] = String(header.version).split(".").map(Number);
  if (!Number.isInteger(major) || !Number.isInteger(minor)) throw new EnvelopeError(`trace envelope version ${JSON.stringify(header.version)} is not major.minor`);
  if (major > READS_MAJOR) {
    const writer = header.writer ?? "a newer lmpeek";
    const wrote = writer.replace(/^lmpeek /, "");
    throw new EnvelopeError(
      `this trace is in envelope format ${major}.${minor}, written by ${writer}; this page reads format ${READS_MAJOR}.x only. ` +
        `Open it with lmpeek ${wrote} or newer (pip install -U 'lmpeek>=${wrote}')`,
    );
  }
  const buffers = header.buffers ?? {};
  for (const [name, s] of Object.entries(buffers)) checkBuffer(bytes, name, s); // all, read or not: a cut-off envelope fails here
  const cache = new Map<string, NumArray>();
  const spec = (name: string): BufferSpec => {
    const s = buffers[name];
    if (!s) throw new EnvelopeError(`trace envelope lacks the buffer '${name}': it is damaged`);
    return s;
  };
  return {
    header,
    has: (name) => name in buffers,
    shape: (name) => spec(name).shape,
    array(name) {
      let a = cache.get(name);
      if (a === undefined) {
        a = readBuffer(bytes, spec(name));
        cache.set(name, a);
      }
      return a;
    },
  };
}

function checkBuffer(bytes: Uint8Array, name: string, s: BufferSpec): void {
  const size = ITEMSIZE[s?.dtype];
  if (size === undefined) throw new EnvelopeError(`trace envelope buffer '${name}': unknown dtype ${s?.dtype}`);
  const n = Array.isArray(s.shape) ? s.shape.reduce((a, b) => a * b, 1) : NaN;
  if (!(n >= 0) || n * size !== s.nbytes || s.offset % size !== 0 || !(s.offset >= 0) || s.offset + s.nbytes > bytes.byteLength) {
    throw new EnvelopeError(`trace envelope buffer '${name}' (${s.dtype} [${s.shape}]) does not fit the ${bytes.byteLength} bytes received: truncated or damaged`);
  }
}

function readBuffer(bytes: Uint8Array, s: BufferSpec): NumArray {
  const n = s.nbytes / ITEMSIZE[s.dtype];
  const at = bytes.byteOffset + s.offset;
  switch (s.dtype) {
    case "float16":
      return decodeFloat16(bytes.subarray(s.offset, s.offset + s.nbytes));
    case "float32":
      return new Float32Array(bytes.buffer, at, n);
    case "float64":
      return new Float64Array(bytes.buffer, at, n);
    case "int32":
      return new Int32Array(bytes.buffer, at, n);
  }
}

/** `a` itself when every value is finite, else a plain array with null where it is not (as in JSON). */
export function finiteOrNull(a: NumArray): ArrayLike<number | null> {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Array.from(a, (v) => (Number.isFinite(v) ? v : null));
  }
  return a;
}

/** Rows of a [rows, cols] array as views (each row finiteOrNull). */
function rows(a: NumArray, nRows: number, nCols: number): ArrayLike<number | null>[] {
  const out = new Array<ArrayLike<number | null>>(nRows);
  for (let r = 0; r < nRows; r++) out[r] = finiteOrNull(a.subarray(r * nCols, (r + 1) * nCols));
  return out;
}

/** `obj[key]` computed by `make` on first read, then kept (an ordinary enumerable property after). */
function lazy<T extends object, K extends PropertyKey>(obj: T, key: K, make: () => unknown): void {
  Object.defineProperty(obj, key, {
    enumerable: true,
    configurable: true,
    get() {
      const value = make();
      Object.defineProperty(obj, key, { value, enumerable: true, configurable: true, writable: true });
      return value;
    },
  });
}

/** The Trace an envelope holds, in the shape the page reads (see lib/types Trace). */
export function traceFromEnvelope(data: ArrayBuffer | Uint8Array): Trace {
  const start = typeof performance !== "undefined" ? performance.now() : 0;
  const env = decodeEnvelope(data);
  const h = env.header as EnvelopeHeader & {
    id?: string;
    text: string;
    chat: boolean;
    tokens: string[];
    token_bytes: string[];
    partial: number[];
    topk_labels: string[];
    model: ModelInfo;
    nonfinite?: string[];
    norms: string[];
    tensors?: string[];
    omitted?: string[];
  };
  const T = h.tokens.length;
  const [, k] = env.shape("topk_ids");
  const partial = new Array<boolean>(T).fill(false);
  for (const i of h.partial ?? []) partial[i] = true;
  const offsetsFlat = env.array("offsets");
  const offsets = new Array<[number, number]>(T);
  for (let t = 0; t < T; t++) offsets[t] = [offsetsFlat[2 * t], offsetsFlat[2 * t + 1]];
  const labelIndex = env.array("topk_labels");
  const topkTokens = new Array<string[]>(T);
  for (let t = 0; t < T; t++) {
    const row = new Array<string>(k);
    for (let j = 0; j < k; j++) {
      const label = h.topk_labels[labelIndex[t * k + j]];
      if (label === undefined) throw new EnvelopeError("trace envelope: a top-k label index points past topk_labels");
      row[j] = label;
    }
    topkTokens[t] = row;
  }
  // norms and attention entropy (two thirds of the bytes; the page reads one norm row at a time and
  // Explore no attention entropy) are read on first access
  const norms: Record<string, ArrayLike<number | null>> = {};
  for (const name of h.norms) lazy(norms, name, () => finiteOrNull(env.array(`norms/${name}`)));
  const omitted = new Set(h.omitted ?? []);
  const attnEntropy = () => {
    // an export's envelope leaves it out (no view of the page reads it): say so rather than show nothing
    if (omitted.has("attn_entropy")) throw new EnvelopeError("attention entropy is not in this export");
    const [L, H] = env.shape("attn_entropy");
    const ent = env.array("attn_entropy");
    const out = new Array<ArrayLike<number | null>[]>(L);
    for (let l = 0; l < L; l++) out[l] = rows(ent.subarray(l * H * T, (l + 1) * H * T), H, T);
    return out;
  };
  const trace: Trace = {
    id: h.id ?? "",
    text: h.text,
    chat: h.chat,
    model: h.model,
    tokens: h.tokens,
    token_bytes: h.token_bytes,
    partial,
    token_ids: env.array("token_ids"),
    offsets,
    topk_ids: rows(env.array("topk_ids"), T, k) as ArrayLike<number>[],
    topk_probs: rows(env.array("topk_probs"), T, k) as ArrayLike<number>[],
    topk_tokens: topkTokens,
    entropy: finiteOrNull(env.array("entropy")),
    loss: finiteOrNull(env.array("loss")),
    true_prob: finiteOrNull(env.array("true_prob")),
    norms,
    attn_entropy: [],
    kept: h.tensors ?? [],
    nonfinite: h.nonfinite ?? [],
  };
  lazy(trace, "attn_entropy", attnEntropy);
  if (typeof performance !== "undefined" && typeof performance.measure === "function") {
    performance.measure("lmpeek:decode-trace", { start, end: performance.now(), detail: { tokens: T } });
  }
  return trace;
}
