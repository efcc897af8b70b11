/** How tokens are shown: visible whitespace and control characters, never interpreted as HTML. */

const NAMED: Record<string, string> = {
  " ": "␣",
  "\n": "↵",
  "\t": "⇥",
  "\r": "␍",
};

/**
 * The token with every invisible character made visible: spaces as ␣, newlines as ↵, tabs as ⇥,
 * other control characters as \xNN / \u{N}. For tooltips and prediction lists, where a bare
 * " " or "\n" would be unreadable. Returns plain text (set it with textContent, not innerHTML).
 */
export function visibleToken(tok: string): string {
  let out = "";
  for (const ch of tok) {
    const named = NAMED[ch];
    if (named !== undefined) {
      out += named;
      continue;
    }
    const cp = ch.codePointAt(0)!;
    if (cp < 0x20 || cp === 0x7f || (cp >= 0x80 && cp < 0xa0)) {
      out += `\\x${cp.toString(16).padStart(2, "0")}`;
    } else if (cp === 0xfeff || cp === 0x200b) {
      out += `\\u{${cp.toString(16)}}`;
    } else {
      out += ch;
    }
  }
  return out === "" ? "∅" : out;
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
