import { describe, expect, it } from "vitest";
import { fmt, fmtPct } from "../src/lib/format";

describe("fmt", () => {
  it.each([
    [null, "–"],
    [undefined, "–"],
    [NaN, "–"],
    [Infinity, "∞"],
    [-Infinity, "-∞"],
    [0, "0"],
    [1, "1"],
    [1.5, "1.5"],
    [2.3456, "2.35"],
    [-0.12345, "-0.123"],
    [123.4, "123"],
    [1234.5, "1235"],
    [0.0001234, "1.23e-4"],
    [123456, "1.23e5"],
  ])("fmt(%s) = %s", (v, want) => {
    expect(fmt(v as number)).toBe(want);
  });
  it("honours digits", () => {
    expect(fmt(3.14159, 5)).toBe("3.1416");
  });
});

describe("fmtPct", () => {
  it.each([
    [0.771, "77.1%"],
    [1, "100.0%"],
    [0, "0.0%"],
    [0.00001, "<0.1%"],
    [null, "–"],
  ])("fmtPct(%s) = %s", (v, want) => {
    expect(fmtPct(v as number)).toBe(want);
  });
});
