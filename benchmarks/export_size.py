"""How big an HTML export is, what each embedded attention head adds, and how the page copes with a long
one, in Chromium.

    .venv/bin/python benchmarks/export_size.py [--model default] [--tokens 64 512 4096] [--open]

For each length (the first N tokens of the text benchmarks/envelope_size.py uses): the file's size
without `--include`, with one attention head (and the bytes per embedded attention cell, T² cells, over
the file without it), and with the logit lens. `--open` also opens the longest export from disk in
Chromium (network blocked) and prints the time until every token is drawn and the longest main-thread
task (PerformanceObserver 'longtask').

Target (issue 10): ≤ 1 MB plus 2 bytes per embedded attention cell; a 4,096-token export stays
responsive.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

OBSERVE = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longtasks.push(e.duration);
}).observe({ type: "longtask", buffered: true });
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 512, 4096])
    ap.add_argument("--open", action="store_true", help="open the longest export in Chromium")
    args = ap.parse_args()

    from envelope_size import corpus

    import lmpeek
    from lmpeek.capture.tokens import tokenize
    from lmpeek.session import Session
    from lmpeek.views.export import export_html

    model = lmpeek.load(args.model)
    ids = tokenize(model.tokenizer, corpus(), None).token_ids
    out = pathlib.Path(tempfile.mkdtemp(prefix="lmpeek-export-bench-"))
    print(f"model {model.name}; sizes in MB (10^6 bytes)")
    print(f"{'tokens':>7} {'plain':>8} {'+1 head':>8} {'B/cell':>7} {'+lens':>8} {'target':>8}")
    longest = None
    with Session(model) as s:
        for n in args.tokens:
            stored = s.trace(ids[:n])
            T = len(stored.trace)
            plain = export_html(s, stored.id).encode()
            head = export_html(s, stored.id, "attention=0:0").encode()
            lens = export_html(s, stored.id, "lens").encode() if T <= 1024 else None
            per_cell = (len(head) - len(plain)) / (T * T)
            target = 1e6 + 2 * T * T
            lens_mb = f"{len(lens) / 1e6:8.2f}" if lens is not None else f"{'-':>8}"
            print(f"{T:>7} {len(plain) / 1e6:8.2f} {len(head) / 1e6:8.2f} {per_cell:7.2f} {lens_mb} "
                  f"{target / 1e6:8.2f}  {'ok' if len(head) <= target else 'OVER'}")  # fmt: skip
            longest = out / f"export-{T}.html"
            longest.write_bytes(head)
    if args.open and longest is not None:
        from playwright.sync_api import sync_playwright

        from tests.e2e.conftest import ARGS, CHROMIUM

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            blocked = []
            context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:")
                          else (blocked.append(r.request.url), r.abort()))  # fmt: skip
            page = context.new_page()
            page.add_init_script(OBSERVE)
            t0 = time.perf_counter()
            page.goto(longest.as_uri())
            n = T
            page.get_by_test_id("explore-tokens").get_by_test_id("token").nth(n - 1).wait_for(timeout=120_000)
            shown = time.perf_counter() - t0
            tasks = page.evaluate("window.__longtasks")
            longest_task = max(tasks, default=0)
            print(f"{longest.name}: all {n} tokens drawn {shown * 1000:.0f} ms after navigation; longest "
                  f"main-thread task {longest_task:.0f} ms; network requests: {len(blocked)}")  # fmt: skip
            browser.close()


if __name__ == "__main__":
    main()
