import { describe, expect, it } from "vitest";
import { placeTooltip } from "../src/lib/explore-tooltip";

// a root scrolled into view part way down a notebook: its client rect starts at (100, 300)
const root = { left: 100, top: 300, width: 800, height: 500 };
const tip = { width: 200, height: 60 };

describe("placeTooltip", () => {
  it("places the tooltip right of and below the pointer, in the root's own coordinates", () => {
    expect(placeTooltip({ x: 150, y: 320 }, root, tip)).toEqual({ left: 62, top: 36 });
  });
  it("keeps it inside the root's right edge", () => {
    const p = placeTooltip({ x: 890, y: 320 }, root, tip);
    expect(p.left + tip.width).toBeLessThanOrEqual(root.width);
    expect(p.left).toBe(800 - 200 - 4);
  });
  it("flips it above the pointer near the root's bottom, and never above the root's top", () => {
    const p = placeTooltip({ x: 150, y: 790 }, root, tip);
    expect(p.top).toBe(490 - 8 - 60);
    expect(placeTooltip({ x: 150, y: 305 }, { ...root, height: 70 }, tip).top).toBe(0);
  });
  it("flips it above the pointer where the visible area ends, even if the root goes on", () => {
    expect(placeTooltip({ x: 150, y: 400 }, root, tip, 450).top).toBe(100 - 8 - 60);
    expect(placeTooltip({ x: 150, y: 400 }, root, tip, 1000).top).toBe(116);
  });
  it("is never left of the root in a root narrower than the tooltip", () => {
    expect(placeTooltip({ x: 110, y: 320 }, { ...root, width: 150 }, tip).left).toBe(0);
  });
});
