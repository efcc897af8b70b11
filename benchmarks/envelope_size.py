"""Size of a trace summary on the wire: JSON (GET /api/traces/{id} today) vs the binary envelope.

    .venv/bin/python benchmarks/envelope_size.py [--tokens 512 4096] [--model default] [--save DIR]

Traces the first N tokens of a varied text (the README followed by the bundled sample texts: prose,
code, math, chat, French, Russian; not one paragraph repeated, which would flatter gzip) and prints,
per N: the JSON body the server sends, the envelope in "compact" precision (what the server sends
with Accept: application/vnd.lmpeek.trace) and in "exact" precision (Trace.to_bytes()), each raw and
gzipped (level 6, what a reverse proxy would do), with the time to encode and decode each in Python.
`--save DIR` writes DIR/trace-N.lmpeek (the compact envelope) for the browser decode benchmark.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def corpus() -> str:
    texts = sorted((ROOT / "src" / "lmpeek" / "samples" / "texts").glob("*.txt"))
    return "\n\n".join([(ROOT / "README.md").read_text(), *(p.read_text() for p in texts)])


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--model", default="default")
    ap.add_argument("--save", type=pathlib.Path, default=None)
    args = ap.parse_args()

    import lmpeek
    from lmpeek.capture.trace import Trace, trace_with_resid
    from lmpeek.server.app import _json_bytes, _summary

    model = lmpeek.load(args.model, progress=False)
    ids = model.tokenizer(corpus())["input_ids"]
    info = model.info()
    shape = f"{info['n_layers']} layers x {info['n_heads']} heads, vocab {info['vocab_size']}"
    print(f"model {info['name']}: {shape}")
    print(f"{'tokens':>6} {'form':<17} {'bytes':>12} {'gzip -6':>12} {'encode':>8} {'decode':>8}")
    for n in args.tokens:
        if n > len(ids):
            raise SystemExit(f"the corpus has only {len(ids)} tokens; ask for at most that many")
        t, _ = trace_with_resid(model, ids[:n])
        rows = []
        enc, body = _timed(lambda t=t: _json_bytes(_summary("0" * 16, t)))
        dec, _ = _timed(lambda b=body: json.loads(b))
        rows.append(("JSON (today)", body, enc, dec))
        for precision in ("compact", "exact"):
            enc, env = _timed(lambda p=precision, t=t: t.to_bytes(p))
            dec, _ = _timed(lambda e=env: Trace.from_bytes(e))
            rows.append((f"envelope {precision}", env, enc, dec))
            if args.save and precision == "compact":
                args.save.mkdir(parents=True, exist_ok=True)
                (args.save / f"trace-{n}.lmpeek").write_bytes(env)
        for form, data, enc, dec in rows:
            gz = len(gzip.compress(data, 6))
            print(f"{n:>6} {form:<17} {len(data):>12,} {gz:>12,} {enc * 1e3:>6.0f}ms {dec * 1e3:>6.0f}ms")


if __name__ == "__main__":
    main()
