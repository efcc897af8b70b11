"""Cost of lmpeek.trace against a plain transformers forward on the default model.

    .venv/bin/python benchmarks/trace_overhead.py [--lengths 128 512 2048] [--repeat 5]

For each length T it runs, each in a fresh process (so peak memory is that configuration's own):
  plain sdpa   transformers' default forward (the baseline every ratio is against)
  plain eager  transformers' eager forward (what pattern-returning tools must use)
  summaries    lmpeek.trace(model, ids): predictions, norms, attention entropy
  all patterns lmpeek.trace(model, ids, keep=["blocks.*.attn.hook_pattern"])
and prints the median wall time, the ratio to plain sdpa, and the peak resident memory added on top
of the loaded model (Linux VmHWM after resetting it through /proc/self/clear_refs).
Target: summaries <= 1.3x plain sdpa at 512 tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MODES = ("plain sdpa", "plain eager", "summaries", "all patterns")


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _child(mode: str, length: int, repeat: int) -> None:
    import torch

    import lmpeek

    torch.manual_seed(0)
    model = lmpeek.load("default", progress=False)
    text = open(__file__.replace("trace_overhead.py", "sample.txt")).read()
    ids = model.tokenizer(text)["input_ids"]
    ids = (ids * (length // len(ids) + 1))[:length]
    x = torch.tensor([ids])
    if mode.startswith("plain"):
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
        hf.set_attn_implementation(mode.split()[1])
        del model

        def run():
            with torch.inference_mode():
                return hf(x).logits

    else:
        keep = ["blocks.*.attn.hook_pattern"] if mode == "all patterns" else []

        def run():
            return lmpeek.trace(model, ids, keep=keep)

    run()  # warm-up
    base = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
        del out
    peak = _rss_kb("VmHWM")
    print(json.dumps({"median_s": statistics.median(times), "peak_extra_mb": (peak - base) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), args.repeat)
        return
    rows = []
    for length in args.lengths:
        results = {}
        for mode in MODES:
            repeat = args.repeat if length <= 512 else max(2, args.repeat // 2)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(length), "--repeat", str(repeat)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                sys.exit(f"{mode} at {length} tokens failed:\n{proc.stderr[-2000:]}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = results["plain sdpa"]["median_s"]
        for mode in MODES:
            r = results[mode]
            rows.append((length, mode, r["median_s"], r["median_s"] / base, r["peak_extra_mb"]))
            print(f"{length:>5} {mode:<13} {r['median_s']:8.3f} s  {r['median_s'] / base:5.2f}x  "
                  f"+{r['peak_extra_mb']:7.0f} MB", flush=True)  # fmt: skip
    print("\n| tokens | run | time (s) | × plain sdpa | peak memory over the loaded model |")
    print("|---:|---|---:|---:|---:|")
    for length, mode, s, ratio, mb in rows:
        print(f"| {length} | {mode} | {s:.3f} | {ratio:.2f}× | +{mb:.0f} MB |")


if __name__ == "__main__":
    main()
