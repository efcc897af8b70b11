// @vitest-environment node
/** The Why tab's span targets, user-drawn spans and bar actions (lib/why.ts, WhyScores.svelte): the
 * request bodies, the drawn spans as character ranges, the token × input matrix and its totals, and
 * the ablate / patch intervention a bar asks for (lib/actions.svelte.ts). */
import { render } from "svelte/server";
import { describe, expect, it } from "vitest";
import WhyScores from "../src/components/WhyScores.svelte";
import { pendingSerial, requestIntervention, take } from "../src/lib/actions.svelte";
import { ablateRequest, addSpan, charRanges, EMBED_HOOK, matrix, patchRequest, removeSpanAt, requestBody, scoreText, spanOf, type WhyResult } from "../src/lib/why";

const base = { text: "The cat sat", target: 5, contrast: 7, method: "occlusion", features: "words", steps: null, faithfulness: false };

function result(scores: (number | null)[][], labels: string[]): WhyResult {
  return {
    method: "occlusion",
    target: "log_prob of span",
    target_labels: labels,
    baseline: "pad",
    features: "words",
    segments: [
      { label: "The", tokens: [0, 1] },
      { label: " cat sat", tokens: [1, 4] },
      { label: " on", tokens: [4, 5] },
    ],
    tokens: ["The", " cat", " s", "at", " on"],
    scores,
    delta: scores.map(() => 0),
    relative_delta: scores.map(() => 0),
    f_input: scores.map(() => -1),
    f_baseline: scores.map(() => -2),
    steps: null,
    samples: null,
    forwards: 6,
    seconds: 0.1,
    faithfulness: null,
    cached: false,
  };
}

describe("span targets in the request", () => {
  it("a continuation or N generated tokens replace target and contrast; the score is sent when not log-prob", () => {
    expect(requestBody({ ...base, span: " on the mat", score: "prob" })).toEqual({
      text: "The cat sat", method: "occlusion", features: "words", faithfulness: false, span: " on the mat", score: "prob",
    }); // prettier-ignore
    expect(requestBody({ ...base, generate: 12, span: null })).toEqual({ text: "The cat sat", method: "occlusion", features: "words", faithfulness: false, generate: 12 });
    // the next token: as before (no score key for log-prob, the default)
    expect(requestBody({ ...base, score: "logprob" })).toEqual({ text: "The cat sat", method: "occlusion", features: "words", faithfulness: false, target: 5, contrast: 7 });
  });

  it("user spans go as character ranges with features=spans", () => {
    const body = requestBody({ ...base, target: null, contrast: null, features: "spans", spans: [[4, 7], [8, 11]] });
    expect(body).toEqual({ text: "The cat sat", method: "occlusion", features: "spans", faithfulness: false, spans: [[4, 7], [8, 11]] });
  });
});

describe("drawing spans over the tokens", () => {
  it("a drag makes a span in either direction and replaces the spans it overlaps", () => {
    let s = addSpan([], 3, 1);
    expect(s).toEqual([[1, 4]]);
    s = addSpan(s, 6, 7);
    expect(s).toEqual([[1, 4], [6, 8]]);
    s = addSpan(s, 2, 6); // overlaps both: they go
    expect(s).toEqual([[2, 7]]);
    expect(spanOf(s, 4)).toBe(0);
    expect(spanOf(s, 7)).toBe(-1);
    expect(removeSpanAt(s, 5)).toEqual([]);
    expect(removeSpanAt(s, 9)).toEqual([[2, 7]]);
  });

  it("a chat template token ends a span", () => {
    const template = [false, false, true, false];
    expect(addSpan([], 0, 3, template)).toEqual([[0, 2]]);
    expect(addSpan([], 2, 3, template)).toEqual([]); // starting on the template token: nothing
  });

  it("token ranges become the characters they cover (empty byte-piece spans skipped)", () => {
    const offsets: [number, number][] = [[0, 3], [3, 7], [7, 8], [8, 8], [8, 11]];
    expect(charRanges([[1, 2], [2, 5]], offsets)).toEqual([[3, 7], [7, 11]]);
    expect(charRanges([[3, 4]], offsets)).toEqual([]); // a token with no characters
  });
});

describe("the token × input matrix", () => {
  it("rows are the target tokens, columns the segments, with row and column totals", () => {
    const m = matrix(result([[1, -2, 0.5], [0.25, null, -1]], [" on", " the"]));
    expect(m.rows).toEqual([" on", " the"]);
    expect(m.cols).toEqual(["The", " cat sat", " on"]);
    expect(m.values).toEqual([[1, -2, 0.5], [0.25, 0, -1]]);
    expect(m.rowTotals).toEqual([-0.5, -0.75]);
    expect(m.colTotals).toEqual([1.25, -2, -0.5]);
    expect(m.max).toBe(2);
  });

  it("is drawn for a span (several rows), with the bars as column totals and an action pair per bar", () => {
    const html = render(WhyScores, { props: { result: result([[1, -2, 0.5], [0.25, null, -1]], [" on", " the"]), text: "The cat sat on", actions: true } }).body;
    expect(html).toContain('data-testid="why-matrix"');
    const cells = [...html.matchAll(/data-testid="why-cell" data-score="([^"]+)"/g)].map((x) => x[1]);
    expect(cells).toEqual(["+1.000", "-2.000", "+0.500", "+0.250", "+0.000", "-1.000"]);
    const rows = [...html.matchAll(/data-testid="why-row-total">([^<]+)</g)].map((x) => x[1]);
    expect(rows).toEqual([scoreText(-0.5), scoreText(-0.75)]);
    const bars = [...html.matchAll(/data-testid="why-bar-score">([^<]+)</g)].map((x) => x[1]);
    expect(bars).toEqual(["+1.250", "-2.000", "-0.500"]);
    expect(html.match(/data-testid="why-bar-ablate"/g)).toHaveLength(3);
    expect(html.match(/data-testid="why-bar-patch"/g)).toHaveLength(3);
  });

  it("is not drawn for one next token; no actions where they cannot run (an export)", () => {
    const html = render(WhyScores, { props: { result: result([[1, -2, 0.5]], [" on"]), text: "x" } }).body;
    expect(html).not.toContain('data-testid="why-matrix"');
    expect(html).not.toContain('data-testid="why-bar-ablate"');
  });
});

describe("bar actions", () => {
  const r = result([[1, -2, 0.5]], [" on"]);

  it("ablate zeroes the segment's token positions at the embeddings and runs at once", () => {
    const before = pendingSerial();
    requestIntervention(ablateRequest("The cat sat on", r, 1));
    expect(pendingSerial()).toBe(before + 1);
    expect(take()).toEqual({
      text: "The cat sat on",
      run: true,
      edits: [{ action: "ablate", hook: "blocks.0.hook_resid_pre", mode: "zero", positions: [1, 2, 3], label: 'bar " cat sat"' }],
    });
    expect(take()).toBeNull();
  });

  it("patch puts prompt B's residual stream in at those positions", () => {
    requestIntervention(patchRequest("The cat sat on", r, 2, "A dog ran off"));
    const got = take();
    expect(got?.run).toBe(true);
    expect(got?.edits).toEqual([{ action: "patch", hook: EMBED_HOOK, source: "A dog ran off", positions: [4], label: 'bar " on"' }]);
    expect(EMBED_HOOK).toBe("blocks.0.hook_resid_pre");
  });
});
