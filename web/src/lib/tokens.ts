/** How tokens are shown: visible whitespace and control characters, never interpreted as HTML. */

const NAMED: Record<string, string> = {
  " ": "␣",
  "\n": "↵",
  "\t": "⇥",
  "\r": "␍",
};

/** Characters that change layout or are invisible: controls, bidi overrides/isolates, zero-width
 * characters, BOM, soft hyphen, line/paragraph separators. Shown as escapes so that e.g. U+202E
 * cannot reverse the rest of the view. */
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u;

function escapeChar(ch: string): string {
  const cp = ch.codePointAt(0)!;
  return cp < 0x100 ? `\\x${cp.toString(16).padStart(2, "0")}` : `\\u{${cp.toString(16)}}`;
}

/**
 * Text with invisible characters made visible: tabs as ⇥, "\r" as ␍, other control and format
 * characters as \xNN / \u{N}; with `named` also spaces as ␣ and newlines as ↵. The one escaping
 * used by tooltips, prediction lists, token spans and chips. Returns plain text (textContent).
 */
export function visibleText(s: string, named = true): string {
  let out = "";
  for (const ch of s) {
    const name = NAMED[ch];
    if (name !== undefined && (named || (ch !== " " && ch !== "\n"))) out += name;
    else if (ch !== " " && ch !== "\n" && INVISIBLE.test(ch)) out += escapeChar(ch);
    else out += ch;
  }
  return out;
}

/**
 * The token with every invisible character made visible: spaces as ␣, newlines as ↵, tabs as ⇥,
 * other control characters as \xNN / \u{N}. For tooltips and prediction lists, where a bare
 * " " or "\n" would be unreadable. Returns plain text (set it with textContent, not innerHTML).
 */
export function visibleToken(tok: string): string {
  const out = visibleText(tok);
  return out === "" ? "∅" : out;
}

/** One token as displayed after merging byte pieces (see `mergeTokens`). */
export interface MergedToken {
  /** what the span shows: whole characters that START in this token, `<0xE6>` for bytes of no whole character */
  label: string;
  /** the exact text this token contributes (joined over all tokens = the text); "" for bytes of an unfinished character */
  text: string;
  /** part of a character split over several tokens (not valid UTF-8 alone) */
  byte: boolean;
  /** a byte piece whose bytes all continue a character started by an earlier token (shows no text) */
  cont: boolean;
  /** the token's bytes, "E6 97" (empty when unknown) */
  bytes: string;
  /** the characters this token's bytes belong to (for a byte piece's tooltip) */
  partOf: string;
}

export function hexToBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

// ignoreBOM: a BOM (EF BB BF) is text here, to be shown, not a marker to drop
const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function decodeOrNull(b: Uint8Array): string | null {
  try {
    return strict.decode(b);
  } catch {
    return null;
  }
}

function spaced(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).toUpperCase().padStart(2, "0")).join(" ");
}

/** UTF-8 length announced by a lead byte, 0 when it cannot start a character. */
function utf8Length(lead: number): number {
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 0;
}

/**
 * Tokens as displayed, byte-faithfully: consecutive byte pieces (tokens that are not valid UTF-8
 * alone) are decoded together, and each character is shown once, on the token holding its first
 * byte; later pieces show no text (`cont`). Bytes that make no whole character keep their `<0xE6>`
 * label. Without `tokenBytes` (hex per token) the labels are shown as they are.
 */
export function mergeTokens(tokens: string[], tokenBytes?: (string | undefined)[] | null): MergedToken[] {
  const out: MergedToken[] = tokens.map((tok, i) => {
    const hex = tokenBytes?.[i];
    if (hex === undefined) return { label: tok, text: tok, byte: false, cont: false, bytes: "", partOf: "" };
    const b = hexToBytes(hex);
    const whole = decodeOrNull(b);
    return { label: whole === null ? "" : tok, text: whole ?? "", byte: whole === null, cont: false, bytes: spaced(b), partOf: "" };
  });
  let i = 0;
  while (i < out.length) {
    if (!out[i].byte) {
      i++;
      continue;
    }
    let j = i;
    while (j < out.length && out[j].byte) j++;
    // the run i..j-1 of byte pieces: its bytes, each with the token it came from
    const owner: number[] = [];
    const parts: Uint8Array[] = [];
    for (let k = i; k < j; k++) {
      const b = hexToBytes(tokenBytes![k]!);
      parts.push(b);
      for (let n = 0; n < b.length; n++) owner.push(k);
    }
    const all = new Uint8Array(owner.length);
    let at = 0;
    for (const b of parts) {
      all.set(b, at);
      at += b.length;
    }
    let p = 0;
    while (p < all.length) {
      const n = utf8Length(all[p]);
      const ch = n && p + n <= all.length ? decodeOrNull(all.subarray(p, p + n)) : null;
      if (ch === null) {
        out[owner[p]].label += `<0x${all[p].toString(16).toUpperCase().padStart(2, "0")}>`;
        p++;
        continue;
      }
      out[owner[p]].label += ch;
      out[owner[p]].text += ch;
      for (let q = p; q < p + n; q++) if (!out[owner[q]].partOf.endsWith(ch)) out[owner[q]].partOf += ch;
      p += n;
    }
    for (let k = i; k < j; k++) out[k].cont = out[k].label === "";
    i = j;
  }
  return out;
}

/**
 * The text to put in a text box for a trace: its own text, unless that holds U+FFFD for bytes that
 * make no whole character (a generation stopped mid-character); then the whole characters of its
 * exact bytes, so re-running never analyses a literal U+FFFD the model did not produce.
 */
export function exactText(t: { text: string; tokens: string[]; token_bytes?: string[] }): string {
  if (!t.text.includes("\ufffd") || !t.token_bytes) return t.text;
  return mergeTokens(t.tokens, t.token_bytes)
    .map((m) => m.text)
    .join("");
}

/** The tooltip of a byte piece: its bytes and the character(s) they belong to. */
export function bytePieceTitle(m: MergedToken): string {
  if (!m.partOf) return `byte piece: ${m.bytes} (no whole character)`;
  return `byte piece: ${m.bytes}, ${m.cont ? "continues" : "part of"} “${visibleText(m.partOf)}”`;
}

/** Escape text for safe inclusion in HTML (only for string-built markup; the views use textContent). */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * A token cut at its line breaks, in order: strings are text to show inline (whitespace kept),
 * `null` is one line break. "\n    " -> [null, "    "], so code indentation stays at the start of
 * the next line; "\r" is dropped.
 */
export function tokenSegments(tok: string): (string | null)[] {
  const out: (string | null)[] = [];
  let text = "";
  for (const ch of tok) {
    if (ch === "\n") {
      if (text) out.push(text);
      text = "";
      out.push(null);
    } else if (ch !== "\r") text += ch;
  }
  if (text) out.push(text);
  return out;
}
