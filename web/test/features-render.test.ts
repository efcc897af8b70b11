// @vitest-environment node
/** The Features tab's token text and histogram rendered (svelte/server): byte pieces merged, newlines
 * shown, the activating token marked, both slots painted; no NaN anywhere. */
import { render } from "svelte/server";
import { describe, expect, it } from "vitest";
import FeatureHistogram from "../src/components/FeatureHistogram.svelte";
import FeatureText from "../src/components/FeatureText.svelte";
import { slotColor } from "../src/lib/features";

/** the markup without svelte's hydration comments */
const body = (r: { body: string }) => r.body.replace(/<!--[^]*?-->/g, "");
const spans = (html: string) => [...html.matchAll(/<span class="tok[^"]*"[^>]*>/g)].map((m) => m[0]);

describe("FeatureText", () => {
  const labels = ["<0xE6><0x97>", "<0xA5>", " def", "\n", "x"];
  const SA = { min: -1, max: 2 };
  const SB = { min: 0, max: 1 };
  it("merges byte pieces, shows newlines, marks the activating token, paints slot A and slot B", () => {
    const html = body(
      render(FeatureText, {
        props: { labels, a: { feature: 1, values: [0, 0, 2, -1, 0], span: SA }, b: { feature: 2, values: [0, 0, 0, 0, 1], span: SB }, marked: 2, breaks: true, testid: "t" },
      }),
    );
    const s = spans(html);
    expect(s).toHaveLength(5);
    expect(html).toContain(">日</span>"); // the character once, on its first piece
    expect(s[1]).toContain("cont");
    expect(s[2]).toContain("mark");
    expect(s[2]).toContain(`background-color: ${slotColor(0, 2, SA)}`);
    expect(s[3]).toContain(`background-color: ${slotColor(0, -1, SA)}`); // negative: the other hue
    expect(s[4]).toContain(`box-shadow: inset 0 -3px 0 ${slotColor(1, 1, SB)}`);
    expect(s[0]).not.toContain("background-color");
    expect(html).toMatch(/<span class="nl[^"]*">↵<\/span>\n<\/span>/); // a newline shown and kept as a line break
    expect(html).toContain("> def</span>"); // the leading space kept
    expect(html).not.toMatch(/NaN|undefined/);
  });
  it("one-line examples: the newline shown without breaking the line", () => {
    const html = body(render(FeatureText, { props: { labels, testid: "t" } }));
    expect(html).toMatch(/<span class="nl[^"]*">↵<\/span><\/span>/);
  });
});

describe("FeatureHistogram", () => {
  it("bars and density; a feature never active says so", () => {
    const edges = [0, 1e-4, 1e-3, 1e-2, null];
    const html = render(FeatureHistogram, { props: { edges, counts: [0, 3, 1, 0], bins: [{ bin: 0, lo: 1e-4, hi: 5e-3, count: 2, share: 0.02 }, { bin: 1, lo: 5e-3, hi: 0.01, count: 2, share: 0.02 }], n: 100, count: 4, countNeg: 2 } }).body.replace(/<!--[^]*?-->/g, "");
    expect(html).toContain('data-bars="2"');
    expect(html).toContain("density <b>4%</b>");
    expect(html).not.toMatch(/NaN|Infinity/);
    const none = render(FeatureHistogram, { props: { edges, counts: [0, 0, 0, 0], bins: [], n: 100, count: 0, countNeg: 0 } }).body;
    expect(none).toContain("feature-hist-none");
  });
});
