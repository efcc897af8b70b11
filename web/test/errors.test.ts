import { describe, expect, it } from "vitest";
import { errorMessage } from "../src/lib/api";
import { generateProblems, problemsMessage, traceProblems, type GenerateForm } from "../src/lib/formcheck";

describe("errorMessage: one readable message, never raw JSON", () => {
  it.each([
    // the server's one string (every bad field in it) is shown as it is, whatever else the body holds
    [422, '{"detail": "top_k: must be ≤ 100; text: must not be empty", "errors": [{"loc": ["body", "top_k"]}]}', "top_k: must be ≤ 100; text: must not be empty"],
    [503, '{"detail": "the model is busy: 16 jobs queued; try again in a few seconds"}', "the model is busy: 16 jobs queued; try again in a few seconds"],
    // an older server's list: every item, with its field, once
    [422, '{"detail": [{"loc": ["body", "top_k"], "msg": "too big"}, {"loc": ["body", "text"], "msg": "empty"}]}', "top_k: too big; text: empty"],
    [422, '{"detail": [{"loc": ["query", "layer"], "msg": "x"}, {"loc": ["query", "layer"], "msg": "x"}]}', "layer: x"],
    [500, '{"message": "boom"}', "HTTP 500: the server gave no reason"],
    [500, "Internal Server Error", "HTTP 500: Internal Server Error"],
    [502, "<html><body><h1>502 Bad Gateway</h1></body></html>", "HTTP 502: 502 Bad Gateway"],
    [502, "", "HTTP 502"],
  ])("errorMessage(%s, %j)", (status, body, want) => {
    const got = errorMessage(status, body);
    expect(got).toBe(want);
    expect(got).not.toContain("{");
  });
});

const ok: GenerateForm = { prompt: "Hello", maxNew: 32, temperature: 0.7, topP: 0.95, topK: 50, seed: "" };

describe("form checks: every problem at once, in the server's words", () => {
  it("a good form has none", () => {
    expect(generateProblems(ok)).toEqual([]);
    expect(generateProblems({ ...ok, seed: "-12", temperature: 0, topK: 0, topP: 1 })).toEqual([]);
    expect(traceProblems("hi")).toEqual([]);
  });
  it("lists all bad fields in the form's order", () => {
    const p = generateProblems({ prompt: "  ", maxNew: 0, temperature: -1, topP: 2, topK: 1.5, seed: "abc" });
    expect(p).toEqual([
      "prompt: must not be empty: give some text to run the model on",
      "max_new_tokens: must be ≥ 1",
      "temperature: must be ≥ 0",
      "top_p: must be ≤ 1",
      "top_k: must be a whole number",
      "seed: must be a whole number (or empty for a random one)",
    ]);
    expect(problemsMessage(p.slice(0, 2))).toBe("prompt: must not be empty: give some text to run the model on; max_new_tokens: must be ≥ 1");
  });
  it.each([
    [{ maxNew: 4096 }, "max_new_tokens: must be ≤ 2048"],
    [{ maxNew: null }, "max_new_tokens: must be a whole number"],
    [{ temperature: "" }, "temperature: must be a number"],
    [{ temperature: 101 }, "temperature: must be ≤ 100"],
    [{ topP: 0 }, "top_p: must be > 0"],
    [{ topK: -1 }, "top_k: must be ≥ 0"],
    [{ seed: "1e5" }, "seed: must be a whole number (or empty for a random one)"],
    [{ seed: "99999999999999999999" }, "seed: must be from -2**63 to 2**64 - 1"],
  ] as [Partial<GenerateForm>, string][])("%j", (change, want) => {
    expect(generateProblems({ ...ok, ...change })).toEqual([want]);
  });
  it("text: empty or too long", () => {
    expect(traceProblems(" \n")).toEqual(["text: must not be empty: give some text to run the model on"]);
    expect(traceProblems("x".repeat(200_001))).toEqual(["text: must be at most 200,000 characters"]);
  });
});
