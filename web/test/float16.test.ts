import { describe, expect, it } from "vitest";
import { decodeFloat16, decodeFloat16Js, halfToFloat, parseShape } from "../src/lib/float16";

describe("halfToFloat", () => {
  it.each([
    [0x0000, 0],
    [0x3c00, 1],
    [0xc000, -2],
    [0x3800, 0.5],
    [0x3555, 0.333251953125],
    [0x7bff, 65504],
    [0x0001, 2 ** -24],
    [0x0400, 2 ** -14],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
  ])("halfToFloat(0x%s) = %s", (bits, want) => {
    expect(halfToFloat(bits)).toBe(want);
  });
  it("NaN", () => {
    expect(halfToFloat(0x7e00)).toBeNaN();
  });
  it("-0", () => {
    expect(Object.is(halfToFloat(0x8000), -0)).toBe(true);
  });
});

describe("decodeFloat16", () => {
  const bytes = new Uint8Array([0x00, 0x3c, 0x00, 0x38, 0x00, 0xc0]); // 1, 0.5, -2 little-endian
  it("pure JS decoder", () => {
    expect(Array.from(decodeFloat16Js(bytes.buffer))).toEqual([1, 0.5, -2]);
  });
  it("accepts views with an offset", () => {
    const padded = new Uint8Array([9, 9, ...bytes]);
    expect(Array.from(decodeFloat16Js(padded.subarray(2)))).toEqual([1, 0.5, -2]);
    expect(Array.from(decodeFloat16(padded.subarray(2)))).toEqual([1, 0.5, -2]);
  });
  it("native and JS paths agree", () => {
    const all = new Uint16Array(4096);
    for (let i = 0; i < all.length; i++) all[i] = (i * 16) & 0xffff;
    const a = decodeFloat16(all.buffer, true);
    const b = decodeFloat16(all.buffer, false);
    expect(Array.from(a)).toEqual(Array.from(b));
  });
  it("rejects odd lengths", () => {
    expect(() => decodeFloat16Js(new Uint8Array(3).buffer)).toThrow(/odd/);
  });
});

describe("parseShape", () => {
  it.each([
    ["1,5", [1, 5]],
    ["7, 7", [7, 7]],
    ["3", [3]],
  ])("parseShape(%j)", (h, want) => {
    expect(parseShape(h)).toEqual(want);
  });
  it.each([[null], [""], ["1,x"], ["-1,2"], ["1.5"]])("rejects %j", (h) => {
    expect(() => parseShape(h)).toThrow();
  });
});
