import { describe, expect, it } from "vitest";
import { bytePieceTitle, escapeHtml, exactText, mergeTokens, tokenSegments, visibleText, visibleToken } from "../src/lib/tokens";

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

describe("visibleText (spans: spaces and newlines kept)", () => {
  it.each([
    ["a b", "a b"],
    ["a\nb", "a\nb"],
    ["a\tb", "a⇥b"],
    ["abc\u202edef", "abc\\u{202e}def"],
    ["\u2066x\u2069", "\\u{2066}x\\u{2069}"],
    ["zero\u200bwidth", "zero\\u{200b}width"],
    ["a\u200db", "a\\u{200d}b"],
    ["\ufeffx", "\\u{feff}x"],
    ["soft\u00adhyphen", "soft\\xadhyphen"],
    ["\u0085", "\\x85"],
    ["line\u2028sep", "line\\u{2028}sep"],
    ["Grüße 日本 🙂", "Grüße 日本 🙂"],
  ])("visibleText(%j, false) = %j", (s, want) => {
    expect(visibleText(s, false)).toBe(want);
  });
  it("visibleToken escapes the same characters", () => {
    expect(visibleToken(" \u202e\t\u200b")).toBe("␣\\u{202e}⇥\\u{200b}");
  });
});

const hex = (s: string) => Array.from(new TextEncoder().encode(s), (b) => b.toString(16).padStart(2, "0")).join("");

describe("mergeTokens", () => {
  // [labels from the server, token bytes (hex), expected labels, expected cont flags]
  it.each([
    ["ü over two byte pieces", ["<0xC3>", "<0xBC>", "ber"], ["c3", "bc", hex("ber")], ["ü", "", "ber"], [false, true, false]],
    ["日 over three", ["<0xE6>", "<0x97>", "<0xA5>"], ["e6", "97", "a5"], ["日", "", ""], [false, true, true]],
    ["pieces spanning two characters", ["<0xE6><0x97>", "<0xA5><0xE6>", "<0x9C><0xAC>"], ["e697", "a5e6", "9cac"], ["日", "本", ""], [false, false, true]],
    ["emoji in four", ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"], ["f0", "9f", "99", "82"], ["🙂", "", "", ""], [false, true, true, true]],
    ["unfinished at the end", ["a", "<0xE6>", "<0x97>"], [hex("a"), "e6", "97"], ["a", "<0xE6>", "<0x97>"], [false, false, false]],
    ["whole characters kept", [" Gr", "üße"], [hex(" Gr"), hex("üße")], [" Gr", "üße"], [false, false]],
    ["special token without bytes", ["<s>", "x"], ["", hex("x")], ["<s>", "x"], [false, false]],
    ["BOM over three pieces is kept", ["d", "<0xEF>", "<0xBB>", "<0xBF>"], [hex("d"), "ef", "bb", "bf"], ["d", "\ufeff", "", ""], [false, false, true, true]],
    ["BOM as one token is kept", ["\ufeff"], ["efbbbf"], ["\ufeff"], [false]],
  ])("%s", (_name, tokens, bytes, labels, cont) => {
    const m = mergeTokens(tokens, bytes);
    expect(m.map((t) => t.label)).toEqual(labels);
    expect(m.map((t) => t.cont)).toEqual(cont);
  });

  it.each(["Grüße aus München", "a 🙂 b 👩‍👩‍👧", "日本語のテキスト", "abc\u202edef\tg\u200bh", "\ufeffbom\ufeff"])("every byte split of %j joins to the text", (text) => {
    const all = new TextEncoder().encode(text);
    // one token per byte: the hardest split
    const bytes = Array.from(all, (b) => b.toString(16).padStart(2, "0"));
    const labels = Array.from(all, (b) => (b < 0x80 ? String.fromCharCode(b) : `<0x${b.toString(16).toUpperCase()}>`));
    const m = mergeTokens(labels, bytes);
    expect(m.map((t) => t.text).join("")).toBe(text);
    expect(m.map((t) => t.label).join("")).toBe(text);
    expect(m.some((t) => t.label.includes("\ufffd"))).toBe(false);
  });

  it("without bytes shows the labels as they are", () => {
    expect(mergeTokens(["a", "b"]).map((t) => [t.label, t.text, t.byte])).toEqual([["a", "a", false], ["b", "b", false]]);
  });

  it("a byte piece's tooltip gives its bytes and character", () => {
    const m = mergeTokens(["<0xC3>", "<0xBC>"], ["c3", "bc"]);
    expect(m.every((t) => t.byte)).toBe(true);
    expect(bytePieceTitle(m[0])).toBe("byte piece: C3, part of “ü”");
    expect(bytePieceTitle(m[1])).toBe("byte piece: BC, continues “ü”");
  });
});

describe("exactText", () => {
  it("keeps a trace's text when it is whole", () => {
    expect(exactText({ text: "Grüße", tokens: ["Gr", "<0xC3>", "<0xBC>", "ße"], token_bytes: ["4772", "c3", "bc", hex("ße")] })).toBe("Grüße");
  });
  it("drops bytes of a cut character instead of writing U+FFFD", () => {
    const t = { text: "日\ufffd\ufffd", tokens: ["<0xE6>", "<0x97>", "<0xA5>", "<0xE6>", "<0x9C>"], token_bytes: ["e6", "97", "a5", "e6", "9c"] };
    expect(exactText(t)).toBe("日");
  });
  it("without bytes keeps the text", () => {
    expect(exactText({ text: "a\ufffd", tokens: ["a", "\ufffd"] })).toBe("a\ufffd");
  });
});
