"""Peak memory of a long trace of the default model, over the loaded model.

    .venv/bin/python benchmarks/trace_memory.py [--tokens 4096] [--modes summaries with-resid]

Each mode runs in a fresh process: load the default model, run once on 16 tokens (warm-up), then
measure the peak resident memory (Linux VmHWM, reset through /proc/self/clear_refs) that the long run
adds on top of what the process held before it:
  plain sdpa   transformers' default forward, logits of every position (the reference)
  summaries    lmpeek.trace(model, ids): predictions, norms, attention entropy
  with-resid   capture.trace.trace_with_resid: the same plus the residual stream [L+1, T, D] float32,
               what Session.trace (the app) runs before storing
Target (issue 11): a 4,096-token trace <= 1.5 GB over the loaded model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _memory import reset_peak, rss_kb

MODES = ("plain sdpa", "summaries", "with-resid")


def _child(mode: str, tokens: int) -> None:
    import torch

    import lmpeek
    from lmpeek.capture.trace import trace_with_resid

    model = lmpeek.load("default", progress=False)
    text = open(__file__.replace("trace_memory.py", "sample.txt")).read()
    ids = model.tokenizer(text)["input_ids"]
    ids = (ids * (tokens // len(ids) + 1))[:tokens]
    if mode == "plain sdpa":
        from transformers import AutoModelForCausalLM

        # a fresh copy in transformers' default sdpa (lmpeek.load leaves its model in eager)
        hf = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).eval()
        hf.set_attn_implementation("sdpa")
        del model

        def run(ids):
            with torch.inference_mode():
                return hf(torch.tensor([ids])).logits
    elif mode == "summaries":

        def run(ids):
            return lmpeek.trace(model, ids)
    else:

        def run(ids):
            return trace_with_resid(model, ids)

    # warm-up on 16 tokens: thread pools and one-time buffers are not the trace's, and the allocator is
    # not left holding a long run's freed memory (which would hide the next run's peak)
    run(ids[:16])
    base = rss_kb("VmRSS")
    reset_peak()
    out = run(ids)
    peak = rss_kb("VmHWM")
    del out
    print(json.dumps({"peak_extra_mb": (peak - base) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    print(f"| run ({args.tokens} tokens) | peak memory over the loaded model |\n|---|---:|")
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--child", mode, str(args.tokens)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{mode} failed:\n{proc.stderr[-2000:]}")
        mb = json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_mb"]
        print(f"| {mode} | +{mb:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
