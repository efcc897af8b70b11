"""How big an HTML export is, what each embedded attention head adds, and how the page copes with a long
one, in Chromium.

    .venv/bin/python benchmarks/export_size.py [--model default] [--tokens 64 512 4096] [--open]

For each length (the first N tokens of the text benchmarks/envelope_size.py uses): the file's size
without `--include`, with one attention head (and the bytes per embedded attention cell, T² cells, over
the file without it), with the Attention tab's first model-view window (`grid`: L·H·64² cells), and
with the logit lens. Then where the bytes of the longest plain export go: each kind of recorded answer,
raw and gzipped as the file holds it (parts repeated across answers counted once, for the first kind
that holds them), and the bundle. `--open` also opens the longest export from disk in Chromium (network
blocked) and prints the time until every token is drawn and the longest main-thread task
(PerformanceObserver 'longtask').

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
    from lmpeek.views.export import export_html, record_pack

    model = lmpeek.load(args.model)
    ids = tokenize(model.tokenizer, corpus(), None).token_ids
    out = pathlib.Path(tempfile.mkdtemp(prefix="lmpeek-export-bench-"))
    print(f"model {model.name}; sizes in MB (10^6 bytes)")
    print(f"{'tokens':>7} {'plain':>8} {'+1 head':>8} {'B/cell':>7} {'+grid':>8} {'B/cell':>7} {'+lens':>8} "
          f"{'target':>8}")  # fmt: skip
    longest = plain_pack = None
    with Session(model) as s:
        for n in args.tokens:
            stored = s.trace(ids[:n])
            T = len(stored.trace)
            plain = export_html(s, stored.id).encode()
            head = export_html(s, stored.id, "attention=0:0").encode()
            lens = export_html(s, stored.id, "lens").encode() if T <= 1024 else None
            grid = export_html(s, stored.id, "grid").encode()
            per_cell = (len(head) - len(plain)) / (T * T)
            w = min(T, 64)
            grid_cells = model.n_layers * model.n_heads * w * w
            target = 1e6 + 2 * T * T
            lens_mb = f"{len(lens) / 1e6:8.2f}" if lens is not None else f"{'-':>8}"
            print(f"{T:>7} {len(plain) / 1e6:8.2f} {len(head) / 1e6:8.2f} {per_cell:7.2f} "
                  f"{len(grid) / 1e6:8.2f} {(len(grid) - len(plain)) / grid_cells:7.2f} {lens_mb} "
                  f"{target / 1e6:8.2f}  {'ok' if len(head) <= target else 'OVER'}")  # fmt: skip
            longest = out / f"export-{T}.html"
            longest.write_bytes(head)
            plain_pack = record_pack(s, stored.id)
    if plain_pack is not None:
        breakdown(plain_pack, T)
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


def breakdown(pack: bytes, T: int) -> None:
    """Where a plain export's bytes go: each kind of recorded answer (the path's last part; a metric
    by its name), raw and gzipped, and the bundle; the file holds each gzipped, then base85 (× 5/4)."""
    import gzip
    import json
    import struct
    from collections import defaultdict

    from lmpeek.views.bundle import bundle_js

    (n,) = struct.unpack("<I", pack[4:8])
    header, data = json.loads(pack[8 : 8 + n]), pack[8 + n :]
    kinds: dict[str, list[bytes]] = defaultdict(list)
    seen: set[int] = set()
    for key, r in header["responses"].items():
        path, _, q = key.split(" ", 1)[1].partition("?")
        kind = path.rsplit("/", 1)[1] if path.count("/") > 3 else ("envelope" if "/traces/" in path else path)
        if kind == "metric":
            kind += ":" + dict(p.split("=", 1) for p in q.split("&"))["name"]
        kinds[kind] += [data[o : o + m] for o, m in r["parts"] if o not in seen]
        seen.update(o for o, _ in r["parts"])
    rows = [(k, sum(map(len, v)), len(gzip.compress(b"".join(v), 9))) for k, v in kinds.items()]
    rows.append(("pack header", n, len(gzip.compress(pack[8 : 8 + n], 9))))
    code = bundle_js().encode()
    rows.append(("bundle (lmpeek.js)", len(code), len(gzip.compress(code, 9))))
    total = sum(z for _, _, z in rows)
    print(f"\nwhere the bytes of the plain {T}-token export go (MB; the file: gzip × 5/4)")
    print(f"{'':>22} {'raw':>8} {'gzip':>8} {'share':>6}")
    for k, raw, z in sorted(rows, key=lambda r: -r[2]):
        print(f"{k:>22} {raw / 1e6:8.3f} {z / 1e6:8.3f} {z / total:6.1%}")
    print(f"{'all':>22} {'':>8} {total / 1e6:8.3f}  -> about {total * 1.25 / 1e6:.2f} MB of base85")


if __name__ == "__main__":
    main()
