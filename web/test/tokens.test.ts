import { describe, expect, it } from "vitest";
import { escapeHtml, tokenSegments, visibleToken } from "../src/lib/tokens";

describe("visibleToken", () => {
  it.each([
    [" Paris", "␣Paris"],
    ["\n", "↵"],
    ["\n\n", "↵↵"],
    ["\t", "⇥"],
    ["\r\n", "␍↵"],
    ["", "∅"],
    ["\u0000", "\\x00"],
    ["\u001b", "\\x1b"],
    ["\u00a0", "\u00a0"],
    ["\ufeff", "\\u{feff}"],
    ["<b>", "<b>"],
    ["é😀", "é😀"],
  ])("visibleToken(%j) = %j", (tok, want) => {
    expect(visibleToken(tok)).toBe(want);
  });
});

describe("tokenSegments", () => {
  it.each([
    ["abc", ["abc"]],
    ["\n", [null]],
    ["\n\n", [null, null]],
    [".\n", [".", null]],
    ["\n    ", [null, "    "]],
    ["a\nb", ["a", null, "b"]],
    ["\r\n", [null]],
    [" ", [" "]],
    ["", []],
  ])("tokenSegments(%j)", (tok, want) => {
    expect(tokenSegments(tok)).toEqual(want);
  });
});

describe("escapeHtml", () => {
  it("escapes markup", () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe("&#60;a href=&#34;x&#34;&#62;&#39;&#38;&#39;&#60;/a&#62;");
  });
});
