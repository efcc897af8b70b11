/** Decoding the server's little-endian float16 attention bytes. */

/** One IEEE 754 half-precision value from its 16 bits. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // subnormal (and ±0)
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Little-endian float16 bytes -> Float32Array, in pure JS (used where Float16Array is missing). */
export function decodeFloat16Js(buf: ArrayBuffer | ArrayBufferView): Float32Array {
  const bytes =
    buf instanceof ArrayBuffer ? new Uint8Array(buf) : new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  if (bytes.byteLength % 2 !== 0) throw new Error(`float16 data has an odd byte length ${bytes.byteLength}`);
  const n = bytes.byteLength / 2;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
  return out;
}

const F16: { new (b: ArrayBuffer, o?: number, n?: number): ArrayLike<number> } | undefined = (
  globalThis as Record<string, unknown>
).Float16Array as never;

/** Little-endian float16 bytes -> Float32Array; uses the native Float16Array where there is one. */
export function decodeFloat16(buf: ArrayBuffer | ArrayBufferView, useNative = true): Float32Array {
  if (useNative && F16 !== undefined && isLittleEndian()) {
    const b = buf instanceof ArrayBuffer ? buf : buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
    if (b.byteLength % 2 !== 0) throw new Error(`float16 data has an odd byte length ${b.byteLength}`);
    return Float32Array.from(new F16(b as ArrayBuffer));
  }
  return decodeFloat16Js(buf);
}

function isLittleEndian(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}

/** "1,5" -> [1, 5]; throws on anything else. */
export function parseShape(header: string | null): number[] {
  if (!header) throw new Error("missing X-Shape header");
  const dims = header.split(",").map((s) => Number(s.trim()));
  if (dims.some((d) => !Number.isInteger(d) || d < 0)) throw new Error(`bad X-Shape header: ${header}`);
  return dims;
}
