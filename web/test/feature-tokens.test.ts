// @vitest-environment node
/** The Features views show tokens as Explore does. A feature answer has labels only (byte pieces as
 * `<0xF0>` markers), Explore has each token's bytes; the page's displayTokens (labels -> bytes ->
 * mergeTokens) must give what Explore's mergeTokens gives from the real bytes, token by token, and a
 * rendered example must show split characters once, tabs as ⇥, newlines as ↵ and never U+FFFD.
 * The labels, ids and bytes below are the server's for "  a 🙂 b 👩‍👩‍👧 ok\n\n日本語\tend" (lmpeek.trace's
 * tokens / token_bytes) with tiny:gpt2 (byte-level BPE) and a sentencepiece-style tokenizer with byte
 * fallback, a BOS and a dummy prefix (tests/features/test_feature_tokens.py builds it). */
import { render } from "svelte/server";
import { describe, expect, it } from "vitest";
import FeatureExample from "../src/components/FeatureExample.svelte";
import type { Api } from "../src/lib/api";
import { displayTokens, tokensText, type Example } from "../src/lib/features";
import { mergeTokens } from "../src/lib/tokens";

const TEXT = "  a 🙂 b 👩\u200d👩\u200d👧 ok\n\n日本語\tend";
const FAMILY = ["<0xF0>", "<0x9F>", "<0x91>", "<0xA9>", "<0xE2>", "<0x80>", "<0x8D>", "<0xF0>", "<0x9F>", "<0x91>", "<0xA9>", "<0xE2>", "<0x80>", "<0x8D>", "<0xF0>", "<0x9F>", "<0x91>", "<0xA7>"];
const FAMILY_HEX = ["f0", "9f", "91", "a9", "e2", "80", "8d", "f0", "9f", "91", "a9", "e2", "80", "8d", "f0", "9f", "91", "a7"];
const CJK = ["<0xE6>", "<0x97>", "<0xA5>", "<0xE6>", "<0x9C>", "<0xAC>", "<0xE8>", "<0xAA>", "<0x9E>"];
const CJK_HEX = ["e6", "97", "a5", "e6", "9c", "ac", "e8", "aa", "9e"];
const EMOJI = ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"];
const EMOJI_HEX = ["f0", "9f", "99", "82"];

const CASES = {
  gpt2: {
    tokens: [" ", " a", " ", ...EMOJI, " b", " ", ...FAMILY, " o", "k", "\n", "\n", ...CJK, "\t", "en", "d"],
    bytes: ["20", "2061", "20", ...EMOJI_HEX, "2062", "20", ...FAMILY_HEX, "206f", "6b", "0a", "0a", ...CJK_HEX, "09", "656e", "64"],
    copied: TEXT,
  },
  sentencepiece: {
    tokens: ["<s>", " ", " ", " ", "a", " ", ...EMOJI, " ", "b", " ", ...FAMILY, " ", "o", "k", "\n", "\n", ...CJK, "\t", "end"],
    // the BOS and the dummy-prefix space stand for no bytes of the text
    bytes: ["", "", "20", "20", "61", "20", ...EMOJI_HEX, "20", "62", "20", ...FAMILY_HEX, "20", "6f", "6b", "0a", "0a", ...CJK_HEX, "09", "656e64"],
    // labels alone cannot tell those two tokens from text: the page's copy keeps them (Explore's does not)
    copied: "<s> " + TEXT,
  },
};

const body = (r: { body: string }) => r.body.replace(/<!--[^]*?-->/g, "");
/** the visible text of each rendered token span (tags dropped, entities decoded) */
const shown = (html: string) =>
  [...html.matchAll(/<span class="tok[^"]*"[^>]*>([^]*?)<\/span>(?=<span class="tok|\s*<\/div>)/g)].map((m) =>
    m[1].replace(/<[^>]+>/g, "").replace(/&amp;/g, "&").replace(/&lt;/g, "<").replace(/&gt;/g, ">"),
  );

function example(tokens: string[]): Example {
  return { bin: 0, rank: 0, score: 1, doc: 0, pos: 5, start: 0, index: 5, token_ids: tokens.map((_, i) => i), tokens, acts: tokens.map(() => 0.5) };
}

describe.each(Object.entries(CASES))("%s tokens", (_name, c) => {
  it("the page's display is Explore's, token by token", () => {
    const page = displayTokens(c.tokens);
    const explore = mergeTokens(c.tokens, c.bytes);
    expect(page.map((m) => [m.label, m.byte, m.cont, m.bytes])).toEqual(
      explore.map((m, i) => [m.label, m.byte, m.cont, c.bytes[i] === "" ? page[i].bytes : m.bytes]),
    );
    expect(explore.map((m) => m.text).join("")).toBe(TEXT);
    expect(tokensText(c.tokens)).toBe(c.copied);
    expect(page.filter((m) => m.label === "🙂")).toHaveLength(1); // on its first piece, once
  });

  it("an example renders split characters once, ⇥ and ↵ visible, no U+FFFD", () => {
    const html = body(render(FeatureExample, { props: { client: {} as Api, source: "neurons:1", feature: 0, ex: example(c.tokens), span: { min: 0, max: 1 }, ontip: () => {} } }));
    const spans = shown(html);
    expect(spans).toHaveLength(c.tokens.length);
    const all = spans.join("");
    expect(all).not.toContain("\ufffd");
    expect(all).not.toContain("<0x"); // every split character is whole here
    for (const ch of ["🙂", "日", "本", "語", "👧"]) expect(all.split(ch)).toHaveLength(2);
    expect(all).toContain("👩\\u{200d}👩\\u{200d}👧"); // the zero-width joiner shown, as Explore escapes it
    expect(spans.filter((s) => s === "↵")).toHaveLength(2);
    expect(spans).toContain("⇥");
    expect(html).toMatch(/class="tok[^"]*\bcont\b/); // later pieces marked as continuing
  });
});

it("a window that starts inside a character shows the dangling bytes as markers, not U+FFFD", () => {
  const labels = ["<0x9F>", "<0x99>", "<0x82>", " b", "\t", "<0xE6>", "<0x97>"];
  const page = displayTokens(labels);
  expect(page.map((m) => m.label)).toEqual(mergeTokens(labels, ["9f", "99", "82", "2062", "09", "e6", "97"]).map((m) => m.label));
  expect(page.map((m) => m.label)).toEqual(["<0x9F>", "<0x99>", "<0x82>", " b", "\t", "<0xE6>", "<0x97>"]);
  expect(tokensText(labels)).toBe(" b\t");
  const html = body(render(FeatureExample, { props: { client: {} as Api, source: "neurons:1", feature: 0, ex: example(labels), span: { min: 0, max: 1 }, ontip: () => {} } }));
  expect(shown(html).join("")).toBe("<0x9F><0x99><0x82> b⇥<0xE6><0x97>");
});
