"""The feature-database builder against a plain batched forward, and its memory as the corpus grows.

    .venv/bin/python benchmarks/features_build.py [--source neurons:14] [--source default]
        [--tokens 16384] [--repeat 3] [--memory 100000 1000000]

Speed: on the default model, the first TOKENS tokens of the demo corpus cut into 256-token sequences,
8 per batch, interleaved round-robin in one process (medians):
  plain     model.hf(input_ids, attention_mask) over the same batches (sdpa, no hooks, full logits):
            what running the model over the corpus costs at all
  build     lmpeek.features.build(model, sources, corpus, tokens=TOKENS): the forward (stopped after
            the last hook point the sources read), encoding, top-k/quantile/histogram/correlation
            state, logits of the decoder directions, the SQLite file
Prints tokens/s and build/plain. Target (issue 12): >= 0.8x.

Memory (--memory N …): each N in a fresh process, the peak resident memory the build adds over the
loaded model (VmHWM). Target: flat in N (O(features x k), not O(tokens)).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _batches import batches, interleaved

SEQ_LEN, BATCH = 256, 8


def _plain_batches(model, tokens: int):
    from lmpeek.features.corpus import documents, sequences

    seqs, n = [], 0
    for s in sequences(model.tokenizer, documents("demo"), SEQ_LEN):
        seqs.append(s.ids)
        n += len(s.ids)
        if n >= tokens:
            break
    return batches(seqs, BATCH), n


def _memory_child(sources: list[str], tokens: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _memory import reset_peak, rss_kb

    import lmpeek
    from lmpeek import features

    model = lmpeek.load("default", progress=False)
    srcs = [features.load(s, model, check=False) for s in sources]
    with tempfile.TemporaryDirectory() as tmp:
        features.build(model, srcs, "demo", Path(tmp) / "warm.db", tokens=512, progress=False)
        reset_peak()
        before = rss_kb()
        t = time.perf_counter()
        features.build(model, srcs, "demo", Path(tmp) / "f.db", tokens=tokens, seq_len=SEQ_LEN,
                       batch_size=BATCH, progress=False)  # fmt: skip
        print(json.dumps({"peak_mb": (rss_kb("VmHWM") - before) / 1024, "s": time.perf_counter() - t}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", action="append", default=None, help="default: neurons:14")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory", type=int, nargs="*", default=[], help="corpus sizes for the memory runs")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sources = args.source or ["neurons:14"]
    if args.child is not None:
        return _memory_child(sources, args.child)

    import torch

    import lmpeek
    from lmpeek import features

    model = lmpeek.load("default", progress=False)
    srcs = [features.load(s, model, check=False) for s in sources]
    batches, n = _plain_batches(model, args.tokens)

    @torch.inference_mode()
    def plain() -> None:
        for ids, mask in batches:
            model.hf(input_ids=ids, attention_mask=mask, use_cache=False)

    tmp = tempfile.TemporaryDirectory()
    runs = iter(range(1_000_000))

    def build() -> None:
        out = Path(tmp.name) / f"f{next(runs)}.db"
        features.build(model, srcs, "demo", out, tokens=args.tokens, seq_len=SEQ_LEN, batch_size=BATCH,
                       progress=False)  # fmt: skip
        out.unlink()

    medians = interleaved({"plain": plain, "build": build}, args.repeat, warm_up=False)
    base = medians["plain"]
    print(f"{', '.join(sources)}: {n} tokens of the demo corpus, {SEQ_LEN}-token sequences, {BATCH} a batch, "
          f"medians of {args.repeat} (interleaved), {torch.get_num_threads()} threads")  # fmt: skip
    for name, med in medians.items():
        print(f"  {name:6s} {n / med:8.0f} tokens/s   {base / med:5.2f}x plain")
    for tokens in args.memory:
        given = [a for s in sources for a in ("--source", s)]
        cmd = [sys.executable, __file__, "--child", str(tokens), *given]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.splitlines()[-1])
        print(f"  memory, {tokens:>9,} tokens: +{r['peak_mb']:.0f} MB over the loaded model ({r['s']:.0f} s)")


if __name__ == "__main__":
    main()
